import LunarIO

/// The mounted state of one volume in this process. Not thread-safe by itself: `Volume`
/// serializes every call into it.
final class VolumeCore {
    let storage: any BlockStorage
    let header: VolumeHeader
    let store: MetadataStore
    /// The host slot this process holds (or, read-only, a placeholder it does not write).
    let slot: UInt32
    let isReadOnly: Bool
    var cursors = AllocationCursors()
    /// Read-write opens: the lock this host takes to work on metadata.
    var metadataLock: MetadataLock?
    /// Files this process holds open, by inode.
    var fileLocks: [UInt32: HeldFileLock] = [:]
    /// A shared hold's directory locks (exclusive), by inode.
    var heldDirectories: Set<UInt32> = []
    /// Directories the running call read without a lock, with the lock stamp they had.
    var directoryReads: [UInt32: LockStamp] = [:]
    /// Inodes whose file this shared hold changed (inode or map) since the journal was last
    /// emptied: their lock may go back only after a checkpoint.
    var modifiedInHold: Set<UInt32> = []
    /// Inodes allocated during the current shared hold.
    var createdInHold: Set<UInt32> = []
    /// A shared hold's resource clusters, by kind.
    var heldClusters: [ResourceKind: [Int]] = [:]
    /// The lock stamp under which what this host caches of a directory or a file is known
    /// current (the one it wrote when it let go of the lock, or saw when it read the
    /// directory): finding it unchanged under a shared hold means nobody else changed it since.
    var knownStamps: [UInt32: LockStamp] = [:]
    var knownNames = KnownNames()
    var heartbeat: Heartbeat?
    var fence: FencedStorage?

    init(storage: any BlockStorage, header: VolumeHeader, store: MetadataStore, slot: UInt32, isReadOnly: Bool) {
        self.storage = storage
        self.header = header
        self.store = store
        self.slot = slot
        self.isReadOnly = isReadOnly
        store.applyFrees = { [unowned self] frees throws(FSError) in try self.applyFrees(frees) }
        store.releaseFreedSpace = { [unowned self] frees in self.releaseFreedSpace(frees) }
        store.validate = { [header] kind, b, offset in
            guard kind == .inode, offset >= header.inodes.dataOffset else { return nil }
            let ino = InodeRecord(buffer: b)
            let n = UInt32(truncatingIfNeeded: (offset - header.inodes.dataOffset) / UInt64(RecordHeader.sectorSize))
            if ino.type != .free, ino.storage == .grains, !header.sharedBlocks { return "grain map on a volume without shared blocks (format 1)" }
            return ino.problem(expectedNumber: n) ?? ino.fieldProblems(on: header).first?.reason
        }
        store.clusterSector = { [header] kind, index in
            let area = header.area(kind)
            return area.clusterOffset(area.cluster(of: index))
        }
    }

    var sectorSize: UInt64 { UInt64(RecordHeader.sectorSize) }

    // MARK: inodes

    func inodeOffset(_ n: UInt32) -> UInt64 { header.inodes.offset(of: UInt64(n)) }

    func checkInodeNumber(_ n: UInt32, referencedFrom what: String, at offset: UInt64) throws(FSError) {
        guard n > 0, UInt64(n) < header.inodes.count else {
            throw .corrupt(what, at: offset, "refers to inode \(n), outside the inode area")
        }
    }

    /// A live inode, verified.
    func inode(_ n: UInt32) throws(FSError) -> InodeRecord {
        guard n > 0, UInt64(n) < header.inodes.count else { throw FSError(.notFound) }
        let offset = inodeOffset(n)
        let ino = InodeRecord(buffer: try store.read(offset, .inode))
        try check(ino, n, offset)
        return ino
    }

    func modifyInode(_ n: UInt32) throws(FSError) -> InodeRecord {
        if holdsShared { modifiedInHold.insert(n) }
        let offset = inodeOffset(n)
        let ino = InodeRecord(buffer: try store.modify(offset, .inode))
        try check(ino, n, offset)
        return ino
    }

    private func check(_ ino: InodeRecord, _ n: UInt32, _ offset: UInt64) throws(FSError) {
        if let problem = ino.problem(expectedNumber: n) { throw .corrupt(RecordKind.inode.name, at: offset, problem) }
        guard ino.type != .free else { throw .corrupt(RecordKind.inode.name, at: offset, "inode \(n) is referenced but free") }
    }

    /// Allocates and initializes an inode.
    func allocateInode(type: InodeRecord.FileType, mode: UInt32, parent: UInt32) throws(FSError) -> InodeRecord {
        var n: UInt32
        var offset: UInt64
        var raw: IOBuffer
        while true {
            n = UInt32(try allocate(.inode))
            if holdsShared { createdInHold.insert(n) }
            offset = inodeOffset(n)
            // Under a shared hold another host may have used and freed it since it was cached.
            if holdsShared { store.forget(offset) }
            raw = try store.readRaw(offset)
            // A bit found clear over a sound inode in use is a lost bitmap write, not a free
            // inode: the bit stays set (as it should have been) and the next one is tried, so
            // a live file is never overwritten. fsck finds nothing amiss in that bit after.
            let inUse = raw.problem(as: .inode, at: offset) == nil && InodeRecord(buffer: raw).problem(expectedNumber: n) == nil
                && InodeRecord(buffer: raw).type != .free
            if !inUse { break }
        }
        // A never-used inode sector holds zeros (or a previous volume's bytes): start afresh
        // unless it holds a sound free inode whose reuse generation should carry on.
        let b: IOBuffer
        if raw.problem(as: .inode, at: offset) == nil, store.validate?(.inode, raw, offset) == nil {
            b = try store.modify(offset, .inode)
        } else {
            b = try store.create(offset, .inode)
        }
        let ino = InodeRecord(buffer: b)
        ino.initialize(number: n, type: type, mode: mode, parent: parent, now: wallClockNanoseconds())
        return ino
    }

    /// Marks an inode free (its map must already be empty) and frees its number at commit.
    func releaseInode(_ n: UInt32) throws(FSError) {
        let ino = try modifyInode(n)
        let reuse = ino.reuseGeneration
        ino.buffer.slice(32..<RecordHeader.sectorSize).initializeMemory(as: UInt8.self, repeating: 0)
        ino.reuseGeneration = reuse
        ino.number = n
        LockRecord.free.encode(into: ino.buffer, at: InodeRecord.lockOffset)
        try freeAtCommit(.inode, UInt64(n))
    }
}
