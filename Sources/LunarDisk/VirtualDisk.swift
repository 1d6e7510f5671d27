import LunarFS

/// Why a disk operation failed, in words that say what to do next.
public enum DiskError: Error, CustomStringConvertible, Sendable {
    case invalidArgument(String)
    /// A disk's snapshot record or snapshot files disagree with each other.
    case damaged(String)
    case fs(FSError)

    public var description: String {
        switch self {
        case .invalidArgument(let why): why
        case .damaged(let why): "\(why); the snapshots' data are untouched (they are files in the disk's snapshot folder)"
        case .fs(let error): error.description
        }
    }
}

/// A snapshot as `snapshots` lists it.
public struct SnapshotInfo: Sendable, Equatable {
    public var name: String
    public var created: Int64
    public var parent: String?
    /// Data bytes the snapshot maps, and of them the bytes no other file holds (what deleting it
    /// gives back).
    public var allocatedBytes: UInt64
    public var uniqueBytes: UInt64
    public var sharedBytes: UInt64 { allocatedBytes - uniqueBytes }
    /// Whether the live disk descends from it directly.
    public var isCurrent: Bool
}

/// A virtual disk: a file of a LunarFS volume (format 2) and its snapshots, each a file that
/// shares the disk's blocks, in the folder `.NAME.snapshots` beside it with their tree
/// (`SnapshotTree`). Taking a snapshot, reverting, deleting one and linked clones copy no data
/// and cost the same whatever the disk holds; a snapshot or clone reads in as many steps as
/// the disk (`Spec/format.md` §9).
public struct VirtualDisk: Sendable {
    public let volume: Volume
    /// The disk's path on the volume.
    public let path: String

    /// Starts with a dot, as no snapshot name may, so no snapshot is ever taken over it.
    static let recordName = ".tree"

    public init(_ volume: Volume, path: String) {
        self.volume = volume
        self.path = path
    }

    /// Where its snapshots live: `.NAME.snapshots` in the disk's folder.
    public var snapshotFolder: String {
        let parts = path.split(separator: "/")
        let folder = parts.dropLast().joined(separator: "/")
        return "/" + folder + (folder.isEmpty ? "" : "/") + "." + (parts.last.map(String.init) ?? "") + ".snapshots"
    }

    public func snapshotPath(_ name: String) -> String { snapshotFolder + "/" + name }
    var recordPath: String { snapshotFolder + "/" + Self.recordName }

    /// A new thin disk of `size` bytes.
    public static func create(_ volume: Volume, path: String, size: UInt64) throws(DiskError) -> VirtualDisk {
        try sharedBlocksRequired(volume)
        try fs { () throws(FSError) -> Void in
            let f = try volume.create(path, exclusive: true, lock: nil)
            try f.truncate(to: size)
        }
        return VirtualDisk(volume, path: path)
    }

    static func sharedBlocksRequired(_ volume: Volume) throws(DiskError) {
        guard volume.header.sharedBlocks else {
            throw DiskError.invalidArgument("this volume is format 1, which cannot share blocks: snapshots and clones need a format 2 volume (`lunar fs mkfs`; copy the disks over with `lunar fs cp`)")
        }
    }

    // MARK: the tree

    public func tree() throws(DiskError) -> SnapshotTree {
        guard try fs({ () throws(FSError) -> Bool in try volume.exists(recordPath) }) else { return SnapshotTree() }
        let bytes = try fs { () throws(FSError) -> [UInt8] in
            let f = try volume.openFile(recordPath, lock: nil)
            return try f.read(at: 0, count: Int(min(try f.size, 1 << 20 + 1)))
        }
        return try SnapshotTree.decode(bytes)
    }

    /// Replaces the record in one step: written whole beside it, then renamed over it, so a
    /// crash leaves the old record or the new one, never a torn one.
    private func write(_ tree: SnapshotTree) throws(DiskError) {
        let next = try stage(tree)
        try fs { () throws(FSError) -> Void in
            try volume.rename(next, to: recordPath)
            try volume.sync()
        }
    }

    /// Writes `tree` whole beside the record, for a rename over it; returns where.
    private func stage(_ tree: SnapshotTree) throws(DiskError) -> String {
        let next = recordPath + ".new"
        try fs { () throws(FSError) -> Void in
            let f = try volume.create(next, lock: nil)
            try f.truncate(to: 0)
            try f.write(tree.encoded(), at: 0)
        }
        return next
    }

    // MARK: operations

    /// Takes snapshot `name` of the disk as it is now.
    @discardableResult
    public func snapshot(_ name: String) throws(DiskError) -> SnapshotInfo {
        try captureSnapshot(name)
        return try recordSnapshot(name)
    }

    /// Takes snapshot `name` of several disks at one point (a VM's disks): all are captured,
    /// then recorded. Nothing writes them meanwhile — they are held by no one, or their VM has
    /// paused them (`VMSession.snapshot`). All or none: when one fails, those captured are
    /// removed again.
    public static func snapshot(_ name: String, of disks: [VirtualDisk]) throws(DiskError) -> [SnapshotInfo] {
        try captureSnapshot(name, of: disks)
        var infos: [SnapshotInfo] = []
        for disk in disks { infos.append(try disk.recordSnapshot(name)) }
        return infos
    }

    /// The captures of `snapshot(_:of:)`, all or none.
    public static func captureSnapshot(_ name: String, of disks: [VirtualDisk]) throws(DiskError) {
        var captured: [VirtualDisk] = []
        for disk in disks {
            do throws(DiskError) {
                try disk.captureSnapshot(name)
                captured.append(disk)
            } catch {
                for c in captured { try? c.volume.remove(c.snapshotPath(name)) }
                throw error
            }
        }
    }

    /// The part of a snapshot that must see the disk still: the disk cloned to the snapshot's
    /// file, one transaction. A VM's disks are paused for this alone (`DiskChannel.snapshot`).
    public func captureSnapshot(_ name: String) throws(DiskError) {
        try SnapshotTree.checkName(name)
        try Self.sharedBlocksRequired(volume)
        guard try tree().entry(name) == nil else {
            throw DiskError.invalidArgument("\(path) already has a snapshot named '\(name)' (list them with `lunar disk snapshots`)")
        }
        guard !(try fs({ () throws(FSError) -> Bool in try volume.exists(snapshotPath(name)) })) else {
            throw DiskError.invalidArgument("\(snapshotPath(name)) is there but the snapshot tree does not name it (an interrupted snapshot left it): remove it with `lunar fs rm`, or pick another name")
        }
        try fs { () throws(FSError) -> Void in
            try volume.mkdir(snapshotFolder, parents: true)
            try volume.clone(path, to: snapshotPath(name))
        }
    }

    /// The rest, which may run while the disk is written again: the snapshot entered in the
    /// tree as the disk's current point. A crash before it leaves a snapshot file no record
    /// names, which costs space and nothing else.
    public func recordSnapshot(_ name: String) throws(DiskError) -> SnapshotInfo {
        var tree = try tree()
        let created = wallClockNanoseconds()
        tree.add(name, created: created)
        try write(tree)
        // As taken, a snapshot shares every block with the disk: nothing is its own yet, and
        // no walk of its map (which would cost what the disk holds) is needed to say so.
        let allocated = try fs { () throws(FSError) -> UInt64 in try volume.stat(snapshotPath(name)).allocatedBytes }
        return SnapshotInfo(name: name, created: created, parent: tree.entry(name)?.parent, allocatedBytes: allocated, uniqueBytes: 0,
                            isCurrent: true)
    }

    /// Every snapshot, oldest first, with what it holds alone.
    public func snapshots() throws(DiskError) -> [SnapshotInfo] {
        let tree = try tree()
        var out: [SnapshotInfo] = []
        for e in tree.entries.sorted(by: { $0.created < $1.created }) { out.append(try info(e.name, tree: tree)) }
        return out
    }

    private func info(_ name: String, tree: SnapshotTree) throws(DiskError) -> SnapshotInfo {
        guard let e = tree.entry(name) else { throw DiskError.invalidArgument("\(path) has no snapshot '\(name)'") }
        let (allocated, unique) = try fs { () throws(FSError) -> (allocated: UInt64, unique: UInt64) in try volume.sharing(of: snapshotPath(name)) }
        return SnapshotInfo(name: name, created: e.created, parent: e.parent, allocatedBytes: allocated, uniqueBytes: unique,
                            isCurrent: tree.current == name)
    }

    /// Makes the disk what snapshot `name` holds; what the disk held since is gone. The
    /// snapshot stays. The disk and the record's `current` change in one transaction: a
    /// crash leaves both as they were or both reverted.
    public func revert(to name: String) throws(DiskError) {
        var tree = try tree()
        guard tree.entry(name) != nil else { throw DiskError.invalidArgument("\(path) has no snapshot '\(name)' (list them with `lunar disk snapshots`)") }
        tree.current = name
        let next = try stage(tree)
        try fs { () throws(FSError) -> Void in
            try volume.clone(snapshotPath(name), to: path, replacing: true, renaming: (next, recordPath))
            try volume.sync()
        }
    }

    /// Deletes snapshot `name`: blocks nothing else holds go back; nothing is copied.
    public func deleteSnapshot(_ name: String) throws(DiskError) {
        var tree = try tree()
        guard tree.entry(name) != nil else { throw DiskError.invalidArgument("\(path) has no snapshot '\(name)' (list them with `lunar disk snapshots`)") }
        tree.remove(name)
        // The record first: a crash in between leaves a snapshot file no record names, which
        // costs space and nothing else.
        try write(tree)
        // Committed before returning: until then the disk's grains whose count fell are copied
        // on write like shared ones (format.md §9.4), and the space is not yet free.
        try fs { () throws(FSError) -> Void in
            try volume.remove(snapshotPath(name))
            try volume.sync()
        }
    }

    /// Byte ranges where the disk (or snapshot `to`) differs from snapshot `from`, from the
    /// block maps alone.
    public func changes(from: String, to: String? = nil) throws(DiskError) -> [Range<UInt64>] {
        let tree = try tree()
        for n in [from] + (to.map { [$0] } ?? []) where tree.entry(n) == nil {
            throw DiskError.invalidArgument("\(path) has no snapshot '\(n)'")
        }
        return try fs { () throws(FSError) -> [Range<UInt64>] in try volume.changedRanges(from: snapshotPath(from), to: to.map(snapshotPath) ?? path) }
    }

    /// A new disk at `target` with this disk's content (or snapshot `snapshot`'s): linked, it
    /// shares every block and is made at once; else every byte is copied.
    public func clone(to target: String, snapshot: String? = nil, linked: Bool) throws(DiskError) -> VirtualDisk {
        if let snapshot, try tree().entry(snapshot) == nil { throw DiskError.invalidArgument("\(path) has no snapshot '\(snapshot)'") }
        let source = snapshot.map(snapshotPath) ?? path
        if linked {
            try Self.sharedBlocksRequired(volume)
            try fs { () throws(FSError) -> Void in try volume.clone(source, to: target) }
        } else {
            try fs { () throws(FSError) -> Void in
                let from = try volume.openFile(source, lock: .sharedReadOnly)
                defer { try? from.close() }
                let to = try volume.create(target, exclusive: true)
                defer { try? to.close() }
                let size = try from.size
                try to.truncate(to: size)
                for range in try from.allocatedRanges() {
                    var at = range.lowerBound
                    while at < range.upperBound {
                        let count = Int(min(range.upperBound - at, 8 << 20))
                        try to.write(try from.read(at: at, count: count), at: at)
                        at += UInt64(count)
                    }
                }
            }
        }
        return VirtualDisk(volume, path: target)
    }
}

/// An undo disk's run (VMware's non-persistent disks, VI3's undo mode): the guest writes
/// `overlay`, a linked clone of the disk made at start, and `discard` throws it away, so the disk
/// itself never changes. The disk is held shared read-only meanwhile: no host writes it under
/// the clone. A crash leaves the overlay behind; the next `openUndo` replaces it.
public final class UndoOverlay {
    public let base: File
    public let overlay: File

    init(base: File, overlay: File) {
        self.base = base
        self.overlay = overlay
    }

    /// Throws the guest's writes away and lets the disk go.
    public func discard() throws(DiskError) {
        let volume = overlay.volume, path = overlay.path
        try fs { () throws(FSError) -> Void in
            try overlay.close()
            try volume.remove(path)
            try base.close()
        }
    }
}

extension VirtualDisk {
    /// Where an undo run's writes go: `.NAME.undo` beside the disk.
    public var undoPath: String {
        let folder = snapshotFolder.dropLast(".snapshots".count)
        return String(folder) + ".undo"
    }

    /// Starts an undo run: the disk held shared read-only and cloned to `undoPath`, the clone
    /// opened for the guest.
    public func openUndo() throws(DiskError) -> UndoOverlay {
        try Self.sharedBlocksRequired(volume)
        let base = try fs { () throws(FSError) -> File in try volume.openFile(path, lock: .sharedReadOnly) }
        do throws(DiskError) {
            try fs { () throws(FSError) -> Void in
                // Left by a run that crashed; refused (with the holder) if a run elsewhere has it.
                if try volume.exists(undoPath) { try volume.remove(undoPath) }
                try volume.clone(path, to: undoPath)
            }
            let overlay = try fs { () throws(FSError) -> File in try volume.openFile(undoPath) }
            return UndoOverlay(base: base, overlay: overlay)
        } catch {
            try? base.close()
            throw error
        }
    }
}

/// Runs a LunarFS call, its error as a disk error.
func fs<T>(_ body: () throws(FSError) -> T) throws(DiskError) -> T {
    do throws(FSError) {
        return try body()
    } catch {
        throw DiskError.fs(error)
    }
}
