import ArgumentParser
import Foundation
import LunarFS
import LunarIO

/// The LunarFS half of Tools/bench/fs.sh; fio is the other half.
struct FSBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure a volume: first write into a thin file, the LunarIO workloads on that file, file creation.",
        discussion: """
            --layout SIZE writes a new thin file of SIZE (PATH, default /bench/data) and reports \
            first-write MB/s. --workload runs the LunarIO workloads on that file through its \
            block map, O_DIRECT on io_uring. --create N makes N empty files in a new directory \
            and reports files/s. Tools/bench/fs.sh runs all three against fio.
            """
    )

    @Argument(help: "Image file or block device holding the volume.", transform: hostPath)
    var lun: String

    @Option(help: "The benchmark file inside the volume.")
    var path = "/bench/data"

    @Option(parsing: .unconditional, help: "Write a new thin file of this size first (e.g. 1G).", transform: ByteSize.parse)
    var layout: ByteSize?

    @Option(name: .customLong("workload"), help: "randread, randwrite, seqread, seqwrite (repeatable).")
    var workloads: [String] = []

    @Option(parsing: .unconditional, help: "Seconds per workload.")
    var runtime: Double = 5

    @Option(parsing: .unconditional, help: "Create this many empty files in a new directory.")
    var create: Int?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        for name in workloads where IOWorkload.named(name) == nil {
            throw ValidationError("unknown workload '\(name)' (randread, randwrite, seqread, seqwrite)")
        }
        if let create, create < 1 { throw ValidationError("--create needs a positive count") }
        guard runtime > 0 else { throw ValidationError("--runtime must be positive") }
    }

    func run() async throws {
        try reportingErrors {
            var object: [String: Any] = ["lun": lun, "path": path]
            try withVolume(lun, readOnly: false) { volume in
                if let layout {
                    let progress = Progress(label: "writing \(path)", total: layout.bytes, enabled: !json)
                    let rate = try FSBenchmark.layOut(volume, path: path, size: layout.bytes, progress: progress.update)
                    progress.finish()
                    object["first_write_mb_per_s"] = rate
                    if !json { print(String(format: "first write of %@ into a thin file: %.1f MB/s", ByteSize.format(layout.bytes), rate)) }
                }
                var results: [IOBenchmarkResult] = []
                for name in workloads {
                    guard let workload = IOWorkload.named(name) else { continue }
                    let r = try FSBenchmark.run(workload, volume: volume, path: path, seconds: runtime)
                    results.append(r)
                    if !json { print(String(format: "%-10@ %10.0f IOPS %10.1f MB/s", workload.name, r.iops, r.megabytesPerSecond)) }
                }
                if !results.isEmpty { object["results"] = results.map(benchmarkJSON) }
                if let create {
                    let directory = "/bench/create-\(getpid())"
                    let rate = try FSBenchmark.createFiles(volume, directory: directory, count: create)
                    object["files_per_s"] = rate
                    object["created_in"] = directory
                    if !json { print(String(format: "created %d files in %@: %.0f files/s", create, directory, rate)) }
                }
            }
            if json { printJSON(object) }
        }
    }
}
