import Foundation
import LunarIO
import LunarTesting
import Testing

/// `lunar vm`, through the real binary, with freestanding guests the test compiles: VMs made
/// on a scratch volume, listed, run with their console on the process's standard output.
@Suite("lunar vm command line", .enabled(if: FreestandingGuests.available, Comment(rawValue: FreestandingGuests.whyNot)))
struct VMCommandTests {
    final class Fixture {
        let scratch = Scratch()
        let lun: String

        /// A volume on a scratch image, or on `lun` (an iSCSI URL, say).
        init(lun given: String? = nil) throws {
            lun = given ?? scratch.path("vol.img")
            let mkfs = try LunarProcess.run(["fs", "mkfs", lun] + (given == nil ? ["--size", "2G"] : []))
            try #require(mkfs.status == 0, "mkfs: \(mkfs.stderr)")
        }

        /// Builds Tools/guest/freestanding/NAME into the scratch directory.
        func guest(_ name: String, defines: [String] = [], elf: Bool = false) throws -> String {
            try FreestandingGuests.build(name, defines: defines, elf: elf,
                                         into: scratch.path("\(name)-\(defines.joined(separator: "-")).\(elf ? "elf" : "bin")"))
        }

        func vm(_ arguments: [String]) throws -> LunarProcess.Output {
            try LunarProcess.run(["vm"] + arguments)
        }

        func list() throws -> [[String: Any]] {
            let out = try vm(["list", lun, "--json"])
            #expect(out.status == 0, "\(out.stderr)")
            return (try JSONSerialization.jsonObject(with: Data(out.stdout.utf8))) as? [[String: Any]] ?? []
        }
    }

    @Test("create with a freestanding image, list it, run it: its serial text and power-off status come out")
    func hello() throws {
        let f = try Fixture()
        let image = try f.guest("hello.c")
        let created = try f.vm(["create", f.lun, "hello", "--memory", "64M", "--image", image])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("created VM hello"))

        let vms = try f.list()
        #expect(vms.count == 1)
        let vm = try #require(vms.first)
        #expect(vm["name"] as? String == "hello")
        #expect((vm["cpus"] as? NSNumber)?.intValue == 1)
        #expect((vm["memory_bytes"] as? NSNumber)?.uint64Value == 64 << 20)
        #expect((vm["boot"] as? [String: Any])?["kind"] as? String == "freestanding")
        #expect((vm["boot"] as? [String: Any])?["format"] as? String == "flat")
        #expect((vm["disks"] as? [Any])?.isEmpty == true)
        let human = try f.vm(["list", f.lun])
        #expect(human.stdout.contains("hello") && human.stdout.contains("64 MiB"))

        // The image was copied into the VM's folder: the host file is not needed any more.
        try FileManager.default.removeItem(atPath: image)
        let run = try f.vm(["run", f.lun, "hello", "--verbose"])
        #expect(run.stdout == "hello from the guest\n")
        #expect(run.status == 0x31, "\(run.stderr)")
        #expect(run.stderr.contains("KVM: "))
        #expect(run.stderr.contains("64 MiB memory, 1 vCPU"))
        #expect(run.stderr.contains("powered off with status 49 after"))

        // Quiet without --verbose; the console can be sent elsewhere for one run.
        let quiet = try f.vm(["run", f.lun, "hello"])
        #expect(quiet.stderr.isEmpty, "\(quiet.stderr)")
        let log = f.scratch.path("console.log")
        let logged = try f.vm(["run", f.lun, "hello", "--console", log])
        #expect(logged.stdout.isEmpty)
        #expect(logged.status == 0x31)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "hello from the guest\n")
        let reset = try f.vm(["create", f.lun, "rebooter", "--memory", "8M", "--image", try f.guest("hello.c", defines: ["STOP_BY_RESET"])])
        #expect(reset.status == 0, "\(reset.stderr)")
        let rebooted = try f.vm(["run", f.lun, "rebooter", "-v"])
        #expect(rebooted.status == 0)
        #expect(rebooted.stderr.contains("reset after"))
    }

    @Test("a virtio-blk guest writes its disk: the data is in the disk file on the volume afterwards")
    func virtioDisk() throws {
        let f = try Fixture()
        let image = try f.guest("virtio_blk.c", elf: true)
        let created = try f.vm(["create", f.lun, "blk", "--memory", "64M", "--image", image, "--disk", "16M", "--disk", "4M,ro"])
        #expect(created.status == 0, "\(created.stderr)")
        let before = try #require(try f.list().first)
        let disks = try #require(before["disks"] as? [[String: Any]])
        #expect(disks.map { $0["name"] as? String } == ["disk0", "disk1"])
        #expect(disks.map { ($0["size_bytes"] as? NSNumber)?.intValue } == [16 << 20, 4 << 20])
        #expect(disks.map { $0["read_only"] as? Bool } == [false, true])
        #expect((disks[0]["allocated_bytes"] as? NSNumber)?.intValue == 0, "disks are thin")

        let run = try f.vm(["run", f.lun, "blk", "--verbose"])
        #expect(run.stdout == "virtio-blk ok\n")
        #expect(run.status == 0x31, "\(run.stderr)")
        #expect(run.stderr.contains("disk0: /vms/blk/disk0.raw, 16 MiB, virtio-mmio at 0xd0000000 IRQ 5"))
        #expect(run.stderr.contains("disk1: /vms/blk/disk1.raw, 4 MiB read-only, virtio-mmio at 0xd0000200 IRQ 6"))

        let cat = try LunarProcess.run(["fs", "cat", "\(f.lun):/vms/blk/disk0.raw"])
        #expect(cat.status == 0)
        let data = Array(cat.stdout.utf8)
        #expect(data.count == 16 << 20)
        let text = Array("LunarFS disk written by a KVM guest through virtio-blk".utf8)
        #expect(Array(data[1024..<1536]) == (0..<512).map { text[$0 % text.count] })
        let after = try #require(try f.list().first?["disks"] as? [[String: Any]])
        #expect(((after[0]["allocated_bytes"] as? NSNumber)?.intValue ?? 0) > 0)
    }

    @Test("lunar-vmm, the VMM process lunar vm run execs: no Foundation loaded; wrong command lines get the usage and status 2")
    func vmmProcess() throws {
        let f = try Fixture()
        let linked = try system("/usr/bin/ldd", [LunarProcess.built("lunar-vmm").path])
        #expect(linked.status == 0 && linked.output.contains("libc.so"), "\(linked.output)")
        #expect(!linked.output.contains("Foundation") && !linked.output.contains("libswiftCore"), "\(linked.output)")

        func vmm(_ arguments: [String]) throws -> LunarProcess.Output { try LunarProcess.run(arguments, program: "lunar-vmm") }
        for (arguments, message) in [([], "no command given"), (["start"], "unknown command 'start'"),
                                     (["boot"], "boot takes IMAGE, got 0 operands"), (["boot", "a", "--bogus"], "unknown option --bogus"),
                                     (["boot", "a", "--memory"], "--memory needs a value"), (["boot", "a", "--memory", "12Q"], "'12Q' is not a size"),
                                     (["run", f.lun, "x", "--console", "tty"], "--console 'tty'")] {
            let out = try vmm(arguments)
            #expect(out.status == 2, "\(arguments): \(out.stderr)")
            #expect(out.stderr.contains(message), "\(arguments): \(out.stderr)")
        }
        #expect(try vmm(["--help"]).stdout.contains("usage: lunar-vmm run LUN NAME"))
        let missing = try vmm(["boot", f.scratch.path("nope.bin")])
        #expect(missing.status == 1 && missing.stderr.contains("nope.bin: No such file or directory"), "\(missing.stderr)")
        let noVolume = try vmm(["run", f.scratch.path("nope.img"), "a"])
        #expect(noVolume.status == 1 && noVolume.stderr.contains("nope.img: no such file or directory"), "\(noVolume.stderr)")
        let unknown = try vmm(["run", f.lun, "zz"])
        #expect(unknown.status == 1 && unknown.stderr.contains("no VM named 'zz'"), "\(unknown.stderr)")
    }

    /// A Unix-socket client of a VM's console.
    struct ConsoleClient {
        let fd: Int32

        /// Connects to `path`, waiting up to 10 s for the VMM to listen there.
        init(_ path: String) throws {
            let deadline = Date().addingTimeInterval(10)
            while true {
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                var address = try #require(sockaddr_un(path: path))
                let r = address.withSocketAddress { connect(fd, $0, $1) }
                if r == 0 { self.fd = fd; return }
                Glibc.close(fd)
                guard Date() < deadline else { throw CocoaError(.fileNoSuchFile) }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }

        /// What arrives until `text` was seen, the peer hung up, or 10 s passed.
        func read(until text: String) -> String {
            var seen = [UInt8]()
            let deadline = Date().addingTimeInterval(10)
            while !String(decoding: seen, as: UTF8.self).contains(text), Date() < deadline {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) >= 0 else { break }
                guard p.revents != 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: 256)
                let n = Glibc.read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                seen += buffer[0..<n]
            }
            return String(decoding: seen, as: UTF8.self)
        }

        func send(_ text: String) { _ = text.withCString { write(fd, $0, strlen($0)) } }
        func close() { Glibc.close(fd) }
    }

    @Test("a socket console: a late client gets what the guest printed, types its input; a second is turned away; the socket goes at exit")
    func socketConsole() throws {
        let f = try Fixture()
        let path = f.scratch.path("echo.sock")
        // A socket file a dead VMM left behind is taken over.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = try #require(sockaddr_un(path: path))
        #expect(address.withSocketAddress { bind(stale, $0, $1) } == 0)
        close(stale)
        #expect(try f.vm(["create", f.lun, "echo", "--memory", "8M", "--image", try f.guest("echo.c"), "--console", "socket:\(path)"]).status == 0)
        let running = try LunarProcess.start(["vm", "run", f.lun, "echo"])
        let client = try ConsoleClient(path)
        defer { client.close() }
        // The prompt was printed before anyone listened: it comes from the backlog.
        #expect(client.read(until: "> ") == "> ")
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600, "the console socket is the owner's only")
        let second = try ConsoleClient(path)
        #expect(second.read(until: "\n").contains("attached elsewhere"))
        second.close()
        client.send("abc\n")
        #expect(client.read(until: "\n") == "abc\n")
        let out = running.finish()
        #expect(out.status == 3, "the echo guest powers off with its byte count: \(out.stderr)")
        #expect(access(path, F_OK) != 0, "the socket file is removed")

        // A path that is not a socket is not replaced.
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8)))
        let refused = try f.vm(["run", f.lun, "echo"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("exists and is not a socket"), "\(refused.stderr)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
        // A path longer than a Unix socket address takes.
        let long = try f.vm(["run", f.lun, "echo", "--console", "socket:/" + String(repeating: "s", count: 120)])
        #expect(long.status == 1 && long.stderr.contains("1 to 107 bytes"), "\(long.stderr)")
    }

    @Test("a running VM is snapshotted between two writes of its guest: the snapshot holds the first, the disk the second; revert while it runs is refused")
    func runningSnapshot() throws {
        try Self.snapshotBetweenWrites(try Fixture())
    }

    /// The running-VM snapshot test on `f`'s volume (ISCSITests runs it on an iSCSI LUN too).
    /// `whileRunning` is called once the guest has written point A and waits.
    static func snapshotBetweenWrites(_ f: Fixture, whileRunning: () throws -> Void = {}) throws {
        let path = f.scratch.path("snap.sock")
        let image = try f.guest("virtio_blk.c", defines: ["TWO_POINTS"], elf: true)
        #expect(try f.vm(["create", f.lun, "snap", "--memory", "64M", "--image", image, "--disk", "16M", "--disk", "4M,ro",
                          "--console", "socket:\(path)"]).status == 0)
        let running = try LunarProcess.start(["vm", "run", f.lun, "snap"])
        let client = try ConsoleClient(path)
        defer { client.close() }
        #expect(client.read(until: "point A\n").hasSuffix("point A\n"))
        try whileRunning()

        // The control socket answers hostile lines with errors and keeps serving.
        let shown = try f.vm(["show", f.lun, "snap", "--json"])
        let control = try #require((try JSONSerialization.jsonObject(with: Data(shown.stdout.utf8)) as? [String: Any])?["control_socket"] as? String)
        var st = stat()
        #expect(lstat(control, &st) == 0 && st.st_mode & 0o777 == 0o600, "the control socket is the owner's only")
        let raw = try ConsoleClient(control)
        var lines = ["not json", "[1,2]", "{\"op\":\"bogus\"}", "{\"op\":\"snapshot\"}", "{\"op\":\"snapshot\",\"name\":\"../x\"}",
                     String(repeating: "{", count: 200) + "\u{1}", "{\"op\":\"status\"}"]
        var random = SystemRandomNumberGenerator()
        for _ in 0..<20 { lines.insert(String(decoding: (0..<64).map { _ in UInt8.random(in: 0x20...0x7e, using: &random) }, as: UTF8.self), at: 0) }
        for line in lines {
            raw.send(line + "\n")
            let answer = raw.read(until: "\n")
            if line == "{\"op\":\"status\"}" {
                #expect(answer.contains("\"ok\":true") && answer.contains("\"state\":\"running\""), "\(answer)")
            } else {
                #expect(answer.contains("\"ok\":false") && answer.contains("\"error\""), "\(line): \(answer)")
            }
        }
        raw.send(String(repeating: "x", count: 70_000))
        #expect(raw.read(until: "\n").contains("longer than"))
        raw.close()

        let taken = try f.vm(["snapshot", f.lun, "snap", "s1", "--json"])
        #expect(taken.status == 0, "\(taken.stderr)")
        let answer = try #require(try JSONSerialization.jsonObject(with: Data(taken.stdout.utf8)) as? [String: Any])
        #expect(answer["running"] as? Bool == true)
        #expect((answer["stun_ms"] as? NSNumber).map { $0.doubleValue >= 0 } == true, "\(answer)")
        #expect(answer["disks"] as? [String] == ["/vms/snap/disk0.raw"], "the read-only disk is not snapshotted")
        let again = try f.vm(["snapshot", f.lun, "snap", "s1"])
        #expect(again.status != 0 && again.stderr.contains("already has a snapshot named 's1'"), "\(again.stderr)")
        let revert = try f.vm(["revert", f.lun, "snap", "s1"])
        #expect(revert.status != 0 && revert.stderr.contains("running on this host"), "\(revert.stderr)")
        // Through `lunar disk`, the host holding the disk and the VM are named.
        for words in [["revert", "\(f.lun):/vms/snap/disk0.raw", "s1"], ["snapshot", "\(f.lun):/vms/snap/disk0.raw", "s2"]] {
            let refused = try LunarProcess.run(["disk"] + words)
            #expect(refused.status != 0 && refused.stderr.contains("it is VM snap's disk") && refused.stderr.contains("lunar vm snapshot"),
                    "\(words): \(refused.stderr)")
        }

        client.send("g")
        let out = running.finish()
        #expect(out.status == 0x31, "\(out.stderr)")

        // Both points read back through `lunar disk export`, as a backup would take them.
        var exports = 0
        func sector(_ disk: String, _ index: Int) throws -> [UInt8] {
            exports += 1
            let out = f.scratch.path("export-\(exports).raw")
            let exported = try LunarProcess.run(["disk", "export", "\(f.lun):\(disk)", out])
            #expect(exported.status == 0, "\(exported.stderr)")
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
            #expect(bytes.count == 16 << 20)
            return Array(bytes[(index * 512)..<((index + 1) * 512)])
        }
        let a = [UInt8](repeating: UInt8(ascii: "A"), count: 512), b = [UInt8](repeating: UInt8(ascii: "B"), count: 512)
        #expect(try sector("/vms/snap/disk0.raw@s1", 8) == a)
        #expect(try sector("/vms/snap/disk0.raw@s1", 16) == a)
        #expect(try sector("/vms/snap/disk0.raw", 8) == b)
        #expect(try sector("/vms/snap/disk0.raw", 16) == a)

        // Stopped now: revert brings point A back, and the snapshot list shows it.
        #expect(try f.vm(["revert", f.lun, "snap", "s1"]).status == 0)
        #expect(try sector("/vms/snap/disk0.raw", 8) == a)
        let listed = try f.vm(["snapshots", f.lun, "snap"])
        #expect(listed.stdout.contains("s1") && listed.stdout.contains("<- the disk now"), "\(listed.stdout)")
        #expect(try f.vm(["delete-snapshot", f.lun, "snap", "s1"]).status == 0)
        #expect(try f.vm(["snapshots", f.lun, "snap"]).stdout.contains("no snapshots"))
        #expect(try LunarProcess.run(["fs", "fsck", f.lun]).status == 0)
    }

    @Test("an undo disk: the guest writes it and reads its writes back, and after the run the disk is as before; a crashed run's leftover is replaced")
    func undoDisk() throws {
        let f = try Fixture()
        let image = try f.guest("virtio_blk.c", elf: true)
        #expect(try f.vm(["create", f.lun, "undo", "--memory", "64M", "--image", image, "--disk", "16M,undo"]).status == 0)
        let shown = try f.vm(["show", f.lun, "undo", "--json"])
        #expect(shown.stdout.contains("\"mode\" : \"undo\""), "\(shown.stdout)")
        #expect(try f.vm(["create", f.lun, "bad", "--image", image, "--disk", "16M,undo,ro"]).status != 0)
        // What a run killed with -9 would leave: an overlay holding writes.
        #expect(try LunarProcess.run(["fs", "cp", image, "\(f.lun):/vms/undo/.disk0.raw.undo"]).status == 0)

        for _ in 0..<2 {
            let run = try f.vm(["run", f.lun, "undo"])
            #expect(run.stdout == "virtio-blk ok\n", "the guest reads back what it wrote: \(run.stderr)")
            #expect(run.status == 0x31)
            let ls = try LunarProcess.run(["fs", "ls", "-a", "\(f.lun):/vms/undo"])
            #expect(!ls.stdout.contains(".undo"), "the overlay is gone: \(ls.stdout)")
            let stat = try LunarProcess.run(["fs", "stat", "\(f.lun):/vms/undo/disk0.raw", "--json"])
            #expect(stat.stdout.contains("\"allocated\" : 0,"), "the disk itself was never written: \(stat.stdout)")
        }
        #expect(try LunarProcess.run(["fs", "fsck", f.lun]).status == 0)
    }

    @Test("an idle guest runs until SIGTERM stops it cleanly; the volume is closed")
    func stopBySignal() throws {
        let f = try Fixture()
        #expect(try f.vm(["create", f.lun, "idle", "--memory", "16M", "--image", try f.guest("hello.c", defines: ["IDLE"])]).status == 0)
        let running = try LunarProcess.start(["vm", "run", f.lun, "idle", "-v"])
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("\n") {
            let chunk = running.out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += chunk
        }
        #expect(String(decoding: seen, as: UTF8.self) == "hello from the guest\n")
        Thread.sleep(forTimeInterval: 0.2)
        #expect(running.process.isRunning, "an idle guest keeps running")
        // A VM runs once, disks or none: a second run (another host, as far as the volume
        // knows) is refused with the holder named, and so is removing it.
        let twice = try f.vm(["run", f.lun, "idle"])
        #expect(twice.status == 1 && twice.stderr.contains("VM 'idle' runs already") && twice.stderr.contains("held by"), "\(twice.stderr)")
        running.process.terminate()
        let out = running.finish()
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stderr.contains("stopped by the host"))
        // Closed, not abandoned: a change to the volume goes ahead at once.
        let start = Date()
        #expect(try f.vm(["rm", f.lun, "idle"]).status == 0)
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(try f.list().isEmpty)
    }

    /// `lunar vm run` on a terminal (a pseudo-terminal made by script(1)): raw input to the
    /// guest's UART, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A x quits.
    @Test("on a terminal: typed bytes reach the guest, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A x quits",
          .enabled(if: access("/usr/bin/script", X_OK) == 0, "needs script(1) for a pseudo-terminal"))
    func terminal() throws {
        let f = try Fixture()
        #expect(try f.vm(["create", f.lun, "echo", "--memory", "8M", "--image", try f.guest("echo.c")]).status == 0)
        #expect(try f.vm(["create", f.lun, "idle", "--memory", "8M", "--image", try f.guest("hello.c", defines: ["IDLE"])]).status == 0)

        /// Runs NAME under script(1), waits for `prompt`, types `keys`; returns the exit status
        /// and everything the terminal showed.
        func session(_ name: String, prompt: String, keys: String) throws -> (Int32, String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
            process.arguments = ["-qfec", "\(LunarProcess.executable.path) vm run \(f.lun) \(name) -v", "/dev/null"]
            let input = Pipe(), output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = output
            try process.run()
            let watchdog = DispatchWorkItem { process.terminate() }
            DispatchQueue.global().asyncAfter(deadline: .now() + 30, execute: watchdog)
            defer { watchdog.cancel() }
            var seen = Data()
            while !String(decoding: seen, as: UTF8.self).contains(prompt) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                seen += chunk
            }
            input.fileHandleForWriting.write(Data(keys.utf8))
            seen += output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: seen, as: UTF8.self))
        }

        // The echo guest counts the bytes before the newline: a, b, Ctrl-A, c.
        let (echoStatus, echoed) = try session("echo", prompt: "> ", keys: "ab\u{1}\u{1}c\n")
        #expect(echoStatus == 4, "\(echoed)")
        #expect(echoed.contains("> ab\u{1}c\r\n"), "\(echoed)")
        #expect(echoed.contains("(Ctrl-A x quits)"))

        let (idleStatus, idled) = try session("idle", prompt: "hello from the guest", keys: "\u{1}x")
        #expect(idleStatus == 0, "\(idled)")
        #expect(idled.contains("stopped by the host"), "\(idled)")
    }

    @Test("clear errors: duplicate name, bad --cpus, bad sizes, missing image, no space, unknown VM")
    func errors() throws {
        let f = try Fixture()
        let image = try f.guest("hello.c")
        #expect(try f.vm(["create", f.lun, "a", "--memory", "8M", "--image", image]).status == 0)

        let duplicate = try f.vm(["create", f.lun, "a", "--memory", "8M", "--image", image])
        #expect(duplicate.status == 1)
        #expect(duplicate.stderr.contains("a VM named 'a' already exists"))

        let cpus = try f.vm(["create", f.lun, "b", "--cpus", "17", "--image", image])
        #expect(cpus.status == 1)
        #expect(cpus.stderr.contains("17 vCPUs: choose 1 to 16"))

        let name = try f.vm(["create", f.lun, "bad/name", "--image", image])
        #expect(name.status == 1)
        #expect(name.stderr.contains("VM name 'bad/name'"))

        let memory = try f.vm(["create", f.lun, "b", "--memory", "1M", "--image", image])
        #expect(memory.stderr.contains("memory of 1048576 bytes"))
        let size = try f.vm(["create", f.lun, "b", "--disk", "10Q", "--image", image])
        #expect(size.status == 64)
        #expect(size.stderr.contains("--disk '10Q'"))
        let both = try f.vm(["create", f.lun, "b", "--kernel", image, "--image", image])
        #expect(both.status == 64)

        let missing = try f.vm(["create", f.lun, "b", "--image", f.scratch.path("nope.bin")])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("nope.bin: No such file or directory"))

        let space = try f.vm(["create", f.lun, "b", "--image", image, "--disk", "100G"])
        #expect(space.status == 1)
        #expect(space.stderr.contains("not enough space on the volume"))

        // None of the failures left anything behind.
        #expect(try f.list().map { $0["name"] as? String } == ["a"])

        let unknown = try f.vm(["run", f.lun, "zz"])
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no VM named 'zz'"))
        #expect(try f.vm(["show", f.lun, "zz"]).stderr.contains("no VM named 'zz'"))
        #expect(try f.vm(["rm", f.lun, "zz"]).status == 1)

        // A Linux VM on the paravirtual KVM is refused without --force (and this build cannot
        // boot Linux yet in any case).
        #expect(try f.vm(["create", f.lun, "linux", "--kernel", image, "--cmdline", "console=ttyS0"]).status == 0)
        let linux = try f.vm(["run", f.lun, "linux"])
        #expect(linux.status == 1)
        #expect(linux.stderr.contains("--force") || linux.stderr.contains("cannot do yet"), "\(linux.stderr)")
        let show = try f.vm(["show", f.lun, "linux", "--json"])
        #expect(show.json?["name"] as? String == "linux")
        #expect((show.json?["boot"] as? [String: Any])?["command_line"] as? String == "console=ttyS0")

        // A bad disk name in vm.json is reported as a bad disk name, naming the field.
        #expect(try f.vm(["create", f.lun, "d", "--memory", "8M", "--image", image, "--disk", "1M"]).status == 0)
        let config = f.scratch.path("vm.json")
        #expect(try LunarProcess.run(["fs", "cp", "-q", "\(f.lun):/vms/d/vm.json", config]).status == 0)
        let text = try String(contentsOfFile: config, encoding: .utf8)
        #expect(text.contains("\"disk0\""))
        try text.replacingOccurrences(of: "\"disk0\"", with: "\"bad/disk\"").write(toFile: config, atomically: false, encoding: .utf8)
        #expect(try LunarProcess.run(["fs", "cp", "-q", config, "\(f.lun):/vms/d/vm.json"]).status == 0)
        let badDisk = try f.vm(["show", f.lun, "d"])
        #expect(badDisk.status == 1)
        #expect(badDisk.stderr.contains("disk name (disks[0].name) 'bad/disk'") && !badDisk.stderr.contains("VM name"), "\(badDisk.stderr)")
    }
}
