/// Loads a static x86-64 ELF executable (a freestanding guest, or an uncompressed vmlinux)
/// into guest memory by its PT_LOAD segments. Every size and offset in the file is checked:
/// a malformed image is an error, never a read or write out of bounds.
enum ElfLoader {
    static func load(_ image: [UInt8], into memory: GuestMemory) throws(VMMError) -> UInt64 {
        func bad(_ why: String) -> VMMError { VMMError(.invalidConfiguration("ELF image: \(why)")) }
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) throws(VMMError) -> T {
            guard offset >= 0, offset + MemoryLayout<T>.size <= image.count else { throw bad("truncated at byte \(offset)") }
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v |= T(image[offset + i]) << (8 * i) }
            return v
        }
        guard image.count >= 64, image[0] == 0x7F, image[1] == 0x45, image[2] == 0x4C, image[3] == 0x46 else { throw bad("no ELF magic") }
        guard image[4] == 2, image[5] == 1 else { throw bad("not 64-bit little-endian") }
        guard try field(18, UInt16.self) == 62 else { throw bad("not x86-64") }
        let entry = try field(24, UInt64.self)
        let programHeaders = Int(try field(32, UInt64.self))
        let entrySize = Int(try field(54, UInt16.self))
        let count = Int(try field(56, UInt16.self))
        guard entrySize >= 56, count > 0, count < 256 else { throw bad("bad program header table") }
        var loaded = 0
        for i in 0..<count {
            let ph = programHeaders + i * entrySize
            guard try field(ph, UInt32.self) == 1 else { continue } // PT_LOAD
            let fileOffset = Int(try field(ph + 8, UInt64.self))
            let address = try field(ph + 24, UInt64.self) // physical address
            let fileSize = Int(try field(ph + 32, UInt64.self))
            let memorySize = try field(ph + 40, UInt64.self)
            guard fileOffset >= 0, fileSize >= 0, fileOffset <= image.count, fileSize <= image.count - fileOffset,
                  UInt64(fileSize) <= memorySize, memorySize < 1 << 32 else { throw bad("segment \(i) out of bounds") }
            guard let target = memory.region(address, Int(memorySize)) else {
                throw bad("segment \(i) (\(memorySize) bytes at 0x\(String(address, radix: 16))) does not fit guest memory")
            }
            target.initializeMemory(as: UInt8.self, repeating: 0)
            target.copyBytes(from: image[fileOffset..<(fileOffset + fileSize)])
            loaded += 1
        }
        guard loaded > 0 else { throw bad("no loadable segment") }
        guard memory.region(entry, 1) != nil else { throw bad("entry point 0x\(String(entry, radix: 16)) outside guest memory") }
        return entry
    }
}
