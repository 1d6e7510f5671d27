import CLunar
import Glibc
import LunarIO
import LunarTesting
import Testing

@Suite("Compare-and-write")
struct CompareAndWriteTests {
    @Test("a sector another process holds mid compare-and-write (stopped, say) is waited for a bounded time")
    func boundedWait() throws {
        let scratch = Scratch()
        let device = try scratch.image(options: BlockDevice.Options(sectorLockWait: 0.3))
        defer { device.close() }
        // Another open of the image, as another process's, holding sector 2's lock.
        let other = Glibc.open(scratch.path("lun.img"), O_RDWR)
        try #require(other >= 0)
        defer { Glibc.close(other) }
        #expect(lunar_ofd_lock(other, 1, 8192, 4096, 0) == 0)
        let zero = IOBuffer(count: 4096), a = pattern(4096, seed: 3)
        let start = monotonicSeconds()
        var failure: IOError?
        do { _ = try device.compareAndWriteBlocking(expected: zero, new: a, at: 8192) } catch { failure = error }
        let waited = monotonicSeconds() - start
        guard case .timedOut(let why)? = failure?.kind else {
            Issue.record("expected a timeout, got \(String(describing: failure))")
            return
        }
        #expect(why.contains("stopped"))
        #expect(waited >= 0.3 && waited < 5, "waited \(waited) s")
        // Other sectors are not held up; the held one goes through once let go.
        #expect(try device.compareAndWriteBlocking(expected: zero, new: a, at: 4096).isWritten)
        #expect(lunar_ofd_lock(other, 0, 8192, 4096, 0) == 0)
        #expect(try device.compareAndWriteBlocking(expected: zero, new: a, at: 8192).isWritten)
    }

    @Test("writes when the sector matches, returns the sector when it does not", arguments: IOEngineKind.allCases)
    func semantics(engine: IOEngineKind) async throws {
        let scratch = Scratch()
        let device = try scratch.image(engine: engine)
        let zero = IOBuffer(count: 4096)
        let a = pattern(4096, seed: 1)
        let b = pattern(4096, seed: 2)
        #expect(try await device.compareAndWrite(expected: zero, new: a, at: 8192).isWritten)
        let back = IOBuffer(count: 4096)
        try await device.read(into: back, at: 8192)
        #expect(back.contentEquals(a))

        // Stale expectation: nothing written, current bytes returned.
        guard case .mismatch(let current) = try await device.compareAndWrite(expected: zero, new: b, at: 8192) else {
            Issue.record("a stale compare-and-write succeeded")
            return
        }
        #expect(current.contentEquals(a))
        try await device.read(into: back, at: 8192)
        #expect(back.contentEquals(a))
        // Neighbouring sectors untouched.
        try await device.read(into: back, at: 4096)
        #expect(back.contentEquals(zero))
    }

    @Test("refuses buffers that are not one sector and sectors out of range")
    func badArguments() async throws {
        let scratch = Scratch()
        let device = try scratch.image(size: 1 << 20)
        let short = IOBuffer(count: 512)
        let sector = IOBuffer(count: 4096)
        let size = await ioError { _ = try await device.compareAndWrite(expected: short, new: sector, at: 0) }
        #expect(size?.operation == .compareAndWrite)
        let end = await ioError { _ = try await device.compareAndWrite(expected: sector, new: sector, at: 1 << 20) }
        #expect(end?.kind.isBeyondEnd == true)
        let misaligned = await ioError { _ = try await device.compareAndWrite(expected: sector, new: sector, at: 100) }
        #expect(misaligned?.kind.isMisalignedOffset == true)
    }

    @Test("threads of one process sharing a device, and two devices on one file, lose no increment")
    func inProcessAtomicity() async throws {
        let scratch = Scratch()
        let first = try scratch.image()
        let second = try BlockDevice.open(first.path)
        let perWorker = 300
        let workers = 6
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for w in 0..<workers {
                let device = w % 2 == 0 ? first : second
                group.addTask {
                    try await Task.detached { try device.incrementCounter(at: 12288, times: perWorker).increments }.value
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(total == workers * perWorker)
        #expect(try first.readCounter(at: 12288) == UInt64(workers * perWorker))
    }
}

@Suite("CRC32C")
struct CRC32CTests {
    @Test("standard check values (RFC 3720 B.4 and the catalogue's 123456789)")
    func knownVectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    @Test("hardware and table agree at every length and alignment; seeds chain")
    func hardwareMatchesTable() {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        data.withUnsafeBytes { all in
            for length in [0, 1, 7, 8, 9, 63, 64, 65, 4095, 4096, 4999] {
                for start in 0..<4 where start + length <= all.count {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<(start + length)])
                    #expect(CRC32C.checksum(slice) == CRC32C.tableChecksum(slice))
                }
            }
            let whole = CRC32C.checksum(all)
            let head = UnsafeRawBufferPointer(rebasing: all[0..<1234])
            let tail = UnsafeRawBufferPointer(rebasing: all[1234...])
            #expect(CRC32C.checksum(tail, seed: CRC32C.checksum(head)) == whole)
            #expect(CRC32C.tableChecksum(tail, seed: CRC32C.tableChecksum(head)) == whole)
        }
    }
}
