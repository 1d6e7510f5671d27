import Foundation
import LunarFS
import LunarIO
import LunarTesting
import Synchronization
import Testing

/// Several hosts with one volume open at once. Each `Volume.open` is a host of its own (its own
/// slot, heartbeat and journal) even inside one test process; they share nothing but the image.
@Suite("Hosts sharing a volume")
struct SharedVolumeTests {
    static func host(_ t: TestVolume) throws -> Volume {
        try Volume.open(path: t.path, options: OpenOptions(lockTimeout: 10, heartbeatInterval: 0.2))
    }

    /// A host that keeps whatever lock it takes for a minute unless asked for it.
    static func lingering(_ t: TestVolume, lockTimeout: Double) throws -> Volume {
        try Volume.open(path: t.path, options: OpenOptions(lockTimeout: lockTimeout, heartbeatInterval: 0.2,
                                                           metadataLockLinger: 60, metadataLockMaxHold: 60))
    }

    @Test("hosts creating in directories of their own work at once, each from its own clusters; a call into another's directory runs exclusive once it lets go")
    func sharedCreates() throws {
        let t = try TestVolume()
        // A 2 s lock timeout: a host that had to wait for the other's minute-long hold fails.
        let a = try Self.lingering(t, lockTimeout: 2), b = try Self.lingering(t, lockTimeout: 2)
        try a.mkdir("/a")
        try a.relinquishMetadataLock()
        try b.mkdir("/b")
        try b.relinquishMetadataLock()
        for i in 0..<40 {
            _ = try a.create("/a/\(i)", exclusive: true)
            _ = try b.create("/b/\(i)", exclusive: true)
        }
        let sa = try #require(a.metadataLockStatistics), sb = try #require(b.metadataLockStatistics)
        #expect(sa.retriedExclusive == 0 && sb.retriedExclusive == 0)
        #expect(sa.waitedSeconds < 1 && sb.waitedSeconds < 1, "\(sa.waitedSeconds) s, \(sb.waitedSeconds) s")
        let perCluster = UInt64(a.header.inodes.perCluster)
        var clustersA = Set<UInt64>(), clustersB = Set<UInt64>()
        for i in 0..<40 {
            clustersA.insert(UInt64(try a.stat("/a/\(i)").inode) / perCluster)
            clustersB.insert(UInt64(try b.stat("/b/\(i)").inode) / perCluster)
        }
        #expect(clustersA.isDisjoint(with: clustersB), "inode clusters \(clustersA) and \(clustersB)")

        // b into a's directory: a holds it exclusive, so b's call runs exclusive, and a lets go
        // of its minute-long hold within milliseconds of seeing b wait.
        let start = monotonicSeconds()
        #expect(try b.list("/a").count == 40)
        _ = try b.create("/a/from-b", exclusive: true)
        #expect(monotonicSeconds() - start < 1.5)
        #expect(try #require(b.metadataLockStatistics).retriedExclusive >= 1)
        #expect(try a.stat("/a/from-b").type == .file)
        #expect(try a.list("/b").count == 40)
        try a.close()
        try b.close()
        let v = try t.open()
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("hosts writing thin files they hold work at once; a directory changed while read is read again")
    func sharedWrites() throws {
        // 64 GiB (sparse): several clusters of every kind, so each host takes its own.
        let t = try TestVolume(size: 64 << 30)
        let a = try Self.lingering(t, lockTimeout: 2), b = try Self.lingering(t, lockTimeout: 2)
        // Each adds to the root in turn (the root's lock goes back with the hold).
        let fa = try a.create("/disk-a")
        try a.relinquishMetadataLock()
        let fb = try b.create("/disk-b")
        try b.relinquishMetadataLock()
        // Allocating writes from both, interleaved, neither letting go of its hold.
        for i in 0..<16 {
            try fa.write(bytes(64 << 10, seed: UInt64(i)), at: UInt64(i) << 20)
            try fb.write(bytes(64 << 10, seed: UInt64(100 + i)), at: UInt64(i) << 20)
        }
        try fa.truncate(to: 8 << 20)   // frees blocks into a's own clusters
        let sa = try #require(a.metadataLockStatistics), sb = try #require(b.metadataLockStatistics)
        #expect(sa.retriedExclusive == 0 && sb.retriedExclusive == 0)
        #expect(sa.sharedAcquisitions >= 1 && sb.sharedAcquisitions >= 1)
        try fa.close()
        try fb.close()
        // Closing checkpointed what a changed: b opens a's disk at once and reads it all.
        let ra = try b.openFile("/disk-a")
        for i in 0..<8 {
            #expect(try ra.read(at: UInt64(i) << 20, count: 64 << 10) == bytes(64 << 10, seed: UInt64(i)))
        }
        #expect(try ra.size == 8 << 20)
        try ra.close()
        // a reads the root while b adds to it: a's next look sees the new name.
        #expect(try a.list("/").map(\.name) == ["disk-a", "disk-b"])
        _ = try b.create("/new", exclusive: true)
        try b.relinquishMetadataLock()
        #expect(try a.list("/").map(\.name) == ["disk-a", "disk-b", "new"])
        try a.close()
        try b.close()
        let v = try t.open()
        #expect(try v.check().isClean)
        let rb = try v.openFile("/disk-b", lock: nil)
        #expect(try rb.read(at: 15 << 20, count: 64 << 10) == bytes(64 << 10, seed: 115))
        try v.close()
    }

    @Test("two hosts see each other's creates, writes, renames and removes")
    func coherence() throws {
        let t = try TestVolume()
        let a = try Self.host(t), b = try Self.host(t)
        try a.mkdir("/from-a")
        #expect(try b.stat("/from-a").type == .directory)
        let written = try b.create("/from-a/data", lock: nil)
        try written.write(bytes(5 << 20, seed: 9), at: 4096)
        #expect(try a.openFile("/from-a/data", lock: nil).read(at: 4096, count: 5 << 20) == bytes(5 << 20, seed: 9))
        try a.rename("/from-a/data", to: "/moved")
        #expect(try b.list("/").map(\.name) == ["from-a", "moved"])
        try b.remove("/moved")
        #expect(try !a.exists("/moved"))
        // Many small changes back and forth, each seen by the other at once.
        for i in 0..<50 {
            let (writer, reader) = i % 2 == 0 ? (a, b) : (b, a)
            try writer.mkdir("/from-a/\(i)")
            #expect(try reader.list("/from-a").count == i + 1)
        }
        try a.close()
        try b.close()
        let v = try t.open()
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("a name a host walked through is not read again, yet a rename or remove by another host or by itself is seen at once")
    func knownNames() throws {
        let t = try TestVolume()
        let a = try Self.host(t), b = try Self.host(t)
        try a.mkdir("/d")
        let before = try a.create("/d/f", exclusive: true, lock: nil).inode
        try a.relinquishMetadataLock()
        // b walks /d under a shared hold, then a moves it aside and makes another /d.
        #expect(try b.stat("/d/f").inode == before)
        try a.rename("/d", to: "/e")
        try a.mkdir("/d")
        let after = try a.create("/d/f", exclusive: true, lock: nil).inode
        try a.relinquishMetadataLock()
        #expect(try b.stat("/d/f").inode == after)
        #expect(try b.stat("/e/f").inode == before)
        // Another host's remove, and this host's own.
        try a.remove("/e/f")
        try a.relinquishMetadataLock()
        #expect(throws: FSError.self) { try b.stat("/e/f") }
        try b.remove("/d/f")
        #expect(throws: FSError.self) { try b.stat("/d/f") }
        try b.mkdir("/d/f")
        #expect(try b.stat("/d/f").type == .directory)
        try b.relinquishMetadataLock()
        #expect(try a.stat("/d/f").type == .directory)
        try a.close()
        try b.close()
        let v = try t.open()
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("an exclusive holder keeps others out; the error names it; --wait gets it once it is closed")
    func exclusiveLock() throws {
        let t = try TestVolume()
        let a = try Self.host(t), b = try Self.host(t)
        let file = try a.create("/disk")
        try file.write(bytes(4096, seed: 1), at: 0)
        let refused = fsError { _ = try b.openFile("/disk") }
        #expect(refused?.kind.isBusy == true)
        #expect(refused?.description.contains("host slot 0") == true, "\(String(describing: refused))")
        #expect(refused?.description.contains("alive") == true, "\(String(describing: refused))")
        #expect(fsError { _ = try b.openFile("/disk", lock: .sharedReadOnly) }?.kind.isBusy == true)
        #expect(fsError { try b.remove("/disk") }?.kind.isBusy == true)
        // A second handle in the same host shares the lock.
        let again = try a.openFile("/disk")
        try again.close()
        #expect(fsError { _ = try b.openFile("/disk") }?.kind.isBusy == true)
        let closer = Thread { usleep(300_000); try? file.close() }
        closer.start()
        let start = monotonicSeconds()
        let mine = try b.openFile("/disk", wait: 5)
        #expect(monotonicSeconds() - start >= 0.2)
        #expect(try mine.read(at: 0, count: 4096) == bytes(4096, seed: 1))
        #expect(fsError { _ = try a.openFile("/disk") }?.kind.isBusy == true)
        try mine.close()
        try a.close()
        try b.close()
    }

    @Test("shared read-only holders read together; writers are refused; multi-writer holders write together")
    func sharedModes() throws {
        let t = try TestVolume()
        let a = try Self.host(t), b = try Self.host(t), c = try Self.host(t)
        try a.create("/template").write(bytes(1 << 20, seed: 2), at: 0)
        try a.openFile("/template").close()
        let r1 = try a.openFile("/template", lock: .sharedReadOnly)
        let r2 = try b.openFile("/template", lock: .sharedReadOnly)
        #expect(try r2.read(at: 0, count: 1 << 20) == bytes(1 << 20, seed: 2))
        #expect(fsError { try r1.write(bytes(10, seed: 1), at: 0) }?.kind == .readOnly)
        #expect(fsError { _ = try c.openFile("/template") }?.kind.isBusy == true)
        #expect(fsError { _ = try c.openFile("/template", lock: .multiWriter) }?.kind.isBusy == true)
        try r1.close()
        #expect(fsError { _ = try c.openFile("/template") }?.kind.isBusy == true)
        try r2.close()
        try c.openFile("/template").close()

        _ = try a.create("/shared", lock: nil)
        let w1 = try a.openFile("/shared", lock: .multiWriter)
        let w2 = try b.openFile("/shared", lock: .multiWriter)
        try w1.write(bytes(4096, seed: 11), at: 0)
        try w2.write(bytes(4096, seed: 12), at: 1 << 20)
        #expect(try w2.read(at: 0, count: 4096) == bytes(4096, seed: 11))
        #expect(try w1.read(at: 1 << 20, count: 4096) == bytes(4096, seed: 12))
        #expect(fsError { _ = try c.openFile("/shared") }?.kind.isBusy == true)
        try w1.close()
        try w2.close()
        for v in [a, b, c] { try v.close() }
        let v = try t.open()
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("a host idle long enough for its linger thread to sleep until the next sweep still hears a knock once it holds the lock again")
    func lingerWakesOnHold() throws {
        let t = try TestVolume()
        // Heartbeats every 2 s: the sweep for dead hosts, all the linger thread waits for while
        // nothing is held, is 5 s away.
        let a = try Volume.open(path: t.path, options: OpenOptions(lockTimeout: 10, heartbeatInterval: 2,
                                                                   metadataLockLinger: 60, metadataLockMaxHold: 60))
        let b = try Self.host(t)
        try a.mkdir("/x")
        try a.relinquishMetadataLock()
        usleep(300_000)
        try a.mkdir("/y")   // held again, for a minute unless someone knocks
        let start = monotonicSeconds()
        try b.mkdir("/z")
        #expect(monotonicSeconds() - start < 2, "b waited for a's linger thread to wake by itself")
        try a.close()
        try b.close()
    }

    @Test("a holder that closes the volume leaves no lock behind")
    func closeReleases() throws {
        let t = try TestVolume()
        let a = try Self.host(t)
        _ = try a.create("/f")
        try a.close()
        let b = try Self.host(t)
        try b.openFile("/f").close()
        try b.close()
    }

    @Test("lock statistics: a host working alone keeps its cache; taking turns drops it")
    func statistics() throws {
        let t = try TestVolume()
        let a = try Self.host(t)
        for i in 0..<20 { try a.mkdir("/\(i)"); usleep(20_000) }
        let alone = try #require(a.metadataLockStatistics)
        #expect(alone.acquisitions >= 10, "the lock lingered through 20 ms pauses")
        #expect(alone.cacheDrops <= 1)
        let b = try Self.host(t)
        for i in 0..<10 { try b.mkdir("/b\(i)"); try a.mkdir("/a\(i)") }
        let shared = try #require(a.metadataLockStatistics)
        #expect(shared.cacheDrops >= alone.cacheDrops + 5)
        try a.close()
        try b.close()
    }
}
