import LunarIO

/// The four kinds of space a volume hands out, each from its own area of resource clusters.
public enum ResourceKind: UInt16, CaseIterable, Sendable, CustomStringConvertible {
    /// File descriptors (inodes), 4 KiB each.
    case inode = 1
    /// Indirect pointer blocks of file block maps, 4 KiB each.
    case pointerBlock = 2
    /// 64 KiB blocks: the storage of small files and of directories.
    case smallBlock = 3
    /// File blocks, the size chosen at mkfs (64 KiB – 8 MiB): the data of large files.
    case fileBlock = 4

    public var description: String {
        switch self {
        case .inode: "file descriptors (inodes)"
        case .pointerBlock: "pointer blocks"
        case .smallBlock: "small-file blocks"
        case .fileBlock: "file blocks"
        }
    }
}

/// Where one resource area lies. Resource `i` is at `dataOffset + i * resourceSize`; cluster
/// `c` (a header sector at `mapOffset + c * clusterStride`, then its `countSectors` reference
/// count sectors) owns resources `c * perCluster ..< (c + 1) * perCluster`. Resource 0 of every
/// area is reserved, so that 0 can mean "none" in maps and directory entries.
///
/// On disk, 32 bytes:
/// ```
///  0  8 map offset      first cluster header sector
///  8  8 data offset     resource 0
/// 16  4 resource size   bytes
/// 20  4 per cluster     resources each cluster owns
/// 24  8 count           resources in the area, the reserved one included
/// ```
public struct ResourceArea: Sendable, Equatable {
    public var kind: ResourceKind
    public var mapOffset: UInt64
    public var dataOffset: UInt64
    public var resourceSize: UInt32
    public var perCluster: UInt32
    public var count: UInt64
    /// Format 2: reference count sectors after each cluster header (0: the area keeps none).
    /// Kept in the volume header beside the 32-byte descriptor.
    public var countSectors: UInt32 = 0
    /// Counts per resource: 1 for a pointer block, one per 64 KiB grain for a file block.
    public var countsPerResource: UInt32 = 0

    public var clusterCount: Int { Int((count + UInt64(perCluster) - 1) / UInt64(perCluster)) }
    public var dataEnd: UInt64 { dataOffset + count * UInt64(resourceSize) }
    var clusterStride: UInt64 { UInt64(1 + countSectors) * UInt64(RecordHeader.sectorSize) }
    public var mapEnd: UInt64 { mapOffset + UInt64(clusterCount) * clusterStride }

    func offset(of index: UInt64) -> UInt64 { dataOffset + index * UInt64(resourceSize) }
    func clusterOffset(_ cluster: Int) -> UInt64 { mapOffset + UInt64(cluster) * clusterStride }
    /// Count sector `k` of cluster `c`.
    func countSectorOffset(_ cluster: Int, _ k: Int) -> UInt64 {
        clusterOffset(cluster) + UInt64(1 + k) * UInt64(RecordHeader.sectorSize)
    }
    /// Where the count of `grain` of resource `index` lies: its sector and its place there.
    func countLocation(_ index: UInt64, grain: Int = 0) -> (cluster: Int, sector: Int, offset: UInt64, slot: Int) {
        let c = cluster(of: index)
        let i = Int(index - UInt64(c) * UInt64(perCluster)) * Int(countsPerResource) + grain
        let k = i / ReferenceCountSector.perSector
        return (c, k, countSectorOffset(c, k), i % ReferenceCountSector.perSector)
    }
    /// Count sectors a cluster of `perCluster` resources with `countsPerResource` counts each needs.
    static func countSectors(perCluster: UInt32, countsPerResource: UInt32) -> UInt32 {
        let counts = Int(perCluster) * Int(countsPerResource)
        return UInt32((counts + ReferenceCountSector.perSector - 1) / ReferenceCountSector.perSector)
    }
    func cluster(of index: UInt64) -> Int { Int(index / UInt64(perCluster)) }
    /// The resources cluster `c` owns.
    func resources(inCluster c: Int) -> Range<UInt64> {
        let first = UInt64(c) * UInt64(perCluster)
        return first..<min(first + UInt64(perCluster), count)
    }

    static let encodedSize = 32

    func encode(into b: IOBuffer, at o: Int) {
        b.store(mapOffset, at: o)
        b.store(dataOffset, at: o + 8)
        b.store(resourceSize, at: o + 16)
        b.store(perCluster, at: o + 20)
        b.store(count, at: o + 24)
    }

    static func decode(_ kind: ResourceKind, from b: IOBuffer, at o: Int) -> ResourceArea {
        ResourceArea(kind: kind, mapOffset: b.load(o), dataOffset: b.load(o + 8), resourceSize: b.load(o + 16),
                     perCluster: b.load(o + 20), count: b.load(o + 24))
    }
}

/// The volume header: sector 0, with a backup copy in the volume's last sector.
///
/// ```
/// offset size field
///      0   32 record header (magic "LVHD")
///     32   16 volume UUID
///     48   64 label, UTF-8, NUL-padded
///    112    8 volume size in bytes (the backup header sits in its last 4 KiB)
///    120    4 file block size (power of two, 64 KiB – 8 MiB)
///    124    4 small block size (64 KiB)
///    128    4 host slots (256)
///    132    4 root directory inode number (1)
///    136    8 heartbeat region offset (the region holds host slots × 4 KiB)
///    144    8 volume lock record offset
///    152    8 journal region offset (the region holds host slots × journal size)
///    160    8 journal size per host slot
///    168    8 created, nanoseconds since the Unix epoch
///    176   16 directory hash key (SipHash-2-4), random per volume
///    192  128 resource areas: inode, pointer block, small block, file block (32 bytes each)
///    320    4 incompatible feature flags (a bit not known means "do not open"):
///               bit 0 shared blocks (format 2): the fields below, storage 3 (grain maps)
///    324    4 pointer-block count sectors per cluster (format 2; else 0)
///    328    4 file-block count sectors per cluster (format 2; else 0)
/// ```
public struct VolumeHeader: Sendable, Equatable {
    public var uuid: VolumeID
    public var label: String
    public var volumeSize: UInt64
    public var blockSize: UInt32
    public var smallBlockSize: UInt32
    public var hostSlots: UInt32
    public var rootInode: UInt32
    public var heartbeatOffset: UInt64
    public var volumeLockOffset: UInt64
    public var journalOffset: UInt64
    public var journalSize: UInt64
    public var created: Int64
    public var hashKey: [UInt8]
    public var inodes: ResourceArea
    public var pointerBlocks: ResourceArea
    public var smallBlocks: ResourceArea
    public var fileBlocks: ResourceArea
    public var incompatibleFeatures: UInt32

    /// Incompatible feature bits.
    public enum Feature {
        /// Format 2: blocks shared by several maps, with reference counts (snapshots, clones).
        public static let sharedBlocks: UInt32 = 1
        static let known: UInt32 = sharedBlocks
    }

    /// Whether blocks may be shared: reference counts kept, grain maps allowed (format 2).
    public var sharedBlocks: Bool { incompatibleFeatures & Feature.sharedBlocks != 0 }
    /// The format generation: 2 with shared blocks, else 1.
    public var formatGeneration: Int { sharedBlocks ? 2 : 1 }
    /// 64 KiB grains in one file block: the unit a shared block is copied by.
    public var grainsPerBlock: UInt32 { blockSize / Geometry.grainSize }

    static let primaryOffset: UInt64 = 0
    var backupOffset: UInt64 { volumeSize - UInt64(RecordHeader.sectorSize) }

    public func area(_ kind: ResourceKind) -> ResourceArea {
        switch kind {
        case .inode: inodes
        case .pointerBlock: pointerBlocks
        case .smallBlock: smallBlocks
        case .fileBlock: fileBlocks
        }
    }

    func heartbeatSlotOffset(_ slot: Int) -> UInt64 { heartbeatOffset + UInt64(slot) * UInt64(RecordHeader.sectorSize) }
    func journalStart(_ slot: Int) -> UInt64 { journalOffset + UInt64(slot) * journalSize }

    func encode(into b: IOBuffer) {
        b.storeBytes(uuid.bytes, at: 32, padTo: 16)
        b.storeBytes(Array(label.utf8.prefix(64)), at: 48, padTo: 64)
        b.store(volumeSize, at: 112)
        b.store(blockSize, at: 120)
        b.store(smallBlockSize, at: 124)
        b.store(hostSlots, at: 128)
        b.store(rootInode, at: 132)
        b.store(heartbeatOffset, at: 136)
        b.store(volumeLockOffset, at: 144)
        b.store(journalOffset, at: 152)
        b.store(journalSize, at: 160)
        b.store(created, at: 168)
        b.storeBytes(hashKey, at: 176, padTo: 16)
        for (i, area) in [inodes, pointerBlocks, smallBlocks, fileBlocks].enumerated() {
            area.encode(into: b, at: 192 + i * ResourceArea.encodedSize)
        }
        b.store(incompatibleFeatures, at: 320)
        b.store(pointerBlocks.countSectors, at: 324)
        b.store(fileBlocks.countSectors, at: 328)
    }

    /// Decodes a verified header sector and checks that its geometry is self-consistent, so that
    /// nothing later computes an offset outside the volume from a damaged but well-checksummed
    /// header.
    static func decode(_ b: IOBuffer, at offset: UInt64) throws(FSError) -> VolumeHeader {
        var h = VolumeHeader(
            uuid: VolumeID(bytes: b.loadBytes(32, count: 16)), label: b.loadString(48, width: 64),
            volumeSize: b.load(112), blockSize: b.load(120), smallBlockSize: b.load(124), hostSlots: b.load(128),
            rootInode: b.load(132), heartbeatOffset: b.load(136), volumeLockOffset: b.load(144),
            journalOffset: b.load(152), journalSize: b.load(160), created: b.load(168),
            hashKey: b.loadBytes(176, count: 16),
            inodes: .decode(.inode, from: b, at: 192), pointerBlocks: .decode(.pointerBlock, from: b, at: 224),
            smallBlocks: .decode(.smallBlock, from: b, at: 256), fileBlocks: .decode(.fileBlock, from: b, at: 288),
            incompatibleFeatures: b.load(320))
        if h.sharedBlocks {
            h.pointerBlocks.countSectors = b.load(324)
            h.pointerBlocks.countsPerResource = 1
            h.fileBlocks.countSectors = b.load(328)
            h.fileBlocks.countsPerResource = h.blockSize / Geometry.grainSize
        }
        if let problem = h.geometryProblem() { throw .corrupt(RecordKind.volumeHeader.name, at: offset, problem) }
        return h
    }

    func geometryProblem() -> String? {
        let s = UInt64(RecordHeader.sectorSize)
        guard volumeSize % s == 0, volumeSize >= 16 * s else { return "volume size \(volumeSize) is not a sane multiple of 4 KiB" }
        guard blockSize.nonzeroBitCount == 1, (64 << 10)...(8 << 20) ~= blockSize else { return "file block size \(blockSize) out of range" }
        guard smallBlockSize == Geometry.smallBlockSize else { return "small block size \(smallBlockSize) is not 64 KiB" }
        guard hostSlots >= 1, hostSlots <= 4096 else { return "host slot count \(hostSlots) out of range" }
        guard journalSize % s == 0, journalSize >= Geometry.minimumJournalSize else { return "journal size \(journalSize) out of range" }
        guard incompatibleFeatures & ~Feature.known == 0 else {
            return "unknown incompatible features 0x\(String(incompatibleFeatures & ~Feature.known, radix: 16)) (made by a newer release?)"
        }
        var regions: [(String, UInt64, UInt64)] = [
            ("volume lock", volumeLockOffset, volumeLockOffset + s),
            ("heartbeat region", heartbeatOffset, heartbeatOffset + UInt64(hostSlots) * s),
            ("journal region", journalOffset, journalOffset + UInt64(hostSlots) * journalSize),
        ]
        let expected: [(ResourceKind, UInt32)] = [(.inode, 4096), (.pointerBlock, 4096), (.smallBlock, smallBlockSize), (.fileBlock, blockSize)]
        for (kind, size) in expected {
            let a = area(kind)
            guard a.resourceSize == size, a.perCluster > 0, a.perCluster <= ClusterHeader.maxResources,
                  a.count >= 2, a.count <= UInt64(UInt32.max) else { return "\(kind) area geometry is inconsistent" }
            guard a.dataOffset % UInt64(a.resourceSize) == 0 || kind == .inode || kind == .pointerBlock,
                  a.mapOffset % s == 0, a.dataOffset % s == 0 else { return "\(kind) area is misaligned" }
            let counted = sharedBlocks && (kind == .pointerBlock || kind == .fileBlock)
            if counted && kind == .fileBlock && a.count * UInt64(grainsPerBlock) > UInt64(UInt32.max) {
                return "file-block area holds more grains than u32 grain numbers address"
            }
            guard a.countSectors == (counted ? ResourceArea.countSectors(perCluster: a.perCluster, countsPerResource: a.countsPerResource) : 0) else {
                return "\(kind) area has \(a.countSectors) reference count sectors per cluster, which its clusters do not need"
            }
            regions.append(("\(kind) map", a.mapOffset, a.mapEnd))
            regions.append(("\(kind)", a.dataOffset, a.dataEnd))
        }
        regions.sort { $0.1 < $1.1 }
        var previousEnd = s
        for (name, start, end) in regions {
            guard start >= previousEnd, end >= start else { return "\(name) overlaps another region" }
            previousEnd = end
        }
        guard previousEnd <= volumeSize - s else { return "regions run past the end of the volume" }
        guard rootInode >= 1, UInt64(rootInode) < inodes.count else { return "root inode \(rootInode) out of range" }
        return nil
    }
}

/// How mkfs lays a volume out.
public struct FormatOptions: Sendable {
    public var label: String
    /// File block size: a power of two from 64 KiB to 8 MiB.
    public var blockSize: UInt32
    /// Files (and directories) the volume can hold; default scales with the volume (one per MiB,
    /// 4 096 – 4 194 304).
    public var maxFiles: UInt64?
    /// Journal bytes per host slot; default 1 MiB (4 MiB from 64 GiB, 16 MiB from 1 TiB).
    public var journalSize: UInt64?
    /// Format 2: reference counts, so that blocks can be shared by snapshots and clones.
    public var sharedBlocks: Bool

    public init(label: String = "", blockSize: UInt32 = 1 << 20, maxFiles: UInt64? = nil, journalSize: UInt64? = nil,
                sharedBlocks: Bool = true) {
        self.label = label
        self.blockSize = blockSize
        self.maxFiles = maxFiles
        self.journalSize = journalSize
        self.sharedBlocks = sharedBlocks
    }
}

enum Geometry {
    static let hostSlots: UInt32 = 256
    static let smallBlockSize: UInt32 = 64 << 10
    /// The unit a shared file block is copied by (format 2).
    static let grainSize: UInt32 = 64 << 10
    static let minimumJournalSize: UInt64 = 1 << 20
    static let volumeLockOffset: UInt64 = 4096
    static let heartbeatOffset: UInt64 = 64 << 10
    static let journalOffset: UInt64 = 2 << 20

    /// The layout of a volume of `rawSize` bytes (rounded down to 4 KiB). A size too small or
    /// too large is refused with the smallest or largest size these options allow.
    static func layout(volumeSize rawSize: UInt64, options: FormatOptions) throws(FSError) -> VolumeHeader {
        try layout(volumeSize: rawSize, options: options, explainingSize: true)
    }

    /// The smallest size in whole MiB that lays out with `options`. Defaults (journal size,
    /// small and pointer block counts) grow with the size, so sizes are tried by laying them
    /// out: doubling from `guess`, then halving the gap.
    static func minimumSize(options: FormatOptions, guess: UInt64) -> UInt64 {
        func fits(_ mib: UInt64) -> Bool { (try? layout(volumeSize: mib << 20, options: options, explainingSize: false)) != nil }
        var low: UInt64 = 0
        var high = max(guess >> 20, 1)
        while !fits(high) {
            guard high < 1 << 40 else { return high << 20 }
            low = high
            high *= 2
        }
        while high - low > 1 {
            let middle = low + (high - low) / 2
            if fits(middle) { high = middle } else { low = middle }
        }
        return high << 20
    }

    private static func layout(volumeSize rawSize: UInt64, options: FormatOptions, explainingSize: Bool) throws(FSError) -> VolumeHeader {
        let s: UInt64 = 4096
        let size = rawSize / s * s
        let b = UInt64(options.blockSize)
        guard options.blockSize.nonzeroBitCount == 1, (64 << 10)...(8 << 20) ~= options.blockSize else {
            throw FSError(.invalidArgument("block size must be a power of two from 64K to 8M, not \(options.blockSize)"))
        }
        guard options.label.utf8.count <= 64 else { throw FSError(.invalidArgument("label longer than 64 bytes")) }
        let journal = options.journalSize ?? (size >= 1 << 40 ? 16 << 20 : size >= 64 << 30 ? 4 << 20 : 1 << 20)
        guard journal % s == 0, journal >= minimumJournalSize, journal <= 1 << 30 else {
            throw FSError(.invalidArgument("journal size must be a multiple of 4K from 1M to 1G"))
        }
        let maxFiles = options.maxFiles ?? min(max(size >> 20, 4096), 4 << 20)
        guard maxFiles >= 16, maxFiles < UInt64(UInt32.max) - 2048 else {
            throw FSError(.invalidArgument("max files must be from 16 to \(UInt32.max - 2048)"))
        }
        let smallCount = min(max(size / 64 / UInt64(smallBlockSize), 256), 1 << 24)
        let pointerCount = min(max(size / b / 256 + maxFiles / 8, 1024), UInt64(UInt32.max) - 4096)

        let shared = options.sharedBlocks
        // Format 2 counts references to pointer blocks (one each) and to file blocks (one per grain).
        func counts(_ kind: ResourceKind) -> UInt32 {
            guard shared else { return 0 }
            switch kind {
            case .pointerBlock: return 1
            case .fileBlock: return options.blockSize / grainSize
            case .inode, .smallBlock: return 0
            }
        }
        func stride(_ kind: ResourceKind, _ perCluster: UInt32) -> UInt64 {
            UInt64(1 + ResourceArea.countSectors(perCluster: perCluster, countsPerResource: counts(kind))) * s
        }
        var cursor = journalOffset + UInt64(hostSlots) * journal
        func area(_ kind: ResourceKind, size resource: UInt64, perCluster: UInt32, count: UInt64) -> ResourceArea {
            let roundedCount = (count + UInt64(perCluster) - 1) / UInt64(perCluster) * UInt64(perCluster)
            let clusters = roundedCount / UInt64(perCluster)
            let map = align(cursor, s)
            let data = align(map + clusters * stride(kind, perCluster), max(resource, s))
            cursor = data + roundedCount * resource
            let perResource = counts(kind)
            return ResourceArea(kind: kind, mapOffset: map, dataOffset: data, resourceSize: UInt32(resource),
                                perCluster: perCluster, count: roundedCount,
                                countSectors: ResourceArea.countSectors(perCluster: perCluster, countsPerResource: perResource),
                                countsPerResource: perResource)
        }
        let inodes = area(.inode, size: s, perCluster: clusterSize(maxFiles + 1, limit: 1024), count: maxFiles + 1)
        let pointers = area(.pointerBlock, size: s, perCluster: clusterSize(pointerCount, limit: 4096), count: pointerCount)
        let small = area(.smallBlock, size: UInt64(smallBlockSize), perCluster: clusterSize(smallCount, limit: 1024), count: smallCount)

        // File blocks take the rest; their cluster map comes first, so solve for the count.
        // Block numbers are u32: a larger volume is refused before any sum can overflow.
        let end = size > s ? size - s : 0
        let mapStart = align(cursor, s)
        let fitting = end > mapStart ? (end - mapStart) / b : 0
        // Grain numbers are u32 too: format 2 addresses at most 2^32 − 1 grains of 64 KiB.
        let grainsPerBlock = UInt64(options.blockSize / grainSize)
        guard !shared || fitting <= UInt64(UInt32.max) / grainsPerBlock else {
            let largest = UInt64(UInt32.max) / grainsPerBlock * b
            throw FSError(.invalidArgument("a volume of \(ByteSize.format(rawSize)) (\(rawSize) bytes) is too large for shared blocks (format 2), "
                + "which address at most 2^32 − 1 grains of 64 KiB: give it at most \(ByteSize.format(largest)) (\(largest) bytes), or make it format 1"))
        }
        guard fitting <= UInt64(UInt32.max) else {
            let largest = UInt64(UInt32.max) * b
            throw FSError(.invalidArgument("a volume of \(ByteSize.format(rawSize)) (\(rawSize) bytes) is too large for \(ByteSize.format(b)) file blocks: "
                + "it holds at most \(UInt32.max) of them; give it at most \(ByteSize.format(largest)) (\(largest) bytes)"
                + (b < 8 << 20 ? ", or choose larger file blocks (up to 8M)" : "")))
        }
        let perCluster = clusterSize(fitting, limit: 8192)
        var count = fitting
        while count > 0 {
            let clusters = (count + UInt64(perCluster) - 1) / UInt64(perCluster)
            let data = align(mapStart + clusters * stride(.fileBlock, perCluster), b)
            if data + count * b <= end { break }
            count -= 1
        }
        let minimumBlocks: UInt64 = 16
        guard count >= minimumBlocks else {
            guard explainingSize else { throw FSError(.invalidArgument("too small")) }
            let needed = minimumSize(options: options, guess: align(mapStart + s, b) + minimumBlocks * b + s)
            throw FSError(.invalidArgument("a volume of \(ByteSize.format(rawSize)) is too small: with these settings a volume needs at least "
                + "\(needed >> 20) MiB\(needed >= 1 << 30 ? " (\(ByteSize.format(needed)))" : "") (metadata: 256 journals of \(ByteSize.format(journal)), "
                + "\(maxFiles) file descriptors); give it at least that"))
        }
        let fileClusters = (count + UInt64(perCluster) - 1) / UInt64(perCluster)
        let files = ResourceArea(kind: .fileBlock, mapOffset: mapStart, dataOffset: align(mapStart + fileClusters * stride(.fileBlock, perCluster), b),
                                 resourceSize: UInt32(b), perCluster: perCluster, count: count,
                                 countSectors: ResourceArea.countSectors(perCluster: perCluster, countsPerResource: counts(.fileBlock)),
                                 countsPerResource: counts(.fileBlock))

        var key = [UInt8](repeating: 0, count: 16)
        var g = SystemRandomNumberGenerator()
        for i in key.indices { key[i] = UInt8.random(in: 0...255, using: &g) }
        let header = VolumeHeader(
            uuid: .random(), label: options.label, volumeSize: size, blockSize: options.blockSize,
            smallBlockSize: smallBlockSize, hostSlots: hostSlots, rootInode: 1, heartbeatOffset: heartbeatOffset,
            volumeLockOffset: volumeLockOffset, journalOffset: journalOffset, journalSize: journal,
            created: wallClockNanoseconds(), hashKey: key, inodes: inodes, pointerBlocks: pointers,
            smallBlocks: small, fileBlocks: files, incompatibleFeatures: shared ? VolumeHeader.Feature.sharedBlocks : 0)
        if let problem = header.geometryProblem() { throw FSError(.invalidArgument("cannot lay out the volume: \(problem)")) }
        return header
    }

    /// Resources per cluster for an area of `count`: at most `limit`, and few enough that the
    /// area has `minimumClusters` clusters, in multiples of 64 (at least 64). Hosts allocate
    /// from clusters they hold, so an area of one cluster would make them take turns.
    static func clusterSize(_ count: UInt64, limit: UInt32) -> UInt32 {
        let wanted = (count + minimumClusters - 1) / minimumClusters
        return UInt32(min(UInt64(limit), max(64, (wanted + 63) / 64 * 64)))
    }

    static let minimumClusters: UInt64 = 16

    static func align(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
        (value + alignment - 1) / alignment * alignment
    }
}
