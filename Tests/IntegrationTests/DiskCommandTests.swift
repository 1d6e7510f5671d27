import Foundation
import Glibc
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
        let (scratch, lun) = try Self.volume()
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

    /// A fresh 2 GiB volume in a scratch folder (keep the scratch alive) and its LUN path.
    static func volume() throws -> (Scratch, String) {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        try run(["fs", "mkfs", lun, "--size", "2G"])
        return (scratch, lun)
    }

    static func json(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        try #require(try run(arguments, sourceLocation: sourceLocation).json, sourceLocation: sourceLocation)
    }

    /// `lunar` run by the shell, for standard input and output of raw bytes.
    static func shell(_ command: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (status, output) = try system("/bin/sh", ["-c", "\"\(LunarProcess.executable.path)\" \(command)"])
        #expect(status == 0, "lunar \(command): \(output)", sourceLocation: sourceLocation)
    }

    /// A refusal: exit status 1 and `words` in the message.
    static func refused(_ arguments: [String], _ words: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let output = try LunarProcess.run(arguments)
        #expect(output.status == 1 && output.stderr.contains(words), "lunar \(arguments.joined(separator: " ")): \(output.stderr)",
                sourceLocation: sourceLocation)
    }

    /// A 64 MiB sparse raw image: 3 MiB of data at 1 MiB and 100 KiB at 40 MiB, holes elsewhere.
    static func sparseImage(_ path: String) throws -> Data {
        var image = Data(count: 64 << 20)
        image.replaceSubrange((1 << 20)..<(4 << 20), with: pattern(3 << 20, seed: 11).array)
        image.replaceSubrange((40 << 20)..<((40 << 20) + 100_000), with: pattern(100_000, seed: 12).array)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try #require(fd >= 0)
        defer { close(fd) }
        for (offset, count) in [(1 << 20, 3 << 20), (40 << 20, 100_000)] {
            let written = image.withUnsafeBytes { pwrite(fd, $0.baseAddress! + offset, count, off_t(offset)) }
            try #require(written == count)
        }
        try #require(ftruncate(fd, off_t(image.count)) == 0)
        return image
    }

    /// Bytes the host file system gives the file (st_blocks).
    static func allocated(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : -1
    }

    @Test("import a sparse image, snapshot, write, export the snapshot, the disk and to standard output: the bytes of each point, and holes kept")
    func importSnapshotExport() throws {
        let (scratch, lun) = try Self.volume()
        try Self.run(["fs", "mkdir", "-p", "\(lun):/vms/web01"])
        let disk = "\(lun):/vms/web01/disk0.raw"
        let source = scratch.path("debian.raw")
        let image = try Self.sparseImage(source)
        let imported = try Self.json(["disk", "import", source, disk, "--json"])
        #expect(imported["created"] as? Bool == true && imported["size"] as? Int == 64 << 20, "\(imported)")
        #expect((imported["written"] as? Int ?? .max) <= 4 << 20, "only the data are written: \(imported)")
        var info = try Self.json(["disk", "info", disk, "--json"])
        #expect(info["size"] as? Int == 64 << 20 && info["format"] as? String == "raw" && info["snapshots"] as? Int == 0, "\(info)")
        #expect((info["allocated"] as? Int ?? .max) <= 4 << 20, "the disk stays thin: \(info)")
        try Self.run(["disk", "snapshot", disk, "installed"])
        // A write into the disk: 1 MiB imported over it at 2 MiB.
        let patch = scratch.path("patch.raw")
        let patchBytes = Data(pattern(1 << 20, seed: 13).array)
        #expect(FileManager.default.createFile(atPath: patch, contents: patchBytes))
        let into = try Self.json(["disk", "import", patch, disk, "--offset", "2M", "--json"])
        #expect(into["created"] as? Bool == false && into["size"] as? Int == 64 << 20, "\(into)")
        info = try Self.json(["disk", "info", disk, "--json"])
        #expect(info["parent"] as? String == "installed" && info["snapshots"] as? Int == 1 && (info["shared"] as? Int ?? 0) > 0, "\(info)")
        let snapshotInfo = try Self.json(["disk", "info", "\(disk)@installed", "--json"])
        #expect(snapshotInfo["snapshot"] as? String == "installed" && snapshotInfo["size"] as? Int == 64 << 20, "\(snapshotInfo)")

        let backup = scratch.path("installed.raw")
        let exported = try Self.json(["disk", "export", "\(disk)@installed", backup, "--json"])
        #expect(exported["size"] as? Int == 64 << 20, "\(exported)")
        #expect(FileManager.default.contents(atPath: backup) == image, "the snapshot as imported")
        #expect(Self.allocated(backup) <= 4 << 20, "holes stay holes: \(Self.allocated(backup)) bytes allocated")
        let live = scratch.path("live.raw")
        try Self.run(["disk", "export", disk, live])
        var expected = image
        expected.replaceSubrange((2 << 20)..<(3 << 20), with: patchBytes)
        #expect(FileManager.default.contents(atPath: live) == expected, "the disk with the write")
        let piped = scratch.path("piped.raw")
        try Self.shell("disk export '\(disk)@installed' - > '\(piped)'")
        #expect(FileManager.default.contents(atPath: piped) == image, "standard output: every byte")

        // From standard input: the disk made as large as what came, zeros skipped.
        let streamed = "\(lun):/vms/web01/stdin.raw"
        try Self.shell("disk import - '\(streamed)' < '\(source)'")
        info = try Self.json(["disk", "info", streamed, "--json"])
        #expect(info["size"] as? Int == 64 << 20 && (info["allocated"] as? Int ?? .max) <= 4 << 20, "\(info)")
        try Self.run(["disk", "export", streamed, scratch.path("stdin.raw")])
        #expect(FileManager.default.contents(atPath: scratch.path("stdin.raw")) == image)
        // --progress draws on standard error even when it is not a terminal.
        let progress = try Self.run(["disk", "import", "--progress", source, "\(lun):/vms/web01/progress.raw"])
        #expect(progress.stderr.contains("100%"), "\(progress.stderr)")
        #expect(try Self.run(["fs", "fsck", lun]).status == 0)
    }

    @Test("resize: +N, absolute, -N only with --shrink, whole sectors; a snapshot keeps its size and a revert brings it back")
    func resize() throws {
        let (scratch, lun) = try Self.volume()
        let disk = "\(lun):/disk.raw"
        try Self.run(["disk", "create", disk, "--size", "64M"])
        try Self.run(["disk", "snapshot", disk, "small"])
        var resized = try Self.json(["disk", "resize", disk, "+64M", "--json"])
        #expect(resized["old_size"] as? Int == 64 << 20 && resized["size"] as? Int == 128 << 20, "\(resized)")
        #expect(try Self.json(["disk", "info", "\(disk)@small", "--json"])["size"] as? Int == 64 << 20, "the snapshot keeps its size")
        try Self.refused(["disk", "resize", disk, "1000"], "512-byte sectors: give 1024 or 512")
        try Self.refused(["disk", "resize", disk, "12x"], "is not a size")
        try Self.refused(["disk", "resize", disk, "-1M"], "--shrink")
        try Self.refused(["disk", "resize", disk, "1M"], "--shrink")
        try Self.refused(["disk", "resize", "\(disk)@small", "1G"], "a snapshot keeps the size")
        #expect(try Self.json(["disk", "info", disk, "--json"])["size"] as? Int == 128 << 20, "refusals change nothing")
        resized = try Self.json(["disk", "resize", "--shrink", disk, "-32M", "--json"])
        #expect(resized["size"] as? Int == 96 << 20, "\(resized)")
        try Self.run(["disk", "resize", disk, "1G"])
        try Self.run(["disk", "revert", disk, "small"])
        #expect(try Self.json(["disk", "info", disk, "--json"])["size"] as? Int == 64 << 20, "revert restores the snapshot's size")
        #expect(try Self.run(["fs", "fsck", lun]).status == 0)
    }

    @Test("refusals: qcow2 and vmdk sources, data past a disk's end, an existing DST, a missing snapshot, a disk another process holds")
    func refusals() throws {
        let (scratch, lun) = try Self.volume()
        let disk = "\(lun):/disk.raw"
        let qcow2 = scratch.path("debian.qcow2")
        #expect(FileManager.default.createFile(atPath: qcow2, contents: Data([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]) + Data(count: 1 << 20)))
        try Self.refused(["disk", "import", qcow2, disk], "qemu-img convert -O raw \(qcow2)")
        let vmdk = scratch.path("disk.vmdk")
        #expect(FileManager.default.createFile(atPath: vmdk, contents: Data("# Disk DescriptorFile\nversion=1\n".utf8)))
        try Self.refused(["disk", "import", vmdk, disk], "is a vmdk image")
        let piped = try system("/bin/sh", ["-c", "\"\(LunarProcess.executable.path)\" disk import - '\(disk)' < '\(qcow2)'"])
        #expect(piped.status == 1 && piped.output.contains("standard input is a qcow2 image"), "\(piped.output)")
        #expect(try !Self.run(["fs", "ls", lun]).stdout.contains("disk.raw"), "a refused import leaves no disk")

        try Self.run(["disk", "create", disk, "--size", "1M"])
        let big = scratch.path("big.raw")
        #expect(FileManager.default.createFile(atPath: big, contents: Data(pattern(2 << 20, seed: 1).array)))
        try Self.refused(["disk", "import", big, disk], "give --size")
        try Self.refused(["disk", "import", big, disk, "--size", "1000"], "512-byte sectors")
        try Self.refused(["disk", "import", big, "\(disk)@snap"], "is never written")
        try Self.run(["disk", "import", big, disk, "--size", "2M"])

        let out = scratch.path("out.raw")
        #expect(FileManager.default.createFile(atPath: out, contents: Data("keep".utf8)))
        try Self.refused(["disk", "export", disk, out], "add --force")
        #expect(FileManager.default.contents(atPath: out) == Data("keep".utf8), "the existing file is untouched")
        try Self.run(["disk", "export", "--force", disk, out])
        #expect(FileManager.default.contents(atPath: out) == Data(pattern(2 << 20, seed: 1).array))
        let never = scratch.path("never.raw")
        try Self.refused(["disk", "export", "\(disk)@nope", never], "no snapshot 'nope'")
        #expect(!FileManager.default.fileExists(atPath: never), "no file for a refused export")
        try Self.refused(["disk", "info", "\(disk)@nope"], "no snapshot 'nope'")

        // Another process holds the disk (an import waiting on its standard input): resize
        // is refused, naming it.
        // A resize probing for the hold may itself hold the disk just when the import opens it,
        // and refuse the import: then the import is started again.
        var refusal = ""
        var holderStatus: Int32 = -1
        var holderError = ""
        for _ in 0..<5 {
            let holder = Process()
            holder.executableURL = LunarProcess.executable
            holder.arguments = ["disk", "import", "-", disk]
            let input = Pipe(), err = Pipe()
            holder.standardInput = input
            holder.standardError = err
            holder.standardOutput = FileHandle.nullDevice
            try holder.run()
            input.fileHandleForWriting.write(Data(pattern(4096, seed: 2).array))
            refusal = ""
            for _ in 0..<50 where holder.isRunning {
                // Its own size: a no-op should the holder not have the disk yet.
                let resize = try LunarProcess.run(["disk", "resize", disk, "2M"])
                refusal = resize.stderr
                if refusal.contains("held by") { break }
                usleep(100_000)
            }
            try? input.fileHandleForWriting.close()
            holder.waitUntilExit()
            holderStatus = holder.terminationStatus
            holderError = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if refusal.contains("held by") {
                #expect(refusal.contains("pid \(holder.processIdentifier)"), "\(refusal)")
                break
            }
        }
        #expect(refusal.contains("held by host"), "\(refusal)")
        #expect(holderStatus == 0, "\(holderError)")
        try Self.run(["disk", "resize", disk, "+1M"])
        #expect(try Self.run(["fs", "fsck", lun]).status == 0)
    }
}
