import Foundation
import LunarDisk
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Crash consistency: a random metadata + data workload runs on a recording device; the
/// volume is rebuilt as a crash would have left it at many points of that log (writes of the
/// last flush epoch dropped, reordered and torn at random), opened (journal replay), checked.
/// The workload's files are also virtual disks (LunarDisk): snapshots, reverts, deletions of
/// snapshots and linked clones of snapshots run among the file operations.
@Suite("Crash consistency")
struct CrashTests {
    /// A point the workload made durable (`sync` returned): the log position and the tree then.
    struct Checkpoint {
        var position: Int
        var files: [String: [UInt8]]
        var directories: Set<String>
        /// The snapshots of each disk that has had any, by the disk's path.
        var disks: [String: SnapshotModel]
    }

    /// What an operation that changes a few things at once leaves of them: the content of
    /// files (nil: no such file) and the snapshots of disks.
    struct Outcome: Equatable {
        var files: [String: [UInt8]?] = [:]
        var disks: [String: SnapshotModel] = [:]

        /// The same things, as the volume has them.
        func observed(on volume: Volume) throws -> Outcome {
            var seen = Outcome()
            for path in files.keys { seen.files.updateValue(try volume.contents(of: path), forKey: path) }
            for path in disks.keys { seen.disks[path] = try SnapshotModel.observe(VirtualDisk(volume, path: path)).model }
            return seen
        }
    }

    /// One operation: where the log stood when it began, and the paths it changed (a disk's
    /// snapshots as `PATH@`). For an operation meant to be all or nothing, its two outcomes:
    /// a crash leaves one of them unless another operation since the checkpoint changed the
    /// same paths.
    struct Step {
        var position: Int
        var paths: Set<String>
        var outcomes: [Outcome] = []
        var name = ""
    }

    final class Workload {
        var rng: SplitMix64
        var files: [String: [UInt8]] = [:]
        var directories: Set<String> = ["/"]
        var disks: [String: SnapshotModel] = [:]
        /// Every snapshot taken, as `PATH@NAME`: what its file holds, whether the record
        /// names it or not.
        var taken: [String: [UInt8]] = [:]
        var checkpoints: [Checkpoint] = []
        var steps: [Step] = []
        var serial = 0
        /// The disk of the last snapshot operation or the source of the last clone, and the
        /// last clone: the next operation writes the focus one time in two (as a VM goes on
        /// writing its disk while its snapshots come and go), and removals often take the last
        /// clone, so that a write to blocks another file just let go of often follows.
        var focus: String?
        var lastClone: String?
        /// What each clone was made from (a file, or a disk whose snapshot it is).
        var sources: [String: String] = [:]

        init(seed: UInt64) { rng = SplitMix64(seed: seed) }

        func content(_ size: Int) -> [UInt8] {
            serial += 1
            return pattern(size, seed: UInt64(serial)).array
        }

        func checkpoint(_ recorder: RecordingStorage) {
            checkpoints.append(Checkpoint(position: recorder.position, files: files, directories: directories, disks: disks))
        }

        /// An outcome of the workload's model: the files at `files`, the snapshots of `disks`.
        func outcome(files paths: [String] = [], disks diskPaths: [String] = []) -> Outcome {
            Outcome(files: Dictionary(uniqueKeysWithValues: paths.map { ($0, files[$0]) }),
                    disks: Dictionary(uniqueKeysWithValues: diskPaths.map { ($0, disks[$0] ?? SnapshotModel()) }))
        }

        func run(on volume: Volume, recorder: RecordingStorage, operations: Int) throws {
            let sizes = [0, 100, 3000, 3841, 5000, 70_000, 300_000, 1_500_000]
            for i in 0..<operations {
                let start = recorder.position
                var touched: Set<String> = []
                var before: Outcome?
                var name = ""
                let dirs = directories.sorted()
                let paths = files.keys.sorted()
                // Any disk's snapshot, its file there or not (a revert makes it again).
                let snapshots = disks.keys.sorted().flatMap { d in disks[d]!.contents.keys.sorted().map { (d, $0) } }
                let snapshot = snapshots.randomElement(using: &rng)
                let followUp = focus.flatMap { files[$0] != nil && rng.next() % 2 == 0 ? $0 : nil }
                focus = nil
                switch followUp != nil ? 4 : rng.next() % 18 {
                case 0:
                    let d = (dirs.randomElement(using: &rng) ?? "/") + (dirs.count > 1 ? "/" : "") + "d\(i)"
                    let path = d.replacingOccurrences(of: "//", with: "/")
                    try volume.mkdir(path)
                    directories.insert(path)
                    touched.insert(path)
                case 1, 2, 3:
                    let dir = dirs.randomElement(using: &rng) ?? "/"
                    let path = (dir == "/" ? "" : dir) + "/f\(i)"
                    let size = sizes.randomElement(using: &rng) ?? 0
                    // A sparse start, except for an empty write (which, as pwrite, does not extend).
                    let offset = size > 0 && rng.next() % 4 == 0 ? Int(rng.next() % (3 << 20)) : 0
                    let data = content(size)
                    let f = try volume.create(path)
                    try f.write(data, at: UInt64(offset))
                    files[path] = [UInt8](repeating: 0, count: offset) + data
                    touched.insert(path)
                case 4, 5:
                    guard let path = followUp ?? paths.randomElement(using: &rng), var old = files[path] else { continue }
                    let size = Int(rng.next() % 200_000) + 1
                    let offset = Int(rng.next() % UInt64(old.count + 1))
                    let data = content(size)
                    try volume.openFile(path).write(data, at: UInt64(offset))
                    if old.count < offset + size { old += [UInt8](repeating: 0, count: offset + size - old.count) }
                    old.replaceSubrange(offset..<(offset + size), with: data)
                    files[path] = old
                    touched.insert(path)
                case 6:
                    guard let path = paths.randomElement(using: &rng), var old = files[path] else { continue }
                    let size = Int(rng.next() % UInt64(old.count + 100_000))
                    try volume.openFile(path).truncate(to: UInt64(size))
                    if size < old.count { old.removeSubrange(size...) } else { old += [UInt8](repeating: 0, count: size - old.count) }
                    files[path] = old
                    touched.insert(path)
                case 7:
                    guard let path = paths.randomElement(using: &rng) else { continue }
                    let dir = dirs.randomElement(using: &rng) ?? "/"
                    let target = (dir == "/" ? "" : dir) + "/r\(i)"
                    before = outcome(files: [path, target])
                    try volume.rename(path, to: target)
                    files[target] = files.removeValue(forKey: path)
                    touched.formUnion([path, target])
                    name = "rename \(path) \(target)"
                case 8:
                    let focused = lastClone.flatMap { files[$0] != nil && rng.next() % 2 == 0 ? $0 : nil }
                    guard let path = focused ?? paths.randomElement(using: &rng) else { continue }
                    focus = sources[path]
                    before = outcome(files: [path])
                    try volume.remove(path)
                    files[path] = nil
                    touched.insert(path)
                    name = "remove \(path)"
                case 9, 10:
                    // A clone shares every block: later writes to either copy, truncates and
                    // removes drop references (format.md §9).
                    guard let path = paths.randomElement(using: &rng) else { continue }
                    let dir = dirs.randomElement(using: &rng) ?? "/"
                    let target = (dir == "/" ? "" : dir) + "/c\(i)"
                    before = outcome(files: [target])
                    try volume.clone(path, to: target)
                    (focus, lastClone, sources[target]) = (path, target, path)
                    files[target] = files[path]
                    touched.insert(target)
                    name = "clone \(path) \(target)"
                case 11:
                    try volume.sync()
                    checkpoint(recorder)
                case 12, 13:
                    guard let path = paths.randomElement(using: &rng), let content = files[path] else { continue }
                    focus = path
                    let snap = "s\(i)"
                    before = outcome(disks: [path])
                    taken["\(path)@\(snap)"] = content
                    try VirtualDisk(volume, path: path).snapshot(snap)
                    disks[path, default: SnapshotModel()].snapshot(snap, of: content)
                    touched.insert(path + "@")
                    name = "snapshot \(path)@\(snap)"
                case 14:
                    guard let (path, snap) = snapshot else { continue }
                    focus = path
                    before = outcome(files: [path], disks: [path])
                    try VirtualDisk(volume, path: path).revert(to: snap)
                    files[path] = disks[path]!.revert(to: snap)
                    touched.formUnion([path, path + "@"])
                    name = "revert \(path) to \(snap)"
                case 15, 16:
                    guard let (path, snap) = snapshot else { continue }
                    focus = path
                    before = outcome(disks: [path])
                    try VirtualDisk(volume, path: path).deleteSnapshot(snap)
                    disks[path]!.delete(snap)
                    touched.insert(path + "@")
                    name = "delete snapshot \(path)@\(snap)"
                default:
                    // A linked clone of a snapshot: a new disk sharing its blocks.
                    guard let (path, snap) = snapshot else { continue }
                    let dir = dirs.randomElement(using: &rng) ?? "/"
                    let target = (dir == "/" ? "" : dir) + "/v\(i)"
                    before = outcome(files: [target])
                    _ = try VirtualDisk(volume, path: path).clone(to: target, snapshot: snap, linked: true)
                    (lastClone, sources[target]) = (target, path)
                    files[target] = disks[path]!.contents[snap]
                    touched.insert(target)
                    name = "clone \(path)@\(snap) \(target)"
                }
                if !touched.isEmpty {
                    // What the same paths hold now: the outcome had it run to the end.
                    let after = before.map { outcome(files: Array($0.files.keys), disks: Array($0.disks.keys)) }
                    steps.append(Step(position: start, paths: touched, outcomes: before.map { [$0, after!] } ?? [], name: name))
                }
            }
            try volume.sync()
            checkpoint(recorder)
        }
    }

    static var crashPoints: Int { Int(ProcessInfo.processInfo.environment["LUNAR_CRASH_POINTS"] ?? "") ?? 1000 }
    /// The workload's seed; `LUNAR_CRASH_SEED` replays another.
    static var seed: UInt64 { UInt64(ProcessInfo.processInfo.environment["LUNAR_CRASH_SEED"] ?? "") ?? 0x5EED }

    @Test("after a crash at any point: the volume opens, fsck is clean, and every synced file is intact")
    func crashPointsAreConsistent() throws {
        let scratch = Scratch.forCrashImages()
        let (device, recorder, volume) = try recordedVolume(in: scratch, options: FormatOptions(blockSize: 256 << 10, maxFiles: 4096))
        let size = recorder.size
        defer { device.close() }
        let firstCut = recorder.position
        let workload = Workload(seed: Self.seed)
        try workload.run(on: volume, recorder: recorder, operations: 400)
        try volume.close()

        let events = recorder.events
        let image = CrashImage(events: events, size: size)
        var rng = SplitMix64(seed: 42)
        // Spread the cuts over the whole log, each with a random offset inside its stretch.
        let stretch = max(1, (events.count - firstCut) / Self.crashPoints)
        var cuts = (0..<Self.crashPoints).map { min(events.count, firstCut + $0 * stretch + Int(rng.next() % UInt64(stretch))) }
        // And one inside the unsynced stretch after each all-or-nothing operation, which the
        // ones above hit seldom: the operation cut short, or done but not yet committed while
        // the next ones write (over blocks it released, say).
        for step in workload.steps where !step.outcomes.isEmpty {
            let end = workload.checkpoints.first { $0.position > step.position }?.position ?? events.count
            cuts.append(step.position + Int(rng.next() % UInt64(max(1, end - step.position))))
        }
        let count = cuts.count
        var opened = 0, outcomesChecked = 0, leftoversSeen = 0
        for cut in cuts {
            let path = scratch.path("crash.img")
            try image.build(at: path, cut: cut, using: &rng)
            let durable = image.durablePrefix(cut: cut)
            let crashed = try Volume.open(path: path)
            opened += 1
            var report = try crashed.check()
            // A removal cut short (a large file freed over several commits) is fsck's to finish.
            #expect(report.problems.allSatisfy { $0.message.contains("removal was cut short") }, "cut \(cut) (seed \(Self.seed)): \(report.problems.prefix(3))")
            if !report.isClean {
                _ = try crashed.check(repair: true)
                report = try crashed.check()
                #expect(report.isClean, "cut \(cut) (seed \(Self.seed)), after repair: \(report.problems.prefix(3))")
            }
            // Every snapshot file, named by its record or not, holds the disk as it was taken:
            // a snapshot cut short between its clone and its record, or a deletion between
            // its record and its removal, leaves a whole clone.
            for disk in Set(workload.taken.keys.map { String($0.prefix { $0 != "@" }) }) {
                let (model, leftovers) = try SnapshotModel.observe(VirtualDisk(crashed, path: disk))
                leftoversSeen += leftovers.count
                for (name, content) in model.contents.merging(leftovers, uniquingKeysWith: { a, _ in a }) {
                    let same = workload.taken["\(disk)@\(name)"] == content
                    #expect(same, "cut \(cut) (seed \(Self.seed)): snapshot \(disk)@\(name)\(model.contents[name] == nil ? ", which no record names," : "") does not read as the disk when it was taken")
                }
            }
            guard let checkpoint = workload.checkpoints.last(where: { $0.position <= durable }) else {
                try crashed.close()
                continue
            }
            let since = workload.steps.filter { $0.position >= checkpoint.position && $0.position < cut }
            let touched = since.reduce(into: Set<String>()) { $0.formUnion($1.paths) }
            // An all-or-nothing operation whose paths nothing else since changed: all of it
            // before, or all of it after.
            for (k, step) in since.enumerated() where !step.outcomes.isEmpty {
                let others = since.enumerated().filter { $0.offset != k }.reduce(into: Set<String>()) { $0.formUnion($1.element.paths) }
                guard others.isDisjoint(with: step.paths) else { continue }
                let seen = try step.outcomes[0].observed(on: crashed)
                let either = step.outcomes.contains(seen)
                outcomesChecked += 1
                #expect(either, "cut \(cut) (seed \(Self.seed)): \(step.name) left neither the state before it nor the one after")
            }
            for (disk, model) in checkpoint.disks where !touched.contains(disk + "@") {
                let same = try SnapshotModel.observe(VirtualDisk(crashed, path: disk)).model == model
                #expect(same, "cut \(cut) (seed \(Self.seed)): the snapshots of \(disk) differ from those synced")
            }
            for dir in checkpoint.directories where !touched.contains(dir) {
                #expect(try crashed.stat(dir).type == .directory, "cut \(cut): directory \(dir) lost")
            }
            for (path, content) in checkpoint.files where !touched.contains(path) {
                let back = try? crashed.openFile(path).read(at: 0, count: content.count + 1)
                let same = back == content
                #expect(same, "cut \(cut) (durable \(durable), checkpoint \(checkpoint.position)): \(path) has \(back.map { "\($0.count) bytes" } ?? "gone"), synced \(content.count) bytes")
            }
            try crashed.close()
            if !report.isClean { break }
        }
        #expect(opened == count)
        let verbs = workload.steps.map { String($0.name.prefix { $0 != " " }) }.filter { !$0.isEmpty }
        let mix = Dictionary(verbs.map { ($0, 1) }, uniquingKeysWith: +).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        print("crash harness (seed \(Self.seed)): \(count) cuts in \(events.count - firstCut) events, \(outcomesChecked) all-or-nothing operations checked, \(leftoversSeen) snapshot files no record names; operations: \(mix.joined(separator: ", "))")
    }

    /// A volume whose every write up to the end of `change` landed and nothing after: `setup`
    /// made durable (synced), `change` not committed yet. Returns it opened (journal replayed).
    static func crashAfter(_ scratch: Scratch, setup: (Volume) throws -> Void, change: (Volume) throws -> Void) throws -> Volume {
        let (device, recorder, volume) = try recordedVolume(in: scratch, options: FormatOptions(blockSize: 1 << 20, maxFiles: 4096))
        let size = recorder.size
        defer { device.close() }
        try setup(volume)
        try volume.sync()
        try change(volume)
        let cut = recorder.position
        try volume.close()
        let path = scratch.path("crash.img")
        try CrashImage(events: recorder.events, size: size).buildLanded(at: path, cut: cut)
        return try Volume.open(path: path)
    }

    /// A change not committed yet is lost by a crash, so what it released is still named by
    /// the committed maps: a grain it freed must not be handed out again, nor a grain (or a
    /// pointer block above it) it left with one reference written in place, before the
    /// commit. Otherwise the file the crash brings back reads another file's later data.
    @Test("a grain released by a change not yet committed is neither reused nor written in place before that commit",
          arguments: ["freed grain reused", "unshared grain", "unshared pointer block"])
    func uncommittedReleaseKeepsCommittedData(_ scenario: String) throws {
        let scratch = Scratch.forCrashImages()
        let old = pattern(128 << 10, seed: 1).array, new = pattern(128 << 10, seed: 2).array
        // Where the file that must keep its synced content holds it.
        let at: UInt64 = scenario == "unshared pointer block" ? 100 << 20 : 0
        let kept = scenario == "freed grain reused" ? "/a" : "/c"
        let crashed = try Self.crashAfter(scratch, setup: { v in
            try v.create("/a").write(old, at: at)
            if scenario == "freed grain reused" {
                // Another file's grains keep the file block this host takes grains from in use.
                try v.create("/d").write(pattern(65 << 10, seed: 3).array, at: 0)
            } else {
                try v.clone("/a", to: "/c")
            }
        }, change: { v in
            if scenario == "freed grain reused" {
                try v.openFile("/a").truncate(to: 0)
                try v.create("/b").write(new, at: 0)
            } else {
                try v.remove("/c")
                try v.openFile("/a").write(new, at: at)
            }
        })
        defer { try? crashed.close() }
        let report = try crashed.check()
        #expect(report.isClean, "\(scenario): \(report.problems.prefix(3))")
        // The crash lost the change: the file is back, and reads what was synced.
        let back = try crashed.openFile(kept, lock: nil).read(at: at, count: old.count)
        let same = back == old // (not inside #expect, which would diff the arrays)
        #expect(same, "\(scenario): \(kept) reads \(back == new ? "the other file's new data" : "something else") after the crash")
    }
}
