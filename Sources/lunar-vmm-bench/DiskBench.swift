import Glibc
import LunarDisk
import LunarFS
import LunarIO
import LunarVMM

/// The LunarDisk side of Tools/bench/disk.sh, on one volume it formats (a sparse image):
///
/// - snapshot create on a disk with `small` bytes written and one with `large` written
///   (median of `repeats` snapshots each, the volume open: the operation alone);
/// - a linked clone of the large disk;
/// - 4 KiB random reads QD 32 through the disk channel (the VM's path: a virtio-blk device
///   driven from the host side) on a disk with a 32-deep snapshot chain, each level with writes
///   of its own, against an identical disk with no snapshots, rounds taking turns;
/// - 4 KiB random writes QD 32 just after a snapshot (every first write to a 64 KiB grain copies
///   it) against the same disk with no snapshot, rounds taking turns, and the bytes the disk
///   then holds alone per byte written; then the same disk's writes once every block has been
///   rewritten after a snapshot (nothing left to copy) against an identical disk that never
///   had one, rounds taking turns;
/// - deleting the snapshot that then owns every block of that disk (`owned` bytes).
///
/// Prints one JSON object per figure, then `{"summary": …}`.
enum DiskBench {
    struct Options {
        var small: UInt64 = 256 << 20
        var large: UInt64 = 16 << 30
        var owned: UInt64 = 4 << 30
        var ioSize: UInt64 = 1 << 30
        var runtime = 5.0
        var rounds = 3
        var repeats = 5
    }

    static func run(volumePath: String, _ o: Options) throws {
        let total = o.small + o.large + 3 * o.owned + 3 * o.ioSize
        try Volume.format(path: volumePath, size: total + total / 8 + (1 << 30))
        let volume = try Volume.open(path: volumePath)
        defer { try? volume.close() }
        var summary: [String: String] = [:]

        func report(_ fields: [String: String]) {
            print("{" + fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}")
            fflush(nil)
        }
        func ms(_ seconds: Double) -> String { fixedPoint(seconds * 1000, places: 2) }
        func median(_ values: [Double]) -> Double {
            let s = values.sorted()
            return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        }
        func written(_ path: String, _ size: UInt64) throws -> VirtualDisk {
            _ = try FSBenchmark.layOut(volume, path: path, size: size)
            return VirtualDisk(volume, path: path)
        }
        func timed(_ body: () throws -> Void) rethrows -> Double {
            let start = monotonicSeconds()
            try body()
            return monotonicSeconds() - start
        }

        // Snapshot create: O(1) whatever the disk holds.
        var snapshotMs: [String: Double] = [:]
        for (label, size) in [("small", o.small), ("large", o.large)] {
            let disk = try written("/\(label).raw", size)
            var times: [Double] = []
            for i in 0..<o.repeats { times.append(try timed { try disk.snapshot("s\(i)") }) }
            snapshotMs[label] = median(times) * 1000
            report(["figure": "\"snapshot\"", "disk_bytes": "\(size)", "ms_median": ms(median(times)),
                    "ms_each": "[" + times.map { ms($0) }.joined(separator: ", ") + "]"])
        }
        summary["snap_ms_small"] = fixedPoint(snapshotMs["small"] ?? 0, places: 2)
        summary["snap_ms_large"] = fixedPoint(snapshotMs["large"] ?? 0, places: 2)

        let large = VirtualDisk(volume, path: "/large.raw")
        let cloneSeconds = try timed { _ = try large.clone(to: "/large-clone.raw", linked: true) }
        report(["figure": "\"linked_clone\"", "disk_bytes": "\(o.large)", "ms": ms(cloneSeconds)])
        summary["clone_ms"] = ms(cloneSeconds)

        // Reads on a 32-deep chain vs a disk with none.
        let flat = try written("/flat.raw", o.ioSize)
        let chained = try written("/chain.raw", o.ioSize)
        let level = IOBuffer(count: 4096)
        var random = SplitMix64(seed: 32)
        let file = try volume.openFile(chained.path)
        for i in 0..<32 {
            try chained.snapshot("level\(i)")
            for _ in 0..<64 {
                level.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(i))
                try file.write(level, at: (random.next() % (o.ioSize / 4096)) * 4096)
            }
        }
        try file.close()
        try volume.sync()
        let randread = IOWorkload.named("randread")!, randwrite = IOWorkload.named("randwrite")!
        func iops(_ path: String, _ workload: IOWorkload) throws -> Double {
            let channel = try DiskChannel(file: try volume.openFile(path))
            defer { try? channel.file.close() }
            return try VirtioBlockBenchmark.run(workload, on: channel, seconds: o.runtime).iops
        }
        /// `workload` on disks `a` and `b`, `o.rounds` rounds, taking turns at going first.
        func takingTurns(_ a: String, _ b: String, _ workload: IOWorkload) throws -> (a: [Double], b: [Double]) {
            var runs: (a: [Double], b: [Double]) = ([], [])
            for round in 0..<o.rounds {
                if round % 2 == 0 {
                    runs.a.append(try iops(a, workload)); runs.b.append(try iops(b, workload))
                } else {
                    runs.b.append(try iops(b, workload)); runs.a.append(try iops(a, workload))
                }
            }
            return runs
        }
        let (flatRuns, chainRuns) = try takingTurns(flat.path, chained.path, randread)
        let chainRatio = median(zip(chainRuns, flatRuns).map { $0 / $1 })
        report(["figure": "\"chain32_read\"", "iops_no_snapshots": "\(Int(median(flatRuns)))", "iops_32_deep": "\(Int(median(chainRuns)))",
                "ratio": fixedPoint(chainRatio, places: 2),
                "ratio_spread": "\"" + spread(zip(chainRuns, flatRuns).map { $0 / $1 }) + "\""])
        summary["chain32_read"] = fixedPoint(chainRatio, places: 2)

        // Writes after a snapshot, then after every block was rewritten once.
        let cow = try written("/cow.raw", o.owned)
        var plainRuns: [Double] = [], cowRuns: [Double] = [], copied: [Double] = []
        for round in 0..<o.rounds {
            plainRuns.append(try iops(cow.path, randwrite))
            try cow.snapshot("cow\(round)")
            let channel = try DiskChannel(file: try volume.openFile(cow.path))
            let result = try VirtioBlockBenchmark.run(randwrite, on: channel, seconds: o.runtime)
            try channel.file.close()
            cowRuns.append(result.iops)
            let own = try volume.sharing(of: cow.path).unique
            copied.append(Double(own) / Double(max(result.bytes, 1)))
            try cow.deleteSnapshot("cow\(round)")
        }
        let cowRatio = median(zip(cowRuns, plainRuns).map { $0 / $1 })
        report(["figure": "\"cow_write\"", "iops_no_snapshot": "\(Int(median(plainRuns)))", "iops_after_snapshot": "\(Int(median(cowRuns)))",
                "ratio": fixedPoint(cowRatio, places: 2), "bytes_owned_per_byte_written": fixedPoint(median(copied), places: 1)])
        summary["cow_write"] = fixedPoint(cowRatio, places: 2)
        summary["cow_bytes_per_byte"] = fixedPoint(median(copied), places: 1)

        try cow.snapshot("old")
        let rewriting = try volume.openFile(cow.path)
        let chunk = IOBuffer(count: 1 << 20)
        var at: UInt64 = 0
        while at < o.owned {
            try rewriting.write(chunk, at: at, count: Int(min(1 << 20, o.owned - at)))
            at += 1 << 20
        }
        try rewriting.close()
        try volume.sync()
        // The snapshot keeps every old block: no write copies anything now. Compared with an
        // identical disk that never had a snapshot, rounds taking turns.
        let plain = try written("/plain.raw", o.owned)
        let (rewriteRuns, neverRuns) = try takingTurns(cow.path, plain.path, randwrite)
        let rewriteRatios = zip(rewriteRuns, neverRuns).map { $0 / $1 }
        let rewriteRatio = median(rewriteRatios)
        report(["figure": "\"rewrite\"", "iops_snapshot_behind": "\(Int(median(rewriteRuns)))", "iops_no_snapshot": "\(Int(median(neverRuns)))",
                "ratio": fixedPoint(rewriteRatio, places: 2), "ratio_spread": "\"" + spread(rewriteRatios) + "\""])
        summary["rewrite"] = fixedPoint(rewriteRatio, places: 2)

        let owned = try volume.sharing(of: cow.snapshotPath("old")).unique
        let deleteSeconds = try timed { try cow.deleteSnapshot("old") }
        report(["figure": "\"delete_snapshot\"", "owned_bytes": "\(owned)", "ms": ms(deleteSeconds)])
        summary["delete_ms"] = ms(deleteSeconds)
        summary["delete_owned_gib"] = fixedPoint(Double(owned) / Double(1 << 30), places: 2)

        report(["summary": "{" + summary.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"])
    }

    static func spread(_ ratios: [Double]) -> String {
        "\(fixedPoint(ratios.min() ?? 0, places: 2))-\(fixedPoint(ratios.max() ?? 0, places: 2))"
    }
}
