import LunarIO

/// A file descriptor (inode): one 4 KiB record in the inode area; inode number `n` is resource
/// `n` of that area (0 is never used; 1 is the root directory).
///
/// ```
///   0   32 record header (magic "LINO")
///  32   64 lock record
///  96    4 inode number
/// 100    1 type            0 free, 1 regular file, 2 directory
/// 101    1 storage         0 inline, 1 small blocks (64 KiB), 2 file blocks, 3 grains (64 KiB
///                          pieces of file blocks, which may be shared: format 2 only)
/// 102    1 map height      0: the map root holds unit numbers; h: each root entry points to a
///                          pointer-block tree of height h
/// 103    1 flags           bit 0 orphan: unlinked, its blocks being freed
/// 104    4 mode            permission bits
/// 108    4 link count
/// 112    4 uid
/// 116    4 gid
/// 120    8 size in bytes
/// 128    8 allocated units (data blocks mapped, in units of the storage's block size)
/// 136    8 ctime   \
/// 144    8 mtime    | nanoseconds since the Unix epoch
/// 152    8 atime    |
/// 160    8 btime   /  (creation)
/// 168    4 parent directory inode (the root names itself)
/// 172    4 reuse generation bumped each time the inode number is reused
/// 176    4 shared holder count (lock modes shared read-only and multi-writer; at most 6)
/// 180   72 shared holders: 6 × (host slot u32, claim generation u64); the lock record's owner
///          is the first of them
/// 252    4 map family (storage 3): the inode number of the file whose map the tree began
///          as, kept by its snapshots and clones; their pointer blocks carry it as owner
/// 256 3840 inline data (storage 0), or the map root: 960 little-endian u32 unit numbers
///          (grain numbers for storage 3; 0 = hole)
/// ```
struct InodeRecord {
    enum FileType: UInt8, Sendable { case free = 0, regular = 1, directory = 2 }
    enum Storage: UInt8, Sendable {
        case inline = 0, small = 1, blocks = 2, grains = 3

        /// As `lunar fs stat` shows it.
        var name: String {
            switch self {
            case .inline: "inline"
            case .small: "small blocks"
            case .blocks: "file blocks"
            case .grains: "grains (shareable)"
            }
        }
    }

    static let lockOffset = 32
    static let bodyOffset = 256
    static let inlineCapacity = RecordHeader.sectorSize - bodyOffset
    static let rootEntries = inlineCapacity / 4
    static let maxHeight: UInt8 = 3

    let buffer: IOBuffer

    var number: UInt32 { get { buffer.load(96) } nonmutating set { buffer.store(newValue, at: 96) } }
    var typeRaw: UInt8 { buffer.load(100) }
    var type: FileType? { FileType(rawValue: typeRaw) }
    var storageRaw: UInt8 { buffer.load(101) }
    var storage: Storage? { Storage(rawValue: storageRaw) }
    var height: UInt8 { get { buffer.load(102) } nonmutating set { buffer.store(newValue, at: 102) } }
    var isOrphan: Bool {
        get { buffer.load(103, as: UInt8.self) & 1 != 0 }
        nonmutating set { buffer.store(UInt8(newValue ? 1 : 0), at: 103) }
    }
    var mode: UInt32 { get { buffer.load(104) } nonmutating set { buffer.store(newValue, at: 104) } }
    var linkCount: UInt32 { get { buffer.load(108) } nonmutating set { buffer.store(newValue, at: 108) } }
    var uid: UInt32 { get { buffer.load(112) } nonmutating set { buffer.store(newValue, at: 112) } }
    var gid: UInt32 { get { buffer.load(116) } nonmutating set { buffer.store(newValue, at: 116) } }
    var size: UInt64 { get { buffer.load(120) } nonmutating set { buffer.store(newValue, at: 120) } }
    var allocatedUnits: UInt64 { get { buffer.load(128) } nonmutating set { buffer.store(newValue, at: 128) } }
    var ctime: Int64 { get { buffer.load(136) } nonmutating set { buffer.store(newValue, at: 136) } }
    var mtime: Int64 { get { buffer.load(144) } nonmutating set { buffer.store(newValue, at: 144) } }
    var atime: Int64 { get { buffer.load(152) } nonmutating set { buffer.store(newValue, at: 152) } }
    var btime: Int64 { get { buffer.load(160) } nonmutating set { buffer.store(newValue, at: 160) } }
    var parent: UInt32 { get { buffer.load(168) } nonmutating set { buffer.store(newValue, at: 168) } }
    var reuseGeneration: UInt32 { get { buffer.load(172) } nonmutating set { buffer.store(newValue, at: 172) } }
    var family: UInt32 { get { buffer.load(252) } nonmutating set { buffer.store(newValue, at: 252) } }

    /// One unit fewer mapped. A count already at zero was wrong (fsck recounts it); it stays
    /// at zero rather than wrapping.
    func unitUnmapped() { if allocatedUnits > 0 { allocatedUnits -= 1 } }

    func setType(_ t: FileType) { buffer.store(t.rawValue, at: 100) }
    func setStorage(_ s: Storage) { buffer.store(s.rawValue, at: 101) }

    func rootEntry(_ i: Int) -> UInt32 { buffer.load(Self.bodyOffset + i * 4) }
    func setRootEntry(_ i: Int, _ v: UInt32) { buffer.store(v, at: Self.bodyOffset + i * 4) }

    var inlineBytes: UnsafeMutableRawBufferPointer { buffer.slice(Self.bodyOffset..<RecordHeader.sectorSize) }

    func clearBody() { inlineBytes.initializeMemory(as: UInt8.self, repeating: 0) }

    /// Resets a free inode to a fresh one of `type`, keeping its reuse generation moving.
    func initialize(number: UInt32, type: FileType, mode: UInt32, parent: UInt32, now: Int64) {
        let reuse = reuseGeneration &+ 1
        buffer.slice(32..<RecordHeader.sectorSize).initializeMemory(as: UInt8.self, repeating: 0)
        LockRecord.free.encode(into: buffer, at: Self.lockOffset)
        self.number = number
        setType(type)
        setStorage(.inline)
        self.mode = mode
        linkCount = 1
        self.parent = parent
        ctime = now; mtime = now; atime = now; btime = now
        reuseGeneration = reuse
    }

    /// Units a map of `height` can address: 960 root entries, each covering 1 008^height.
    static func mapCapacity(height: UInt8) -> UInt64 {
        var units = UInt64(rootEntries)
        for _ in 0..<height { units *= UInt64(PointerBlock.entries) }
        return units
    }

    /// The largest size an inode of this type and storage may record on `volume`: a regular
    /// file's bytes its storage can hold (inline, one small block, or the deepest map of file
    /// blocks), a hashed directory's logical sectors × 4 KiB.
    static func maxSize(type: FileType, storage: Storage, on volume: VolumeHeader) -> UInt64 {
        switch (type, storage) {
        case (_, .inline): UInt64(inlineCapacity)
        case (.directory, _): UInt64(DirectoryLayout.maxLogicalSectors) * UInt64(RecordHeader.sectorSize)
        case (_, .small): UInt64(volume.smallBlockSize)
        case (_, .blocks): mapCapacity(height: maxHeight) * UInt64(volume.blockSize)
        case (_, .grains): mapCapacity(height: maxHeight) * UInt64(Geometry.grainSize)
        }
    }

    /// Why this verified inode is unusable, or nil. Keeps every later offset computation sane.
    func problem(expectedNumber: UInt32) -> String? {
        guard let type else { return "unknown file type \(typeRaw)" }
        if type == .free { return nil }
        if number != expectedNumber { return "names itself inode \(number), stored as inode \(expectedNumber)" }
        guard let storage else { return "unknown storage kind \(storageRaw)" }
        if height > Self.maxHeight { return "map height \(height) exceeds \(Self.maxHeight)" }
        if storage == .inline && size > UInt64(Self.inlineCapacity) { return "inline size \(size) exceeds \(Self.inlineCapacity)" }
        if storage == .inline && height != 0 { return "inline data with a map height" }
        if storage == .grains && (type != .regular || family == 0) { return "grain map on a directory or without a family" }
        return nil
    }

    /// A field of a structurally sound inode that `fsck --repair` recomputes from the rest of
    /// the volume, with why its value cannot be right.
    enum FieldProblem: Equatable {
        case size(String), allocatedUnits(String), parent(String), lock(String)

        var reason: String {
            switch self {
            case .size(let r), .allocatedUnits(let r), .parent(let r), .lock(let r): r
            }
        }
    }

    /// Every field of this in-use inode (whose `problem` is nil) checked against `volume`'s
    /// geometry and the record's own invariants. A checksum says the sector is what was
    /// written, not that what was written is sane: a size past what the storage can hold, a
    /// unit count past the map's capacity or a lock field no host writes are damage all the
    /// same, and every reader refuses them before they reach an offset or a loop bound.
    func fieldProblems(on volume: VolumeHeader) -> [FieldProblem] {
        guard let type, type != .free, let storage else { return [] }
        var found: [FieldProblem] = []
        let limit = Self.maxSize(type: type, storage: storage, on: volume)
        if size > limit {
            found.append(.size("size \(size) exceeds the \(limit) bytes its storage can hold"))
        } else if type == .directory, storage != .inline {
            let sectors = size / UInt64(RecordHeader.sectorSize)
            if size % UInt64(RecordHeader.sectorSize) != 0 || sectors <= UInt64(DirectoryLayout.firstLeafSector) {
                found.append(.size("hashed directory size \(size) is not a whole number of sectors past its first leaf"))
            }
        }
        let area = storage == .small ? volume.smallBlocks : volume.fileBlocks
        let units = storage == .grains ? (area.count - 1) * UInt64(volume.grainsPerBlock) : area.count - 1
        let unitLimit = storage == .inline ? 0 : min(Self.mapCapacity(height: height), units)
        if allocatedUnits > unitLimit {
            found.append(.allocatedUnits("counts \(allocatedUnits) allocated units, more than its map can hold (\(unitLimit))"))
        }
        if parent == 0 || UInt64(parent) >= volume.inodes.count {
            found.append(.parent("parent directory \(parent) is outside the inode area"))
        }
        if let why = InodeLock.problem(self) { found.append(.lock(why)) }
        return found
    }
}

/// An indirect block of a file's map: 1 008 unit numbers (or, above level 1, pointer-block
/// numbers), resource `n` of the pointer-block area.
///
/// ```
///  0   32 record header (magic "LPTR")
/// 32    4 owning inode
/// 36    1 level        1: entries are data units; k > 1: entries are level k-1 pointer blocks
/// 37   27 reserved
/// 64 4032 1 008 little-endian u32 entries (0 = hole)
/// ```
struct PointerBlock {
    static let entriesOffset = 64
    static let entries = (RecordHeader.sectorSize - entriesOffset) / 4

    let buffer: IOBuffer

    var owner: UInt32 { buffer.load(32) }
    var level: UInt8 { buffer.load(36) }

    static func initialize(_ b: IOBuffer, owner: UInt32, level: UInt8) {
        b.fill(0)
        b.store(owner, at: 32)
        b.store(level, at: 36)
    }

    func entry(_ i: Int) -> UInt32 { buffer.load(Self.entriesOffset + i * 4) }
    func setEntry(_ i: Int, _ v: UInt32) { buffer.store(v, at: Self.entriesOffset + i * 4) }
}
