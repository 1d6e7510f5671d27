import Glibc
import Synchronization
import LunarIO
import LunarTesting
import Testing

/// Every engine passes the same cases.
@Suite("Engines")
struct EngineTests {
    static let engines = IOEngineKind.allCases

    @Test("read after write at random offsets and sizes (async API)", arguments: engines)
    func asyncReadAfterWrite(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(size: 64 << 20, engine: engine)
        #expect(device.engine == engine)
        #expect(device.isDirect)
        // 64 non-overlapping extents, written concurrently, then read back concurrently.
        var rng = SystemRandomNumberGenerator()
        let slot: UInt64 = 1 << 20
        let extents: [(offset: UInt64, length: Int)] = (0..<64).map { i in
            let sectors = Int.random(in: 1...64, using: &rng)
            let start = UInt64(Int.random(in: 0...(256 - sectors), using: &rng)) * 4096
            return (UInt64(i) * slot + start, sectors * 4096)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, e) in extents.enumerated() {
                group.addTask { try await device.write(from: pattern(e.length, seed: UInt64(i)), at: e.offset) }
            }
            try await group.waitForAll()
        }
        try await device.flush()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, e) in extents.enumerated() {
                group.addTask {
                    let back = IOBuffer(count: e.length)
                    try await device.read(into: back, at: e.offset)
                    #expect(back.contentEquals(pattern(e.length, seed: UInt64(i))), "extent \(i) at \(e.offset)")
                }
            }
            try await group.waitForAll()
        }
    }

    @Test("a buffer slice reads and writes only its range", arguments: engines)
    func bufferSlices(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let source = pattern(16384, seed: 9)
        try await device.write(from: source, at: 8192, bufferOffset: 4096, length: 8192)
        let back = IOBuffer(count: 16384)
        back.fill(0xEE)
        try await device.read(into: back, at: 8192, bufferOffset: 4096, length: 8192)
        #expect(Array(back.bytes[4096..<12288]) == Array(source.bytes[4096..<12288]))
        #expect(back.bytes[0..<4096].allSatisfy { $0 == 0xEE })
        #expect(back.bytes[12288...].allSatisfy { $0 == 0xEE })
        let outside = await ioError { try await device.read(into: back, at: 0, bufferOffset: 12288, length: 8192) }
        #expect(outside?.kind == .invalidArgument("range 12288..<20480 lies outside the 16384-byte buffer"))
    }

    @Test("queue: 32 requests in flight, one submit per batch, all complete", arguments: engines)
    func queueBatches(engine: IOEngineKind) throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let queue = try device.makeQueue(depth: 32)
        let arena = IOBuffer(count: 32 * 65536)
        let expected = pattern(arena.count, seed: 77)
        arena.bytes.copyMemory(from: UnsafeRawBufferPointer(expected.bytes))
        queue.registerBuffers([arena])
        for i in 0..<32 {
            try queue.prepareWrite(from: UnsafeRawBufferPointer(arena.slice(i * 65536..<(i + 1) * 65536)),
                                   at: UInt64(31 - i) * 65536, tag: UInt64(i))
        }
        #expect(queue.outstanding == 32)
        #expect(throws: IOError.self) { try queue.prepareFlush(tag: 99) }  // depth reached
        #expect(try queue.submit() <= 32)
        var seen = Set<UInt64>()
        while queue.outstanding > 0 {
            try queue.reap { c in
                #expect(c.error == nil)
                #expect(c.operation == .write && c.bytesTransferred == 65536)
                seen.insert(c.tag)
            }
        }
        #expect(seen == Set(0..<32))
        try queue.prepareFlush(tag: 100)
        try queue.reap { c in #expect(c.tag == 100 && c.error == nil) }

        arena.fill(0)
        for i in 0..<32 {
            try queue.prepareRead(into: arena.slice(i * 65536..<(i + 1) * 65536), at: UInt64(31 - i) * 65536, tag: UInt64(i))
        }
        try queue.reap(minimum: 32) { c in #expect(c.error == nil) }
        #expect(arena.contentEquals(expected))
    }

    @Test("queue full is a typed error, not a crash", arguments: engines)
    func queueFull(engine: IOEngineKind) throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let queue = try device.makeQueue(depth: 2)
        let buffer = IOBuffer(count: 4096)
        try queue.prepareRead(into: buffer.bytes, at: 0, tag: 1)
        try queue.prepareRead(into: buffer.bytes, at: 4096, tag: 2)
        let error = #expect(throws: IOError.self) { try queue.prepareRead(into: buffer.bytes, at: 8192, tag: 3) }
        #expect(error?.kind.isQueueFull == true)
        try queue.reap(minimum: 2) { _ in }
        #expect(queue.outstanding == 0)
    }

    @Test("flush succeeds and data survives reopening", arguments: engines)
    func flushAndReopen(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let data = pattern(1 << 20, seed: 3)
        do {
            let device = try scratch.image(engine: engine)
            try await device.write(from: data, at: 5 << 20)
            try await device.flush()
            device.close()
        }
        let again = try BlockDevice.open(scratch.path("lun.img"), options: .init(engine: engine))
        let back = IOBuffer(count: 1 << 20)
        try await again.read(into: back, at: 5 << 20)
        #expect(back.contentEquals(data))
    }

    @Test("discard reads back zeros and leaves its neighbours alone", arguments: engines)
    func discardZeros(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let data = pattern(3 << 20, seed: 11)
        try await device.write(from: data, at: 0)
        try await device.discard(at: 1 << 20, length: 1 << 20)
        let back = IOBuffer(count: 3 << 20)
        try await device.read(into: back, at: 0)
        #expect(back.bytes[(1 << 20)..<(2 << 20)].allSatisfy { $0 == 0 })
        #expect(Array(back.bytes[0..<(1 << 20)]) == Array(data.bytes[0..<(1 << 20)]))
        #expect(Array(back.bytes[(2 << 20)...]) == Array(data.bytes[(2 << 20)...]))
        // The hole is real: the file's allocation shrank.
        var st = stat()
        #expect(stat(device.path, &st) == 0)
        #expect(Int(st.st_blocks) * 512 <= 2 << 20 + 65536)
    }

    @Test("I/O past the end fails with the device size", arguments: engines)
    func pastEnd(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(size: 1 << 20, engine: engine)
        let buffer = IOBuffer(count: 8192)
        let atEnd = await ioError { try await device.read(into: buffer, at: 1 << 20) }
        #expect(atEnd?.kind == .beyondEnd(deviceSize: 1 << 20))
        #expect(atEnd?.offset == 1 << 20 && atEnd?.length == 8192 && atEnd?.path == device.path)
        let crossing = await ioError { try await device.write(from: buffer, at: (1 << 20) - 4096) }
        #expect(crossing?.kind.isBeyondEnd == true)
        let discard = await ioError { try await device.discard(at: 0, length: 2 << 20) }
        #expect(discard?.kind.isBeyondEnd == true)
        let huge = await ioError { try await device.read(into: buffer, at: UInt64.max - 4095) }
        #expect(huge?.kind.isBeyondEnd == true)
        #expect(atEnd?.description.contains("beyond the device's 1048576 bytes") == true)
    }

    @Test("misaligned offsets, lengths and buffers are refused before reaching the kernel", arguments: engines)
    func misalignment(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let buffer = IOBuffer(count: 8192)
        let offset = await ioError { try await device.read(into: buffer, at: 100) }
        #expect(offset?.kind == .misalignedOffset(sectorSize: 4096))
        let length = await ioError { try await device.write(from: buffer, at: 0, length: 1000) }
        #expect(length?.kind == .misalignedLength(sectorSize: 4096))
        let empty = await ioError { try await device.write(from: buffer, at: 0, length: 0) }
        #expect(empty?.kind.isMisalignedLength == true)
        let address = await ioError { try await device.read(into: buffer, at: 0, bufferOffset: 512, length: 4096) }
        #expect(address?.kind == .misalignedBuffer(alignment: 4096))
        let discard = await ioError { try await device.discard(at: 512, length: 4096) }
        #expect(discard?.kind.isMisalignedOffset == true)

        let queue = try device.makeQueue(depth: 4)
        let raw = UnsafeMutableRawBufferPointer(start: buffer.baseAddress + 8, count: 4096)
        let q = #expect(throws: IOError.self) { try queue.prepareRead(into: raw, at: 0, tag: 0) }
        #expect(q?.kind.isMisalignedBuffer == true)
        #expect(queue.outstanding == 0)
    }

    @Test("a 512-byte sector image accepts 512-byte I/O", arguments: engines)
    func smallSectors(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine, options: .init(sectorSize: 512))
        #expect(device.sectorSize == 512)
        let data = pattern(1536, seed: 5)
        let aligned = IOBuffer(count: 1536)
        aligned.bytes.copyMemory(from: UnsafeRawBufferPointer(data.bytes))
        try await device.write(from: aligned, at: 512 * 7)
        let back = IOBuffer(count: 1536)
        try await device.read(into: back, at: 512 * 7)
        #expect(back.contentEquals(data))
    }

    @Test("a file that shrank under us gives a short-transfer error", arguments: engines)
    func shortTransfer(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(size: 1 << 20, engine: engine)
        #expect(truncate(device.path, 512 << 10) == 0)
        let error = await ioError { try await device.read(into: IOBuffer(count: 4096), at: 768 << 10) }
        #expect(error?.kind == .shortTransfer(transferred: 0))
        #expect(error?.offset == 768 << 10)
    }

    @Test("writes to a read-only device and after close are refused", arguments: engines)
    func readOnlyAndClosed(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let readOnly = try BlockDevice.open(device.path, options: .init(engine: engine, readOnly: true))
        let error = await ioError { try await readOnly.write(from: IOBuffer(count: 4096), at: 0) }
        #expect(error?.errno == EROFS)
        try await readOnly.read(into: IOBuffer(count: 4096), at: 0)
        device.close()
        let closed = await ioError { try await device.read(into: IOBuffer(count: 4096), at: 0) }
        #expect(closed?.kind == .closed)
    }

    @Test("a device smaller than required is refused at open")
    func tooSmall() throws {
        let scratch = Scratch()
        _ = try scratch.image(size: 1 << 20)
        let error = #expect(throws: IOError.self) {
            try BlockDevice.open(scratch.path("lun.img"), options: .init(minimumSize: 2 << 20))
        }
        #expect(error?.kind == .deviceTooSmall(actual: 1 << 20, required: 2 << 20))
    }

    @Test("opening what is not there, or not a LUN, says so")
    func openErrors() throws {
        let scratch = Scratch()
        let missing = #expect(throws: IOError.self) { try BlockDevice.open(scratch.path("nope.img")) }
        #expect(missing?.errno == ENOENT)
        #expect(missing?.description.contains("No such file or directory") == true)
        let directory = #expect(throws: IOError.self) { try BlockDevice.open(scratch.directory, options: .init(readOnly: true)) }
        #expect(directory != nil)
        let badSector = #expect(throws: IOError.self) { try scratch.image(options: .init(sectorSize: 1024)) }
        #expect(badSector?.kind == .invalidArgument("sector size must be 512 or 4096, not 1024"))
        _ = try scratch.image(size: 1 << 20)
        let exists = #expect(throws: IOError.self) { try scratch.image(size: 1 << 20) }
        #expect(exists?.errno == EEXIST)
    }

    @Test("a full file system fails the write with ENOSPC (tiny tmpfs, root only)",
          .enabled(if: getuid() == 0, "mounting a scratch tmpfs needs root"), arguments: engines)
    func noSpace(engine: IOEngineKind) async throws {
        let mount = try #require(ScratchMount(type: "tmpfs", options: "size=1m"))
        let device = try BlockDevice.createImage(mount.path("full.img"), size: 16 << 20, options: .init(engine: engine))
        let error = await ioError { try await device.write(from: pattern(4 << 20, seed: 1), at: 0) }
        #expect(error != nil)
        // Either the kernel says ENOSPC outright or it moved what fitted and stopped short.
        #expect(error?.isNoSpace == true || error?.kind.isShortTransfer == true, "\(String(describing: error))")
    }

    @Test("where O_DIRECT is refused (ramfs, root only), buffered I/O with one warning",
          .enabled(if: getuid() == 0, "mounting a scratch ramfs needs root"), arguments: engines)
    func bufferedFallback(engine: IOEngineKind) async throws {
        let mount = try #require(ScratchMount(type: "ramfs"))
        let warnings = WarningLog()
        let device = try BlockDevice.createImage(mount.path("ram.img"), size: 4 << 20,
                                                 options: .init(engine: engine, warningHandler: warnings.record))
        #expect(!device.isDirect)
        #expect(warnings.messages.count == 1)
        #expect(warnings.messages.first?.contains("refuses O_DIRECT") == true)
        let data = pattern(65536, seed: 8)
        try await device.write(from: data, at: 65536)
        let back = IOBuffer(count: 65536)
        try await device.read(into: back, at: 65536)
        #expect(back.contentEquals(data))
    }
}

final class WarningLog: Sendable {
    private let stored = Mutex<[String]>([])
    var messages: [String] { stored.withLock { $0 } }
    func record(_ message: String) { stored.withLock { $0.append(message) } }
}

@Suite("Engine choice")
struct EngineChoiceTests {
    @Test func prefersUringThenLibaioThenSync() {
        #expect(IOEngineKind.choose(uringDisabledSysctl: 0, uringSetupErrno: nil, aioSetupErrno: nil) == .uring)
        #expect(IOEngineKind.choose(uringDisabledSysctl: nil, uringSetupErrno: nil, aioSetupErrno: nil) == .uring)
        #expect(IOEngineKind.choose(uringDisabledSysctl: 2, uringSetupErrno: nil, aioSetupErrno: nil) == .libaio)
        #expect(IOEngineKind.choose(uringDisabledSysctl: 1, uringSetupErrno: EPERM, aioSetupErrno: nil) == .libaio)
        #expect(IOEngineKind.choose(uringDisabledSysctl: 0, uringSetupErrno: ENOSYS, aioSetupErrno: nil) == .libaio)
        #expect(IOEngineKind.choose(uringDisabledSysctl: 2, uringSetupErrno: nil, aioSetupErrno: ENOSYS) == .sync)
    }

    @Test func thisHostUsesUring() {
        // io_uring works on the machines this project targets; if it stops, the fallback is
        // taken silently and the benchmark figures would be libaio's, so say so loudly.
        #expect(IOEngineKind.automatic == .uring, "io_uring unavailable: \(IOEngineKind.uringUnavailableReason ?? "?")")
    }

    @Test func userNames() {
        #expect(IOEngineKind(userName: "io_uring") == .uring)
        #expect(IOEngineKind(userName: "AIO") == .libaio)
        #expect(IOEngineKind(userName: "sync") == .sync)
        #expect(IOEngineKind(userName: "spdk") == nil)
    }
}
