import Glibc

/// The guest's RAM: one anonymous mapping seen by KVM at guest physical address 0. Every
/// access the VMM makes on the guest's behalf is bounds-checked here: a guest address or
/// length from the guest never reaches host memory outside this mapping.
public final class GuestMemory: @unchecked Sendable {
    public let size: UInt64
    let base: UnsafeMutableRawPointer

    public init(size: UInt64, mergeable: Bool = false) throws(VMMError) {
        guard size >= 2 << 20, size % 4096 == 0, size <= 1 << 40 else {
            throw VMMError(.invalidConfiguration("guest memory of \(size) bytes (2 MiB – 1 TiB, page multiple)"))
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw VMMError.system("mmap guest memory", errno) }
        if mergeable { _ = madvise(p, Int(size), MADV_MERGEABLE) }
        base = p
        self.size = size
    }

    deinit { munmap(base, Int(size)) }

    /// The host view of guest bytes `[address, address + length)`, or nil when any of it lies
    /// outside guest memory.
    public func region(_ address: UInt64, _ length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0 else { return nil }
        let (end, overflow) = address.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= size else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + Int(address), count: length)
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
