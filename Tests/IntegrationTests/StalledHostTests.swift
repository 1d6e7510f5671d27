import Foundation
import Glibc
import LunarIO
import LunarTesting
import Testing

/// Locks of hosts that stop: a killed holder's lock is broken after its timeout and after its
/// journal is replayed; a holder stopped (SIGSTOP) long enough to be declared dead finds, when
/// it resumes, that it may not write a single sector.
@Suite("Stalled and killed lock holders")
struct StalledHostTests {
    /// Starts `lunar-hosts hold` as a host of machine `machine` and waits for it to hold `path`.
    static func holder(_ lun: String, path: String, machine: String, keepMetadataLock: Bool = true) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = HostsTortureTests.tool
        p.arguments = ["hold", lun, "--path", path, "--heartbeat", "0.2"] + (keepMetadataLock ? ["--keep-metadata-lock"] : [])
        p.environment = ProcessInfo.processInfo.environment.merging(["LUNAR_MACHINE_ID": machine]) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let line = readLine(out.fileHandleForReading)
        try #require(line == "held", "the holder did not start: \(line)")
        return (p, out)
    }

    static func readLine(_ handle: FileHandle) -> String {
        var bytes: [UInt8] = []
        while true {
            let d = handle.readData(ofLength: 1)
            guard let b = d.first, b != 0x0A else { break }
            bytes.append(b)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func acquire(_ lun: String, path: String, machine: String) throws -> (status: Int32, waited: Double, output: String) {
        let p = Process()
        p.executableURL = HostsTortureTests.tool
        p.arguments = ["acquire", lun, "--path", path, "--wait", "30", "--heartbeat", "0.2"]
        p.environment = ProcessInfo.processInfo.environment.merging(["LUNAR_MACHINE_ID": machine]) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        return (p.terminationStatus, json?["waited_s"] as? Double ?? -1, text)
    }

    static func checksum(_ path: String) throws -> UInt32 {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        var crc: UInt32 = 0
        while let chunk = try handle.read(upToCount: 8 << 20), !chunk.isEmpty {
            crc = chunk.withUnsafeBytes { CRC32C.checksum($0, seed: crc) }
        }
        return crc
    }

    @Test("a SIGKILLed holder elsewhere: its locks are broken after its heartbeat timeout, its journal replayed")
    func killedHolder() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try #require(try LunarProcess.run(["fs", "mkfs", lun, "--size", "512M"]).status == 0)
        let (holder, _) = try Self.holder(lun, path: "/disk", machine: "machine-a")
        usleep(300_000)
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        let taken = try Self.acquire(lun, path: "/disk", machine: "machine-b")
        #expect(taken.status == 0, "\(taken.output)")
        // 5 heartbeat intervals of 0.2 s of silence, watched by the new host.
        #expect(taken.waited >= 1.0, "broke the lock after \(taken.waited) s, before the holder's timeout")
        #expect(taken.waited < 10, "took \(taken.waited) s")
        let fsck = try LunarProcess.run(["fs", "fsck", lun])
        #expect(fsck.status == 0, "\(fsck.stdout)")
    }

    @Test("a SIGSTOPped holder declared dead writes nothing once resumed (volume checksum unchanged)")
    func stoppedHolder() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try #require(try LunarProcess.run(["fs", "mkfs", lun, "--size", "512M"]).status == 0)
        let (holder, output) = try Self.holder(lun, path: "/disk", machine: "machine-a")
        usleep(400_000)
        defer { kill(holder.processIdentifier, SIGKILL) }
        // Stop it outside a compare-and-write: on an image file that is a sector lock, and a
        // process stopped holding one would stall every other host's compare-and-write of
        // that sector (a SCSI COMPARE AND WRITE has no such window).
        let device = try BlockDevice.open(lun)
        defer { device.close() }
        var stoppedCleanly = false
        for _ in 0..<50 where !stoppedCleanly {
            kill(holder.processIdentifier, SIGSTOP)
            usleep(20_000)
            stoppedCleanly = try !device.isSectorLockedElsewhere
            if !stoppedCleanly { kill(holder.processIdentifier, SIGCONT); usleep(7_000) }
        }
        try #require(stoppedCleanly)
        let taken = try Self.acquire(lun, path: "/disk", machine: "machine-b")
        #expect(taken.status == 0, "\(taken.output)")
        #expect(taken.waited >= 1.0, "broke the lock after \(taken.waited) s")
        let before = try Self.checksum(lun)

        kill(holder.processIdentifier, SIGCONT)
        // It wakes with writes in hand; each must be refused. Give it time to try several.
        let answer = Self.readLine(output.fileHandleForReading)
        #expect(answer.hasPrefix("refused") && answer.contains("fenced"), "the resumed holder said: \(answer)")
        holder.waitUntilExit()
        #expect(holder.terminationStatus == 3)
        #expect(try Self.checksum(lun) == before, "the resumed holder changed the volume")
        let fsck = try LunarProcess.run(["fs", "fsck", lun])
        #expect(fsck.status == 0, "\(fsck.stdout)")
    }

    @Test("lunar fs cp into a file another host holds: refused naming it and that it is alive; --wait outlasts a killed holder")
    func copyIntoHeldFile() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try #require(try LunarProcess.run(["fs", "mkfs", lun, "--size", "512M"]).status == 0)
        let (holder, _) = try Self.holder(lun, path: "/disk", machine: "machine-a", keepMetadataLock: false)
        defer { kill(holder.processIdentifier, SIGKILL) }
        let source = scratch.path("in.bin")
        try Data(repeating: 7, count: 100_000).write(to: URL(fileURLWithPath: source))
        let refused = try LunarProcess.run(["fs", "cp", source, "\(lun):/disk"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("cannot open it exclusive") && refused.stderr.contains("host slot 0")
                && refused.stderr.contains("alive"), "\(refused.stderr)")
        let hosts = try LunarProcess.run(["fs", "hosts", "--json", "--observe", "0.5", lun])
        #expect(hosts.json?["compare_and_write"] as? String == "ofd-lock", "\(hosts.stdout)")
        #expect((hosts.json?["hosts"] as? [[String: Any]])?.count == 1, "\(hosts.stdout)")

        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        let copied = try LunarProcess.run(["fs", "cp", "--wait", "20", source, "\(lun):/disk"])
        #expect(copied.status == 0, "\(copied.stderr)")
        let back = scratch.path("out.bin")
        #expect(try LunarProcess.run(["fs", "cp", "\(lun):/disk", back]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: back)) == Data(repeating: 7, count: 100_000))
    }
}
