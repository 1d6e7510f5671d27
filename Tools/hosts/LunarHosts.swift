import ArgumentParser
import Foundation
import Glibc
import LunarFS
import LunarIO

/// Hosts sharing one volume, for the torture test and Tools/bench/hosts.sh: each invocation is
/// one host (its own slot, heartbeat and journal). Set LUNAR_MACHINE_ID to make processes of
/// this machine judge each other by heartbeats alone, as hosts on separate machines do.
@main
struct LunarHosts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lunar-hosts",
        abstract: "Hosts sharing one LunarFS volume: torture, verify, and lock benchmarks.",
        subcommands: [TortureCommand.self, VerifyCommand.self, CreateCommand.self, LockCommand.self,
                      HoldCommand.self, AcquireCommand.self]
    )
}

struct TortureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torture",
        abstract: "Run one host of the torture test: random operations in /hN and shared-counter increments, logged.")

    @Argument(help: "The LUN (image file, block device or iscsi:// URL).") var lun: String
    @Option(help: "This host's number (its directory is /hN, its log host-N.log).") var host: Int
    @Option(help: "Seed of the operation mix.") var seed: UInt64 = 1
    @Option(help: "Directory of the logs.") var logs: String
    @Option(help: "Seconds to run.") var duration: Double = 10
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 0.2

    func run() throws {
        let path = "\(logs)/host-\(host).log"
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        try Torture.run(lun: lun, host: host, seed: seed, logPath: path, duration: duration, heartbeat: heartbeat)
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check the volume against every host's log; exit 1 on any difference.")

    @Argument(help: "The LUN.") var lun: String
    @Option(help: "Directory of the logs (host-N.log).") var logs: String

    func run() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: logs).filter { $0.hasPrefix("host-") && $0.hasSuffix(".log") }
        let problems = try Torture.verify(lun: lun, logs: names.sorted().map { "\(logs)/\($0)" })
        for p in problems { print("PROBLEM: \(p)") }
        if !problems.isEmpty { throw ExitCode(1) }
    }
}

struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create empty files in a new directory; print files/s and metadata-lock counters as JSON.")

    @Argument(help: "The LUN.") var lun: String
    @Option(help: "The new directory.") var dir: String
    @Option(help: "How many files.") var count: Int = 10_000

    func run() throws {
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 120))
        let rate = try FSBenchmark.createFiles(volume, directory: dir, count: count)
        let stats = volume.metadataLockStatistics
        try volume.close()
        print(#"{"files": \#(count), "per_second": \#(rate), "acquisitions": \#(stats?.acquisitions ?? 0), "lost_races": \#(stats?.lostRaces ?? 0), "cache_drops": \#(stats?.cacheDrops ?? 0), "waited_s": \#(stats?.waitedSeconds ?? 0), "shared_acquisitions": \#(stats?.sharedAcquisitions ?? 0), "retried_exclusive": \#(stats?.retriedExclusive ?? 0)}"#)
    }
}

struct LockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock", abstract: "Uncontended lock latency: metadata lock and file lock acquire + release, medians in µs, as JSON.")

    @Argument(help: "The LUN.") var lun: String
    @Option(help: "Rounds.") var count: Int = 2000

    func run() throws {
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 30))
        try volume.mkdir("/lock-bench", parents: true)
        try volume.create("/lock-bench/file", lock: nil).close()
        try volume.relinquishMetadataLock()
        var metadata: [Double] = [], file: [Double] = []
        for _ in 0..<count {
            let t0 = monotonicSeconds()
            _ = try volume.stat("/")              // takes the metadata lock
            try volume.relinquishMetadataLock()   // and hands it back
            metadata.append(monotonicSeconds() - t0)
        }
        _ = try volume.stat("/")
        for _ in 0..<count {
            let t0 = monotonicSeconds()
            try volume.openFile("/lock-bench/file").close() // inode lock taken and freed by compare-and-write
            file.append(monotonicSeconds() - t0)
        }
        try volume.close()
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] * 1e6 }
        print(#"{"metadata_lock_us": \#(median(metadata)), "file_lock_us": \#(median(file))}"#)
    }
}

struct HoldCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hold", abstract: "Open a file with its lock and keep writing it until killed (a host to kill or stop).")

    @Argument(help: "The LUN.") var lun: String
    @Option(help: "The file (created if missing).") var path: String
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 0.2
    @Flag(help: "Also keep the metadata lock (never hand it back while running).") var keepMetadataLock = false

    func run() throws {
        let linger = keepMetadataLock ? 3600.0 : 0.01
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 60, heartbeatInterval: heartbeat,
                                                                     metadataLockLinger: linger, metadataLockMaxHold: linger))
        let file = try volume.create(path)
        say("held")
        var i: UInt64 = 0
        while true {
            // Writes that allocate (metadata) and overwrite (data), committed now and then.
            do {
                try file.write((0..<4096).map { UInt8(truncatingIfNeeded: i &+ UInt64($0)) }, at: (i % 512) * 4096)
                if i % 8 == 0 { try volume.sync() }
            } catch {
                say("refused: \(error)")
                throw ExitCode(3)
            }
            i += 1
            usleep(20_000)
        }
    }
}

struct AcquireCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acquire", abstract: "Open a file exclusively, waiting for its holder; print how long it took as JSON.")

    @Argument(help: "The LUN.") var lun: String
    @Option(help: "The file.") var path: String
    @Option(help: "Seconds to wait at most.") var wait: Double = 120
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 0.2

    func run() throws {
        let start = monotonicSeconds()
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: wait, heartbeatInterval: heartbeat))
        let file = try volume.openFile(path, wait: wait)
        let waited = monotonicSeconds() - start
        try file.write([0x42], at: 0)
        try file.close()
        try volume.close()
        print(#"{"waited_s": \#(waited)}"#)
    }
}

/// One line to whoever watches this process, at once (stdout is a pipe, fully buffered).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
