import Dispatch
import LunarDisk
import LunarFS
import LunarIO
import Synchronization

/// One file the server offers, opened for the server's whole life (`Spec/export.md` §3): a
/// file of the volume, or a snapshot of a disk (`disk@SNAP`), which is the file LunarDisk keeps
/// it in (`Spec/disk.md`).
///
/// Read-only exports hold the file shared read-only: no host may write it meanwhile, so the
/// block map read once at open stays true, and reads go from it straight to the LUN through
/// LunarIO's reactor with no volume lock per request. Writable exports hold the file exclusive
/// and serve every request through the file API on one serial queue, so that a trim never frees
/// a block a read in flight still reads.
public final class ServedExport: Sendable {
    public let name: ExportName
    public let file: File
    public let size: UInt64
    public let writable: Bool
    /// The LUN and its sector size, for the direct read path.
    let device: BlockDevice?
    let sector: UInt64
    /// The file's map, for read-only exports of files with one (not stored inline).
    let map: ExtentMap?
    /// Where blocking file calls run, off the event loops.
    let worker: DispatchQueue
    /// The disk whose snapshots the export's changed blocks are counted from, and the snapshot
    /// the export is (nil: the disk as it is).
    let disk: VirtualDisk
    let snapshot: String?
    /// Where the snapshot record is read and changes are worked out, one at a time, so that a
    /// change list is computed once however many connections ask for it together.
    let metadata: DispatchQueue
    /// Change lists already worked out, by snapshot, with the snapshot's creation time: a
    /// snapshot deleted and taken again under the same name is another snapshot.
    private let changeCache = Mutex<[String: (created: Int64, changes: ChangeList)]>([:])

    /// Opens `name` on `volume`: shared read-only, or exclusive when `writable`. A file another
    /// host holds in a conflicting mode is refused with that host named; a snapshot is never
    /// opened writable, and one the disk does not have is refused naming the disk.
    public static func open(_ name: ExportName, on volume: Volume, writable: Bool) throws(ExportError) -> ServedExport {
        if case .snapshot = name, writable { throw ExportError(.snapshotWritable(name.description)) }
        let path = try filePath(of: name, on: volume)
        let file: File
        do throws(FSError) {
            file = try volume.openFile(path, lock: writable ? .exclusive : .sharedReadOnly)
        } catch {
            throw ExportError(.fileSystem(error))
        }
        do throws(FSError) {
            let size = try file.size
            var map: ExtentMap?
            let device = volume.device
            if !writable, device != nil {
                // A file stored inline in its inode has no map; it is read through the file API.
                map = (try? file.extents(0..<size)).map { ExtentMap($0) }
            }
            return ServedExport(name: name, file: file, size: size, writable: writable, device: device, map: map)
        } catch {
            try? file.close()
            throw ExportError(.fileSystem(error))
        }
    }

    /// The regular file of the volume that `name` is: the path itself, or for `disk@SNAP`
    /// the file LunarDisk keeps the snapshot in, once the disk's record names it.
    public static func filePath(of name: ExportName, on volume: Volume) throws(ExportError) -> String {
        try requireRegularFile(name.path, on: volume)
        guard case .snapshot(let diskPath, let snapshot) = name else { return name.path }
        let disk = VirtualDisk(volume, path: diskPath)
        guard try diskCall({ () throws(DiskError) -> Bool in try disk.tree().entry(snapshot) != nil }) else {
            throw ExportError(.unknownSnapshot(disk: diskPath, snapshot: snapshot))
        }
        let path = disk.snapshotPath(snapshot)
        try requireRegularFile(path, on: volume)
        return path
    }

    private static func requireRegularFile(_ path: String, on volume: Volume) throws(ExportError) {
        let isFile: Bool
        do throws(FSError) { isFile = try volume.stat(path).type == .file } catch { throw ExportError(.fileSystem(error)) }
        guard isFile else { throw ExportError(.notRegularFile(path)) }
    }

    private init(name: ExportName, file: File, size: UInt64, writable: Bool, device: BlockDevice?, map: ExtentMap?) {
        self.name = name
        self.file = file
        self.size = size
        self.writable = writable
        self.device = device
        self.sector = UInt64(device?.sectorSize ?? 4096)
        self.map = map
        worker = DispatchQueue(label: "lunar.export.\(name)")
        metadata = DispatchQueue(label: "lunar.export.metadata.\(name)")
        disk = VirtualDisk(file.volume, path: name.path)
        if case .snapshot(_, let snapshot) = name { self.snapshot = snapshot } else { self.snapshot = nil }
    }

    // MARK: changed blocks

    /// The snapshots `qemu:dirty-bitmap:SNAP` may name for this export, nearest first: the
    /// ones it descends from in the disk's tree (for the disk itself, from the snapshot it
    /// descends from now). Lineage, not creation time, says what is older: times come from
    /// the clocks of whichever hosts took the snapshots. A writable export offers none: its
    /// content changes under any list worked out at the start. Blocking: on `metadata`.
    func changeSources() throws(ExportError) -> [SnapshotTree.Entry] {
        guard !writable else { return [] }
        let tree = try diskCall { () throws(DiskError) -> SnapshotTree in try disk.tree() }
        var out: [SnapshotTree.Entry] = []
        // The record's reader refused parent loops, so the walk ends; the bound is a second
        // guard, not the first.
        var at: String?
        if let snapshot { at = tree.entry(snapshot)?.parent } else { at = tree.current }
        while let name = at, let entry = tree.entry(name), out.count < tree.entries.count {
            out.append(entry)
            at = entry.parent
        }
        let offered = out
        changeCache.withLock { cache in
            cache = cache.filter { name, cached in offered.contains { $0.name == name && $0.created == cached.created } }
        }
        return out
    }

    /// What differs from `source` (one of `changeSources`), worked out from the two block maps
    /// once and kept. Blocking: on `metadata`.
    func changes(since source: SnapshotTree.Entry) throws(ExportError) -> ChangeList {
        if let cached = changeCache.withLock({ $0[source.name] }), cached.created == source.created { return cached.changes }
        let ranges = try diskCall { () throws(DiskError) -> [Range<UInt64>] in try disk.changes(from: source.name, to: snapshot) }
        let changes = ChangeList(ranges, size: size)
        changeCache.withLock { $0[source.name] = (source.created, changes) }
        return changes
    }
    /// Releases the file's lock (after every request in flight on the worker finished).
    public func close() throws(FSError) {
        let result: Result<Void, FSError> = worker.sync {
            do throws(FSError) { try file.close(); return .success(()) } catch { return .failure(error) }
        }
        try result.get()
    }

    /// Bytes of data the export holds (the rest are holes).
    public func allocatedBytes() throws(FSError) -> UInt64 {
        if let map { return map.extents.reduce(0) { $0 + ($1.device == nil ? 0 : $1.upper - $1.lower) } }
        return try file.allocatedRanges().reduce(0) { $0 + UInt64($1.count) }
    }

    /// Why the map read at open can no longer be trusted, or nil: it is true only while this
    /// host's shared lock holds, and a host whose heartbeat stalled (or that was fenced) may
    /// have lost the lock to one that then wrote the file (`Spec/export.md` §4).
    var mapRefusal: String? {
        guard map != nil, let why = file.volume.writeRefusal else { return nil }
        return "this host lost its hold on the volume (\(why)); restart the server"
    }

    /// The pieces of `range`: data (true) or hole (false), from the map or, without one, from
    /// the file (blocking: on the worker).
    func pieces(_ range: Range<UInt64>) throws(FSError) -> [(range: Range<UInt64>, data: Bool)] {
        var out: [(range: Range<UInt64>, data: Bool)] = []
        if let map {
            _ = map.visit(range) { piece, device, _ in
                out.append((piece, device != nil))
                return true
            }
            return out
        }
        do {
            return try file.extents(range).map { ($0.range, $0.deviceOffset != nil) }
        } catch {
            // Stored inline in its inode: all of it is data.
            if case .invalidArgument = error.kind { return [(range, true)] }
            throw error
        }
    }

    /// The transmission flags this export is offered with (`Spec/export.md` §4).
    func transmissionFlags(structured: Bool) -> NBD.TransmissionFlags {
        var flags: NBD.TransmissionFlags = [.hasFlags, .sendFlush, .sendCache]
        if writable {
            flags.formUnion([.sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero])
        } else {
            // Nothing is cached and nothing changes: every connection sees the same bytes.
            flags.formUnion([.readOnly, .canMultiConn])
        }
        if structured { flags.insert(.sendDF) }
        return flags
    }
}

/// Runs a LunarDisk call, its error as an export error (a file-system one kept as such, so the
/// command line names the volume).
func diskCall<T>(_ body: () throws(DiskError) -> T) throws(ExportError) -> T {
    do throws(DiskError) {
        return try body()
    } catch {
        if case .fs(let fs) = error { throw ExportError(.fileSystem(fs)) }
        throw ExportError(.disk(error.description))
    }
}
