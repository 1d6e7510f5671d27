import LunarTesting
import Foundation
import LunarIO
import Testing

@Suite("lunar io command line")
struct CLITests {
    @Test("info --json describes an image file")
    func infoJSON() throws {
        let scratch = Scratch()
        let lun = scratch.path("lun.img")
        _ = try BlockDevice.createImage(lun, size: 8 << 20)
        let output = try LunarProcess.run(["io", "info", lun, "--json"])
        #expect(output.status == 0)
        let json = try #require(output.json)
        #expect(json["kind"] as? String == "image-file")
        #expect((json["size_bytes"] as? NSNumber)?.uint64Value == 8 << 20)
        #expect(json["sector_size"] as? Int == 4096)
        #expect(json["engine"] as? String == "io_uring")
        #expect(json["compare_and_write"] as? String == "ofd-lock")
        let human = try LunarProcess.run(["io", "info", lun, "--engine", "libaio"])
        #expect(human.stdout.contains("engine:            libaio"))
    }

    @Test("bad arguments and missing LUNs give a clear error and a non-zero exit")
    func errors() throws {
        let missing = try LunarProcess.run(["io", "info", "/nonexistent/lun.img"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("No such file or directory"))
        #expect(missing.stderr.contains("/nonexistent/lun.img"))

        let engine = try LunarProcess.run(["io", "bench", "--engine", "spdk"])
        #expect(engine.status == 64)
        #expect(engine.stderr.contains("choose io_uring, libaio or sync"))

        let size = try LunarProcess.run(["io", "bench", "--size", "12Q"])
        #expect(size.status == 64)

        let workload = try LunarProcess.run(["io", "bench", "--workload", "randtrim"])
        #expect(workload.status == 64)
        #expect(workload.stderr.contains("unknown workload 'randtrim'"))

        let scratch = Scratch()
        let lun = scratch.path("small.img")
        _ = try BlockDevice.createImage(lun, size: 64 << 20)
        let misaligned = try LunarProcess.run(["io", "ats-counter", lun, "--offset", "100", "--increments", "1"])
        #expect(misaligned.status != 0)
        #expect(misaligned.stderr.contains("not a multiple of the 4096-byte sector size"))
    }

    @Test("ats-counter refuses a LUN holding a LunarFS volume, naming what it would overwrite, unless --force")
    func counterOnVolume() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try #require(try LunarProcess.run(["fs", "mkfs", lun, "--size", "400M", "--label", "keep"]).status == 0)
        for (offset, region) in [("0", "the volume header"), ("3M", "the journal region"), ("300M", "the file blocks area"), ("399M", "unused space")] {
            let refused = try LunarProcess.run(["io", "ats-counter", lun, "--offset", offset, "--increments", "5"])
            #expect(refused.status == 1, "\(offset): \(refused.stderr)")
            #expect(refused.stderr.contains("holds a LunarFS volume") && refused.stderr.contains("label 'keep'")
                    && refused.stderr.contains(region) && refused.stderr.contains("--force"), "\(offset): \(refused.stderr)")
        }
        #expect(try LunarProcess.run(["fs", "fsck", lun]).status == 0, "the refused counter wrote nothing")
        // Only reading the counter destroys nothing.
        #expect(try LunarProcess.run(["io", "ats-counter", lun, "--increments", "0"]).status == 0)

        // With only the backup header left (the primary already overwritten), still refused.
        let damaged = try LunarProcess.run(["io", "ats-counter", lun, "--increments", "1", "--force"])
        #expect(damaged.status == 0, "\(damaged.stderr)")
        let again = try LunarProcess.run(["io", "ats-counter", lun, "--increments", "1"])
        #expect(again.status == 1 && again.stderr.contains("label 'keep'"), "\(again.stderr)")

        // A LUN of zeros is scratch space: no --force needed.
        let blank = scratch.path("blank.img")
        _ = try BlockDevice.createImage(blank, size: 64 << 20)
        let counted = try LunarProcess.run(["io", "ats-counter", blank, "--increments", "3", "--json"])
        #expect(counted.status == 0, "\(counted.stderr)")
        #expect(counted.json?["value"] as? Int == 3)
    }

    @Test("bench runs every workload on every engine and reports JSON", arguments: IOEngineKind.allCases)
    func benchRuns(engine: IOEngineKind) throws {
        let scratch = Scratch()
        let lun = scratch.path("bench.img")
        let output = try LunarProcess.run(["io", "bench", "--file", lun, "--size", "64M", "--runtime", "0.2",
                                           "--engine", engine.rawValue, "--json"])
        #expect(output.status == 0, "\(output.stderr)")
        let json = try #require(output.json)
        #expect(json["engine"] as? String == engine.rawValue)
        let results = try #require(json["results"] as? [[String: Any]])
        #expect(results.map { $0["workload"] as? String } == ["randread", "randwrite", "seqread", "seqwrite"])
        for r in results { #expect((r["operations"] as? Int ?? 0) > 0) }
        // A missing --file was created and laid out in full.
        var st = stat()
        #expect(stat(lun, &st) == 0 && st.st_size == 64 << 20 && Int(st.st_blocks) * 512 >= 64 << 20)
    }
}
