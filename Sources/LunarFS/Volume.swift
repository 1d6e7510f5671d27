import Dispatch
import LunarIO
import Synchronization

public enum FileType: String, Sendable, Codable {
    case file, directory
}

/// What `stat` says about a file or directory.
public struct FileInfo: Sendable, Equatable {
    public var inode: UInt32
    public var type: FileType
    /// Bytes of content (a directory: bytes of its entry storage).
    public var size: UInt64
    /// Bytes of volume space its data holds (thin files: less than `size`).
    public var allocatedBytes: UInt64
    public var mode: UInt32
    public var linkCount: UInt32
    public var created: Int64
    public var modified: Int64
    public var changed: Int64
    public var accessed: Int64
    /// Where the data lives: "inline", "small blocks" or "file blocks".
    public var storage: String
    public var unitSize: UInt64
}

public struct DirectoryItem: Sendable, Equatable {
    public var name: String
    public var inode: UInt32
    public var type: FileType
}

/// What a LUN holds, by its volume header sectors (`Volume.probe`).
public enum VolumeProbe: Sendable {
    /// Neither the first nor the last sector holds a LunarFS volume header.
    case none
    /// A LunarFS volume, described by its header (the backup copy if the primary is unusable).
    case volume(VolumeHeader)
    /// A volume header is there, but no copy of it can be used: damaged, or a newer format.
    case unreadable(FSError)

    /// What would be lost, for a refusal: "LunarFS volume UUID (label 'L')", or nil.
    public var summary: String? {
        switch self {
        case .none: nil
        case .volume(let h): "LunarFS volume \(h.uuid)" + (h.label.isEmpty ? "" : " (label '\(h.label)')")
        case .unreadable(let error): "damaged LunarFS volume (\(error))"
        }
    }
}

/// Space on a volume: what files could grow to, what they hold.
public struct VolumeUsage: Sendable {
    public struct Resource: Sendable {
        public var kind: ResourceKind
        public var total: UInt64
        public var free: UInt64
        public var unitSize: UInt64
    }
    public var resources: [Resource]
    /// Data capacity: file blocks plus small blocks, in bytes.
    public var capacityBytes: UInt64
    /// Bytes of data blocks in use.
    public var allocatedBytes: UInt64
    /// Sum of file sizes: what thin files have promised.
    public var provisionedBytes: UInt64
    public var files: UInt64
    public var directories: UInt64
}

extension VolumeHeader {
    /// The largest file the map of a file on this volume can address, in bytes.
    public var maxFileSize: UInt64 {
        let units = VolumeCore.capacity(height: InodeRecord.maxHeight)
        let (bytes, overflow) = units.multipliedReportingOverflow(by: UInt64(blockSize))
        return overflow ? UInt64.max : bytes
    }
}

/// A LunarFS volume opened by this process.
///
/// Calls are serialized by one lock: metadata calls do their own (blocking) I/O through the
/// journal, and data calls go straight to the device. Changes become durable on `sync()`,
/// `File.flush()`, `close()`, or when the running transaction grows large or 5 s old.
public final class Volume: @unchecked Sendable {
    public let header: VolumeHeader
    public let mountReport: MountReport
    public var path: String { core.storage.path }
    public var isReadOnly: Bool { core.isReadOnly }

    let core: VolumeCore
    private let lock = Mutex<Bool>(false)
    private let ownedDevice: (any BlockStorage)?
    private let lastCommit = Mutex<Double>(0)
    static let commitInterval = 5.0

    private let linger = LingerControl()
    /// The volume's write fence (nil on a read-only open), readable without the volume's lock.
    private let fence: FencedStorage?
    /// A failure of the background release of the metadata lock, reported by the next call.
    private let backgroundFailure = Mutex<FSError?>(nil)

    private init(core: VolumeCore, report: MountReport, ownedDevice: (any BlockStorage)?) {
        self.core = core
        self.header = core.header
        self.mountReport = report
        self.ownedDevice = ownedDevice
        fence = core.fence
        lastCommit.withLock { $0 = monotonicSeconds() }
        if let metadataLock = core.metadataLock { startLinger(metadataLock.linger) }
    }

    deinit {
        stopLinger()
        if !lock.withLock({ $0 }) { try? core.unmount() }
        ownedDevice?.closeStorage()
    }

    /// The thread that hands the metadata lock back once this host stops using it.
    private func startLinger(_ linger: Double) {
        let step = UInt32(MetadataLock.lookEvery(linger: linger) * 1_000_000)
        let started = startThread { [weak self, linger = self.linger] in
            linger.thread.store(UInt(pthread_self()), ordering: .relaxed)
            defer { linger.done.signal() }
            while !linger.stop.load(ordering: .relaxed) {
                // While calls keep coming, each looks on its way out (`locked`), and the thread
                // stays off the volume's lock, which would only make the next call wait.
                if linger.callEnded(within: Double(step) / 1e6) {
                    usleep(step)
                    continue
                }
                // Holding the lock, it looks every step (for the linger's end and for hosts
                // that knock); not holding it, only the sweep for dead hosts is due, and it
                // sleeps until then unless the lock is taken meanwhile.
                linger.dozing.store(true, ordering: .sequentiallyConsistent)
                // No reference to the volume is kept while it sleeps.
                guard let idleFor = self.map({ $0.secondsUntilSweep() }) else { return }
                linger.pause(idleFor, step: step)
                guard let volume = self else { return }
                volume.releaseIfIdle()
            }
        }
        switch started {
        case .success(let thread): pthread_detach(thread)
        // Without the thread the lock is still handed back, at close; say nothing is waiting.
        case .failure: self.linger.done.signal()
        }
    }

    /// While the metadata lock is not held: how long until the next sweep for dead hosts is
    /// due. Nil while it is held.
    private func secondsUntilSweep() -> Double? {
        lock.withLock { _ in core.metadataLock.flatMap { $0.held == nil ? $0.secondsUntilSweep(now: monotonicSeconds()) : nil } }
    }

    private func stopLinger() {
        guard core.metadataLock != nil, !linger.stop.exchange(true, ordering: .relaxed) else { return }
        linger.rouse()
        // The last reference may go on the linger thread itself, which then must not wait for itself.
        if linger.thread.load(ordering: .relaxed) == UInt(pthread_self()) { return }
        linger.done.wait()
    }

    private func releaseIfIdle() {
        if let metadataLock = core.metadataLock, linger.callEnded(within: metadataLock.lookEvery) { return }
        lock.withLock { (closed: inout Bool) -> Void in
            guard !closed, let metadataLock = core.metadataLock else { return }
            look(metadataLock, now: monotonicSeconds())
        }
    }

    /// Under the volume's lock, between calls: sweeps for dead hosts when that is due, and
    /// hands the metadata lock back when this host has been idle long enough, held it long
    /// enough, or another host asks for it. A failure is reported by the next call.
    private func look(_ metadataLock: MetadataLock, now: Double) {
        metadataLock.lastLook = now
        do throws(FSError) {
            if metadataLock.sweepDue(now: now) { try core.sweepDeadHosts() }
            guard metadataLock.releaseDue(now: now) else { return }
            try core.leaveMetadata()
            lastCommit.withLock { $0 = monotonicSeconds() }
        } catch {
            backgroundFailure.withLock { $0 = error }
        }
    }

    /// Why this host may not write to the volume now, or nil. Hot paths that write a file's
    /// blocks through their own queue (`File.extents`) ask before every write, as the volume's
    /// own writes do: a host that was fenced (its slot claimed by a host that judged it dead)
    /// or whose heartbeat is too old writes nothing more.
    public var writeRefusal: String? { fence?.refusal() }

    /// Hands the metadata lock back now rather than when idle (commits first): before a long
    /// pause, or to measure the lock.
    public func relinquishMetadataLock() throws(FSError) {
        try lock.withLock { (closed: inout Bool) throws(FSError) -> Void in
            guard !closed else { return }
            try core.leaveMetadata()
        }
    }

    /// The host slots this host recovered since it opened the volume (their journals
    /// replayed), at open or later, when something a dead host held was wanted.
    public var recoveredSlots: [UInt32] {
        lock.withLock { _ in core.metadataLock?.recovery.recoveredSlots ?? [] }
    }

    /// How this host has used the metadata lock so far (nil on a read-only open).
    public var metadataLockStatistics: MetadataLockStatistics? {
        lock.withLock { _ in core.metadataLock?.statistics }
    }

    // MARK: making and opening

    /// Lays out an empty volume on `storage` (everything on it is lost).
    @discardableResult
    public static func format(_ storage: any BlockStorage, options: FormatOptions = FormatOptions()) throws(FSError) -> VolumeHeader {
        try Formatter.format(storage, options: options)
    }

    /// Formats the image file, block device or iSCSI LUN (`iscsi://...`) at `path`; an image file that does not exist is
    /// created, sparse, with `size` bytes.
    @discardableResult
    public static func format(path: String, size: UInt64? = nil, options: FormatOptions = FormatOptions(),
                              deviceOptions: BlockDevice.Options = BlockDevice.Options()) throws(FSError) -> VolumeHeader {
        let device: any BlockStorage
        let creating = size != nil && !ISCSILun.isURL(path) && !fileExists(path)
        // A size no volume can have is refused before an image file is made for it.
        if let size, creating {
            do throws(FSError) { _ = try plan(size: size, options: options) } catch { throw error.at(path) }
        }
        do {
            if let size, creating {
                device = try BlockDevice.createImage(path, size: size, options: deviceOptions)
            } else {
                device = try openStorage(path, options: deviceOptions)
            }
        } catch {
            throw FSError(.io(error), path: path)
        }
        defer { device.closeStorage() }
        do throws(FSError) {
            if let size, device.size < size, let image = device as? BlockDevice, !image.isBlockDevice {
                throw FSError(.invalidArgument("\(path) exists and holds \(device.size) bytes, less than the \(size) asked"), path: path)
            }
            return try format(device, options: options)
        } catch {
            // Leave nothing behind that the failed mkfs made.
            if creating { unlink(path) }
            throw error.at(path)
        }
    }

    /// What `storage` holds as far as its volume header sectors tell (the first, and the backup
    /// in the last): for commands that would destroy a volume to refuse without being forced.
    public static func probe(_ storage: any BlockStorage) throws(FSError) -> VolumeProbe {
        do {
            return .volume(try Formatter.readHeader(storage).header)
        } catch {
            switch error.kind {
            case .notLunarFS: return .none
            case .io: throw error
            default: return .unreadable(error)
            }
        }
    }

    /// `probe` of the image file, block device or iSCSI LUN at `path`, opened read-only.
    public static func probe(path: String) throws(FSError) -> VolumeProbe {
        let device: any BlockStorage
        do { device = try openStorage(path, options: .init(readOnly: true)) } catch { throw FSError(.io(error), path: path) }
        defer { device.closeStorage() }
        do { return try probe(device) } catch { throw error.at(path) }
    }

    /// The layout mkfs would give a device of `size` bytes, without touching one.
    public static func plan(size: UInt64, options: FormatOptions = FormatOptions()) throws(FSError) -> VolumeHeader {
        try Geometry.layout(volumeSize: size, options: options)
    }

    public static func open(_ storage: any BlockStorage, options: OpenOptions = OpenOptions()) throws(FSError) -> Volume {
        let (core, report) = try VolumeCore.mount(storage, options: options)
        return Volume(core: core, report: report, ownedDevice: nil)
    }

    public static func open(path: String, options: OpenOptions = OpenOptions(),
                            deviceOptions: BlockDevice.Options = BlockDevice.Options()) throws(FSError) -> Volume {
        var deviceOptions = deviceOptions
        deviceOptions.readOnly = deviceOptions.readOnly || options.readOnly
        let device: any BlockStorage
        do { device = try openStorage(path, options: deviceOptions) } catch { throw FSError(.io(error), path: path) }
        do {
            let (core, report) = try VolumeCore.mount(device, options: options)
            return Volume(core: core, report: report, ownedDevice: device)
        } catch {
            device.closeStorage()
            throw error.at(path)
        }
    }

    /// Opens the volume on `path`, runs `body`, and closes it: closing is what commits the last
    /// changes, so it happens on success and failure alike. FSErrors come out naming the path
    /// inside the volume as a user writes it, `LUN:/path` (`FSError.naming`).
    public static func withOpen<T>(path: String, options: OpenOptions, _ body: (Volume) throws -> T) throws -> T {
        let volume: Volume
        do throws(FSError) {
            volume = try open(path: path, options: options)
        } catch {
            throw error.naming(path)
        }
        let result: T
        do {
            result = try body(volume)
        } catch let error as FSError {
            try? volume.close()
            throw error.naming(path)
        } catch {
            try? volume.close()
            throw error
        }
        do throws(FSError) {
            try volume.close()
        } catch {
            throw error.naming(path)
        }
        return result
    }

    /// Commits, lets go of the volume. Later calls fail.
    public func close() throws(FSError) {
        stopLinger()
        try lock.withLock { (closed: inout Bool) throws(FSError) -> Void in
            guard !closed else { return }
            closed = true
            try core.unmount()
        }
    }

    // MARK: serialization

    /// Runs `body` under the metadata lock taken for `access`. A shared call that meets a
    /// finer lock another host holds runs again, from the start, under the exclusive lock.
    func locked<T>(_ path: String? = nil, access: MetadataAccess = .exclusive,
                   _ body: (VolumeCore) throws(FSError) -> T) throws(FSError) -> T {
        do {
            return try lock.withLock { (closed: inout Bool) throws(FSError) -> T in
                guard !closed else { throw FSError(.invalidArgument("volume is closed")) }
                if let failure = backgroundFailure.withLock({ $0 }) { throw failure }
                try core.enterMetadata(access)
                linger.rouse()
                // Idle time counts from the end of a call: a call that took long (a commit) is
                // no sign that the host stopped working on metadata. A busy host looks for
                // hosts waiting on its way out of a call, every `lookEvery`.
                defer {
                    let now = monotonicSeconds()
                    linger.lastCallEnd.store(now.bitPattern, ordering: .relaxed)
                    if let metadataLock = core.metadataLock {
                        metadataLock.lastUse = now
                        if now - metadataLock.lastLook >= metadataLock.lookEvery { look(metadataLock, now: now) }
                    }
                }
                do throws(FSError) {
                    let result = try body(core)
                    try core.validateReads()
                    return result
                } catch {
                    core.knownNames.forgetAll()
                    guard access == .shared, case .lockConflict = error.kind else { throw error }
                    core.metadataLock?.noteRetriedExclusive()
                    try core.enterMetadata(.exclusive)
                    return try body(core)
                }
            }
        } catch {
            throw path.map { error.at($0) } ?? error
        }
    }

    /// One all-or-nothing change.
    func change<T>(_ path: String? = nil, access: MetadataAccess = .exclusive,
                   _ body: (VolumeCore) throws(FSError) -> T) throws(FSError) -> T {
        func attempt() throws(FSError) -> T {
            try locked(path, access: access) { (core) throws(FSError) -> T in
                guard !core.isReadOnly else { throw FSError(.readOnly) }
                // Checked inside the operation, so that a torn read undoes what it led to.
                return try core.store.operation { () throws(FSError) -> T in
                    let result = try body(core)
                    try core.validateReads()
                    return result
                }
            }
        }
        let result: T
        do {
            result = try attempt()
        } catch {
            // Space freed by changes not yet committed is handed out only after their commit
            // (format.md §9.4): commit them, and try once more before saying the volume is full.
            guard case .noSpace = error.kind, (try? locked(access: .shared, { (core) throws(FSError) -> Bool in core.store.holdsFreesForCommit })) == true else {
                throw error
            }
            try commit(flushingData: false)
            result = try attempt()
        }
        let due = lastCommit.withLock { monotonicSeconds() - $0 >= Self.commitInterval }
        if due { try commit(flushingData: false) }
        return result
    }

    /// Makes every change so far durable, file data included: a commit flushes the LUN before
    /// its journal record, and with nothing to commit the LUN is flushed all the same (data
    /// overwritten in allocated blocks changes no metadata, and an iSCSI target may hold it in
    /// its cache until SYNCHRONIZE CACHE).
    public func sync() throws(FSError) { try commit(flushingData: true) }

    private func commit(flushingData: Bool) throws(FSError) {
        try locked(access: .shared) { (core) throws(FSError) -> Void in
            guard !core.isReadOnly else { return }
            if core.store.hasChanges || !flushingData {
                try core.store.commit()
            } else {
                try core.store.flushData()
            }
        }
        lastCommit.withLock { $0 = monotonicSeconds() }
    }

    // MARK: the tree

    public func stat(_ path: String) throws(FSError) -> FileInfo {
        try locked(path, access: .shared) { (core) throws(FSError) -> FileInfo in
            let n = try core.resolve(path)
            // Under a shared hold, a file another host holds may have changed since cached.
            if core.holdsShared, core.fileLocks[n]?.mode != .exclusive { core.store.forget(core.inodeOffset(n)) }
            return try core.info(n)
        }
    }

    public func exists(_ path: String) throws(FSError) -> Bool {
        do {
            _ = try stat(path)
            return true
        } catch where error.kind == .notFound {
            return false
        }
    }

    public func list(_ path: String = "/") throws(FSError) -> [DirectoryItem] {
        try locked(path, access: .shared) { (core) throws(FSError) -> [DirectoryItem] in
            let dir = try core.resolve(path)
            return try core.entries(dir).map {
                DirectoryItem(name: String(decoding: $0.name, as: UTF8.self), inode: $0.inode, type: $0.type == .directory ? .directory : .file)
            }.sorted { $0.name < $1.name }
        }
    }

    /// Makes a directory; with `parents`, also every missing one above it, and an existing
    /// directory is no error.
    public func mkdir(_ path: String, mode: UInt32 = 0o755, parents: Bool = false) throws(FSError) {
        if parents {
            var prefix = ""
            for part in VolumeCore.components(path) {
                prefix += "/" + String(decoding: part, as: UTF8.self)
                let current = prefix
                if let info = try? stat(current) {
                    guard info.type == .directory else { throw FSError(.notDirectory, path: current) }
                    continue
                }
                try change(current, access: .shared) { (core) throws(FSError) -> Void in
                    let (dir, name) = try core.resolveParent(current, forWriting: true)
                    _ = try core.createNode(in: dir, name: name, type: .directory, mode: mode)
                }
            }
            return
        }
        try change(path, access: .shared) { (core) throws(FSError) -> Void in
            let (dir, name) = try core.resolveParent(path, forWriting: true)
            _ = try core.createNode(in: dir, name: name, type: .directory, mode: mode)
        }
    }

    /// Creates an empty file (`exclusive`: failing if it exists) or opens the existing one,
    /// holding it with `lock` (see `openFile`).
    public func create(_ path: String, mode: UInt32 = 0o644, exclusive: Bool = false,
                       lock: FileLockMode? = .exclusive, wait: Double = 0) throws(FSError) -> File {
        let lockMode = isReadOnly ? nil : lock
        // Made and locked in one call: a file this call creates is born locked (in the same
        // transaction); only an existing file another host holds needs the waiting loop.
        let (n, reuse, blocker) = try change(path, access: .shared) { (core) throws(FSError) -> (UInt32, UInt32, LockHolder?) in
            let (dir, name) = try core.resolveParent(path, forWriting: true)
            let n: UInt32
            if let e = try core.lookup(dir, name) {
                if exclusive { throw FSError(.exists) }
                guard e.type == .regular else { throw FSError(.isDirectory) }
                n = e.inode
            } else {
                n = try core.createNode(in: dir, name: name, type: .regular, mode: mode)
            }
            let reuse = try core.inode(n).reuseGeneration
            // Last: a lock taken by compare-and-write is not undone if the call fails after it
            // (so the directories read are checked first).
            try core.validateReads()
            let blocker = try lockMode.flatMap { (m) throws(FSError) -> LockHolder? in try core.lockFile(n, m) }
            return (n, reuse, blocker)
        }
        guard blocker != nil else { return File(volume: self, inode: n, reuseGeneration: reuse, path: path, lockMode: lockMode) }
        return try handle(path, lock: lock, wait: wait)
    }

    /// Opens a regular file, taking its on-disk lock in `lock` mode (nil: no lock, for tools
    /// that only look). A file another live host holds in a conflicting mode is refused with
    /// an error naming that host, after waiting up to `wait` seconds for it to let go; a dead
    /// holder is recovered and its lock broken. Several handles of one process share its lock;
    /// the last `close` releases it. On a read-only open there are no locks.
    public func openFile(_ path: String, lock: FileLockMode? = .exclusive, wait: Double = 0) throws(FSError) -> File {
        try handle(path, lock: lock, wait: wait)
    }

    private func handle(_ path: String, lock mode: FileLockMode?, wait: Double) throws(FSError) -> File {
        let started = monotonicSeconds()
        var deadline = started + wait
        let lockMode = isReadOnly ? nil : mode
        while true {
            let (n, reuse, blocker) = try locked(path, access: .shared) { (core) throws(FSError) -> (UInt32, UInt32, LockHolder?) in
                let n = try core.resolve(path)
                let ino = try core.inode(n)
                guard ino.type == .regular else { throw FSError(.isDirectory) }
                try core.validateReads()
                let blocker = try lockMode.flatMap { (m) throws(FSError) -> LockHolder? in try core.lockFile(n, m) }
                return (n, ino.reuseGeneration, blocker)
            }
            guard let blocker, let lockMode else { return File(volume: self, inode: n, reuseGeneration: reuse, path: path, lockMode: lockMode) }
            // Before saying no, watch a holder elsewhere for one of its heartbeats, so the
            // error can tell whether it is alive.
            if case .held(let holder, .unknown) = blocker {
                let interval = holder.intervalMillis > 0 ? Double(holder.intervalMillis) / 1000 : 3
                deadline = max(deadline, started + min(interval * 1.5, 10))
            }
            if monotonicSeconds() >= deadline {
                let waited = wait > 0 ? " (waited \(wait) s)" : ""
                throw FSError(.busy("cannot open it \(lockMode.rawValue): it is held by \(blocker.description)\(waited); close it there, or wait for it"), path: path)
            }
            usleep(50_000)
        }
    }

    /// Lets go of one handle's hold on inode `n`.
    func releaseFileLock(_ n: UInt32) throws(FSError) {
        try locked(access: .shared) { (core) throws(FSError) -> Void in try core.unlockFile(n) }
    }

    /// Atomically renames; an existing target file (or empty directory) is replaced.
    public func rename(_ from: String, to: String) throws(FSError) {
        try change(from) { (core) throws(FSError) -> Void in try core.rename(from, to) }
    }

    /// Makes `target` a new file with `source`'s content that shares its blocks (format 2): made
    /// in constant time whatever the size; a later write to either copies only what it
    /// changes, 64 KiB at most per write. The base of snapshots and linked clones.
    /// `replacing`: a file at `target` is replaced in the same transaction (a revert: the disk
    /// becomes its snapshot again, never neither). `renaming`: a rename made in that
    /// transaction too (a revert's new snapshot record put in place with the disk).
    public func clone(_ source: String, to target: String, replacing: Bool = false,
                      renaming rename: (from: String, to: String)? = nil) throws(FSError) {
        try change(target) { (core) throws(FSError) -> Void in
            let n = try core.resolve(source)
            let (dir, name) = try core.resolveParent(target, forWriting: true)
            let existing = try core.lookup(dir, name)
            if let existing {
                guard replacing, existing.type != .directory, existing.inode != n else { throw FSError(.exists) }
                _ = try core.removeEntry(dir, name)
            }
            _ = try core.cloneFile(n, into: dir, name: name)
            if let rename { try core.rename(rename.from, rename.to) }
            // Last: freeing a large file commits along the way (flagged orphan, which fsck
            // finishes after a crash), and each of those commits must find the clone in place.
            if let existing { try core.destroyNode(existing.inode) }
        }
    }

    /// Bytes of `path`'s data, and of them the bytes no other file shares (what removing it
    /// would give back), in its units.
    public func sharing(of path: String) throws(FSError) -> (allocated: UInt64, unique: UInt64) {
        try locked(path) { (core) throws(FSError) -> (allocated: UInt64, unique: UInt64) in
            let n = try core.resolve(path)
            let (mapped, alone) = try core.grainUsage(n)
            let unit = core.unitSize(try core.inode(n))
            return (mapped * unit, alone * unit)
        }
    }

    /// Where `newer` differs from `older` (a disk and its snapshot, two snapshots, a clone):
    /// byte ranges, in 64 KiB grains, found from the block maps alone — the cost follows what
    /// changed, and the answer holds after any crash, as the maps do.
    public func changedRanges(from older: String, to newer: String) throws(FSError) -> [Range<UInt64>] {
        // Exclusive: another host writing one of them has its map in place before it is read.
        try locked(newer) { (core) throws(FSError) -> [Range<UInt64>] in
            try core.changedRanges(from: try core.resolve(older), to: try core.resolve(newer))
        }
    }

    /// Removes a file or an empty directory; `recursive` removes a directory with its content,
    /// one entry per transaction.
    public func remove(_ path: String, recursive: Bool = false) throws(FSError) {
        if recursive, try stat(path).type == .directory {
            for item in try list(path) {
                try remove(path + "/" + item.name, recursive: true)
            }
        }
        try change(path) { (core) throws(FSError) -> Void in try core.removeNode(path) }
    }

    public func usage() throws(FSError) -> VolumeUsage {
        try locked { (core) throws(FSError) -> VolumeUsage in try core.usage() }
    }
}

private final class LingerControl: Sendable {
    let stop = Atomic<Bool>(false)
    /// The linger thread's pthread_self, set by the thread as it starts.
    let thread = Atomic<UInt>(0)
    let done = DispatchSemaphore(value: 0)
    /// Set by the thread before it looks whether the lock is held; whoever then takes the
    /// lock (or stops the thread) wakes it, so a long sleep never outlasts a hold.
    let dozing = Atomic<Bool>(false)
    /// When the last call into the volume ended: `monotonicSeconds()`'s bit pattern.
    let lastCallEnd = Atomic<UInt64>(0)

    func callEnded(within seconds: Double) -> Bool {
        monotonicSeconds() - Double(bitPattern: lastCallEnd.load(ordering: .relaxed)) < seconds
    }
    private let wake = DispatchSemaphore(value: 0)

    /// Sleeps `seconds` if given and longer than a step (woken early by `rouse`), else a step.
    func pause(_ seconds: Double?, step: UInt32) {
        if let seconds, seconds > Double(step) / 1e6, !stop.load(ordering: .relaxed) {
            _ = wake.wait(timeout: .now() + seconds)
        } else {
            dozing.store(false, ordering: .sequentiallyConsistent)
            usleep(step)
        }
    }

    func rouse() {
        if dozing.exchange(false, ordering: .sequentiallyConsistent) { wake.signal() }
    }
}

/// Whether `path` names a file (a dangling symbolic link does not: its target is yet to be made).
private func fileExists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0
}

#if canImport(Glibc)
import Glibc
#endif
