import Foundation
import Glibc
import Synchronization
@_spi(Testing) import LunarIO
import LunarTesting
import Testing

/// A tgt (Linux SCSI target framework) daemon on loopback for one test: its own control port
/// and iSCSI portal, one target, two file-backed LUNs on sparse images in a scratch directory
/// (LUN 1: 1 GiB, thin-provisioned so UNMAP works; LUN 2: 64 MiB, not thin), open to ALL
/// initiators. Stopped (by its pid) when the test lets go of it.
final class TGTTarget {
    static let tgtd = "/usr/sbin/tgtd"
    static let tgtadm = "/usr/sbin/tgtadm"
    static let iqn = "iqn.2024-01.org.lunar.test:lun"

    /// Root and an installed tgt are needed; says why not otherwise (printed once).
    static let whyNot: String? = {
        let reason: String?
        if getuid() != 0 {
            reason = "iSCSI tests need root (tgtd binds a portal and a control socket under /var/run/tgtd)"
        } else if !FileManager.default.isExecutableFile(atPath: tgtd) || !FileManager.default.isExecutableFile(atPath: tgtadm) {
            reason = "iSCSI tests need tgt installed (apt-get install tgt): \(tgtd) not found"
        } else {
            reason = nil
        }
        if let reason { print("ISCSITests disabled: \(reason)") }
        return reason
    }()
    static var available: Bool { whyNot == nil }

    let scratch = Scratch()
    let port: Int
    /// tgtd's control port names its socket, /var/run/tgtd/socket.N; tgtd takes N < 32768.
    let control: Int
    let process: Process
    var thinURL: String { "iscsi://127.0.0.1:\(port)/\(Self.iqn)/1" }
    var thickURL: String { "iscsi://127.0.0.1:\(port)/\(Self.iqn)/2" }
    var thinImage: String { scratch.path("thin.img") }

    init() throws {
        port = try Self.freePort()
        var control = 20000 + port % 12000
        while FileManager.default.fileExists(atPath: "/var/run/tgtd/socket.\(control)") { control = 20000 + (control + 1) % 12000 }
        self.control = control
        try? FileManager.default.createDirectory(atPath: "/var/run/tgtd", withIntermediateDirectories: true)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.tgtd)
        // -f: foreground; -C: a control port (socket) of our own, beside any system tgtd.
        process.arguments = ["-f", "-C", "\(control)", "--iscsi", "portal=127.0.0.1:\(port)"]
        let log = FileHandle(forWritingAtPath: "/dev/null")
        process.standardOutput = log
        process.standardError = log
        try process.run()
        do {
            try waitUntilReady()
            try admin(["--mode", "target", "--op", "new", "--tid", "1", "--targetname", Self.iqn])
            try addLUN(1, image: thinImage, size: 1 << 30, thin: true)
            try addLUN(2, image: scratch.path("thick.img"), size: 64 << 20, thin: false)
            try admin(["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"])
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    func stop() {
        guard process.isRunning else { return }
        // tgtd ignores SIGTERM; it shuts down when told so on its control socket, once it
        // has no targets left.
        _ = try? system(Self.tgtadm, ["-C", "\(control)", "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1"])
        _ = try? system(Self.tgtadm, ["-C", "\(control)", "--op", "delete", "--mode", "system"])
        for _ in 0..<40 where process.isRunning { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        unlink("/var/run/tgtd/socket.\(control)")
        unlink("/var/run/tgtd/socket.\(control).lock")
    }

    private func addLUN(_ lun: Int, image: String, size: UInt64, thin: Bool) throws {
        _ = try BlockDevice.createImage(image, size: size)
        try admin(["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "\(lun)",
                   "--backing-store", image, "--blocksize=4096"])
        // tgt takes --params only on update, not on new.
        if thin {
            try admin(["--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", "\(lun)",
                       "--params", "thin_provisioning=1"])
        }
    }

    @discardableResult
    func admin(_ arguments: [String]) throws -> String {
        let result = try system(Self.tgtadm, ["-C", "\(control)", "--lld", "iscsi"] + arguments)
        guard result.status == 0 else {
            throw TGTError("tgtadm \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.output)")
        }
        return result.output
    }

    /// How many sessions (I_T nexuses) are logged in to the target now.
    func sessions() throws -> Int {
        try admin(["--mode", "target", "--op", "show"]).components(separatedBy: "I_T nexus:").count - 1
    }

    private func waitUntilReady() throws {
        for _ in 0..<100 {
            guard process.isRunning else { throw TGTError("tgtd exited at start (status \(process.terminationStatus))") }
            if (try? system(Self.tgtadm, ["-C", "\(control)", "--lld", "iscsi", "--mode", "target", "--op", "show"]))?.status == 0 {
                return
            }
            usleep(50_000)
        }
        throw TGTError("tgtd did not answer on control port \(control) within 5 s")
    }

    /// A TCP port nothing listens on right now (bound to port 0 and let go).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TGTError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, length) == 0 && getsockname(fd, sa, &length) == 0
            }
        }
        guard bound else { throw TGTError("bind: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

struct TGTError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}

private func ioError(_ body: () throws -> Void) -> IOError? {
    do {
        try body()
        return nil
    } catch let error as IOError {
        return error
    } catch {
        return nil
    }
}

private func randomBuffer(_ count: Int) -> IOBuffer {
    var generator = SystemRandomNumberGenerator()
    let buffer = IOBuffer(count: count)
    for i in stride(from: 0, to: count, by: 8) { buffer.baseAddress.storeBytes(of: generator.next(), toByteOffset: i, as: UInt64.self) }
    return buffer
}

/// Runs `count` requests through `queue` with at most `depth` in flight (`prepare(i)` issues
/// the i-th); every one must succeed. Returns the seconds taken.
@discardableResult
private func drive(_ queue: IOQueue, depth: Int, count: Int, _ prepare: (Int) throws -> Void) throws -> Double {
    let start = monotonicSeconds()
    var next = 0, done = 0
    var failure: IOError?
    while done < count {
        while next < count && queue.outstanding < depth {
            try prepare(next)
            next += 1
        }
        try queue.reap(minimum: 1) { completion in
            done += 1
            if let error = completion.error { failure = failure ?? error }
        }
    }
    if let failure { throw failure }
    return monotonicSeconds() - start
}

@Suite("iSCSI LUN through libiscsi (tgt on loopback)", .serialized,
       .enabled(if: TGTTarget.available, Comment(rawValue: TGTTarget.whyNot ?? "")))
struct ISCSITests {
    @Test("geometry from READ CAPACITY(16); writes read back at random offsets")
    func roundTrip() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thinURL)
        defer { lun.close() }
        #expect(lun.size == 1 << 30)
        #expect(lun.blockSize == 4096 && lun.sectorSize == 4096)
        #expect(lun.isThinProvisioned)
        #expect(lun.localDevice == nil)
        var generator = SystemRandomNumberGenerator()
        let sectors = lun.size / 4096
        // Includes transfers above the 1 MiB per-command split.
        for round in 0..<40 {
            let count = round % 10 == 0 ? 300 + Int.random(in: 0..<100, using: &generator) : Int.random(in: 1...16, using: &generator)
            let offset = UInt64.random(in: 0..<(sectors - UInt64(count)), using: &generator) * 4096
            let data = IOBuffer(count: count * 4096)
            for i in 0..<data.count { data.baseAddress.storeBytes(of: UInt8.random(in: 0...255, using: &generator), toByteOffset: i, as: UInt8.self) }
            try lun.writeBlocking(from: data, at: offset)
            let back = IOBuffer(count: data.count)
            try lun.readBlocking(into: back, at: offset)
            #expect(back.contentEquals(data), "round \(round): \(count) sectors at \(offset) read back differently")
        }
    }

    @Test("flush (SYNCHRONIZE CACHE(16)) makes writes reach the backing image")
    func flush() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thinURL)
        defer { lun.close() }
        let data = IOBuffer(count: 8192)
        data.fill(0xA5)
        try lun.writeBlocking(from: data, at: 1 << 20)
        try lun.flushBlocking()
        let handle = try #require(FileHandle(forReadingAtPath: target.thinImage))
        defer { try? handle.close() }
        try handle.seek(toOffset: 1 << 20)
        let onDisk = try #require(try handle.read(upToCount: 8192))
        #expect(onDisk == Data(repeating: 0xA5, count: 8192))
    }

    @Test("discard: UNMAP on a thin LUN reads back zeros; a thick LUN says it has no UNMAP")
    func discard() throws {
        let target = try TGTTarget()
        let thin = try ISCSILun.open(url: target.thinURL)
        defer { thin.close() }
        let data = IOBuffer(count: 64 << 10)
        data.fill(0x5A)
        try thin.writeBlocking(from: data, at: 4 << 20)
        try thin.discardBlocking(at: 4 << 20, length: 32 << 10)
        let back = IOBuffer(count: 64 << 10)
        try thin.readBlocking(into: back, at: 4 << 20)
        #expect(back.bytes[0..<(32 << 10)].allSatisfy { $0 == 0 })
        #expect(back.bytes[(32 << 10)...].allSatisfy { $0 == 0x5A })

        let thick = try ISCSILun.open(url: target.thickURL)
        defer { thick.close() }
        #expect(!thick.isThinProvisioned)
        let error = try #require(ioError { try thick.discardBlocking(at: 0, length: 4096) })
        guard case .unsupported(let why) = error.kind else {
            Issue.record("expected .unsupported, got \(error)")
            return
        }
        #expect(why.contains("not thin-provisioned"))
        #expect(error.path == target.thickURL)
        print("thick LUN discard: \(error)")
    }

    @Test("I/O past the end of the LUN fails before reaching the target; misaligned I/O too")
    func pastEnd() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thickURL)
        defer { lun.close() }
        let sector = IOBuffer(count: 4096)
        let atEnd = try #require(ioError { try lun.readBlocking(into: sector, at: lun.size) })
        #expect(atEnd.kind == .beyondEnd(deviceSize: lun.size))
        let across = try #require(ioError { try lun.writeBlocking(from: IOBuffer(count: 8192), at: lun.size - 4096) })
        #expect(across.kind == .beyondEnd(deviceSize: lun.size))
        #expect(across.operation == .write && across.path == target.thickURL)
        let misaligned = try #require(ioError { try lun.readBlocking(into: sector, at: 512) })
        #expect(misaligned.kind == .misalignedOffset(sectorSize: 4096))
        let missing = try #require(ioError { _ = try ISCSILun.open(url: "iscsi://127.0.0.1:\(target.port)/\(TGTTarget.iqn)/7") })
        #expect(missing.operation == .open)
        print("missing LUN: \(missing)")
    }

    @Test("the LUN's queue at depth 32: random 4 KiB writes then reads of the same offsets, many in flight, byte for byte; a flush")
    func queueRoundTrip() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thinURL)
        defer { lun.close() }
        let queue = try lun.makeQueue(depth: 32)
        #expect(queue.engine == .iscsi && queue.sectorSize == 4096)
        var generator = SystemRandomNumberGenerator()
        let count = 512
        // Distinct sectors, so no two writes in flight overlap.
        var sectors = Set<UInt64>()
        while sectors.count < count { sectors.insert(UInt64.random(in: 0..<(lun.size / 4096), using: &generator)) }
        let offsets = sectors.map { $0 * 4096 }
        let written = (0..<count).map { _ in randomBuffer(4096) }
        let read = (0..<count).map { _ in IOBuffer(count: 4096) }
        _ = try drive(queue, depth: 32, count: count) { i in
            try queue.prepareWrite(from: UnsafeRawBufferPointer(written[i].bytes), at: offsets[i], tag: UInt64(i))
        }
        let peak = queue.peakInFlight ?? 0
        #expect(peak > 1, "the queue never had more than one command in flight")
        _ = try drive(queue, depth: 1, count: 1) { _ in try queue.prepareFlush(tag: 0) }
        _ = try drive(queue, depth: 32, count: count) { i in
            try queue.prepareRead(into: read[i].bytes, at: offsets[i], tag: UInt64(i))
        }
        for i in 0..<count { #expect(read[i].contentEquals(written[i]), "sector at \(offsets[i]) read back differently") }
        // The blocking calls on the other session see what the queue wrote and flushed.
        let back = IOBuffer(count: 4096)
        try lun.readBlocking(into: back, at: offsets[0])
        #expect(back.contentEquals(written[0]))
        // A request larger than one command (1 MiB) is split and put back together.
        let big = randomBuffer(3 << 20), bigBack = IOBuffer(count: 3 << 20)
        _ = try drive(queue, depth: 1, count: 1) { _ in try queue.prepareWrite(from: UnsafeRawBufferPointer(big.bytes), at: 64 << 20, tag: 0) }
        _ = try drive(queue, depth: 1, count: 1) { _ in try queue.prepareRead(into: bigBack.bytes, at: 64 << 20, tag: 0) }
        #expect(bigBack.contentEquals(big))
        print("iSCSI queue: at most \(peak) commands in flight at once (depth 32)")
    }

    @Test("the LUN's queue: depth is real (2000 random 4 KiB reads at QD 1 and QD 32)")
    func queueDepth() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thickURL)
        defer { lun.close() }
        let queue = try lun.makeQueue(depth: 32)
        let buffers = (0..<32).map { _ in IOBuffer(count: 4096) }
        let sectors = lun.size / 4096
        var results: [Int: Double] = [:]
        for depth in [1, 32] {
            let seconds = try drive(queue, depth: depth, count: 2000) { i in
                try queue.prepareRead(into: buffers[i % 32].bytes, at: UInt64.random(in: 0..<sectors) * 4096, tag: UInt64(i))
            }
            results[depth] = 2000 / seconds
        }
        print("iSCSI queue, 2000 random 4 KiB reads: QD 1 \(Int(results[1]!)) IOPS, QD 32 \(Int(results[32]!)) IOPS, peak in flight \(queue.peakInFlight ?? 0)")
        #expect((queue.peakInFlight ?? 0) > 1)
    }

    @Test("the LUN's queue: the doorbell wakes reap with nothing in flight; I/O past the end fails cleanly")
    func queueDoorbellAndEnd() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thickURL)
        defer { lun.close() }
        let queue = try lun.makeQueue(depth: 8)
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        defer { close(pipeFDs[0]); close(pipeFDs[1]) }
        try queue.preparePoll(fd: pipeFDs[0], tag: 77)
        #expect(try queue.reap(minimum: 0) { _ in } == 0)
        let writer = pipeFDs[1]
        let start = monotonicSeconds()
        Thread {
            usleep(100_000)
            var byte: UInt8 = 1
            _ = write(writer, &byte, 1)
        }.start()
        var tags: [UInt64] = []
        try queue.reap(minimum: 1) { tags.append($0.tag) }
        #expect(tags == [77])
        #expect(monotonicSeconds() - start >= 0.05)
        #expect(queue.outstanding == 0)

        let sector = IOBuffer(count: 4096)
        let atEnd = try #require(ioError { try queue.prepareRead(into: sector.bytes, at: lun.size, tag: 1) })
        #expect(atEnd.kind == .beyondEnd(deviceSize: lun.size) && atEnd.path == target.thickURL)
        let across = try #require(ioError {
            try queue.prepareWrite(from: UnsafeRawBufferPointer(IOBuffer(count: 8192).bytes), at: lun.size - 4096, tag: 1)
        })
        #expect(across.kind == .beyondEnd(deviceSize: lun.size) && across.operation == .write)
        #expect(queue.outstanding == 0)
        // The queue still works after the refusals.
        #expect(try drive(queue, depth: 1, count: 1) { _ in try queue.prepareRead(into: sector.bytes, at: lun.size - 4096, tag: 1) } >= 0)
        // A discard is not the queue's: refused at prepare, as the LUN's blocking calls have it.
        #expect(ioError { try queue.prepareDiscard(at: 0, length: 4096, tag: 2) } != nil)
        #expect(queue.outstanding == 0)
    }

    @Test("tgt lacks COMPARE AND WRITE: the method is the reservation fallback, and it compares and writes")
    func compareAndWriteMethod() throws {
        let target = try TGTTarget()
        let lun = try ISCSILun.open(url: target.thinURL)
        defer { lun.close() }
        #expect(lun.compareAndWriteMethod == .scsiReservation)
        let info = try LunarProcess.run(["io", "info", target.thinURL, "--json"])
        #expect(info.status == 0, "\(info.stderr)")
        #expect(info.json?["compare_and_write"] as? String == "scsi-reservation")
        #expect(info.json?["kind"] as? String == "iscsi-lun")

        let zero = IOBuffer(count: 4096), one = IOBuffer(count: 4096), two = IOBuffer(count: 4096)
        one.fill(1)
        two.fill(2)
        #expect(try lun.compareAndWriteBlocking(expected: zero, new: one, at: 8192).isWritten)
        guard case .mismatch(let current) = try lun.compareAndWriteBlocking(expected: zero, new: two, at: 8192) else {
            Issue.record("a stale expected value must not write")
            return
        }
        #expect(current.contentEquals(one))
        #expect(try lun.compareAndWriteBlocking(expected: one, new: two, at: 8192).isWritten)
    }

    @Test("a session that ends while holding the reservation frees it for the others")
    func deadHolderReleases() throws {
        let target = try TGTTarget()
        let holder = try ISCSILun.open(url: target.thinURL)
        let other = try ISCSILun.open(url: target.thinURL)
        defer { other.close() }
        try holder.holdReservation()
        // The other session's compare-and-write waits on RESERVATION CONFLICT ...
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Bool?>(nil)
        Thread {
            let written = try? other.compareAndWriteBlocking(expected: IOBuffer(count: 4096), new: IOBuffer(count: 4096), at: 0).isWritten
            outcome.withLock { $0 = written }
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 0.5) == .timedOut, "compare-and-write went through a held reservation")
        // ... until the holder's session goes.
        holder.close()
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(outcome.withLock { $0 } == true)
    }

    @Test("8 lunar processes x 200 compare-and-write increments over iSCSI count exactly 1600")
    func processes() throws {
        let target = try TGTTarget()
        let url = target.thinURL
        let offset = 12 << 20
        let start = Date()
        let running = try (0..<8).map { _ in
            try LunarProcess.start(["io", "ats-counter", url, "--offset", "\(offset)", "--increments", "200", "--json"])
        }
        var lost = 0
        for process in running {
            let output = process.finish()
            #expect(output.status == 0, "lunar io ats-counter failed: \(output.stderr)")
            lost += output.json?["lost_races"] as? Int ?? 0
        }
        let seconds = Date().timeIntervalSince(start)
        let final = try LunarProcess.run(["io", "ats-counter", url, "--offset", "\(offset)", "--increments", "0", "--json"])
        #expect((final.json?["value"] as? NSNumber)?.uint64Value == 1600)
        print("iSCSI ats-counter: 8 x 200 in \(String(format: "%.2f", seconds)) s, \(lost) lost races retried")
    }

    @Test("a VM whose disk is on the iSCSI LUN: mapped 4 KiB requests go straight to the LUN, snapshotted while it runs",
          .enabled(if: FreestandingGuests.available, Comment(rawValue: FreestandingGuests.whyNot)))
    func runningVM() throws {
        let target = try TGTTarget()
        // Each disk's I/O thread logs in a session of its own for its queue, beside the
        // sessions of the volume: with no queue, mapped requests would move one at a time.
        let before = try target.sessions()
        try VMCommandTests.snapshotBetweenWrites(try VMCommandTests.Fixture(lun: target.thinURL)) {
            let running = try target.sessions()
            print("iSCSI sessions while the VM runs: \(running) (before: \(before))")
            #expect(running >= before + 3, "expected the volume's session and one queue session per disk (2 disks)")
        }
    }

    @Test("LunarFS on the LUN: mkfs, mkdir, cp in and out, fsck clean")
    func fileSystem() throws {
        let target = try TGTTarget()
        let url = target.thinURL
        func lunar(_ arguments: [String]) throws -> LunarProcess.Output {
            let output = try LunarProcess.run(arguments)
            #expect(output.status == 0, "lunar \(arguments.joined(separator: " ")): \(output.stderr)")
            return output
        }
        _ = try lunar(["fs", "mkfs", url])
        _ = try lunar(["fs", "mkdir", "\(url):/vms"])
        let bytes = (0..<3_000_001).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        let source = target.scratch.path("in.bin"), copy = target.scratch.path("out.bin")
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        _ = try lunar(["fs", "cp", source, "\(url):/vms/"])
        let listing = try lunar(["fs", "ls", "\(url):/vms"])
        #expect(listing.stdout.contains("in.bin"))
        _ = try lunar(["fs", "cp", "\(url):/vms/in.bin", copy])
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(bytes))
        let fsck = try lunar(["fs", "fsck", url])
        #expect(fsck.stdout.contains("clean"))
    }
}
