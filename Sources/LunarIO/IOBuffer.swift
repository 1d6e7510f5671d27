import Glibc

/// Page-aligned memory for direct I/O.
///
/// A reference type so that one buffer can be handed to the async API from any task; the
/// caller keeps it untouched while an operation on it is in flight (as with any DMA buffer).
public final class IOBuffer: @unchecked Sendable {
    public static let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

    public let count: Int
    public let baseAddress: UnsafeMutableRawPointer

    /// Buffers this large go on transparent huge pages.
    public static let hugePageSize = 2 << 20

    /// Allocates `count` zeroed bytes aligned to `alignment` (a page by default).
    ///
    /// A buffer of 2 MiB or more is 2 MiB-aligned and asks for transparent huge pages
    /// (`MADV_HUGEPAGE`, before its first touch), as QEMU does for guest RAM: a 1 MiB request
    /// from it is then one physically contiguous segment, where 4 KiB pages make 256 that a
    /// device with fewer segments per request (virtio-blk: 254) splits in two.
    public init(count: Int, alignment: Int = IOBuffer.pageSize) {
        precondition(count >= 0 && alignment > 0 && alignment & (alignment - 1) == 0,
                     "IOBuffer needs a non-negative size and a power-of-two alignment")
        var pointer: UnsafeMutableRawPointer?
        let huge = count >= Self.hugePageSize
        let size = huge ? (count + Self.hugePageSize - 1) / Self.hugePageSize * Self.hugePageSize : max(count, 1)
        guard posix_memalign(&pointer, huge ? max(alignment, Self.hugePageSize) : alignment, size) == 0, let pointer else {
            fatalError("IOBuffer: out of memory allocating \(count) bytes")
        }
        if huge { _ = madvise(pointer, size, MADV_HUGEPAGE) }
        memset(pointer, 0, size)
        self.baseAddress = pointer
        self.count = count
    }

    /// A copy of `bytes` in fresh aligned memory, zero-padded to `count` if that is larger.
    public convenience init(copying bytes: some Collection<UInt8>, count: Int? = nil) {
        self.init(count: max(count ?? bytes.count, bytes.count))
        UnsafeMutableRawBufferPointer(start: baseAddress, count: self.count).copyBytes(from: bytes)
    }

    deinit { free(baseAddress) }

    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: baseAddress, count: count)
    }

    public func slice(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "IOBuffer slice out of range")
        return UnsafeMutableRawBufferPointer(rebasing: bytes[range])
    }

    public func fill(_ byte: UInt8) { memset(baseAddress, Int32(byte), count) }

    public var array: [UInt8] { Array(bytes) }

    public func contentEquals(_ other: IOBuffer) -> Bool {
        count == other.count && memcmp(baseAddress, other.baseAddress, count) == 0
    }
}
