import LunarIO

/// One sector of reference counts (format 2, `VolumeHeader.sharedBlocks`): how many block maps
/// refer to each pointer block, or to each 64 KiB grain of each file block, of one resource
/// cluster. A cluster's count sectors follow its header sector and go with its lock: whoever
/// may change the cluster's bitmap may change its counts.
///
/// ```
///   0   32 record header (magic "LRFC")
///  32    2 resource kind (2 pointer block, 4 file block)
///  34    2 reserved
///  36    4 cluster index within its area
///  40    4 sector index within the cluster's count sectors
///  44   20 reserved
///  64 4032 counts: 2016 × u16. Count i of sector k of cluster c belongs to count index
///          k × 2016 + i of the cluster: resource first + index / per-resource, grain
///          index % per-resource (per-resource: 1 for pointer blocks, B / 64 KiB for file blocks)
/// ```
struct ReferenceCountSector {
    static let countsOffset = 64
    static let perSector = (RecordHeader.sectorSize - countsOffset) / 2
    /// A count never goes past this: a share that would is refused (the block is copied instead).
    static let maximum = UInt16.max

    let buffer: IOBuffer

    var kindRaw: UInt16 { buffer.load(32) }
    var cluster: UInt32 { buffer.load(36) }
    var sectorIndex: UInt32 { buffer.load(40) }

    static func initialize(_ b: IOBuffer, kind: ResourceKind, cluster: Int, sector: Int) {
        b.fill(0)
        b.store(kind.rawValue, at: 32)
        b.store(UInt32(cluster), at: 36)
        b.store(UInt32(sector), at: 40)
    }

    func count(_ i: Int) -> UInt16 { buffer.load(Self.countsOffset + 2 * i) }
    func setCount(_ i: Int, _ value: UInt16) { buffer.store(value, at: Self.countsOffset + 2 * i) }

    /// Why this sector is not the one expected at its place, or nil.
    func problem(kind: ResourceKind, cluster c: Int, sector k: Int) -> String? {
        guard kindRaw == kind.rawValue, cluster == UInt32(c), sectorIndex == UInt32(k) else {
            return "holds counts of kind \(kindRaw), cluster \(cluster), sector \(sectorIndex); expected kind \(kind.rawValue), cluster \(c), sector \(k)"
        }
        return nil
    }
}
