import Foundation
import Glibc
import LunarFS
import LunarIO
import LunarTesting
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
