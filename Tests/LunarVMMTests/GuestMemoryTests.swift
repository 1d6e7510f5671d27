import Glibc
import LunarVMM
import Testing

@Suite("Guest memory")
struct GuestMemoryTests {
    /// The VmFlags line of the mapping that holds `address`, from /proc/self/smaps.
    static func vmFlags(of address: UnsafeRawPointer) throws -> [Substring] {
        struct Unreadable: Error {}
        guard let file = fopen("/proc/self/smaps", "r") else { throw Unreadable() }
        defer { fclose(file) }
        let target = UInt(bitPattern: address)
        var inside = false
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let words = text.split(separator: " ", omittingEmptySubsequences: true)
            if let range = words.first, let dash = range.firstIndex(of: "-"),
               let lower = UInt(range[..<dash], radix: 16), let upper = UInt(range[range.index(after: dash)...], radix: 16) {
                inside = lower <= target && target < upper
            } else if inside, text.hasPrefix("VmFlags:") {
                return words.dropFirst().map { $0.hasSuffix("\n") ? $0.dropLast() : $0 }
            }
        }
        return []
    }

    @Test("RAM beyond the device hole continues at 4 GiB: addresses map piece by piece, the hole and crossings are refused")
    func splitAroundTheHole() throws {
        let high: UInt64 = 8 << 20
        let memory = try GuestMemory(size: GuestMemory.holeStart + high)
        #expect(memory.lowSize == GuestMemory.holeStart && memory.highSize == high)
        #expect(memory.ranges == [0..<GuestMemory.holeStart, (4 << 30)..<((4 << 30) + high)])
        let lastLow = try #require(memory.region(GuestMemory.holeStart - 4096, 4096))
        let firstHigh = try #require(memory.region(4 << 30, 4096))
        #expect(lastLow.baseAddress! + 4096 == firstHigh.baseAddress!, "one mapping, the pieces back to back in it")
        firstHigh[0] = 0x5A
        #expect(memory.region(4 << 30, 1)?[0] == 0x5A)
        #expect(memory.region((4 << 30) + high - 1, 1) != nil)
        #expect(memory.region((4 << 30) + high, 1) == nil, "past the end")
        #expect(memory.region(GuestMemory.holeStart, 1) == nil, "in the hole")
        #expect(memory.region(GuestMemory.holeStart - 1, 2) == nil, "across the hole's start")
        #expect(memory.region((4 << 30) - 1, 2) == nil, "across the hole's end")
        #expect(memory.region(UInt64.max - 1, 4) == nil, "wrapping around")

        let small = try GuestMemory(size: 64 << 20)
        #expect(small.ranges == [0..<(64 << 20)] && small.highSize == 0)
        #expect(small.region(4 << 30, 1) == nil)
    }

    @Test("huge pages: RAM starts on a 2 MiB boundary and is advised for THP; small and mergeable are advised as named")
    func backing() throws {
        let huge = try GuestMemory(size: 8 << 20)
        let base = try #require(huge.region(0, 1)?.baseAddress)
        #expect(UInt(bitPattern: base) % (2 << 20) == 0)
        #expect(try Self.vmFlags(of: base).contains("hg"))
        // The last byte is guest memory too, and writable.
        let last = try #require(huge.region(huge.size - 1, 1))
        last[0] = 0xA5
        #expect(last[0] == 0xA5)
        #expect(huge.region(huge.size, 1) == nil)

        let small = try GuestMemory(size: 8 << 20, backing: .smallPages)
        #expect(try Self.vmFlags(of: #require(small.region(0, 1)?.baseAddress)).contains("nh"))

        let mergeable = try GuestMemory(size: 8 << 20, backing: .mergeable)
        let flags = try Self.vmFlags(of: #require(mergeable.region(0, 1)?.baseAddress))
        // KSM may be compiled out; then the advice fails and the guest simply runs unshared.
        if access("/sys/kernel/mm/ksm", F_OK) == 0 { #expect(flags.contains("mg")) }
        #expect(!flags.contains("hg"))
    }
}
