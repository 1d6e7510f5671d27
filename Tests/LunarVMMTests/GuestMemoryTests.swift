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
