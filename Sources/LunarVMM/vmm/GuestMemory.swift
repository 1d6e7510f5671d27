import Glibc

/// The guest's RAM: one anonymous mapping, seen by KVM as up to two pieces of guest physical
/// memory around the hole where device windows live (as on a PC, and as Firecracker lays it
/// out): `[0, lowSize)` below `holeStart`, and the rest from 4 GiB up. Every access the VMM
/// makes on the guest's behalf is bounds-checked here: a guest address or length from the
/// guest never reaches host memory outside this mapping, and a range that crosses the hole is
/// refused like one past the end.
public final class GuestMemory: @unchecked Sendable {
    /// Bytes of RAM, both pieces together.
    public let size: UInt64
    let base: UnsafeMutableRawPointer
    /// Where RAM below 4 GiB ends at the latest: the virtio-mmio windows start here, and the
    /// IOAPIC, local APIC and KVM's TSS pages lie above.
    public static let holeStart: UInt64 = 0xD000_0000
    /// Where RAM beyond `holeStart` continues.
    public static let highStart: UInt64 = 4 << 30
    /// Bytes below the hole (all of RAM when it fits there).
    public let lowSize: UInt64
    public var highSize: UInt64 { size - lowSize }

    /// The pieces of guest physical memory that are RAM, in address order.
    public var ranges: [Range<UInt64>] {
        highSize == 0 ? [0..<lowSize] : [0..<lowSize, Self.highStart..<(Self.highStart + highSize)]
    }

    /// How the host backs guest RAM.
    public enum Backing: String, Sendable, CaseIterable {
        /// Transparent huge pages where the kernel can find them (as QEMU asks for its RAM):
        /// fewer TLB misses for the guest, and a guest buffer of up to 2 MiB is one piece of
        /// host memory, so a direct read or write into it is one segment for the LUN's driver
        /// instead of one per 4 KiB page (a 1 MiB request would otherwise exceed virtio-blk's
        /// usual 254 segments and be split in two).
        case hugePages = "huge"
        /// 4 KiB pages only.
        case smallPages = "small"
        /// 4 KiB pages offered to KSM for sharing between VMs (memory page sharing); huge pages
        /// would defeat it.
        case mergeable

        /// "huge, small or mergeable", for messages.
        public static var names: String {
            let all = allCases.map(\.rawValue)
            return all.dropLast().joined(separator: ", ") + " or " + (all.last ?? "")
        }
    }

    /// The whole mapping: guest RAM plus what aligning it to a huge page took.
    private let mapping: UnsafeMutableRawBufferPointer

    static let hugePage = 2 << 20

    public init(size: UInt64, backing: Backing = .hugePages) throws(VMMError) {
        guard size >= 2 << 20, size % 4096 == 0, size <= 1 << 40 else {
            throw VMMError(.invalidConfiguration("guest memory of \(size) bytes (2 MiB – 1 TiB, page multiple)"))
        }
        // Huge pages need 2 MiB-aligned host addresses for 2 MiB-aligned guest ones: map one
        // huge page more and start at the first boundary (the slack is never touched).
        let slack = backing == .hugePages ? Self.hugePage : 0
        let length = Int(size) + slack
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw VMMError.system("mmap guest memory", errno) }
        mapping = UnsafeMutableRawBufferPointer(start: p, count: length)
        let skip = slack == 0 ? 0 : (slack - Int(UInt(bitPattern: p) % UInt(slack))) % slack
        base = p + skip
        self.size = size
        lowSize = min(size, Self.holeStart)
        // Advice only: a kernel without THP or KSM still runs the guest, on small pages.
        switch backing {
        case .hugePages: _ = madvise(base, Int(size), MADV_HUGEPAGE)
        case .mergeable: _ = madvise(base, Int(size), MADV_MERGEABLE)
        case .smallPages: _ = madvise(base, Int(size), MADV_NOHUGEPAGE)
        }
    }

    deinit { munmap(mapping.baseAddress, mapping.count) }

    /// The host view of guest bytes `[address, address + length)`, or nil when any of it lies
    /// outside guest RAM (past its end, or in the hole below 4 GiB).
    public func region(_ address: UInt64, _ length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0 else { return nil }
        let (end, overflow) = address.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= lowSize || (address >= Self.highStart && end - Self.highStart <= highSize) else { return nil }
        return UnsafeMutableRawBufferPointer(start: host(address), count: length)
    }

    /// Where guest RAM from `address` on lies in this process (the address is RAM's).
    func host(_ address: UInt64) -> UnsafeMutableRawPointer {
        address < lowSize ? base + Int(address) : base + Int(lowSize + (address - Self.highStart))
    }

    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws(VMMError) {
        guard let r = region(address, bytes.count) else {
            throw VMMError(.invalidConfiguration("\(bytes.count) bytes at guest address 0x\(String(address, radix: 16)) do not fit guest memory"))
        }
        r.copyBytes(from: bytes)
    }

    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(VMMError) {
        guard let r = region(address, MemoryLayout<T>.size) else {
            throw VMMError(.invalidConfiguration("guest address 0x\(String(address, radix: 16)) outside memory"))
        }
        r.storeBytes(of: value.littleEndian, as: T.self)
    }
}
