import LunarDisk
import LunarFS

/// What a disk's snapshots must be (Spec/disk.md), for the oracles of the torture test and
/// the crash harness: each snapshot a frozen copy of the disk's content when it was taken, the
/// parent each was taken from, and the snapshot the disk descends from. Compared with
/// `observe`, what the volume holds.
public struct SnapshotModel: Equatable, Sendable {
    /// Each snapshot's content.
    public var contents: [String: [UInt8]] = [:]
    /// Each snapshot's parent, "-" for a root.
    public var parents: [String: String] = [:]
    public var current: String?

    public init() {}

    /// No snapshot and no current one: as a disk never snapshotted.
    public var isEmpty: Bool { contents.isEmpty && current == nil }

    /// Snapshot `name` of a disk holding `content`; false (nothing changes) when the name is
    /// taken, which `VirtualDisk.snapshot` refuses.
    @discardableResult
    public mutating func snapshot(_ name: String, of content: [UInt8]) -> Bool {
        guard contents[name] == nil else { return false }
        contents[name] = content
        parents[name] = current ?? "-"
        current = name
        return true
    }

    /// Reverts to `name`: the content the disk gets, nil (nothing changes) when there is no
    /// such snapshot. The snapshot stays.
    public mutating func revert(to name: String) -> [UInt8]? {
        guard let content = contents[name] else { return nil }
        current = name
        return content
    }

    /// Deletes `name`: its children and the disk, if they descended from it, descend from its
    /// parent. False when there is no such snapshot.
    @discardableResult
    public mutating func delete(_ name: String) -> Bool {
        guard contents.removeValue(forKey: name) != nil, let parent = parents.removeValue(forKey: name) else { return false }
        for (child, p) in parents where p == name { parents[child] = parent }
        if current == name { current = parent == "-" ? nil : parent }
        return true
    }

    /// The disk's snapshots as the volume has them: those its record names, read through
    /// `VirtualDisk.snapshotPath`; and `leftovers`, the snapshot files the record does not
    /// name (what a cut between a snapshot's clone and its record, or between a deletion's
    /// record and its removal, leaves; Spec/disk.md).
    public static func observe(_ disk: VirtualDisk) throws -> (model: SnapshotModel, leftovers: [String: [UInt8]]) {
        let volume = disk.volume
        guard try volume.exists(disk.snapshotFolder) else { return (SnapshotModel(), [:]) }
        let tree = try disk.tree()
        var model = SnapshotModel()
        model.current = tree.current
        for e in tree.entries {
            model.contents[e.name] = try volume.contents(of: disk.snapshotPath(e.name))
            model.parents[e.name] = e.parent ?? "-"
        }
        var leftovers: [String: [UInt8]] = [:]
        // Names starting with '.' are the record and its next version, never snapshots.
        for item in try volume.list(disk.snapshotFolder) where !item.name.hasPrefix(".") && tree.entry(item.name) == nil {
            leftovers[item.name] = try volume.contents(of: disk.snapshotPath(item.name))
        }
        return (model, leftovers)
    }
}

extension Volume {
    /// The whole content of the file at `path`, read without taking its lock; nil when there
    /// is no such file.
    public func contents(of path: String) throws -> [UInt8]? {
        guard try exists(path) else { return nil }
        let file = try openFile(path, lock: nil)
        defer { try? file.close() }
        let size = try file.size
        return size == 0 ? [] : try file.read(at: 0, count: Int(size))
    }
}
