import LunarDisk
import Foundation
import LunarFS
import LunarIO
import LunarTesting
import LunarVMM
import Testing

/// The I/O thread behind virtio-blk, driven by the synthetic host-side driver: many requests
/// in flight on the direct path, flush and discard ordering, thin files, reset.
@Suite("virtio-blk I/O thread")
struct VirtioBlockIOThreadTests {
    /// A fresh volume with a 32 MiB disk file, fully written with a pattern when `preallocated`.
    static func disk(preallocated: Bool, readOnly: Bool = false) throws -> (Volume, DiskChannel, [UInt8], Scratch) {
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let file = try volume.create("/disk.raw")
        try file.truncate(to: 32 << 20)
        var content = [UInt8](repeating: 0, count: 32 << 20)
        if preallocated {
            content = pattern(32 << 20, seed: 21).array
            try file.write(content, at: 0)
            try volume.sync()
        }
        return (volume, try DiskChannel(file: file, readOnly: readOnly), content, scratch)
    }

    /// Waits until every request made available has come back; returns (slot, status) in the
    /// order the device completed them.
    static func drain(_ d: SyntheticBlockDriver) -> [(slot: Int, status: UInt8)] {
        var done: [(slot: Int, status: UInt8)] = []
        while d.outstanding > 0 {
            if d.takeCompleted({ slot, status, _ in done.append((slot, status)) }) == 0 {
                guard d.waitForInterrupt(timeout: 20) else { break }
            }
        }
        return done
    }

    @Test("the extent map answers lookups and splices in re-read pieces")
    func extentMap() {
        var map = ExtentMap([(0..<4096, 100_000, false), (4096..<12288, nil, false), (12288..<16384, 200_000, true)])
        var seen: [(Range<UInt64>, UInt64?)] = []
        #expect(map.visit(1024..<14336) { range, device, _ in seen.append((range, device)); return true })
        #expect(seen.map(\.0) == [1024..<4096, 4096..<12288, 12288..<14336])
        #expect(seen.map(\.1) == [101_024, nil, 200_000])
        #expect(!map.visit(16000..<20000) { _, _, _ in true }, "past the map: unknown")
        var shared: [Bool] = []
        _ = map.visit(0..<16384) { _, _, s in shared.append(s); return true }
        #expect(shared == [false, false, true], "a shared piece says so")
        // A write allocated 8192..<12288 of the hole.
        map.replace(8192..<12288, with: [(8192..<12288, 300_000, false)])
        #expect(map.extents == [.init(lower: 0, upper: 4096, device: 100_000), .init(lower: 4096, upper: 8192, device: nil),
                                .init(lower: 8192, upper: 12288, device: 300_000), .init(lower: 12288, upper: 16384, device: 200_000, shared: true)])
        // A discard inside one extent splits it in three.
        map.replace(1024..<2048, with: [(1024..<2048, nil, false)])
        #expect(map.extents.prefix(3) == [.init(lower: 0, upper: 1024, device: 100_000), .init(lower: 1024, upper: 2048, device: nil),
                                          .init(lower: 2048, upper: 4096, device: 102_048)])
    }

    @Test("32 reads and then 32 writes in flight at once go straight to the LUN and carry the right bytes")
    func queueDeepDirect() throws {
        let (volume, disk, content, _) = try Self.disk(preallocated: true)
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 128, slots: 32, bytesPerSlot: 64 << 10)
        #expect(d.device.hasDirectPath)
        var random = SplitMix64(seed: 3)
        var placed: [(offset: Int, length: Int)] = []
        for slot in 0..<32 {
            let length = 4096 * Int(1 + random.next() % 16)
            let offset = 4096 * Int(random.next() % UInt64((32 << 20) / 4096 - 16))
            placed.append((offset, length))
            d.enqueue(slot: slot, type: 0, sector: UInt64(offset / 512), length: length)
        }
        d.publish()
        let reads = Self.drain(d)
        #expect(reads.count == 32 && reads.allSatisfy { $0.status == 0 })
        #expect(Set(reads.map(\.slot)) == Set(0..<32))
        for (slot, p) in placed.enumerated() {
            #expect(Array(d.data(slot).prefix(p.length)) == Array(content[p.offset..<(p.offset + p.length)]), "slot \(slot)")
        }
        #expect(d.device.requestsServedDirectly == 32)

        // Writes of fresh bytes to 32 distinct 64 KiB pieces.
        for slot in 0..<32 {
            let fill = pattern(64 << 10, seed: UInt64(100 + slot)).array
            d.data(slot).copyBytes(from: fill)
            d.enqueue(slot: slot, type: 1, sector: UInt64(slot * 2 * (64 << 10) / 512), length: 64 << 10)
        }
        d.publish()
        let writes = Self.drain(d)
        #expect(writes.count == 32 && writes.allSatisfy { $0.status == 0 })
        #expect(d.device.requestsServedDirectly == 64)
        for slot in 0..<32 {
            #expect(try disk.file.read(at: UInt64(slot * 2 * (64 << 10)), count: 64 << 10) == pattern(64 << 10, seed: UInt64(100 + slot)).array)
        }
        try volume.close()
    }

    @Test("a disk whose blocks a snapshot shares: reads go direct, writes copy first and leave the snapshot as it was")
    func sharedDisk() throws {
        let (volume, disk, content, _) = try Self.disk(preallocated: true)
        try volume.clone("/disk.raw", to: "/snap.raw")
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 128, slots: 16, bytesPerSlot: 64 << 10)
        for slot in 0..<16 {
            d.enqueue(slot: slot, type: 0, sector: UInt64(slot * (1 << 20) / 512), length: 64 << 10)
        }
        d.publish()
        #expect(Self.drain(d).allSatisfy { $0.status == 0 })
        #expect(d.device.requestsServedDirectly == 16, "shared pieces are read in place")
        var expected = content
        for slot in 0..<16 {
            let fill = pattern(4096, seed: UInt64(300 + slot)).array
            d.data(slot).copyBytes(from: fill)
            let offset = slot * (1 << 20) + 8192
            expected.replaceSubrange(offset..<(offset + 4096), with: fill)
            d.enqueue(slot: slot, type: 1, sector: UInt64(offset / 512), length: 4096)
        }
        d.publish()
        #expect(Self.drain(d).allSatisfy { $0.status == 0 })
        #expect(try disk.file.read(at: 0, count: 32 << 20) == expected)
        #expect(try volume.openFile("/snap.raw", lock: nil).read(at: 0, count: 32 << 20) == content)
        // Copied once, a piece is the disk's own again: the next write to it goes direct.
        let before = d.device.requestsServedDirectly
        d.data(0).copyBytes(from: pattern(4096, seed: 400).array)
        d.enqueue(slot: 0, type: 1, sector: UInt64(8192 / 512), length: 4096)
        d.publish()
        #expect(Self.drain(d).allSatisfy { $0.status == 0 })
        #expect(d.device.requestsServedDirectly == before + 1)
        #expect(try volume.openFile("/snap.raw", lock: nil).read(at: 0, count: 64 << 10) == Array(content[0..<(64 << 10)]))
        #expect(try volume.check().isClean)
        try volume.close()
    }

    @Test("a flush made available after writes completes after every one of them")
    func flushAfterWrites() throws {
        let (volume, disk, _, _) = try Self.disk(preallocated: true)
        // Writes large enough to take longer than a flush of an otherwise clean LUN: a flush
        // sent alongside them, not after them, comes back first.
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 128, slots: 33, bytesPerSlot: 1 << 20)
        for round in 0..<5 {
            for slot in 0..<32 {
                d.data(slot).copyBytes(from: pattern(1 << 20, seed: UInt64(slot + round)).array)
                d.enqueue(slot: slot, type: 1, sector: UInt64(slot * (1 << 20) / 512), length: 1 << 20)
            }
            d.enqueue(slot: 32, type: 4, sector: 0, length: 0)
            d.publish()
            let done = Self.drain(d)
            #expect(done.count == 33 && done.allSatisfy { $0.status == 0 })
            #expect(done.last?.slot == 32, "the flush came back before a write it must cover")
        }
        try volume.close()
    }

    @Test("a thin disk: writes into holes allocate through LunarFS, later reads and writes go direct, discard reads back zeros")
    func thinDisk() throws {
        let (volume, disk, _, _) = try Self.disk(preallocated: false)
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 16, slots: 4, bytesPerSlot: 1 << 20)
        func run(_ slot: Int, _ type: UInt32, _ offset: Int, _ length: Int) -> UInt8 {
            d.enqueue(slot: slot, type: type, sector: UInt64(offset / 512), length: length)
            d.publish()
            return Self.drain(d).first?.status ?? 0xEE
        }
        d.data(0).initializeMemory(as: UInt8.self, repeating: 0xAB)
        #expect(run(0, 0, 4 << 20, 4096) == 0)
        #expect(d.data(0).prefix(4096).allSatisfy { $0 == 0 }, "a hole reads as zeros")
        let bytes = pattern(1 << 20, seed: 9).array
        d.data(1).copyBytes(from: bytes)
        let directBefore = d.device.requestsServedDirectly
        #expect(run(1, 1, 8 << 20, 1 << 20) == 0)
        #expect(d.device.requestsServedDirectly == directBefore, "a write into a hole must allocate through the file")
        #expect(try disk.file.read(at: 8 << 20, count: 1 << 20) == bytes)
        #expect(run(2, 0, 8 << 20, 1 << 20) == 0)
        #expect(Array(d.data(2)) == bytes, "a read right after the allocating write sees it")
        #expect(d.device.requestsServedDirectly == directBefore + 1, "the block map was re-read after the allocation")
        // Overwrite in place: now direct.
        let again = pattern(4096, seed: 10).array
        d.data(3).copyBytes(from: again)
        #expect(run(3, 1, 8 << 20, 4096) == 0)
        #expect(d.device.requestsServedDirectly == directBefore + 2)
        #expect(try disk.file.read(at: 8 << 20, count: 4096) == again)
        #expect(run(0, 4, 0, 0) == 0)
        // Discard the whole MiB: one segment (sector, count, flags).
        let segment = d.data(0)
        segment.storeBytes(of: UInt64((8 << 20) / 512).littleEndian, toByteOffset: 0, as: UInt64.self)
        segment.storeBytes(of: UInt32((1 << 20) / 512).littleEndian, toByteOffset: 8, as: UInt32.self)
        segment.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        #expect(run(0, 11, 0, 16) == 0)
        d.data(2).initializeMemory(as: UInt8.self, repeating: 0xAB)
        #expect(run(2, 0, 8 << 20, 1 << 20) == 0)
        #expect(d.data(2).allSatisfy { $0 == 0 }, "discarded bytes read back as zeros")
        #expect(try disk.file.read(at: 8 << 20, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))
        #expect(run(0, 4, 0, 0) == 0)
        try volume.close()
    }

    @Test("a read-only disk answers writes and discards with an I/O error and serves reads")
    func readOnlyDisk() throws {
        let (volume, disk, content, _) = try Self.disk(preallocated: true, readOnly: true)
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 16, slots: 4, bytesPerSlot: 4096)
        d.enqueue(slot: 0, type: 1, sector: 0, length: 4096)
        d.enqueue(slot: 1, type: 11, sector: 0, length: 16)
        d.data(1).initializeMemory(as: UInt8.self, repeating: 0)
        d.data(1).storeBytes(of: UInt32(8).littleEndian, toByteOffset: 8, as: UInt32.self)
        d.enqueue(slot: 2, type: 0, sector: 8, length: 4096)
        d.enqueue(slot: 3, type: 4, sector: 0, length: 0)
        d.publish()
        let done = Dictionary(uniqueKeysWithValues: Self.drain(d).map { ($0.slot, $0.status) })
        #expect(done == [0: 1, 1: 1, 2: 0, 3: 0])
        #expect(Array(d.data(2)) == Array(content[4096..<8192]))
        #expect(try disk.file.read(at: 0, count: 4096) == Array(content[0..<4096]))
        try volume.close()
    }

    @Test("reset returns only once nothing is in flight; the device serves a new queue after")
    func resetDrains() throws {
        let (volume, disk, content, _) = try Self.disk(preallocated: true)
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 128, slots: 32, bytesPerSlot: 256 << 10)
        for slot in 0..<32 { d.enqueue(slot: slot, type: 0, sector: UInt64(slot * (256 << 10) / 512), length: 256 << 10) }
        d.publish()
        d.device.reset()
        // Whatever the device took before the reset has completed; nothing moves afterwards.
        let snapshot = (0..<32).map { d.status($0) }
        let usedIndex = d.usedIndex
        #expect(Int(usedIndex) == snapshot.filter { $0 != 0xFF }.count)
        usleep(100_000)
        #expect((0..<32).map { d.status($0) } == snapshot)
        #expect(d.usedIndex == usedIndex)
        for slot in 0..<32 where snapshot[slot] == 0 {
            #expect(Array(d.data(slot)) == Array(content[(slot * (256 << 10))..<((slot + 1) * (256 << 10))]))
        }
        try volume.close()
    }

    @Test("a host fenced off the volume writes nothing more through the direct path; reads go on")
    func fencedHostWritesNothing() throws {
        let scratch = Scratch()
        let path = scratch.path("lun.img")
        try Volume.format(path: path, size: 1 << 30)
        let volume = try Volume.open(path: path, options: OpenOptions(heartbeatInterval: 0.1))
        let file = try volume.create("/disk.raw")
        let content = pattern(4 << 20, seed: 5).array
        try file.write(content, at: 0)
        try volume.sync()
        let disk = try DiskChannel(file: file)
        let d = try SyntheticBlockDriver(disk: disk, queueSize: 16, slots: 2, bytesPerSlot: 4096)
        d.data(0).copyBytes(from: pattern(4096, seed: 6).array)
        d.enqueue(slot: 0, type: 1, sector: 0, length: 4096)
        d.publish()
        #expect(Self.drain(d).map(\.status) == [0])
        #expect(disk.file.volume.writeRefusal == nil)
        let blocks = try #require(file.extents(0..<8192).first?.deviceOffset)

        // Another host claims this host's slot, as one that judged it dead does.
        let slotOffset = try #require(volume.fixedRecords().first { $0.record == "heartbeat slot" }).offset
        let other = try BlockDevice.open(path)
        defer { other.close() }
        let current = IOBuffer(count: 4096)
        try other.readBlocking(into: current, at: slotOffset)
        let next = IOBuffer(copying: current.array)
        next.bytes.storeBytes(of: next.bytes.load(fromByteOffset: 40, as: UInt64.self) + 1, toByteOffset: 40, as: UInt64.self)
        next.bytes.storeBytes(of: UInt32(2), toByteOffset: 36, as: UInt32.self)
        next.bytes.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self)
        next.bytes.storeBytes(of: CRC32C.checksum(UnsafeRawBufferPointer(next.bytes)), toByteOffset: 24, as: UInt32.self)
        #expect(try other.compareAndWriteBlocking(expected: current, new: next, at: slotOffset).isWritten)
        usleep(500_000)
        #expect(disk.file.volume.writeRefusal?.contains("claimed by another host") == true, "\(String(describing: disk.file.volume.writeRefusal))")

        let before = IOBuffer(count: 8192)
        try other.readBlocking(into: before, at: blocks)
        d.data(0).copyBytes(from: pattern(4096, seed: 7).array)
        d.enqueue(slot: 0, type: 1, sector: 0, length: 4096)
        d.enqueue(slot: 1, type: 0, sector: 8, length: 4096)
        d.publish()
        let done = Dictionary(uniqueKeysWithValues: Self.drain(d).map { ($0.slot, $0.status) })
        #expect(done == [0: 1, 1: 0])
        #expect(Array(d.data(1)) == Array(content[4096..<8192]))
        let after = IOBuffer(count: 8192)
        try other.readBlocking(into: after, at: blocks)
        #expect(after.array == before.array)
        #expect(before.array.prefix(4096) == pattern(4096, seed: 6).array[...])
        _ = try? volume.close()
    }
}
