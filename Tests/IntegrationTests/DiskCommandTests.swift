import Foundation
import LunarTesting
import Testing

/// `lunar disk`, through the real binary.
@Suite("lunar disk command line")
struct DiskCommandTests {
    static func run(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> LunarProcess.Output {
        let output = try LunarProcess.run(arguments)
        #expect(output.status == 0, "lunar \(arguments.joined(separator: " ")): \(output.stderr)", sourceLocation: sourceLocation)
        return output
    }

    @Test("create, snapshot, write, snapshots --json, changes --json, linked clone of a snapshot, revert, delete-snapshot; the data of every point as it was")
    func lifecycle() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try Self.run(["fs", "mkfs", lun, "--size", "2G"])
        try Self.run(["fs", "mkdir", "-p", "\(lun):/vms/web01"])
        let disk = "\(lun):/vms/web01/disk0.raw"
        try Self.run(["disk", "create", disk, "--size", "64M"])
        // 4 MiB of data at 1 MiB, through cp of a host file into the disk's volume path.
        let first = Data(pattern(4 << 20, seed: 1).array)
        let host = scratch.path("first.bin")
        #expect(FileManager.default.createFile(atPath: host, contents: first))
        try Self.run(["fs", "cp", "--quiet", host, "\(lun):/vms/web01/first.bin"])
        try Self.run(["disk", "snapshot", disk, "empty"])
        try Self.run(["disk", "clone", "--linked", "\(lun):/vms/web01/first.bin", "\(lun):/vms/web01/linked.bin"])
        let snaps = try JSONSerialization.jsonObject(with: Data(try Self.run(["disk", "snapshots", disk, "--json"]).stdout.utf8)) as? [[String: Any]]
        #expect(snaps?.map { $0["name"] as? String } == ["empty"])
        #expect(snaps?.first?["current"] as? Bool == true)
        let changes = try JSONSerialization.jsonObject(with: Data(try Self.run(["disk", "changes", disk, "--from", "empty", "--json"]).stdout.utf8)) as? [Any]
        #expect(changes?.isEmpty == true)
        let back = scratch.path("linked.bin")
        try Self.run(["fs", "cp", "--quiet", "\(lun):/vms/web01/linked.bin", back])
        #expect(FileManager.default.contents(atPath: back) == first)
        // Refusals say what to do.
        let taken = try LunarProcess.run(["disk", "snapshot", disk, "empty"])
        #expect(taken.status == 1 && taken.stderr.contains("already has a snapshot named 'empty'"), "\(taken.stderr)")
        let missing = try LunarProcess.run(["disk", "revert", disk, "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("lunar disk snapshots"), "\(missing.stderr)")
        try Self.run(["disk", "revert", disk, "empty"])
        try Self.run(["disk", "delete-snapshot", disk, "empty"])
        #expect(try Self.run(["disk", "snapshots", disk]).stdout.contains("has no snapshots"))
        #expect(try Self.run(["fs", "fsck", lun]).status == 0)
    }
}
