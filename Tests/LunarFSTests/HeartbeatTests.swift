import Foundation
import Glibc
import LunarFS
import LunarIO
import LunarTesting
import Synchronization
import Testing

@Suite("Heartbeats and fencing")
struct HeartbeatTests {
    @Test("an open volume renews its heartbeat; observers see it alive, then gone after close")
    func renewals() throws {
        let t = try TestVolume(size: 1 << 30)
        let v = try Volume.open(path: t.path, options: OpenOptions(heartbeatInterval: 0.1))
        let hosts = try Volume.hosts(path: t.path, observe: 0.35)
        #expect(hosts.count == 1)
        #expect(hosts.first?.liveness == .alive)
        #expect(hosts.first?.runningHere == true)
        #expect(hosts.first?.heartbeatInterval == 0.1)
        try v.close()
        #expect(try Volume.hosts(path: t.path, observe: 0).isEmpty)
    }

    /// Another host claims our slot (as a host breaking our locks would): from then on this
    /// host must not write a single sector.
    @Test("a host whose slot is claimed by another fences itself and writes nothing more")
    func fencing() throws {
        let t = try TestVolume(size: 1 << 30)
        let v = try Volume.open(path: t.path, options: OpenOptions(heartbeatInterval: 0.1))
        try v.mkdir("/before")
        let f = try v.create("/before/file")
        try f.write(bytes(1 << 20, seed: 1), at: 0)
        try v.sync()

        let slotOffset = try #require(v.fixedRecords().first { $0.record == "heartbeat slot" }).offset
        let other = try BlockDevice.open(t.path)
        defer { other.close() }
        var claimed = false
        for _ in 0..<100 where !claimed {
            let current = IOBuffer(count: 4096)
            try other.readBlocking(into: current, at: slotOffset)
            let next = IOBuffer(copying: current.array)
            next.bytes.storeBytes(of: (next.bytes.load(fromByteOffset: 40, as: UInt64.self) + 1), toByteOffset: 40, as: UInt64.self)
            next.bytes.storeBytes(of: UInt32(2), toByteOffset: 36, as: UInt32.self)
            next.bytes.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self)
            next.bytes.storeBytes(of: CRC32C.checksum(UnsafeRawBufferPointer(next.bytes)), toByteOffset: 24, as: UInt32.self)
            claimed = try other.compareAndWriteBlocking(expected: current, new: next, at: slotOffset).isWritten
        }
        #expect(claimed)
        usleep(400_000)
        let image = try Data(contentsOf: URL(fileURLWithPath: t.path))

        let metadata = fsError { try v.mkdir("/after"); try v.sync() }
        #expect(metadata?.description.contains("fenced") == true, "\(String(describing: metadata))")
        let data = fsError { try f.write(bytes(4096, seed: 2), at: 0) }
        #expect(data != nil)
        let closing = fsError { try v.close() }
        #expect(closing?.description.contains("fenced") == true, "\(String(describing: closing))")
        #expect(try Data(contentsOf: URL(fileURLWithPath: t.path)) == image, "a fenced host changed the volume")
    }
}

/// Hosts on other machines, simulated by rewriting a slot's machine field in a copy of a volume
/// taken while its writer was running (what a crash of that machine leaves behind).
@Suite("Holders on other machines")
struct RemoteHolderTests {
    /// Rewrites slot 0 of the image at `path` with `change`, resealing its checksum.
    static func patchSlot(_ device: BlockDevice, at offset: UInt64, _ change: (IOBuffer) -> Void) throws -> Bool {
        let current = IOBuffer(count: 4096)
        try device.readBlocking(into: current, at: offset)
        let next = IOBuffer(copying: current.array)
        change(next)
        next.bytes.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self)
        next.bytes.storeBytes(of: CRC32C.checksum(UnsafeRawBufferPointer(next.bytes)), toByteOffset: 24, as: UInt32.self)
        return try device.compareAndWriteBlocking(expected: current, new: next, at: offset).isWritten
    }

    /// A copy of a volume whose writer (slot 0, heartbeat 0.1 s) committed `/a` and then
    /// "crashed"; slot 0 now claims to belong to another machine.
    static func crashedRemoteWriter(_ t: TestVolume, holdingLock: Bool = true) throws -> (copy: String, slotOffset: UInt64) {
        // The writer keeps the metadata lock (a long linger): the copy shows it held.
        let v = try Volume.open(path: t.path, options: OpenOptions(heartbeatInterval: 0.1, metadataLockLinger: 60, metadataLockMaxHold: 60))
        try v.mkdir("/a")
        try v.sync()
        if !holdingLock { try v.relinquishMetadataLock() }
        return try crashCopy(t, v)
    }

    /// A copy of the image `v` (slot 0) has open, taken now, as a crash of its machine would
    /// leave it; then `v` is closed, and slot 0 of the copy claims to belong to another machine.
    static func crashCopy(_ t: TestVolume, _ v: Volume) throws -> (copy: String, slotOffset: UInt64) {
        let copy = t.scratch.path("remote.img")
        try copySparse(from: t.path, to: copy)
        let slotOffset = try #require(v.fixedRecords().first { $0.record == "heartbeat slot" }).offset
        try v.close()
        let device = try BlockDevice.open(copy)
        defer { device.close() }
        #expect(try patchSlot(device, at: slotOffset) { b in
            for i in 56..<72 { b.bytes[i] = 0xAB }
        })
        return (copy, slotOffset)
    }

    @Test("a dead holder elsewhere: its lock is broken only after the timeout, after its journal is replayed")
    func deadRemoteHolder() throws {
        let t = try TestVolume(size: 1 << 30)
        let (copy, _) = try Self.crashedRemoteWriter(t)
        let start = monotonicSeconds()
        let v = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 10, heartbeatInterval: 0.1))
        // The first call needs the metadata lock the dead host holds.
        #expect(try v.stat("/a").type == .directory)
        let waited = monotonicSeconds() - start
        #expect(waited >= 0.5, "broke a remote holder's lock after \(waited) s, before its 0.5 s timeout")
        #expect(v.recoveredSlots.contains(0))
        #expect(try v.check().isClean)
        try v.close()
        #expect(try Volume.hosts(path: copy, observe: 0).isEmpty)
    }

    @Test("a live holder elsewhere keeps its lock: the opener waits, then says who holds it")
    func liveRemoteHolder() throws {
        let t = try TestVolume(size: 1 << 30)
        let (copy, slotOffset) = try Self.crashedRemoteWriter(t)
        let device = try BlockDevice.open(copy)
        defer { device.close() }
        let stop = Atomic<Bool>(false)
        let renewer = Thread {
            // The remote host's heartbeat: bump the counter every 50 ms.
            while !stop.load(ordering: .relaxed) {
                _ = try? Self.patchSlot(device, at: slotOffset) { b in
                    let counter = b.bytes.load(fromByteOffset: 48, as: UInt64.self)
                    b.bytes.storeBytes(of: counter + 1, toByteOffset: 48, as: UInt64.self)
                }
                usleep(50_000)
            }
        }
        renewer.start()
        defer { stop.store(true, ordering: .relaxed) }
        let v = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 1.5, heartbeatInterval: 0.1))
        let error = fsError { _ = try v.stat("/a") }
        try v.close()
        #expect(error?.kind.isBusy == true, "\(String(describing: error))")
        #expect(error?.description.contains("host slot 0") == true)
        let hosts = try Volume.hosts(path: copy, observe: 0.3)
        #expect(hosts.first?.liveness == .alive)
    }

    @Test("a slot left recovering by a breaker that died is recovered by the next host (R5 step 4)")
    func abandonedRecovery() throws {
        let t = try TestVolume(size: 1 << 30)
        let (copy, slotOffset) = try Self.crashedRemoteWriter(t)
        // Slot 0 (holding the metadata lock, its journal holding /a) is being recovered by
        // slot 7, whose host has gone: slot 7 is free.
        let device = try BlockDevice.open(copy)
        #expect(try Self.patchSlot(device, at: slotOffset) { b in
            b.bytes.storeBytes(of: UInt32(2), toByteOffset: 36, as: UInt32.self)   // recovering
            b.bytes.storeBytes(of: UInt32(7), toByteOffset: 140, as: UInt32.self)  // by slot 7
        })
        device.close()
        let v = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 5, heartbeatInterval: 0.1))
        #expect(v.mountReport.recoveredSlots.contains(0))
        #expect(try v.stat("/a").type == .directory)
        #expect(try v.check().isClean)
        try v.close()
        #expect(try Volume.hosts(path: copy, observe: 0).isEmpty)
    }

    @Test("a dead host elsewhere that holds nothing is found by a live host's sweep and its slot freed")
    func sweep() throws {
        let t = try TestVolume(size: 1 << 30)
        let (copy, _) = try Self.crashedRemoteWriter(t, holdingLock: false)
        let v = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 10, heartbeatInterval: 0.1))
        #expect(v.mountReport.recoveredSlots.isEmpty, "a remote holder of nothing is judged by watching, not at open")
        #expect(try Volume.hosts(path: copy, observe: 0).count == 2)
        // Looks every 0.25 s; dead after 0.5 s of silence seen by two of them.
        var remaining = 2
        for _ in 0..<40 where remaining > 1 {
            usleep(100_000)
            remaining = try Volume.hosts(path: copy, observe: 0).count
        }
        #expect(remaining == 1, "the dead host's slot is still taken")
        #expect(try v.stat("/a").type == .directory)
        #expect(try v.check().isClean)
        try v.close()
    }
}
