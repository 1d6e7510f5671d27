import LunarDisk
import Foundation
import LunarFS
import LunarIO
import LunarTesting
import LunarVMM
import Testing

/// virtio-blk driven from the host side: a synthetic driver lays descriptors, rings and
/// buffers out in guest memory, as a guest would, and the device serves them. Hostile layouts
/// must end in an error status or a broken device, never in a crash or a touch outside the
/// guest's memory.
@Suite("virtio-blk from the host side")
struct VirtioBlockTests {
    final class Driver {
        let memory: GuestMemory
        let device: VirtioBlockDevice
        static let queueSize: UInt16 = 16
        static let descriptors: UInt64 = 0x1_0000, available: UInt64 = 0x1_1000, used: UInt64 = 0x1_2000
        private var availableIndex: UInt16 = 0

        init(disk: DiskChannel, memorySize: UInt64 = 16 << 20) throws {
            memory = try GuestMemory(size: memorySize)
            device = try VirtioBlockDevice(memory: memory, disk: disk, serial: "lunar-test-disk")
            #expect(device.setQueue(size: Self.queueSize, descriptors: Self.descriptors, available: Self.available, used: Self.used))
        }

        func put<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
            memory.region(address, MemoryLayout<T>.size)!.storeBytes(of: value.littleEndian, as: T.self)
        }

        func fetch<T: FixedWidthInteger>(_ address: UInt64, _: T.Type = T.self) -> T {
            T(littleEndian: UnsafeRawBufferPointer(memory.region(address, MemoryLayout<T>.size)!).loadUnaligned(as: T.self))
        }

        func descriptor(_ i: UInt16, address: UInt64, length: UInt32, write: Bool = false, next: UInt16? = nil) {
            let d = Self.descriptors + 16 * UInt64(i)
            put(address, at: d)
            put(length, at: d + 8)
            put(UInt16((write ? 2 : 0) | (next != nil ? 1 : 0)), at: d + 12)
            put(next ?? 0, at: d + 14)
        }

        /// Offers the chain starting at `head` and lets the device serve it.
        @discardableResult
        func submit(_ head: UInt16) -> Int {
            put(head, at: Self.available + 4 + 2 * UInt64(availableIndex % Self.queueSize))
            availableIndex &+= 1
            put(availableIndex, at: Self.available + 2)
            return device.serviceQueue()
        }

        var usedIndex: UInt16 { fetch(Self.used + 2) }

        /// A request: header at 0x20000, data buffers, status at 0x20100.
        func request(type: UInt32, sector: UInt64, buffers: [(UInt64, UInt32)], deviceWrites: Bool) -> UInt8 {
            put(type, at: 0x2_0000)
            put(UInt32(0), at: 0x2_0004)
            put(sector, at: 0x2_0008)
            put(UInt8(0xFF), at: 0x2_0100)
            descriptor(0, address: 0x2_0000, length: 16, next: 1)
            for (i, b) in buffers.enumerated() {
                descriptor(UInt16(1 + i), address: b.0, length: b.1, write: deviceWrites, next: UInt16(2 + i))
            }
            descriptor(UInt16(1 + buffers.count), address: 0x2_0100, length: 1, write: true)
            submit(0)
            return fetch(0x2_0100)
        }
    }

    /// A 32 MiB disk file on a fresh LunarFS volume.
    static func disk(readOnly: Bool = false) throws -> (Volume, DiskChannel, Scratch) {
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let file = try volume.create("/disk.raw")
        try file.truncate(to: 32 << 20)
        return (volume, try DiskChannel(file: file, readOnly: readOnly), scratch)
    }

    @Test("write, read back, flush, get-id: the data lands in the LunarFS file")
    func roundTrip() throws {
        let (volume, disk, _) = try Self.disk()
        let d = try Driver(disk: disk)
        let data = pattern(8192, seed: 5).array
        d.memory.region(0x10_0000, 8192)!.copyBytes(from: data)
        // Two buffers of 4 KiB and 4 KiB, at sector 16.
        #expect(d.request(type: 1, sector: 16, buffers: [(0x10_0000, 4096), (0x10_1000, 4096)], deviceWrites: false) == 0)
        #expect(d.request(type: 0, sector: 16, buffers: [(0x20_0000, 8192)], deviceWrites: true) == 0)
        #expect(Array(d.memory.region(0x20_0000, 8192)!) == data)
        #expect(d.request(type: 4, sector: 0, buffers: [], deviceWrites: false) == 0)
        #expect(d.request(type: 8, sector: 0, buffers: [(0x30_0000, 20)], deviceWrites: true) == 0)
        #expect(String(decoding: d.memory.region(0x30_0000, 15)!, as: UTF8.self) == "lunar-test-disk")
        #expect(try disk.file.read(at: 16 * 512, count: 8192) == data)
        #expect(d.usedIndex == 4)
        #expect(d.device.broken == nil)
        try volume.close()
    }

    @Test("buffers in RAM above 4 GiB are served; one across the device hole breaks the device, nothing outside RAM touched")
    func highMemory() throws {
        let (volume, disk, _) = try Self.disk()
        let d = try Driver(disk: disk, memorySize: GuestMemory.holeStart + (16 << 20))
        let high: UInt64 = 4 << 30
        let data = pattern(8192, seed: 9).array
        d.memory.region(high + 0x10_0000, 8192)!.copyBytes(from: data)
        #expect(d.request(type: 1, sector: 64, buffers: [(high + 0x10_0000, 8192)], deviceWrites: false) == 0)
        #expect(d.request(type: 0, sector: 64, buffers: [(high + 0x20_0000, 4096), (0x20_0000, 4096)], deviceWrites: true) == 0)
        #expect(Array(d.memory.region(high + 0x20_0000, 4096)!) + Array(d.memory.region(0x20_0000, 4096)!) == data)
        #expect(try disk.file.read(at: 64 * 512, count: 8192) == data)
        #expect(d.device.broken == nil)
        _ = d.request(type: 0, sector: 0, buffers: [(GuestMemory.holeStart - 4096, 8192)], deviceWrites: true)
        #expect(d.device.broken != nil, "a buffer running into the hole is a bad chain")
        try volume.close()
    }

    @Test("requests the device must refuse get an I/O error status, and the queue keeps going")
    func refusedRequests() throws {
        let (volume, disk, _) = try Self.disk()
        let d = try Driver(disk: disk)
        // Past the end of the 32 MiB disk.
        #expect(d.request(type: 0, sector: (32 << 20) / 512, buffers: [(0x20_0000, 512)], deviceWrites: true) == 1)
        // A sector count that overflows.
        #expect(d.request(type: 0, sector: UInt64.max / 256, buffers: [(0x20_0000, 512)], deviceWrites: true) == 1)
        // A read whose buffer the device may not write.
        #expect(d.request(type: 0, sector: 0, buffers: [(0x20_0000, 512)], deviceWrites: false) == 1)
        // Not a multiple of 512.
        #expect(d.request(type: 1, sector: 0, buffers: [(0x20_0000, 100)], deviceWrites: false) == 1)
        // An unknown request type.
        #expect(d.request(type: 99, sector: 0, buffers: [], deviceWrites: false) == 2)
        #expect(d.device.broken == nil)
        #expect(d.request(type: 0, sector: 0, buffers: [(0x20_0000, 512)], deviceWrites: true) == 0)
        try volume.close()
    }

    @Test("a read-only disk refuses writes")
    func readOnly() throws {
        let (volume, disk, _) = try Self.disk(readOnly: true)
        let d = try Driver(disk: disk)
        #expect(d.request(type: 1, sector: 0, buffers: [(0x20_0000, 512)], deviceWrites: false) == 1)
        #expect(d.request(type: 0, sector: 0, buffers: [(0x20_0000, 512)], deviceWrites: true) == 0)
        try volume.close()
    }

    @Test("hostile chains break the device, never the VMM", arguments: ["loop", "out of range", "bad head", "huge length", "indirect", "no status"])
    func hostileChains(kind: String) throws {
        let (volume, disk, _) = try Self.disk()
        let d = try Driver(disk: disk)
        switch kind {
        case "loop":
            d.descriptor(0, address: 0x2_0000, length: 16, next: 1)
            d.descriptor(1, address: 0x2_1000, length: 512, write: true, next: 0)
            d.submit(0)
        case "out of range":
            d.descriptor(0, address: (16 << 20) - 8, length: 16)
            d.submit(0)
        case "bad head":
            d.submit(200)
        case "huge length":
            d.descriptor(0, address: 0x2_0000, length: UInt32.max)
            d.submit(0)
        case "indirect":
            d.descriptor(0, address: 0x2_0000, length: 16)
            d.put(UInt16(4), at: Driver.descriptors + 12)
            d.submit(0)
        default:
            // A zero-length status: the request is dropped, the chain still returned.
            d.descriptor(0, address: 0x2_0000, length: 16, next: 1)
            d.descriptor(1, address: 0x2_0100, length: 0, write: true)
            d.submit(0)
            #expect(d.device.broken == nil)
            #expect(d.device.malformedRequests == 1)
            #expect(d.usedIndex == 1)
            try volume.close()
            return
        }
        #expect(d.device.broken != nil, "\(kind)")
        #expect(d.device.serviceQueue() == 0)
        d.device.reset()
        #expect(d.device.broken == nil)
        try volume.close()
    }

    @Test("queue areas outside guest memory are refused")
    func queueOutsideMemory() throws {
        let (volume, disk, _) = try Self.disk()
        let memory = try GuestMemory(size: 4 << 20)
        let device = try VirtioBlockDevice(memory: memory, disk: disk, serial: "x")
        #expect(!device.setQueue(size: 256, descriptors: (4 << 20) - 100, available: 0, used: 0x1000))
        #expect(!device.setQueue(size: 100, descriptors: 0, available: 0x1000, used: 0x2000))
        try volume.close()
    }
}
