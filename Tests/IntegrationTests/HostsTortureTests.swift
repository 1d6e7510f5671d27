import Foundation
import Glibc
import LunarIO
import LunarTesting
import Testing

/// Real processes sharing one volume (`lunar-hosts`, one host each): a random mix of creates,
/// writes, truncations, renames, removes, lock-protected counter increments and, on the files as
/// virtual disks, snapshots, reverts, snapshot deletions and linked clones (of other hosts'
/// snapshots too), while hosts are killed with SIGKILL and restarted. Afterwards fsck is clean
/// (every reference count exact), and every directory, every snapshot and the counter match
/// what each host saw acknowledged.
@Suite("Hosts sharing a volume, killed and restarted")
struct HostsTortureTests {
    static var tool: URL { LunarProcess.executable.deletingLastPathComponent().appendingPathComponent("lunar-hosts") }

    static func start(_ arguments: [String], environment: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = tool
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        return p
    }

    /// Runs `hosts` torture hosts on `lun` for `duration` seconds, SIGKILLing one every 0.7 to
    /// 1.5 s and starting it again, then kills them all and verifies. Returns the verifier's
    /// output.
    static func torture(lun: String, hosts: Int, duration: Double, logs: String, seed: UInt64,
                        machines: Bool = false) throws -> (status: Int32, output: String, kills: Int) {
        var random = SplitMix64(seed: seed)
        // With distinct machine identities, a killed host is judged by its silent heartbeat
        // (5 × 0.2 s), not by its presence token.
        func env(_ k: Int) -> [String: String] { machines ? ["LUNAR_MACHINE_ID": "machine-\(k)"] : [:] }
        func launch(_ k: Int) throws -> Process {
            try start(["torture", lun, "--host", "\(k)", "--seed", "\(random.next() % 1_000_000)", "--logs", logs,
                       "--duration", "\(duration + 60)", "--heartbeat", "0.2"], environment: env(k))
        }
        var running = try (0..<hosts).map(launch)
        let end = monotonicSeconds() + duration
        var kills = 0
        while monotonicSeconds() < end {
            usleep(UInt32(700_000 + random.next() % 800_000))
            let victim = Int(random.next() % UInt64(hosts))
            if running[victim].isRunning {
                kill(running[victim].processIdentifier, SIGKILL)
                kills += 1
            }
            running[victim].waitUntilExit()
            running[victim] = try launch(victim)
        }
        for p in running where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in running { p.waitUntilExit() }
        let verify = Process()
        verify.executableURL = tool
        verify.arguments = ["verify", lun, "--logs", logs]
        let out = Pipe()
        verify.standardOutput = out
        verify.standardError = out
        try verify.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        return (verify.terminationStatus, text, kills)
    }

    /// The verifier's count of disk operations applied, by verb.
    static func diskOperations(in output: String) -> [String: Int] {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("disk operations applied: ") }),
              let list = line.split(separator: ":").dropFirst(2).first else { return [:] }
        var counts: [String: Int] = [:]
        for item in list.split(separator: ",") {
            let words = item.split(separator: " ")
            if words.count == 2, let n = Int(words[1]) { counts[String(words[0])] = n }
        }
        return counts
    }

    static func operations(in logs: String) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: logs)) ?? []
        return names.reduce(0) { total, name in
            let text = (try? String(contentsOfFile: "\(logs)/\(name)", encoding: .utf8)) ?? ""
            return total + text.split(separator: "\n").filter { $0.hasPrefix("D ") }.count
        }
    }

    @Test("4 hosts on an image file, SIGKILLed and restarted at random: fsck clean, everything acknowledged is there")
    func imageFile() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        let mkfs = try LunarProcess.run(["fs", "mkfs", lun, "--size", "2G"])
        try #require(mkfs.status == 0, "\(mkfs.stderr)")
        let duration = Double(ProcessInfo.processInfo.environment["LUNAR_TORTURE_SECONDS"] ?? "") ?? 20
        let result = try Self.torture(lun: lun, hosts: 4, duration: duration, logs: scratch.directory, seed: 42)
        let ops = Self.operations(in: scratch.directory)
        print("torture (image file): \(ops) operations acknowledged, \(result.kills) kills; \(result.output)")
        #expect(result.status == 0, "seed 42 (the hosts' seeds derive from it; their operations also follow timing): \(result.output)")
        #expect(result.kills >= 5)
        #expect(ops >= 200, "hosts made too little progress: \(ops) operations")
        let disk = Self.diskOperations(in: result.output)
        for verb in ["snapshot", "revert", "deletesnap", "clone"] {
            #expect(disk[verb, default: 0] > 0, "no \(verb) was applied: \(result.output)")
        }
    }

    @Test("4 hosts judged as separate machines (heartbeats only), killed and restarted")
    func separateMachines() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        let mkfs = try LunarProcess.run(["fs", "mkfs", lun, "--size", "2G"])
        try #require(mkfs.status == 0, "\(mkfs.stderr)")
        let result = try Self.torture(lun: lun, hosts: 4, duration: 12, logs: scratch.directory, seed: 7, machines: true)
        let ops = Self.operations(in: scratch.directory)
        print("torture (separate machines): \(ops) operations acknowledged, \(result.kills) kills; \(result.output)")
        #expect(result.status == 0, "seed 7 (the hosts' seeds derive from it; their operations also follow timing): \(result.output)")
        #expect(ops >= 50, "hosts made too little progress: \(ops) operations")
    }
}

@Suite("Hosts sharing an iSCSI LUN, killed and restarted",
       .enabled(if: TGTTarget.available, Comment(rawValue: TGTTarget.whyNot ?? "")))
struct ISCSITortureTests {
    @Test("4 hosts on a tgt LUN (no presence tokens: heartbeats decide), SIGKILLed and restarted")
    func iscsi() throws {
        let target = try TGTTarget()
        let mkfs = try LunarProcess.run(["fs", "mkfs", target.thinURL])
        try #require(mkfs.status == 0, "\(mkfs.stderr)")
        let logs = target.scratch.path("logs")
        try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
        let result = try HostsTortureTests.torture(lun: target.thinURL, hosts: 4, duration: 10, logs: logs, seed: 99)
        let ops = HostsTortureTests.operations(in: logs)
        print("torture (iSCSI): \(ops) operations acknowledged, \(result.kills) kills; \(result.output)")
        #expect(result.status == 0, "seed 99 (the hosts' seeds derive from it; their operations also follow timing): \(result.output)")
        #expect(ops >= 30, "hosts made too little progress: \(ops) operations")
    }
}
