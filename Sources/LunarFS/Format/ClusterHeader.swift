import Glibc
import LunarIO

/// A resource cluster's header sector: its lock and the allocation bitmap of the resources it
/// owns (see `ResourceArea`). Hosts allocate from clusters they hold, so they rarely touch the
/// same sector.
///
/// ```
///   0   32 record header (magic "LRCL")
///  32    2 resource kind (1 inode, 2 pointer block, 3 small block, 4 file block)
///  34    2 reserved
///  36    4 cluster index within its area
///  40    8 first resource index
///  48    4 resources in this cluster
///  52    4 free count (must equal the zero bits of the bitmap)
///  56   64 lock record
/// 120    8 reserved
/// 128 3968 bitmap: bit i (byte i/8, bit i%8 from the least significant) set = resource
///          first + i in use
/// ```
struct ClusterHeader {
    static let bitmapOffset = 128
    static let lockOffset = 56
    static let maxResources: UInt32 = UInt32(RecordHeader.sectorSize - bitmapOffset) * 8

    let buffer: IOBuffer
    private static let zeroSector = IOBuffer(count: RecordHeader.sectorSize)

    var kindRaw: UInt16 { buffer.load(32) }
    var index: UInt32 { buffer.load(36) }
    var firstResource: UInt64 { buffer.load(40) }
    var resourceCount: UInt32 { buffer.load(48) }
    var freeCount: UInt32 {
        get { buffer.load(52) }
        nonmutating set { buffer.store(newValue, at: 52) }
    }

    static func initialize(_ b: IOBuffer, area: ResourceArea, cluster: Int) {
        let range = area.resources(inCluster: cluster)
        b.fill(0)
        b.store(area.kind.rawValue, at: 32)
        b.store(UInt32(cluster), at: 36)
        b.store(range.lowerBound, at: 40)
        b.store(UInt32(range.count), at: 48)
        b.store(UInt32(range.count), at: 52)
        LockRecord.free.encode(into: b, at: lockOffset)
    }

    func isUsed(_ bit: Int) -> Bool {
        buffer.load(Self.bitmapOffset + bit >> 3, as: UInt8.self) & (1 << UInt8(bit & 7)) != 0
    }

    func setUsed(_ bit: Int, _ used: Bool) {
        let at = Self.bitmapOffset + bit >> 3
        var byte: UInt8 = buffer.load(at)
        if used { byte |= 1 << UInt8(bit & 7) } else { byte &= ~(1 << UInt8(bit & 7)) }
        buffer.store(byte, at: at)
    }

    /// Takes a free resource: its bit set, the free count one lower (never below zero: a
    /// count that disagrees with the bitmap is fsck's to correct).
    func markUsed(_ bit: Int) {
        setUsed(bit, true)
        if freeCount > 0 { freeCount -= 1 }
    }

    /// The first free bit at or after `start` (wrapping once), or nil. Resource 0 is never
    /// free, whatever its bit says (a lost write may have cleared it).
    func firstFree(from start: Int) -> Int? {
        let n = Int(resourceCount)
        guard n > 0 else { return nil }

        let bytes = UnsafeRawBufferPointer(buffer.bytes)
        var i = start % n
        var scanned = 0
        while scanned < n {
            // Skip whole full bytes quickly.
            if i & 7 == 0 && i + 8 <= n && bytes[Self.bitmapOffset + i >> 3] == 0xFF {
                i += 8; scanned += 8
            } else {
                if !isUsed(i) && (i != 0 || firstResource != 0) { return i }
                i += 1; scanned += 1
            }
            if i >= n { i = 0 }
        }
        return nil
    }

    /// Zero bits counted from the bitmap itself (fsck compares it with `freeCount`).
    func countFree() -> Int {
        var used = 0
        for i in 0..<Int(resourceCount) where isUsed(i) { used += 1 }
        return Int(resourceCount) - used
    }

    /// Why this verified sector does not fit its place in `area`, or nil.
    func geometryProblem(area: ResourceArea, cluster: Int) -> String? {
        let range = area.resources(inCluster: cluster)
        if kindRaw != area.kind.rawValue { return "resource kind \(kindRaw) where \(area.kind.rawValue) belongs" }
        if index != UInt32(cluster) || firstResource != range.lowerBound || resourceCount != UInt32(range.count) {
            return "describes cluster \(index) (resources from \(firstResource), \(resourceCount)) instead of cluster \(cluster)"
        }
        if freeCount > resourceCount { return "free count \(freeCount) exceeds its \(resourceCount) resources" }
        // Bits past the last resource must be clear: the partial byte bit by bit, then whole bytes.
        let n = Int(resourceCount)
        for bit in n..<min(Int(Self.maxResources), (n + 7) / 8 * 8) where isUsed(bit) {
            return "bitmap has bit \(bit) set beyond its \(resourceCount) resources"
        }
        let start = Self.bitmapOffset + (n + 7) / 8
        let rest = RecordHeader.sectorSize - start
        if rest > 0, memcmp(buffer.baseAddress + start, Self.zeroSector.baseAddress, rest) != 0 {
            return "bitmap has bits set beyond its \(resourceCount) resources"
        }
        return nil
    }
}
