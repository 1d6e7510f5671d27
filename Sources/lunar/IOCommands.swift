import ArgumentParser
import Foundation
import LunarFS
import LunarIO

struct IOCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "Inspect and measure a LUN's block I/O path (LunarIO).",
        subcommands: [IOBenchCommand.self, IOInfoCommand.self, IOCounterCommand.self]
    )
}

/// Engine choice as typed on the command line.
struct EngineOption: ParsableArguments {
    @Option(name: .long, help: "I/O engine: io_uring, libaio or sync (default: io_uring where the host allows it, else libaio).",
            transform: { text in
                guard let engine = IOEngineKind(userName: text) else {
                    throw ValidationError("unknown engine '\(text)'; choose io_uring, libaio or sync")
                }
                return engine
            })
    var engine: IOEngineKind?
}

struct IOBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure 4 KiB random and 1 MiB sequential I/O through LunarIO.",
        discussion: """
            Without --file, a temporary file of --size bytes is created under $TMPDIR (or \
            /var/tmp), written once so reads hit real blocks, measured, and removed. Workloads: \
            randread and randwrite (4 KiB, QD 32), seqread and seqwrite (1 MiB, QD 8), each with \
            O_DIRECT. Tools/bench/io.sh runs the same workloads through fio on the same file.
            """
    )

    @Option(help: "Image file or block device to measure on. A missing file is created and laid out first.", transform: hostPath)
    var file: String?

    @Option(parsing: .unconditional, help: "Bytes the workloads span (and the temporary file's size).", transform: ByteSize.parse)
    var size = ByteSize(bytes: 1 << 30)

    @OptionGroup var engineOption: EngineOption

    @Option(name: .customLong("workload"), parsing: .upToNextOption,
            help: "Workloads to run: randread, randwrite, seqread, seqwrite (default: all four).")
    var workloads: [String] = []

    @Option(parsing: .unconditional, help: "Seconds per workload.")
    var runtime: Double = 5

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        guard runtime > 0 && runtime <= 3600 else { throw ValidationError("--runtime must be between 0 and 3600 seconds") }
        for name in selectedNames where IOWorkload.named(name) == nil {
            throw ValidationError("unknown workload '\(name)'; choose from randread, randwrite, seqread, seqwrite")
        }
        guard size.bytes >= 64 << 20 else { throw ValidationError("--size must be at least 64M") }
    }

    private var selectedNames: [String] {
        workloads.flatMap { $0.split(separator: ",").map(String.init) }
    }

    func run() async throws {
        let chosen = selectedNames.isEmpty ? IOWorkload.standard : selectedNames.compactMap(IOWorkload.named)
        let options = BlockDevice.Options(engine: engineOption.engine)
        var temporary: String?
        let device: BlockDevice
        if let file, FileManager.default.fileExists(atPath: file) {
            device = try BlockDevice.open(file, options: options)
            guard device.size >= size.bytes else {
                throw ValidationError("\(file) holds \(ByteSize.format(device.size)); pass --size \(device.size >> 20)M or less")
            }
        } else {
            let path = file ?? temporaryPath()
            if file == nil { temporary = path }
            device = try BlockDevice.createImage(path, size: size.bytes, options: options)
            let progress = Progress(label: "laying out \(path)", total: size.bytes, enabled: !json)
            try IOBenchmark.layOut(device, span: size.bytes, progress: progress.update)
            progress.finish()
        }
        defer { if let temporary { unlink(temporary) } }

        var results: [IOBenchmarkResult] = []
        for workload in chosen {
            if !json { print("running \(workload) for \(runtime) s ...", to: &standardError) }
            results.append(try IOBenchmark.run(workload, on: device, span: size.bytes, seconds: runtime))
        }
        if json {
            let object: [String: Any] = [
                "path": device.path, "engine": device.engine.rawValue, "direct": device.isDirect,
                "span_bytes": size.bytes,
                "results": results.map(benchmarkJSON),
            ]
            printJSON(object)
        } else {
            print("LunarIO on \(device.path) (\(ByteSize.format(size.bytes)), engine \(device.engine), \(device.isDirect ? "O_DIRECT" : "buffered"))")
            print(pad("workload", 11) + pad("block", 9) + pad("QD", 5) + pad("IOPS", 12) + "MB/s")
            for r in results {
                let bs = r.workload.blockSize >= 1 << 20 ? "1M" : "\(r.workload.blockSize >> 10)K"
                print(pad(r.workload.name, 11) + pad(bs, 9) + pad("\(r.workload.depth)", 5)
                      + pad(String(format: "%.0f", r.iops), 12) + String(format: "%.1f", r.megabytesPerSecond))
            }
        }
    }

    private func temporaryPath() -> String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/var/tmp"
        return "\(base)/lunar-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
    }
}

/// One benchmark result as `--json` prints it (`lunar io bench`, `lunar fs bench`).
func benchmarkJSON(_ r: IOBenchmarkResult) -> [String: Any] {
    [
        "workload": r.workload.name, "block_size": r.workload.blockSize, "depth": r.workload.depth,
        "operations": r.operations, "bytes": r.bytes, "seconds": r.seconds,
        "iops": r.iops, "mb_per_s": r.megabytesPerSecond,
    ]
}

struct IOInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a LUN's size, sector size, I/O engine and compare-and-write method."
    )

    @Argument(help: "Image file, block device or iSCSI LUN (iscsi://HOST[:PORT]/IQN/LUN).", transform: hostPath)
    var lun: String

    @OptionGroup var engineOption: EngineOption

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        if ISCSILun.isURL(lun) { return try iscsiInfo() }
        let device = try BlockDevice.open(lun, options: .init(engine: engineOption.engine, readOnly: true))
        let info: [String: Any] = [
            "path": device.path,
            "kind": device.isBlockDevice ? "block-device" : "image-file",
            "size_bytes": device.size,
            "sector_size": device.sectorSize,
            "engine": device.engine.rawValue,
            "io_uring_unavailable": IOEngineKind.uringUnavailableReason ?? NSNull(),
            "direct": device.isDirect,
            "compare_and_write": device.compareAndWriteMethod.rawValue,
            "crc32c_hardware": CRC32C.isHardwareAccelerated,
        ]
        if json { return printJSON(info) }
        print("path:              \(device.path)")
        print("kind:              \(device.isBlockDevice ? "block device" : "image file")")
        print("size:              \(ByteSize.format(device.size)) (\(device.size) bytes)")
        print("sector size:       \(device.sectorSize)")
        print("engine:            \(device.engine)" + (IOEngineKind.uringUnavailableReason.map { " (io_uring unavailable: \($0))" } ?? ""))
        print("direct I/O:        \(device.isDirect ? "yes" : "no (buffered)")")
        print("compare-and-write: \(device.compareAndWriteMethod.summary)")
        print("CRC32C:            \(CRC32C.isHardwareAccelerated ? "SSE4.2" : "table")")
    }

    private func iscsiInfo() throws {
        let lun = try ISCSILun.open(url: self.lun, options: .init(readOnly: true))
        defer { lun.close() }
        let method = lun.compareAndWriteMethod
        let info: [String: Any] = [
            "path": lun.path,
            "kind": "iscsi-lun",
            "size_bytes": lun.size,
            "sector_size": lun.sectorSize,
            "logical_block_size": lun.blockSize,
            "thin_provisioned": lun.isThinProvisioned,
            "compare_and_write": method.rawValue,
            "crc32c_hardware": CRC32C.isHardwareAccelerated,
        ]
        if json { return printJSON(info) }
        print("path:              \(lun.path)")
        print("kind:              iSCSI LUN (initiator \(ISCSILun.initiatorName))")
        print("size:              \(ByteSize.format(lun.size)) (\(lun.size) bytes)")
        print("sector size:       \(lun.sectorSize) (logical blocks of \(lun.blockSize))")
        print("thin-provisioned:  \(lun.isThinProvisioned ? "yes (UNMAP)" : "no")")
        print("compare-and-write: \(method.summary)")
        print("CRC32C:            \(CRC32C.isHardwareAccelerated ? "SSE4.2" : "table")")
    }
}

struct IOCounterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ats-counter",
        abstract: "Check that compare-and-write is atomic: increment a counter sector.",
        discussion: """
            Run it from several processes (or hosts sharing the LUN) at once against the same \
            sector: when compare-and-write is atomic the final value is the sum of all increments. \
            The sector is overwritten: point it at scratch space. A LUN that holds a LunarFS \
            volume is refused (unless --force), since the counter would overwrite part of it.
            """
    )

    @Argument(help: "Image file, block device or iSCSI LUN (iscsi://HOST[:PORT]/IQN/LUN).", transform: hostPath)
    var lun: String

    @Option(parsing: .unconditional, help: "Byte offset of the counter sector (a multiple of the sector size).", transform: ByteSize.parse)
    var offset = ByteSize(bytes: 0)

    @Option(parsing: .unconditional, help: "Increments to make (0 only reads the counter).")
    var increments = 1000

    @Flag(help: "Overwrite the counter sector even where it lies inside a LunarFS volume.")
    var force = false

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        guard increments >= 0 else { throw ValidationError("--increments cannot be negative") }
    }

    func run() async throws {
        try reportingErrors {
            let device = try openStorage(lun, options: .init())
            defer { device.closeStorage() }
            if increments > 0 && !force { try refuseVolume(device) }
            let report = try device.incrementCounter(at: offset.bytes, times: increments)
            let value = try device.readCounter(at: offset.bytes)
            if json {
                printJSON(["increments": report.increments, "lost_races": report.lostRaces,
                           "last_written": report.lastValue, "value": value])
            } else {
                print("increments: \(report.increments), lost races (retried): \(report.lostRaces), counter now: \(value)")
            }
        }
    }

    /// The counter would overwrite a sector of a volume: say which, and refuse.
    private func refuseVolume(_ device: any BlockStorage) throws {
        let probe: VolumeProbe
        do throws(FSError) { probe = try Volume.probe(device) } catch { throw CLIError("\(error.naming(lun))") }
        guard let found = probe.summary else { return }
        var what = "the sector at offset \(offset.bytes)"
        if case .volume(let header) = probe {
            guard let region = header.region(at: offset.bytes) else { return }
            what += " (\(region))"
        }
        throw CLIError("\(lun) holds a \(found); the counter would overwrite \(what) of it. "
            + "Point ats-counter at a scratch LUN, or pass --force to overwrite it anyway")
    }
}
