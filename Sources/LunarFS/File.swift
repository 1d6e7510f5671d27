import LunarIO
import Synchronization

/// An open regular file of a volume. Offsets and lengths are bytes; aligned requests
/// (4 KiB-aligned offset, length and buffer) go to the device without a copy.
public final class File: Sendable {
    public let volume: Volume
    public let inode: UInt32
    public let path: String
    let reuseGeneration: UInt32
    /// How this handle holds the file on disk (nil: not at all, a read-only volume or a look).
    public let lockMode: FileLockMode?
    private let closed = Atomic<Bool>(false)

    init(volume: Volume, inode: UInt32, reuseGeneration: UInt32, path: String, lockMode: FileLockMode?) {
        self.volume = volume
        self.inode = inode
        self.reuseGeneration = reuseGeneration
        self.path = path
        self.lockMode = lockMode
    }

    deinit {
        if lockMode != nil, !closed.load(ordering: .relaxed) { try? volume.releaseFileLock(inode) }
    }

    /// Releases this handle's hold on the file (the lock goes with the process's last handle).
    /// Later calls through this handle fail.
    public func close() throws(FSError) {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        if lockMode != nil { try volume.releaseFileLock(inode) }
    }

    /// A handle that holds its file exclusive works under the shared metadata lock: the file
    /// lock keeps every other host off the file's inode and map, and allocation comes from
    /// this host's own clusters. Other handles need the metadata lock exclusive.
    private var access: MetadataAccess { lockMode == .exclusive ? .shared : .exclusive }

    private func checked(_ core: VolumeCore) throws(FSError) -> UInt32 {
        guard !closed.load(ordering: .relaxed) else { throw FSError(.invalidArgument("file handle is closed")) }
        guard let ino = try? core.inode(inode), ino.reuseGeneration == reuseGeneration else {
            throw FSError(.notFound) // removed since it was opened
        }
        return inode
    }

    private func writable(_ core: VolumeCore) throws(FSError) -> UInt32 {
        if let lockMode, !lockMode.allowsWrites { throw FSError(.readOnly) }
        return try checked(core)
    }

    public var size: UInt64 {
        get throws(FSError) { try stat().size }
    }

    public func stat() throws(FSError) -> FileInfo {
        try volume.locked(path, access: access) { (core) throws(FSError) -> FileInfo in try core.info(try checked(core)) }
    }

    /// Reads up to `buffer.count` bytes at `offset`; returns the count (short at end of file).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(FSError) -> Int {
        try volume.locked(path, access: access) { (core) throws(FSError) -> Int in try core.read(try checked(core), at: offset, into: buffer) }
    }

    public func read(into buffer: IOBuffer, at offset: UInt64) throws(FSError) -> Int {
        try read(into: buffer.bytes, at: offset)
    }

    /// Reads `count` bytes at `offset` (fewer at end of file).
    public func read(at offset: UInt64, count: Int) throws(FSError) -> [UInt8] {
        let b = IOBuffer(count: count)
        let n = try read(into: b.bytes, at: offset)
        return Array(b.bytes[0..<n])
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(FSError) {
        try volume.change(path, access: access) { (core) throws(FSError) -> Void in try core.write(try writable(core), at: offset, from: data) }
    }

    public func write(_ buffer: IOBuffer, at offset: UInt64, count: Int? = nil) throws(FSError) {
        try write(UnsafeRawBufferPointer(buffer.slice(0..<(count ?? buffer.count))), at: offset)
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws(FSError) {
        try withBytes(bytes) { (b) throws(FSError) in try write(b, at: offset) }
    }

    /// Makes this file's data and every metadata change so far durable.
    public func flush() throws(FSError) { try volume.sync() }

    public func truncate(to size: UInt64) throws(FSError) {
        try volume.change(path, access: access) { (core) throws(FSError) -> Void in try core.truncate(try writable(core), to: size) }
    }

    /// Makes the range read as zeros and frees the whole blocks inside it.
    public func discard(at offset: UInt64, length: UInt64) throws(FSError) {
        try volume.change(path, access: access) { (core) throws(FSError) -> Void in try core.discard(try writable(core), at: offset, length: length) }
    }

    /// Byte ranges that hold data; the rest of the file is holes.
    public func allocatedRanges() throws(FSError) -> [Range<UInt64>] {
        try volume.locked(path, access: access) { (core) throws(FSError) -> [Range<UInt64>] in try core.allocatedRanges(try checked(core)) }
    }

    /// Where `range` lives on the volume's device: pieces of the file range with their device
    /// offset, nil for holes, and whether another file (a snapshot, a clone) shares the piece:
    /// such a piece may be read in place but is written only through `write`, which copies it
    /// first. Valid until the file's map changes (a write into a hole or a shared piece,
    /// truncate, discard): for hot paths that drive their own `IOQueue`.
    public func extents(_ range: Range<UInt64>) throws(FSError) -> [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)] {
        try volume.locked(path, access: access) { (core) throws(FSError) -> [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)] in
            try core.extents(try checked(core), range).map { (range: $0.0, deviceOffset: $0.1, shared: $0.2) }
        }
    }
}

extension VolumeCore {
    func info(_ n: UInt32) throws(FSError) -> FileInfo {
        let ino = try inode(n)
        let storage = ino.storage ?? .inline
        let unit: UInt64 = storage == .inline ? 0 : unitSize(ino)
        return FileInfo(
            inode: n, type: ino.type == .directory ? .directory : .file, size: ino.size,
            allocatedBytes: ino.allocatedUnits * unit, mode: ino.mode, linkCount: ino.linkCount,
            created: ino.btime, modified: ino.mtime, changed: ino.ctime, accessed: ino.atime,
            storage: storage.name, unitSize: unit)
    }

    func usage() throws(FSError) -> VolumeUsage {
        var resources: [VolumeUsage.Resource] = []
        for kind in ResourceKind.allCases {
            let (free, total) = try resourceUsage(kind)
            resources.append(.init(kind: kind, total: total, free: free, unitSize: UInt64(header.area(kind).resourceSize)))
        }
        var provisioned: UInt64 = 0
        var files: UInt64 = 0, directories: UInt64 = 0
        let area = header.inodes
        for c in 0..<area.clusterCount {
            let cluster = try clusterHeader(.inode, c, forWriting: false)
            if cluster.freeCount == cluster.resourceCount { continue }
            for bit in 0..<Int(cluster.resourceCount) where cluster.isUsed(bit) {
                let n = UInt32(cluster.firstResource + UInt64(bit))
                guard n != 0 else { continue }
                let ino = try inode(n)
                if ino.type == .directory {
                    directories += 1
                } else {
                    files += 1
                    // Thin files may promise more than 2^64 bytes between them.
                    let (sum, overflow) = provisioned.addingReportingOverflow(ino.size)
                    provisioned = overflow ? .max : sum
                }
            }
        }
        let data = resources.filter { $0.kind == .fileBlock || $0.kind == .smallBlock }
        return VolumeUsage(
            resources: resources,
            capacityBytes: data.reduce(0) { $0 + $1.total * $1.unitSize },
            allocatedBytes: data.reduce(0) { $0 + ($1.total - $1.free) * $1.unitSize },
            provisionedBytes: provisioned, files: files, directories: directories)
    }
}
