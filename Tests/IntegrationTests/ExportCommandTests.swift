import Foundation
import LunarTesting
import Testing

/// `lunar export` through the real binary, read by the real clients: nbdinfo, nbdcopy (libnbd)
/// and qemu-img. Each test makes a volume holding a sparse 64 MiB disk.
@Suite("lunar export with nbdinfo, nbdcopy and qemu-img", .serialized)
struct ExportCommandTests {
    static let clients = ["/usr/bin/nbdinfo", "/usr/bin/nbdcopy", "/usr/bin/qemu-img"]
    static let clientsPresent = clients.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    static let mib = 1 << 20
    /// Where the disk holds data; the rest of its 64 MiB are holes.
    static let dataRuns = [0..<(4 * mib), (20 * mib)..<(21 * mib), (40 * mib)..<(48 * mib)]
    static let diskSize = 64 * mib

    final class Fixture {
        let scratch = Scratch()
        let lun: String
        let socket: String
        let content: Data
        var server: LunarProcess.Running?
        /// What the running server serves first: its URI is checked when it stops.
        var served = "/vms/disk0.raw"

        init() throws {
            lun = scratch.path("vol.img")
            socket = scratch.path("nbd.sock")
            let mkfs = try LunarProcess.run(["fs", "mkfs", lun, "--size", "1G"])
            try #require(mkfs.status == 0, "mkfs: \(mkfs.stderr)")
            #expect(try LunarProcess.run(["fs", "mkdir", "\(lun):/vms"]).status == 0)
            let host = scratch.path("disk0.raw")
            content = try ExportCommandTests.sparseDisk(at: host, seed: 1)
            let cp = try LunarProcess.run(["fs", "cp", host, "\(lun):/vms/disk0.raw"])
            try #require(cp.status == 0, "cp: \(cp.stderr)")
        }

        /// Starts `lunar export serve` of `exports` on a Unix socket and waits until it listens.
        func serve(_ extra: [String] = [], exports: [String] = ["/vms/disk0.raw"]) throws {
            let running = try LunarProcess.start(["export", "serve", lun] + exports + ["--socket", socket] + extra)
            server = running
            served = exports.first ?? ""
            let deadline = Date().addingTimeInterval(30)
            while !FileManager.default.fileExists(atPath: socket) {
                guard running.process.isRunning, Date() < deadline else {
                    let output = running.finish()
                    Issue.record("serve did not start: \(output.status) \(output.stderr)")
                    throw CancellationError()
                }
                usleep(20_000)
            }
        }

        /// Stops the server with SIGTERM; it must exit 0 (files released, volume closed).
        func stop() {
            guard let server else { return }
            server.process.terminate()
            let output = server.finish()
            #expect(output.status == 0, "serve: \(output.stderr)")
            #expect(output.stdout.contains("+unix://\(served)?socket=\(socket)"), "\(output.stdout)")
            self.server = nil
        }

        var uri: String { uri("/vms/disk0.raw") }

        /// The URI of export `name` (a path, or PATH@SNAP) on the socket.
        func uri(_ name: String) -> String { "nbd+unix://\(name)?socket=\(socket)" }

        /// Runs `lunar` with `arguments`, which must succeed.
        @discardableResult
        func lunar(_ arguments: [String]) throws -> String {
            let output = try LunarProcess.run(arguments)
            #expect(output.status == 0, "lunar \(arguments.joined(separator: " ")): \(output.stderr)")
            return output.stdout
        }

        deinit {
            if let server, server.process.isRunning { server.process.terminate() }
        }
    }

    static func sparseDisk(at path: String, seed: UInt64) throws -> Data {
        var content = Data(count: diskSize)
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        for (i, run) in dataRuns.enumerated() {
            let bytes = Data(pattern(run.count, seed: seed * 10 + UInt64(i)).array)
            content.replaceSubrange(run, with: bytes)
            try handle.seek(toOffset: UInt64(run.lowerBound))
            try handle.write(contentsOf: bytes)
        }
        try handle.truncate(atOffset: UInt64(diskSize))
        try handle.close()
        return content
    }

    static func tool(_ path: String, _ arguments: [String]) throws -> String {
        let (status, output) = try system(path, arguments)
        #expect(status == 0, "\(path) \(arguments.joined(separator: " ")): \(output)")
        return output
    }

    @Test("nbdinfo lists the export, describes it as JSON and maps its holes", .enabled(if: clientsPresent))
    func nbdinfo() throws {
        let f = try Fixture()
        try f.serve()
        let list = try Self.tool("/usr/bin/nbdinfo", ["--list", "nbd+unix:///?socket=\(f.socket)"])
        #expect(list.contains("export=\"/vms/disk0.raw\"") || list.contains("/vms/disk0.raw"), "\(list)")

        let json = try Self.tool("/usr/bin/nbdinfo", ["--json", f.uri])
        let info = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let export = try #require((info["exports"] as? [[String: Any]])?.first, "\(json)")
        #expect((export["export-size"] as? NSNumber)?.intValue == Self.diskSize)
        #expect(export["is_read_only"] as? Bool == true)
        #expect(export["can_multi_conn"] as? Bool == true)
        #expect(export["can_trim"] as? Bool == false)
        #expect((export["contexts"] as? [String])?.contains("base:allocation") == true, "\(json)")
        #expect((export["block_size_maximum"] as? NSNumber)?.intValue == 32 << 20)

        // offset, length, type: 0 data, 3 hole and zero.
        let map = try Self.tool("/usr/bin/nbdinfo", ["--map", f.uri])
        let rows = map.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        let parsed = rows.compactMap { r -> [Int]? in r.count >= 3 ? [Int(r[0]) ?? -1, Int(r[1]) ?? -1, Int(r[2]) ?? -1] : nil }
        let mib = Self.mib
        #expect(parsed == [[0, 4 * mib, 0], [4 * mib, 16 * mib, 3], [20 * mib, mib, 0], [21 * mib, 19 * mib, 3],
                           [40 * mib, 8 * mib, 0], [48 * mib, 16 * mib, 3]], "\(map)")
        f.stop()
    }

    @Test("nbdcopy and qemu-img convert copy the export byte for byte; qemu-img map shows the holes", .enabled(if: clientsPresent))
    func fullCopy() throws {
        let f = try Fixture()
        try f.serve()
        let copied = f.scratch.path("copied.raw")
        _ = try Self.tool("/usr/bin/nbdcopy", [f.uri, copied])
        #expect(try Data(contentsOf: URL(fileURLWithPath: copied)) == f.content)
        // Four connections at once (the export offers multi-conn): the same bytes.
        let multi = f.scratch.path("multi.raw")
        _ = try Self.tool("/usr/bin/nbdcopy", ["--connections=4", f.uri, multi])
        #expect(try Data(contentsOf: URL(fileURLWithPath: multi)) == f.content)

        let converted = f.scratch.path("converted.raw")
        _ = try Self.tool("/usr/bin/qemu-img", ["convert", "-f", "raw", "-O", "raw", f.uri, converted])
        #expect(try Data(contentsOf: URL(fileURLWithPath: converted)) == f.content)
        var st = stat()
        #expect(stat(converted, &st) == 0 && Int(st.st_blocks) * 512 < 20 * Self.mib, "holes stay holes in the copy")

        let map = try Self.tool("/usr/bin/qemu-img", ["map", "--output=json", "-f", "raw", f.uri])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(map.utf8)) as? [[String: Any]])
        let runs = entries.map { entry -> Range<Int> in
            let start = (entry["start"] as? NSNumber)?.intValue ?? -1
            return start..<(start + ((entry["length"] as? NSNumber)?.intValue ?? 0))
        }
        let data = zip(runs, entries).filter { $0.1["data"] as? Bool == true }.map(\.0)
        #expect(data == Self.dataRuns, "\(map)")
        #expect(entries.filter { $0["data"] as? Bool == false }.allSatisfy { $0["zero"] as? Bool == true })
        f.stop()
    }

    @Test("a writable export takes a restore through qemu-img convert -n", .enabled(if: clientsPresent))
    func restore() throws {
        let f = try Fixture()
        let backup = f.scratch.path("backup.raw")
        let restored = try Self.sparseDisk(at: backup, seed: 7)
        try f.serve(["--writable"])
        let json = try Self.tool("/usr/bin/nbdinfo", ["--json", f.uri])
        #expect(json.contains("\"is_read_only\": false"), "\(json)")
        _ = try Self.tool("/usr/bin/qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", backup, f.uri])
        f.stop()
        let out = f.scratch.path("out.raw")
        let cp = try LunarProcess.run(["fs", "cp", "\(f.lun):/vms/disk0.raw", out])
        #expect(cp.status == 0, "\(cp.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == restored)
        let fsck = try LunarProcess.run(["fs", "fsck", f.lun])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }

    @Test("with a certificate every client must start TLS: nbdinfo and nbdcopy given the CA read the export, a client without TLS gets nothing",
          .enabled(if: clientsPresent && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func tls() throws {
        let f = try Fixture()
        let pki = f.scratch.path("pki")
        try FileManager.default.createDirectory(atPath: pki, withIntermediateDirectories: true)
        func path(_ name: String) -> String { (pki as NSString).appendingPathComponent(name) }
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".write(toFile: path("ext.cnf"), atomically: true, encoding: .utf8)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _ = try Self.tool("/usr/bin/openssl", ["req", "-x509"] + ec + ["-keyout", path("ca-key.pem"), "-out", path("ca-cert.pem"), "-days", "2", "-subj", "/CN=Lunar test CA"])
        _ = try Self.tool("/usr/bin/openssl", ["req"] + ec + ["-keyout", path("server-key.pem"), "-out", path("server.csr"), "-subj", "/CN=localhost"])
        _ = try Self.tool("/usr/bin/openssl", ["x509", "-req", "-in", path("server.csr"), "-CA", path("ca-cert.pem"), "-CAkey", path("ca-key.pem"),
                                               "-CAcreateserial", "-out", path("server-cert.pem"), "-days", "2", "-extfile", path("ext.cnf")])
        try f.serve(["--tls-cert", path("server-cert.pem"), "--tls-key", path("server-key.pem")])
        let secure = "nbds+unix:///vms/disk0.raw?socket=\(f.socket)&tls-certificates=\(pki)"
        let json = try Self.tool("/usr/bin/nbdinfo", ["--json", secure])
        #expect(json.contains("\"export-size\": \(Self.diskSize)"), "\(json)")
        let copied = f.scratch.path("tls.raw")
        _ = try Self.tool("/usr/bin/nbdcopy", [secure, copied])
        #expect(try Data(contentsOf: URL(fileURLWithPath: copied)) == f.content)
        let plain = try system("/usr/bin/nbdinfo", ["--json", f.uri])
        #expect(plain.status != 0, "a client without TLS must get nothing: \(plain.output)")
        f.stop()
        let badKey = try LunarProcess.run(["export", "serve", f.lun, "/vms/disk0.raw", "--socket", f.socket,
                                           "--tls-cert", path("server-cert.pem"), "--tls-key", path("ca-cert.pem")])
        #expect(badKey.status == 1 && badKey.stderr.contains("cannot use"), "\(badKey.stderr)")
    }

    @Test("export serve and list refuse what they cannot do, with the reason")
    func refusals() throws {
        let f = try Fixture()
        let snapshot = try LunarProcess.run(["export", "serve", f.lun, "/vms/disk0.raw@nightly", "--socket", f.socket])
        #expect(snapshot.status == 1 && snapshot.stderr.contains("\(f.lun):/vms/disk0.raw has no snapshot 'nightly'")
                && snapshot.stderr.contains("lunar disk snapshots \(f.lun):/vms/disk0.raw"), "\(snapshot.stderr)")
        let open = try LunarProcess.run(["export", "serve", f.lun, "/vms/disk0.raw", "--listen", "0.0.0.0:0"])
        #expect(open.status == 1 && open.stderr.contains("--insecure"), "\(open.stderr)")
        let missing = try LunarProcess.run(["export", "serve", f.lun, "/vms/nothere.raw", "--socket", f.socket])
        #expect(missing.status == 1 && missing.stderr.contains("\(f.lun):/vms/nothere.raw: no such file"), "\(missing.stderr)")
        let directory = try LunarProcess.run(["export", "serve", f.lun, "/vms", "--socket", f.socket])
        #expect(directory.status == 1 && directory.stderr.contains("not a regular file"), "\(directory.stderr)")
        let none = try LunarProcess.run(["export", "serve", f.lun])
        #expect(none.status == 64 && none.stderr.contains("name the files to export"), "\(none.stderr)")
        let both = try LunarProcess.run(["export", "serve", f.lun, "/vms/disk0.raw", "--socket", f.socket, "--listen", "127.0.0.1:0"])
        #expect(both.status == 64, "\(both.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.socket), "nothing was left listening")

        let list = try LunarProcess.run(["export", "list", f.lun, "--json"])
        #expect(list.status == 0, "\(list.stderr)")
        let exports = try #require(list.json?["exports"] as? [[String: Any]])
        #expect(exports.count == 1 && exports[0]["name"] as? String == "/vms/disk0.raw")
        #expect((exports[0]["size"] as? NSNumber)?.intValue == Self.diskSize)
        #expect((exports[0]["allocated"] as? NSNumber)?.intValue == 13 * Self.mib)
        let human = try LunarProcess.run(["export", "list", f.lun])
        #expect(human.status == 0 && human.stdout.contains("/vms/disk0.raw"))
        let snapshotList = try LunarProcess.run(["export", "list", f.lun, "/vms/disk0.raw@x"])
        #expect(snapshotList.status == 1 && snapshotList.stderr.contains("has no snapshot 'x'"), "\(snapshotList.stderr)")
        try f.lunar(["disk", "snapshot", "\(f.lun):/vms/disk0.raw", "nightly"])
        let writableSnapshot = try LunarProcess.run(["export", "serve", f.lun, "/vms/disk0.raw@nightly", "--writable", "--socket", f.socket])
        #expect(writableSnapshot.status == 1 && writableSnapshot.stderr.contains("a snapshot is never written"), "\(writableSnapshot.stderr)")
        // The snapshot is offered as PATH@SNAP, not as the file LunarDisk keeps it in.
        let withSnapshot = try #require(try LunarProcess.run(["export", "list", f.lun, "--json"]).json?["exports"] as? [[String: Any]])
        #expect(withSnapshot.compactMap { $0["name"] as? String } == ["/vms/disk0.raw", "/vms/disk0.raw@nightly"], "\(withSnapshot)")
        #expect(try f.lunar(["export", "list", f.lun, "/vms/disk0.raw@nightly"]).contains("/vms/disk0.raw@nightly"))
    }

    static let incrementalClients = clients + ["/usr/bin/qemu-io"]
    static let incrementalClientsPresent = incrementalClients.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }

    /// The extents of `context` that nbdinfo's JSON map flags `flag`.
    static func mapped(_ uri: String, context: String, flag: Int) throws -> [Range<Int>] {
        let map = try tool("/usr/bin/nbdinfo", ["--map=\(context)", "--json", uri])
        let extents = try #require(try JSONSerialization.jsonObject(with: Data(map.utf8)) as? [[String: Any]], "\(map)")
        return extents.compactMap { e -> Range<Int>? in
            guard let offset = (e["offset"] as? NSNumber)?.intValue, let length = (e["length"] as? NSNumber)?.intValue,
                  (e["type"] as? NSNumber)?.intValue == flag else { return nil }
            return offset..<(offset + length)
        }
    }

    @Test("incremental backup: a full copy of snapshot s1, then only the qemu:dirty-bitmap:s1 extents of s2 copied onto it, equals s2 byte for byte",
          .enabled(if: incrementalClientsPresent))
    func incrementalBackup() throws {
        let f = try Fixture()
        let disk = "\(f.lun):/vms/disk0.raw"
        try f.lunar(["disk", "snapshot", disk, "s1"])

        // The full backup, from the snapshot: the disk's content as it was.
        try f.serve(exports: ["/vms/disk0.raw@s1"])
        let backup = f.scratch.path("backup.raw")
        _ = try Self.tool("/usr/bin/nbdcopy", [f.uri("/vms/disk0.raw@s1"), backup])
        f.stop()
        #expect(try Data(contentsOf: URL(fileURLWithPath: backup)) == f.content)

        // The guest goes on writing (here through a writable export): data into data and into
        // a hole, a write across a grain boundary, zeroes, a trim, the last byte.
        let mib = Self.mib
        var now = f.content
        try f.serve(["--writable"])
        let writes: [(command: String, range: Range<Int>, byte: UInt8)] = [
            ("write -P 0x5a 1M 8k", mib..<(mib + 8192), 0x5A),
            ("write -P 0x33 30M 200k", (30 * mib)..<(30 * mib + 200 << 10), 0x33),
            ("write -P 0x44 \(21 * mib - 96) 200", (21 * mib - 96)..<(21 * mib + 104), 0x44),
            ("write -z 41M 64k", (41 * mib)..<(41 * mib + 65536), 0),
            ("discard 44M 1M", (44 * mib)..<(45 * mib), 0),
            ("write -P 0x77 \(Self.diskSize - 1) 1", (Self.diskSize - 1)..<Self.diskSize, 0x77),
        ]
        _ = try Self.tool("/usr/bin/qemu-io", ["-f", "raw"] + writes.flatMap { ["-c", $0.command] } + [f.uri])
        for w in writes { now.replaceSubrange(w.range, with: repeatElement(w.byte, count: w.range.count)) }
        f.stop()
        try f.lunar(["disk", "snapshot", disk, "s2"])

        // What changed, by whole grains (64 KiB) of LunarDisk's maps.
        let grain = 64 << 10
        let expected = [mib..<(mib + grain), (21 * mib - grain)..<(21 * mib + grain), (30 * mib)..<(30 * mib + 4 * grain),
                        (41 * mib)..<(41 * mib + grain), (44 * mib)..<(45 * mib), (Self.diskSize - grain)..<Self.diskSize]
        try f.serve(exports: ["/vms/disk0.raw@s2", "/vms/disk0.raw@s1"])
        let s2 = f.uri("/vms/disk0.raw@s2")
        let dirty = try Self.mapped(s2, context: "qemu:dirty-bitmap:s1", flag: 1)
        #expect(dirty == expected, "\(dirty)")
        let listed = try Self.tool("/usr/bin/nbdinfo", ["--list", "--json", "nbd+unix:///?socket=\(f.socket)"])
        #expect(listed.contains("\"qemu:dirty-bitmap:s1\""), "\(listed)")
        // qemu-img reads the same context through x-dirty-bitmap, which shows a dirty extent
        // as one without data.
        let qemuMap = try Self.tool("/usr/bin/qemu-img", ["map", "--output=json", "--image-opts",
            "driver=nbd,export=/vms/disk0.raw@s2,server.type=unix,server.path=\(f.socket),x-dirty-bitmap=qemu:dirty-bitmap:s1"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(qemuMap.utf8)) as? [[String: Any]], "\(qemuMap)")
        let qemuDirty = entries.filter { $0["data"] as? Bool == false }.compactMap { e -> Range<Int>? in
            guard let start = (e["start"] as? NSNumber)?.intValue, let length = (e["length"] as? NSNumber)?.intValue else { return nil }
            return start..<(start + length)
        }
        #expect(qemuDirty == expected, "\(qemuMap)")

        // The incremental backup: only the dirty extents, read from s2, written over the copy of s1.
        for range in dirty {
            let window = "offset=\(range.lowerBound),size=\(range.count)"
            _ = try Self.tool("/usr/bin/qemu-img", [
                "convert", "-n", "--image-opts",
                "driver=raw,\(window),file.driver=nbd,file.export=/vms/disk0.raw@s2,file.server.type=unix,file.server.path=\(f.socket)",
                "--target-image-opts", "driver=raw,\(window),file.driver=file,file.filename=\(backup)",
            ])
        }
        let compared = try Self.tool("/usr/bin/qemu-img", ["compare", "-f", "raw", "-F", "raw", backup, s2])
        #expect(compared.contains("identical"), "\(compared)")
        f.stop()
        #expect(try Data(contentsOf: URL(fileURLWithPath: backup)) == now, "the backup is s2, byte for byte")
        #expect(dirty.reduce(0) { $0 + $1.count } < 2 * mib, "a few grains moved, not the disk")

        // The disk itself offers the changes since each of its snapshots; the metadata agrees.
        let changes = try JSONSerialization.jsonObject(with: Data(try f.lunar(["disk", "changes", disk, "--from", "s1", "--to", "s2", "--json"]).utf8)) as? [[String: Any]]
        #expect(changes?.compactMap { ($0["start"] as? NSNumber)?.intValue } == expected.map(\.lowerBound))
        try f.serve()
        let info = try Self.tool("/usr/bin/nbdinfo", ["--json", f.uri])
        #expect(info.contains("\"qemu:dirty-bitmap:s2\"") && info.contains("\"qemu:dirty-bitmap:s1\""), "\(info)")
        #expect(try Self.mapped(f.uri, context: "qemu:dirty-bitmap:s2", flag: 1).isEmpty, "nothing written since s2")
        f.stop()
        let fsck = try LunarProcess.run(["fs", "fsck", f.lun])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
    }

    @Test("a TCP listener on loopback port 0 says where it is, and serves there", .enabled(if: clientsPresent))
    func tcp() throws {
        let f = try Fixture()
        let running = try LunarProcess.start(["export", "serve", f.lun, "/vms/disk0.raw", "--listen", "127.0.0.1:0", "--json"])
        // The announcement is one JSON line on standard output.
        var line = Data()
        let reader = running.out.fileHandleForReading
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = reader.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let announced = try #require(try JSONSerialization.jsonObject(with: line) as? [String: Any], "\(String(decoding: line, as: UTF8.self))")
        let uri = try #require((announced["exports"] as? [[String: Any]])?.first?["uri"] as? String)
        #expect(uri.hasPrefix("nbd://127.0.0.1:") && !uri.hasPrefix("nbd://127.0.0.1:0/"), "\(uri)")
        let copied = f.scratch.path("tcp.raw")
        _ = try Self.tool("/usr/bin/nbdcopy", [uri, copied])
        #expect(try Data(contentsOf: URL(fileURLWithPath: copied)) == f.content)
        running.process.terminate()
        #expect(running.finish().status == 0)
    }
}
