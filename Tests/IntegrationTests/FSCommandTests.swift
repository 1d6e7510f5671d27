import Foundation
import LunarTesting
import Testing

/// `lunar fs`, through the real binary: each test makes its own sparse 2 GiB volume.
@Suite("lunar fs command line")
struct FSCommandTests {
    /// A scratch directory with a freshly made volume in it.
    final class Fixture {
        let scratch = Scratch()
        let lun: String
        let mkfs: LunarProcess.Output

        init() throws {
            lun = scratch.path("vol.img")
            mkfs = try LunarProcess.run(["fs", "mkfs", lun, "--size", "2G", "--label", "test", "--json"])
            try #require(mkfs.status == 0, "mkfs: \(mkfs.stderr)")
        }

        func path(_ inside: String) -> String { "\(lun):\(inside)" }

        /// Runs `lunar fs ARGS` and requires it to succeed.
        @discardableResult
        func fs(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> LunarProcess.Output {
            let output = try LunarProcess.run(["fs"] + arguments)
            #expect(output.status == 0, "lunar fs \(arguments.joined(separator: " ")): \(output.stderr)", sourceLocation: sourceLocation)
            return output
        }

        func json(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> Any {
            let output = try fs(arguments, sourceLocation: sourceLocation)
            return try JSONSerialization.jsonObject(with: Data(output.stdout.utf8))
        }
    }

    /// 5 MiB: 2 MiB of data, a 1 MiB hole, 2 MiB of data.
    static func holeyFile(at path: String) throws -> Data {
        let size = 5 << 20
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        let head = Data(pattern(2 << 20, seed: 1).array)
        let tail = Data(pattern(2 << 20, seed: 2).array)
        try handle.write(contentsOf: head)
        try handle.seek(toOffset: 3 << 20)
        try handle.write(contentsOf: tail)
        try handle.truncate(atOffset: UInt64(size))
        try handle.close()
        // Whatever the umask: the listings below show the mode.
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        return head + Data(count: 1 << 20) + tail
    }

    static func blocks(_ path: String) -> (size: Int, allocated: Int) {
        var st = stat()
        guard stat(path, &st) == 0 else { return (-1, -1) }
        return (Int(st.st_size), Int(st.st_blocks) * 512)
    }

    @Test("mkfs makes a sparse image; info and df describe it")
    func mkfsInfoDf() throws {
        let f = try Fixture()
        #expect(f.mkfs.status == 0, "\(f.mkfs.stderr)")
        let made = try #require(f.mkfs.json)
        let (size, allocated) = Self.blocks(f.lun)
        #expect(size == 2 << 30)
        #expect(allocated < 64 << 20, "mkfs should leave the image sparse")
        #expect((made["block_size"] as? NSNumber)?.intValue == 1 << 20)

        let info = try #require(try f.json(["info", "--json", f.lun]) as? [String: Any])
        #expect(info["uuid"] as? String == made["uuid"] as? String)
        #expect(info["label"] as? String == "test")
        #expect((info["size_bytes"] as? NSNumber)?.intValue == 2 << 30)
        #expect((info["host_slots"] as? NSNumber)?.intValue == 256)
        let human = try f.fs(["info", f.lun])
        #expect(human.stdout.contains(made["uuid"] as? String ?? "?"))

        let df = try #require(try f.json(["df", "--json", f.lun]) as? [String: Any])
        #expect((df["allocated_bytes"] as? NSNumber)?.intValue == 0)
        #expect((df["directories"] as? NSNumber)?.intValue == 1)
        #expect((df["capacity_bytes"] as? NSNumber)?.intValue == (made["data_capacity_bytes"] as? NSNumber)?.intValue)

        // A second mkfs would destroy the volume: it needs --force.
        let again = try LunarProcess.run(["fs", "mkfs", f.lun])
        #expect(again.status == 1)
        #expect(again.stderr.contains("already holds a LunarFS volume"))
        #expect(try LunarProcess.run(["fs", "mkfs", f.lun, "--force"]).status == 0)
    }

    @Test("cp in and out keeps the bytes and the holes; ls, stat, cat and df agree")
    func copyRoundTrip() throws {
        let f = try Fixture()
        let source = f.scratch.path("disk.raw")
        let content = try Self.holeyFile(at: source)

        try f.fs(["mkdir", "-p", f.path("/vms/web01")])
        let copied = try f.fs(["cp", source, f.path("/vms/web01/")])
        #expect(copied.stderr.contains("5 MiB"))

        let listing = try f.fs(["ls", "-l", f.path("/vms/web01")])
        #expect(listing.stdout.contains("-rw-r--r--"))
        #expect(listing.stdout.contains("5242880"))
        #expect(listing.stdout.hasSuffix("disk.raw\n"))

        let entries = try #require(try f.json(["ls", "--json", "-R", f.path("/vms")]) as? [[String: Any]])
        #expect(entries.map { $0["path"] as? String } == ["/vms/web01", "/vms/web01/disk.raw"])
        let file = try #require(entries.last)
        #expect(file["name"] as? String == "disk.raw")
        #expect(file["type"] as? String == "file")
        #expect((file["size"] as? NSNumber)?.intValue == 5 << 20)
        // The hole was not copied: four 1 MiB blocks hold the data.
        #expect((file["allocated"] as? NSNumber)?.intValue == 4 << 20)
        #expect(file["mode"] as? String == "-rw-r--r--")
        #expect((file["modified"] as? String).flatMap(parseISO8601) != nil)

        let stat = try #require(try f.json(["stat", "--json", f.path("/vms/web01/disk.raw")]) as? [String: Any])
        #expect(stat["inode"] as? Int == file["inode"] as? Int)
        #expect(stat["storage"] as? String == "grains (shareable)")
        #expect((stat["unit_size"] as? NSNumber)?.intValue == 64 << 10)
        #expect((stat["links"] as? NSNumber)?.intValue == 1)
        #expect((stat["allocated"] as? NSNumber)?.intValue == 4 << 20)

        let back = f.scratch.path("back.raw")
        try f.fs(["cp", "--quiet", f.path("/vms/web01/disk.raw"), back])
        #expect(FileManager.default.contents(atPath: back) == content)
        let (size, allocated) = Self.blocks(back)
        #expect(size == 5 << 20)
        #expect(allocated < size, "the copy out should keep the hole")

        // Into a host directory: under the file's own name.
        let directory = f.scratch.path("out")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try f.fs(["cp", "-q", f.path("/vms/web01/disk.raw"), directory])
        #expect(FileManager.default.contents(atPath: directory + "/disk.raw") == content)

        let text = f.scratch.path("notes.txt")
        try "hello, lunar\n".write(toFile: text, atomically: false, encoding: .utf8)
        try f.fs(["cp", "-q", text, f.path("/notes.txt")])
        #expect(try f.fs(["cat", f.path("/notes.txt")]).stdout == "hello, lunar\n")

        let df = try #require(try f.json(["df", "--json", f.lun]) as? [String: Any])
        let number = { (key: String) in (df[key] as? NSNumber)?.uint64Value ?? 0 }
        #expect(number("capacity_bytes") == number("allocated_bytes") + number("free_bytes"))
        #expect(number("provisioned_bytes") == 5 << 20 + 13)
        #expect(number("allocated_bytes") >= 4 << 20)
        #expect(number("files") == 2)
        #expect(number("directories") == 3)
        let resources = try #require(df["resources"] as? [[String: Any]])
        #expect(Set(resources.compactMap { $0["kind"] as? String }) == ["inode", "pointer_block", "small_block", "file_block"])
        for r in resources {
            let total = (r["total"] as? NSNumber)?.uint64Value ?? 0
            #expect(total == ((r["used"] as? NSNumber)?.uint64Value ?? 0) + ((r["free"] as? NSNumber)?.uint64Value ?? 0))
        }
        let inodes = try #require(resources.first { $0["kind"] as? String == "inode" })
        #expect((inodes["used"] as? NSNumber)?.intValue == 5) // root, vms, web01, disk.raw, notes.txt
    }

    @Test("mv renames and moves into directories; rm -r removes a tree")
    func moveAndRemove() throws {
        let f = try Fixture()
        let text = f.scratch.path("a.txt")
        try "a\n".write(toFile: text, atomically: false, encoding: .utf8)
        try f.fs(["mkdir", "-p", f.path("/one/two"), f.path("/archive")])
        try f.fs(["cp", "-q", text, f.path("/one/two/a.txt")])

        try f.fs(["mv", f.path("/one/two/a.txt"), f.path("/one/b.txt")])
        #expect(try f.fs(["ls", f.path("/one")]).stdout == "b.txt\ntwo\n")
        // A bare /path is in the same volume; an existing directory takes the entry under its name.
        try f.fs(["mv", f.path("/one"), "/archive"])
        #expect(try f.fs(["ls", "-R", f.lun]).stdout == "/:\narchive\n\n/archive:\none\n\n/archive/one:\nb.txt\ntwo\n\n/archive/one/two:\n")
        #expect(try f.fs(["cat", f.path("/archive/one/b.txt")]).stdout == "a\n")

        let notEmpty = try LunarProcess.run(["fs", "rm", f.path("/archive")])
        #expect(notEmpty.status == 1)
        #expect(notEmpty.stderr.contains("directory not empty"))
        try f.fs(["rm", "-r", f.path("/archive")])
        #expect(try f.fs(["ls", f.lun]).stdout == "")
        let df = try #require(try f.json(["df", "--json", f.lun]) as? [String: Any])
        #expect((df["files"] as? NSNumber)?.intValue == 0)
        #expect((df["directories"] as? NSNumber)?.intValue == 1)
        #expect(try f.fs(["fsck", f.lun]).stdout.contains("clean"))
    }

    @Test("fsck: 0 when clean, 4 with a corrupt inode, 1 after repairing it")
    func fsckFindsCorruption() throws {
        let f = try Fixture()
        let clean = try f.fs(["fsck", f.lun])
        #expect(clean.stdout.contains("clean"))

        let source = f.scratch.path("disk.raw")
        _ = try Self.holeyFile(at: source)
        try f.fs(["mkdir", f.path("/vms")])
        try f.fs(["cp", "-q", source, f.path("/vms/disk.raw")])
        #expect(try LunarProcess.run(["fs", "fsck", f.lun]).status == 0)

        let stat = try #require(try f.json(["stat", "--json", f.path("/vms/disk.raw")]) as? [String: Any])
        let inode = try #require((stat["inode"] as? NSNumber)?.uint64Value)
        let info = try #require(try f.json(["info", "--json", f.lun]) as? [String: Any])
        let areas = try #require(info["areas"] as? [String: Any])
        let inodeArea = try #require(areas["inode"] as? [String: Any])
        let area = try #require((inodeArea["data_offset"] as? NSNumber)?.uint64Value)
        let record = area + inode * 4096
        // A byte of the reserved span: only the checksum can notice.
        let handle = try #require(FileHandle(forUpdatingAtPath: f.lun))
        try handle.seek(toOffset: record + 200)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: record + 200)
        try handle.write(contentsOf: Data([byte ^ 0xFF]))
        try handle.close()

        let found = try LunarProcess.run(["fs", "fsck", f.lun])
        #expect(found.status == 4, "\(found.stdout)\(found.stderr)")
        #expect(found.stdout.contains("points at inode \(inode), which is damaged"), "\(found.stdout)")
        #expect(found.stdout.contains("--repair"))
        let report = try #require(try LunarProcess.run(["fs", "fsck", "--json", f.lun]).json)
        #expect(report["exit_code"] as? Int == 4)
        #expect(!((report["problems"] as? [Any])?.isEmpty ?? true))

        // Reaching the file names the record and where it is.
        let broken = try LunarProcess.run(["fs", "stat", f.path("/vms/disk.raw")])
        #expect(broken.status == 1)
        #expect(broken.stderr.contains("lunar: \(f.lun):/vms/disk.raw: corrupt file descriptor (inode) at byte offset \(record)"))

        let repaired = try LunarProcess.run(["fs", "fsck", "--repair", f.lun])
        #expect(repaired.status == 1, "\(repaired.stdout)\(repaired.stderr)")
        #expect(repaired.stdout.contains("all repaired"))
        #expect(try LunarProcess.run(["fs", "fsck", f.lun]).status == 0)
    }

    @Test("bad arguments and missing paths give clear errors")
    func errors() throws {
        let f = try Fixture()
        let junk = f.scratch.path("junk.img")
        #expect(FileManager.default.createFile(atPath: junk, contents: Data(count: 1 << 20)))
        let notVolume = try LunarProcess.run(["fs", "ls", junk])
        #expect(notVolume.status == 1)
        #expect(notVolume.stderr.contains("not a LunarFS volume"))
        #expect(try LunarProcess.run(["fs", "fsck", junk]).status == 8)

        let local = f.scratch.path("a.txt")
        try "a".write(toFile: local, atomically: false, encoding: .utf8)
        let twoLocal = try LunarProcess.run(["fs", "cp", local, f.scratch.path("b.txt")])
        #expect(twoLocal.status == 1)
        #expect(twoLocal.stderr.contains("one side must be LUN:/path"))

        let missing = try LunarProcess.run(["fs", "stat", f.path("/nope")])
        #expect(missing.status == 1)
        #expect(missing.stderr == "lunar: \(f.lun):/nope: no such file or directory\n")
        let missingOut = try LunarProcess.run(["fs", "cp", f.path("/nope"), f.scratch.path("out")])
        #expect(missingOut.stderr.contains("no such file or directory"))
        #expect(!FileManager.default.fileExists(atPath: f.scratch.path("out")))
        let missingLUN = try LunarProcess.run(["fs", "ls", f.scratch.path("none.img")])
        #expect(missingLUN.status == 1)
        #expect(missingLUN.stderr.contains("no such file or directory"))

        let noColon = try LunarProcess.run(["fs", "mkdir", f.lun])
        #expect(noColon.status == 1)
        #expect(noColon.stderr.contains("is not a path inside a volume"))

        let root = try LunarProcess.run(["fs", "rm", "-r", f.path("/")])
        #expect(root.status == 1)
        #expect(root.stderr.contains("refusing to remove the root"))

        let otherVolume = try LunarProcess.run(["fs", "mv", f.path("/x"), "other.img:/x"])
        #expect(otherVolume.status == 1)
        #expect(otherVolume.stderr.contains("mv moves inside one volume"))

        let size = try LunarProcess.run(["fs", "mkfs", f.scratch.path("new.img"), "--size", "12Q"])
        #expect(size.status == 64)
        #expect(size.stderr.contains("'12Q' is not a size"))
        let tooSmall = try LunarProcess.run(["fs", "mkfs", f.scratch.path("new.img"), "--size", "16M"])
        #expect(tooSmall.status == 1)
        #expect(tooSmall.stderr.contains("needs at least"))
        #expect(!FileManager.default.fileExists(atPath: f.scratch.path("new.img")), "a failed mkfs leaves no image behind")
    }

    @Test("mkfs refuses sizes no volume can have, with the limit and what to do, and leaves no image behind")
    func mkfsSizeLimits() throws {
        let scratch = Scratch()
        let new = scratch.path("new.img")
        for size in ["0", "4095", "18446744073709551615", "16383P"] {
            let out = try LunarProcess.run(["fs", "mkfs", new, "--size", size])
            #expect(out.status == 1, "--size \(size): \(out.stderr)")
            #expect(out.stderr.contains("too small") && out.stderr.contains("needs at least 312 MiB")
                    || out.stderr.contains("too large") && out.stderr.contains("give it at most 256.0 TiB"), "--size \(size): \(out.stderr)")
            #expect(!out.stderr.contains("Fatal error") && !out.stderr.contains("Backtrac"), "\(out.stderr)")
            #expect(!FileManager.default.fileExists(atPath: new), "--size \(size) left an image behind")
        }
        for (option, value) in [("--max-files", "18446744073709551615"), ("--journal-size", "18446744073709551615"),
                                ("--block-size", "18446744073709551615"), ("--journal-size", "16383P")] {
            let out = try LunarProcess.run(["fs", "mkfs", new, "--size", "1P", option, value])
            #expect(out.status == 1 && out.stderr.hasPrefix("lunar: "), "\(option) \(value): \(out.stderr)")
            #expect(!FileManager.default.fileExists(atPath: new), "\(option) \(value) left an image behind")
        }

        // An existing empty image without --size: the same error, and how to give it a size.
        let empty = scratch.path("empty.img")
        #expect(FileManager.default.createFile(atPath: empty, contents: nil))
        let out = try LunarProcess.run(["fs", "mkfs", empty])
        #expect(out.status == 1 && out.stderr.contains("too small") && out.stderr.contains("--size resizes it"), "\(out.stderr)")
        #expect(try LunarProcess.run(["fs", "mkfs", empty, "--size", "400M"]).status == 0)

        // A refused size leaves an existing image as it was (not truncated first).
        let kept = try LunarProcess.run(["fs", "mkfs", empty, "--force", "--size", "0"])
        #expect(kept.status == 1 && kept.stderr.contains("too small"), "\(kept.stderr)")
        #expect(Self.blocks(empty).size == 400 << 20)
        #expect(try LunarProcess.run(["fs", "fsck", empty]).status == 0)
    }

    @Test("mkfs --force refuses a volume a live host holds, naming it; a dead host's slot does not block")
    func mkfsLiveHost() throws {
        let f = try Fixture()
        // A host elsewhere (judged by its heartbeat) that has the volume open but lets the metadata lock go.
        let (holder, _) = try StalledHostTests.holder(f.lun, path: "/disk", machine: "machine-a", keepMetadataLock: false)
        defer { if holder.isRunning { kill(holder.processIdentifier, SIGKILL); holder.waitUntilExit() } }
        let refused = try LunarProcess.run(["fs", "mkfs", f.lun, "--force"])
        #expect(refused.status == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("pid \(holder.processIdentifier), slot ") && refused.stderr.contains("is alive")
                && refused.stderr.contains("stop that host"), "\(refused.stderr)")
        #expect(try f.fs(["ls", f.lun]).stdout == "disk\n", "the volume is untouched")

        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        // Its heartbeat (0.2 s) stands still for the lock-break timeout: judged dead, mkfs goes ahead.
        let made = try LunarProcess.run(["fs", "mkfs", f.lun, "--force"])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(try f.fs(["ls", f.lun]).stdout.isEmpty)
    }

    @Test("cp reads a host source whose size says nothing (procfs, a pipe) to its end; status goes to stderr")
    func copyStreams() throws {
        let f = try Fixture()
        let status = try f.fs(["cp", "/proc/self/status", f.path("/status")])
        #expect(status.stdout.isEmpty, "status line on stdout: \(status.stdout)")
        #expect(status.stderr.contains("copied /proc/self/status"), "\(status.stderr)")
        let copied = try f.fs(["cat", f.path("/status")]).stdout
        #expect(copied.hasPrefix("Name:") && copied.contains("VmRSS:"), "\(copied.prefix(200))")

        // A pipe of 3 MiB + 5 bytes with a zero MiB in the middle: every byte, the zeros as a hole.
        let source = f.scratch.path("piped.bin")
        let content = Data(pattern(1 << 20, seed: 7).array) + Data(count: 1 << 20) + Data(pattern((1 << 20) + 5, seed: 8).array)
        #expect(FileManager.default.createFile(atPath: source, contents: content))
        let piped = try system("/bin/sh", ["-c", "cat '\(source)' | '\(LunarProcess.executable.path)' fs cp /dev/stdin '\(f.path("/piped"))'"])
        #expect(piped.status == 0, "\(piped.output)")
        let stat = try #require(try f.json(["stat", "--json", f.path("/piped")]) as? [String: Any])
        #expect((stat["size"] as? NSNumber)?.intValue == content.count)
        // The last 5 bytes take one 64 KiB grain.
        #expect((stat["allocated"] as? NSNumber)?.intValue == (2 << 20) + (64 << 10), "the zero MiB is a hole: \(stat)")

        // A copy out to standard output is the file's bytes and nothing else.
        let out = try f.fs(["cp", f.path("/status"), "/dev/stdout"])
        #expect(out.stdout == copied)
        #expect(out.stderr.contains("copied \(f.path("/status")) to /dev/stdout"), "\(out.stderr)")
    }

    @Test("mv onto a non-empty directory says so (not rm's -r hint); rm keeps its hint")
    func moveOntoNonEmptyDirectory() throws {
        let f = try Fixture()
        try f.fs(["mkdir", "-p", f.path("/a/d/inside"), f.path("/d/x")])
        let moved = try LunarProcess.run(["fs", "mv", f.path("/d"), f.path("/a")])
        #expect(moved.status == 1)
        #expect(moved.stderr == "lunar: \(f.lun):/a/d: destination directory is not empty; mv replaces only an empty directory "
                + "(move or remove what is in it first, or choose another destination)\n", "\(moved.stderr)")
        #expect(!moved.stderr.contains("-r"))
        let removed = try LunarProcess.run(["fs", "rm", f.path("/a")])
        #expect(removed.status == 1)
        #expect(removed.stderr == "lunar: \(f.lun):/a: directory not empty (use -r to remove it with its contents)\n", "\(removed.stderr)")
    }

    @Test("negative numbers for size and count options are named as such, not 'Missing value'")
    func negativeNumbers() throws {
        let scratch = Scratch()
        let lun = scratch.path("new.img")
        for arguments in [["fs", "mkfs", lun, "--size", "-1"], ["fs", "mkfs", lun, "--block-size", "-64K"],
                          ["fs", "mkfs", lun, "--journal-size", "-1M"], ["fs", "mkfs", lun, "--max-files", "-1"],
                          ["io", "bench", "--size", "-1G"], ["io", "ats-counter", lun, "--offset", "-4096"],
                          ["fs", "bench", lun, "--layout", "-1G"], ["vm", "create", lun, "x", "--memory", "-512M", "--image", "g"]] {
            let out = try LunarProcess.run(arguments)
            #expect(out.status == 64, "\(arguments): \(out.stderr)")
            #expect(!out.stderr.contains("Missing value") && out.stderr.contains("cannot be negative"), "\(arguments): \(out.stderr)")
        }
        for arguments in [["io", "ats-counter", lun, "--increments", "-1"], ["fs", "cp", "a", "\(lun):/a", "--wait", "-1"],
                          ["vm", "create", lun, "x", "--disk", "-1G", "--image", "g"]] {
            let out = try LunarProcess.run(arguments)
            #expect(out.status == 64 && !out.stderr.contains("Missing value"), "\(arguments): \(out.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: lun))
    }

    @Test("host file names that are not UTF-8 work: mkfs, cp in and out, errors name them as typed")
    func nonUTF8HostNames() throws {
        let scratch = Scratch()
        // Swift's Process takes arguments as Strings, which cannot hold these bytes: bash passes them.
        let script = """
            set -e
            cd '\(scratch.path(""))'
            L='\(LunarProcess.executable.path)'
            printf 'latin-1 named\\n' > $'caf\\xe9.txt'
            "$L" fs mkfs $'vol\\xe9.img' --size 400M > made.txt
            "$L" fs mkdir $'vol\\xe9.img:/in'
            "$L" fs cp $'caf\\xe9.txt' $'vol\\xe9.img:/in/' 2> copied.txt
            "$L" fs ls $'vol\\xe9.img:/in' > listed.txt
            "$L" fs cp $'vol\\xe9.img:/in/caf\\xef\\xbf\\xbd.txt' $'out\\xe9.txt' 2>> copied.txt
            cmp $'caf\\xe9.txt' $'out\\xe9.txt'
            if "$L" fs cp $'missing\\xe9.txt' $'vol\\xe9.img:/in/' 2> missing.txt; then exit 9; fi
            """
        let run = try system("/bin/bash", ["-c", script])
        #expect(run.status == 0, "\(run.output)")
        func read(_ name: String) -> String { (try? String(contentsOfFile: scratch.path(name), encoding: .utf8)) ?? "" }
        // Messages name the files as Swift shows them (U+FFFD for the byte that is not UTF-8), never /proc/self/fd/N.
        #expect(read("made.txt").hasPrefix("made a LunarFS volume on vol\u{FFFD}.img\n"), "\(read("made.txt"))")
        #expect(read("listed.txt") == "caf\u{FFFD}.txt\n")
        #expect(read("copied.txt").contains("copied caf\u{FFFD}.txt to vol\u{FFFD}.img:/in/caf\u{FFFD}.txt")
                && read("copied.txt").contains("to out\u{FFFD}.txt"), "\(read("copied.txt"))")
        #expect(read("missing.txt") == "lunar: missing\u{FFFD}.txt: No such file or directory\n", "\(read("missing.txt"))")
        #expect(!read("copied.txt").contains("/proc/self/fd"))
        // The files have their own bytes as names; no stand-in link is left behind.
        let names = try FileManager.default.contentsOfDirectory(atPath: scratch.path("")).sorted()
        #expect(names.filter { $0.hasSuffix(".img") }.count == 1)
        let temporary = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary).allSatisfy { !$0.hasPrefix("lunar-paths-") })
    }
}

private func parseISO8601(_ text: String) -> Date? {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.date(from: text)
}
