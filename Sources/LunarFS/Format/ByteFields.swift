import LunarIO

// Little-endian field access inside one metadata sector. Every on-disk integer is
// little-endian; offsets are the ones written in each record's layout comment.
extension IOBuffer {
    @inline(__always)
    func load<T: FixedWidthInteger>(_ offset: Int, as type: T.Type = T.self) -> T {
        T(littleEndian: UnsafeRawBufferPointer(bytes).loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    @inline(__always)
    func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    func loadBytes(_ offset: Int, count: Int) -> [UInt8] {
        Array(bytes[offset..<(offset + count)])
    }

    func storeBytes(_ value: some Collection<UInt8>, at offset: Int, padTo width: Int) {
        precondition(value.count <= width)
        let target = UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<(offset + width)])
        target.initializeMemory(as: UInt8.self, repeating: 0)
        target.copyBytes(from: value)
    }

    /// A NUL-padded UTF-8 field, read up to its first NUL.
    func loadString(_ offset: Int, width: Int) -> String {
        String(decoding: loadBytes(offset, count: width).prefix { $0 != 0 }, as: UTF8.self)
    }

    func copy(from other: IOBuffer) {
        precondition(count == other.count)
        bytes.copyMemory(from: UnsafeRawBufferPointer(other.bytes))
    }

    func clone() -> IOBuffer {
        let c = IOBuffer(count: count)
        c.copy(from: self)
        return c
    }
}

/// A 128-bit identifier (RFC 4122 version 4), stored as 16 raw bytes.
public struct VolumeID: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    public static func random() -> VolumeID {
        var g = SystemRandomNumberGenerator()
        var b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        return VolumeID(bytes: b)
    }

    public static let zero = VolumeID(bytes: [UInt8](repeating: 0, count: 16))

    public var description: String {
        let hex = bytes.map { String($0, radix: 16).leftPadded(2) }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-"
            + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }
}

extension String {
    func leftPadded(_ width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

/// Nanoseconds since the Unix epoch, as stored in timestamps.
public func wallClockNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

#if canImport(Glibc)
import Glibc
#endif
