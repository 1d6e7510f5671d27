import Foundation
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Crash consistency: a random metadata + data workload runs on a recording device; the
/// volume is rebuilt as a crash would have left it at many points of that log (writes of the
/// last flush epoch dropped, reordered and torn at random), opened (journal replay), checked.
@Suite("Crash consistency")
struct CrashTests {
    /// A point the workload made durable (`sync` returned): the log position and the tree then.
    struct Checkpoint {
        var position: Int
        var files: [String: [UInt8]]
        var directories: Set<String>
    }

    /// One operation: where the log stood when it began, and the paths it changed.
    struct Step {
        var position: Int
        var paths: Set<String>
    }

    final class Workload {
        var rng: SplitMix64
        var files: [String: [UInt8]] = [:]
        var directories: Set<String> = ["/"]
        var checkpoints: [Checkpoint] = []
        var steps: [Step] = []
        var serial = 0

        init(seed: UInt64) { rng = SplitMix64(seed: seed) }

        func content(_ size: Int) -> [UInt8] {
            serial += 1
            return pattern(size, seed: UInt64(serial)).array
        }

        func run(on volume: Volume, recorder: RecordingStorage, operations: Int) throws {
            let sizes = [0, 100, 3000, 3841, 5000, 70_000, 300_000, 1_500_000]
            for i in 0..<operations {
                let start = recorder.position
                var touched: Set<String> = []
                let dirs = directories.sorted()
                let paths = files.keys.sorted()
                switch rng.next() % 12 {
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
                    guard let path = paths.randomElement(using: &rng), var old = files[path] else { continue }
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
                    try volume.rename(path, to: target)
                    files[target] = files.removeValue(forKey: path)
                    touched.formUnion([path, target])
                case 8:
                    guard let path = paths.randomElement(using: &rng) else { continue }
                    try volume.remove(path)
                    files[path] = nil
                    touched.insert(path)
                case 9, 10:
                    // A clone shares every block: later writes to either copy, truncates and
                    // removes drop references (format.md §9).
                    guard let path = paths.randomElement(using: &rng) else { continue }
                    let dir = dirs.randomElement(using: &rng) ?? "/"
                    let target = (dir == "/" ? "" : dir) + "/c\(i)"
                    try volume.clone(path, to: target)
                    files[target] = files[path]
                    touched.insert(target)
                default:
                    try volume.sync()
                    checkpoints.append(Checkpoint(position: recorder.position, files: files, directories: directories))
                }
                if !touched.isEmpty { steps.append(Step(position: start, paths: touched)) }
            }
            try volume.sync()
            checkpoints.append(Checkpoint(position: recorder.position, files: files, directories: directories))
        }
    }

    static var crashPoints: Int { Int(ProcessInfo.processInfo.environment["LUNAR_CRASH_POINTS"] ?? "") ?? 1000 }

    @Test("after a crash at any point: the volume opens, fsck is clean, and every synced file is intact")
    func crashPointsAreConsistent() throws {
        // Crash images are rebuilt a thousand times: on tmpfs where there is one (it takes
        // O_DIRECT on current kernels, and its flushes cost nothing).
        let scratch = Scratch(under: access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory())
        let size: UInt64 = 1 << 30
        let device = try BlockDevice.createImage(scratch.path("recorded.img"), size: size)
        defer { device.close() }
        let recorder = RecordingStorage(device)
        try Volume.format(recorder, options: FormatOptions(blockSize: 256 << 10, maxFiles: 4096))
        let volume = try Volume.open(recorder)
        let firstCut = recorder.position
        let workload = Workload(seed: 0x5EED)
        try workload.run(on: volume, recorder: recorder, operations: 400)
        try volume.close()

        let events = recorder.events
        let image = CrashImage(events: events, size: size)
        var rng = SplitMix64(seed: 42)
        let count = Self.crashPoints
        var opened = 0
        for point in 0..<count {
            // Spread the cuts over the whole log, each with a random offset inside its stretch.
            let stretch = max(1, (events.count - firstCut) / count)
            let cut = min(events.count, firstCut + point * stretch + Int(rng.next() % UInt64(stretch)))
            let path = scratch.path("crash.img")
            try image.build(at: path, cut: cut, using: &rng)
            let durable = image.durablePrefix(cut: cut)
            let crashed = try Volume.open(path: path)
            opened += 1
            let report = try crashed.check()
            #expect(report.isClean, "cut \(cut): \(report.problems.prefix(3))")
            guard let checkpoint = workload.checkpoints.last(where: { $0.position <= durable }) else {
                try crashed.close()
                continue
            }
            let touched = workload.steps.filter { $0.position >= checkpoint.position && $0.position < cut }
                .reduce(into: Set<String>()) { $0.formUnion($1.paths) }
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
    }

    /// A volume whose every write up to the end of `change` landed and nothing after: `setup`
    /// made durable (synced), `change` not committed yet. Returns it opened (journal replayed).
    static func crashAfter(_ scratch: Scratch, setup: (Volume) throws -> Void, change: (Volume) throws -> Void) throws -> Volume {
        let size: UInt64 = 1 << 30
        let device = try BlockDevice.createImage(scratch.path("recorded.img"), size: size)
        defer { device.close() }
        let recorder = RecordingStorage(device)
        try Volume.format(recorder, options: FormatOptions(blockSize: 1 << 20, maxFiles: 4096))
        let volume = try Volume.open(recorder)
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
        let scratch = Scratch(under: access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory())
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
