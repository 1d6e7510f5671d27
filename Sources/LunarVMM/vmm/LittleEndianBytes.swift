/// Little-endian fields in byte arrays: how firmware tables, the Linux zero page and AML lay
/// out their integers. Offsets are the ones written in each structure's layout comment.
extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Overwrites `MemoryLayout<T>.size` bytes at `offset`, which the caller's layout puts
    /// inside the array.
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { source in
            for (i, byte) in source.enumerated() { self[offset + i] = byte }
        }
    }

    /// The integer at `offset`, or nil when the array is too short to hold it.
    func loadLittleEndian<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T? {
        guard offset >= 0, offset <= count - MemoryLayout<T>.size else { return nil }
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value |= T(self[offset + i]) << (8 * i) }
        return value
    }

    /// ASCII text padded with spaces to `width` bytes: the OEM and table identifiers.
    mutating func appendPadded(_ text: String, width: Int) {
        let bytes = Array(text.utf8.prefix(width))
        append(contentsOf: bytes)
        append(contentsOf: [UInt8](repeating: 0x20, count: width - bytes.count))
    }
}
