import CLunar

/// CRC32C (Castagnoli), the checksum of every LunarFS metadata record.
public enum CRC32C {
    /// The CRC32C of `bytes`, continuing from `seed` (the CRC of what came before).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        lunar_crc32c(seed, bytes.baseAddress, bytes.count)
    }

    public static func checksum(_ bytes: some Sequence<UInt8>, seed: UInt32 = 0) -> UInt32 {
        let array = Array(bytes)
        return array.withUnsafeBytes { checksum($0, seed: seed) }
    }

    /// The portable table implementation, for testing the hardware path against.
    public static func tableChecksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        lunar_crc32c_table(seed, bytes.baseAddress, bytes.count)
    }

    /// True when the CPU's CRC32 instruction (SSE4.2) does the work.
    public static var isHardwareAccelerated: Bool { lunar_crc32c_is_hardware() != 0 }
}
