import LunarDisk
import LunarFS
import LunarTesting
import Testing

@Suite("Virtual disks")
struct VirtualDiskTests {
    static func volume() throws -> (Volume, Scratch) {
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 2 << 30)
        return (try Volume.open(path: scratch.path("lun.img")), scratch)
    }

    static func write(_ v: Volume, _ path: String, _ data: [UInt8], at offset: UInt64) throws {
        let f = try v.openFile(path)
        try f.write(data, at: offset)
        try f.close()
    }

    static func read(_ v: Volume, _ path: String, count: Int) throws -> [UInt8] {
        try v.openFile(path, lock: nil).read(at: 0, count: count)
    }

    @Test("snapshot, write, snapshot, revert to the first, write, delete: a tree whose every point reads as it was")
    func tree() throws {
        let (v, _) = try Self.volume()
        try v.mkdir("/vms/web01", parents: true)
        let disk = try VirtualDisk.create(v, path: "/vms/web01/disk0.raw", size: 64 << 20)
        #expect(disk.snapshotFolder == "/vms/web01/.disk0.raw.snapshots")
        let base = pattern(8 << 20, seed: 1).array
        try Self.write(v, disk.path, base, at: 0)
        try disk.snapshot("base")
        var second = base
        second.replaceSubrange(4096..<8192, with: pattern(4096, seed: 2).array)
        try Self.write(v, disk.path, Array(second[4096..<8192]), at: 4096)
        try disk.snapshot("second")
        try disk.revert(to: "base")
        #expect(try Self.read(v, disk.path, count: base.count) == base)
        var branch = base
        branch.replaceSubrange(0..<100, with: pattern(100, seed: 3).array)
        try Self.write(v, disk.path, Array(branch[0..<100]), at: 0)
        try disk.snapshot("branch")
        let list = try disk.snapshots()
        #expect(list.map(\.name) == ["base", "second", "branch"])
        #expect(list.map(\.parent) == [nil, "base", "base"], "a tree: second and branch both from base")
        #expect(list.first { $0.isCurrent }?.name == "branch")
        // Each snapshot holds alone just the grain it changed; the rest is shared.
        let secondInfo = try #require(list.first { $0.name == "second" })
        #expect(secondInfo.uniqueBytes == 64 << 10 && secondInfo.allocatedBytes == 8 << 20)
        #expect(try Self.read(v, disk.snapshotPath("second"), count: second.count) == second)
        #expect(try Self.read(v, disk.snapshotPath("base"), count: base.count) == base)
        #expect(try disk.changes(from: "base") == [0..<(64 << 10)])
        #expect(try disk.changes(from: "base", to: "second") == [0..<(64 << 10)])
        // Deleting base: its children hang from nothing now; their data stay.
        try disk.deleteSnapshot("base")
        #expect(try disk.snapshots().map(\.parent) == [nil, nil])
        #expect(try Self.read(v, disk.snapshotPath("second"), count: second.count) == second)
        #expect(try Self.read(v, disk.path, count: branch.count) == branch)
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("a linked clone is made at once and shares every block; a full clone copies; both read as the source")
    func clones() throws {
        let (v, _) = try Self.volume()
        let template = try VirtualDisk.create(v, path: "/template.raw", size: 32 << 20)
        let data = pattern(16 << 20, seed: 4).array
        try Self.write(v, template.path, data, at: 0)
        try template.snapshot("golden")
        try Self.write(v, template.path, pattern(4096, seed: 5).array, at: 0)
        let free = try v.usage().resources.first { $0.kind == .fileBlock }!.free
        let linked = try template.clone(to: "/linked.raw", snapshot: "golden", linked: true)
        #expect(try v.usage().resources.first { $0.kind == .fileBlock }!.free == free, "a linked clone takes no data block")
        let full = try template.clone(to: "/full.raw", snapshot: "golden", linked: false)
        #expect(try Self.read(v, linked.path, count: data.count) == data)
        #expect(try Self.read(v, full.path, count: data.count) == data)
        #expect(try v.sharing(of: full.path).unique == 16 << 20)
        // The template keeps working; the clone's writes stay its own.
        try Self.write(v, linked.path, pattern(4096, seed: 6).array, at: 8 << 20)
        #expect(try Self.read(v, template.snapshotPath("golden"), count: data.count) == data)
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("refusals: a name taken, a bad name, a snapshot that is not there, a format 1 volume")
    func refusals() throws {
        let (v, _) = try Self.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 1 << 20)
        try disk.snapshot("one")
        for (name, expected) in [("one", "already has"), ("../x", "snapshot name"), ("", "snapshot name"), (".hidden", "snapshot name")] {
            #expect(throws: DiskError.self) { try disk.snapshot(name) }
            do { try disk.snapshot(name) } catch { #expect(error.description.contains(expected), "\(error)") }
        }
        do { try disk.revert(to: "nope") } catch { #expect(error.description.contains("no snapshot 'nope'")) }
        try v.close()
        let scratch = Scratch()
        try Volume.format(path: scratch.path("old.img"), size: 1 << 30, options: FormatOptions(sharedBlocks: false))
        let old = try Volume.open(path: scratch.path("old.img"))
        do {
            _ = try VirtualDisk.create(old, path: "/d.raw", size: 1 << 20)
            Issue.record("a disk on a format 1 volume")
        } catch {
            #expect(error.description.contains("format 1"))
        }
        try old.close()
    }

    @Test("snapshots named like the record's files leave the record alone")
    func recordNames() throws {
        let (v, _) = try Self.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 1 << 20)
        for name in ["tree", "tree.new", "a"] { try disk.snapshot(name) }
        #expect(try disk.snapshots().map(\.name) == ["tree", "tree.new", "a"])
        #expect(try disk.tree().entry("a")?.parent == "tree.new")
        try v.close()
    }

    @Test("a damaged snapshot record is refused with what it is, never trusted")
    func damagedRecord() throws {
        let (v, _) = try Self.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 1 << 20)
        try disk.snapshot("a")
        try disk.snapshot("b")
        for bad in ["garbage", "lunar-snapshots 1\nsnapshot a 1 b\nsnapshot b 2 a\n", "lunar-snapshots 1\ncurrent zz\n",
                    "lunar-snapshots 1\nsnapshot a x -\n", "lunar-snapshots 1\nsnapshot ../a 1 -\n"] {
            let f = try v.openFile(disk.snapshotFolder + "/.tree")
            try f.truncate(to: 0)
            try f.write(Array(bad.utf8), at: 0)
            try f.close()
            do {
                _ = try disk.snapshots()
                Issue.record("accepted: \(bad)")
            } catch {
                #expect(error.description.contains("snapshot record"), "\(error)")
            }
        }
        try v.close()
    }

    /// A revert replaces the disk and its record's `current` together. Freeing what only the
    /// old disk held may take several commits (a large disk): the disk must be the snapshot's
    /// and the record say so from the first of them on, never gone, never one without the other.
    @Test("a crash anywhere in a revert leaves the disk and its record both as before or both as after, however many commits freeing the old disk takes")
    func revertIsAtomic() throws {
        let scratch = Scratch.forCrashImages()
        let (device, recorder, v) = try recordedVolume(in: scratch, options: FormatOptions(blockSize: 1 << 20, maxFiles: 4096))
        let size = recorder.size
        defer { device.close() }
        // 4 KiB every 63 MiB, one pointer block each: the disk's own map is 300 blocks, more
        // than one commit frees.
        let stride: UInt64 = 63 << 20, pieces: UInt64 = 300
        let disk = try VirtualDisk.create(v, path: "/disk", size: pieces * stride)
        func fill(_ seed: UInt64) throws {
            let f = try v.openFile("/disk")
            for k in 0..<pieces { try f.write(pattern(4096, seed: seed &+ k).array, at: k * stride) }
            try f.close()
        }
        try fill(1)
        try disk.snapshot("a")
        try fill(1000)
        try disk.snapshot("b")
        try fill(2000)
        try v.sync()
        let start = recorder.position
        try disk.revert(to: "a")
        let end = recorder.position
        try v.close()

        let image = CrashImage(events: recorder.events, size: size)
        // The states a crash can leave that differ: right after each flush, and the end.
        let cuts = (start...end).filter { cut in
            if cut == end { return true }
            if case .flush = image.events[cut] { return true }
            return false
        }
        for cut in cuts {
            let path = scratch.path("crash.img")
            try image.buildLanded(at: path, cut: cut)
            let crashed = try Volume.open(path: path)
            defer { try? crashed.close() }
            let tree = try VirtualDisk(crashed, path: "/disk").tree()
            // nil: the disk is gone.
            let file = try? crashed.openFile("/disk", lock: nil)
            let seeds = try [0, pieces / 2, pieces - 1].map { k in
                let back = try file?.read(at: k * stride, count: 4096)
                return [1, 1000, 2000].first { pattern(4096, seed: $0 &+ k).array == back }
            }
            let state = "cut \(cut) of \(start)...\(end): current \(tree.current ?? "none"), \(file == nil ? "no disk" : "data of seeds \(seeds)")"
            let before = tree.current == "b" && seeds.allSatisfy { $0 == 2000 }
            let after = tree.current == "a" && seeds.allSatisfy { $0 == 1 }
            #expect(before || after, "\(state)")
            if cut == end { #expect(after, "\(state)") }
        }
    }
}
