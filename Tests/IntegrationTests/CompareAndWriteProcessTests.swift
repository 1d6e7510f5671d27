import LunarTesting
import Foundation
import LunarIO
import Testing

/// The ATS primitive across real processes: 8 `lunar` processes each make 500
/// compare-and-write increments of one counter sector; none may be lost.
@Suite("Compare-and-write across processes", .serialized)
struct CompareAndWriteProcessTests {
    static let processes = 8
    static let incrementsEach = 500

    func hammer(_ lun: String, offset: UInt64) throws -> (value: UInt64, lostRaces: Int) {
        let running = try (0..<Self.processes).map { _ in
            try LunarProcess.start(["io", "ats-counter", lun, "--offset", "\(offset)",
                                    "--increments", "\(Self.incrementsEach)", "--json"])
        }
        var lost = 0
        for process in running {
            let output = process.finish()
            #expect(output.status == 0, "lunar ats-counter failed: \(output.stderr)")
            lost += output.json?["lost_races"] as? Int ?? 0
        }
        let final = try LunarProcess.run(["io", "ats-counter", lun, "--offset", "\(offset)", "--increments", "0", "--json"])
        let value = (final.json?["value"] as? NSNumber)?.uint64Value ?? 0
        return (value, lost)
    }

    @Test("8 processes x 500 increments on an image file count exactly 4000")
    func imageFile() throws {
        let scratch = Scratch()
        let lun = scratch.path("lun.img")
        _ = try BlockDevice.createImage(lun, size: 16 << 20)
        let result = try hammer(lun, offset: 40960)
        #expect(result.value == UInt64(Self.processes * Self.incrementsEach))
        // Under contention the retry path must actually have been exercised.
        print("image file: counter \(result.value), \(result.lostRaces) lost races retried")
    }

    @Test("8 processes x 500 increments on a loop block device count exactly 4000 (root)",
          .enabled(if: getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control"),
                   "needs root and /dev/loop-control"))
    func loopDevice() throws {
        let scratch = Scratch()
        let backing = scratch.path("backing.img")
        _ = try BlockDevice.createImage(backing, size: 16 << 20)
        let attach = try system("/usr/sbin/losetup", ["--find", "--show", "--direct-io=on", backing])
        try #require(attach.status == 0 && attach.output.hasPrefix("/dev/loop"), "losetup failed: \(attach.output)")
        let loop = attach.output
        defer { _ = try? system("/usr/sbin/losetup", ["-d", loop]) }

        let info = try LunarProcess.run(["io", "info", loop, "--json"])
        #expect(info.json?["kind"] as? String == "block-device")
        #expect((info.json?["size_bytes"] as? NSNumber)?.uint64Value == 16 << 20)

        let result = try hammer(loop, offset: 0)
        #expect(result.value == UInt64(Self.processes * Self.incrementsEach))
        print("loop device \(loop): counter \(result.value), \(result.lostRaces) lost races retried")
    }
}
