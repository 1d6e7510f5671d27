import LunarFS
import LunarIO
import LunarTesting
import Testing

@Suite("Files: thin data, sizes, holes")
struct FileTests {
    @Test("flush after overwriting allocated blocks flushes the LUN though no metadata changed (what a guest's FLUSH needs on iSCSI)")
    func flushWithoutMetadata() throws {
        let t = try TestVolume()
        let device = try BlockDevice.open(t.path)
        defer { device.close() }
        let recorder = RecordingStorage(device)
        let v = try Volume.open(recorder, options: OpenOptions(lockTimeout: 5))
        let f = try v.create("/disk.raw")
        try f.write(bytes(1 << 20, seed: 1), at: 0)
        try f.flush()
        func flushes(after position: Int) -> Int {
            recorder.events[position...].filter { if case .flush = $0 { true } else { false } }.count
        }
        let before = recorder.position
        try f.write(bytes(64 << 10, seed: 2), at: 128 << 10)   // inside an allocated block
        let written = recorder.position
        #expect(flushes(after: before) == 0, "an overwrite alone flushes nothing")
        try f.flush()
        #expect(flushes(after: written) >= 1, "the overwrite is made durable")
        try v.close()
    }

    @Test("inline, small-block and file-block storage, each read back", arguments: [100, 3840, 3841, 65536, 65537, 3_000_000])
    func storageKinds(size: Int) throws {
        let t = try TestVolume()
        let v = try t.open()
        let f = try v.create("/f")
        let data = bytes(size, seed: UInt64(size))
        // Written in uneven pieces so every storage transition happens mid-file.
        var at = 0
        var piece = 1000
        while at < size {
            let n = min(piece, size - at)
            try f.write(Array(data[at..<(at + n)]), at: UInt64(at))
            at += n
            piece = piece * 3 + 1
        }
        #expect(try f.size == UInt64(size))
        #expect(try f.read(at: 0, count: size + 10) == data)
        let info = try f.stat()
        // Past one small block: grains, which snapshots and clones can share (format 2).
        #expect(info.storage == (size <= 3840 ? "inline" : size <= 65536 ? "small blocks" : "grains (shareable)"))
        try v.close()
        let v2 = try t.open()
        #expect(try v2.openFile("/f").read(at: 0, count: size) == data)
        let report = try v2.check()
        #expect(report.isClean, "\(report.problems)")
        try v2.close()
    }

    @Test("thin: a write beyond 1 TiB on a 2 GiB volume allocates one unit; holes read as zeros")
    func sparseBeyondOneTebibyte() throws {
        let t = try TestVolume()
        let v = try t.open()
        let f = try v.create("/thin.vmdk")
        let far: UInt64 = (1 << 40) + 7 * (1 << 20) + 4096
        let data = bytes(8192, seed: 9)
        try f.write(data, at: far)
        try f.write(data, at: 1 << 20)
        #expect(try f.size == far + 8192)
        #expect(try f.read(at: far, count: 8192) == data)
        #expect(try f.read(at: far - 4096, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try f.read(at: 1 << 39, count: 4096) == [UInt8](repeating: 0, count: 4096))
        // Units of 64 KiB grains: each write maps the one it falls in.
        let unit = try f.stat().unitSize
        #expect(unit == 64 << 10)
        #expect(try f.allocatedRanges() == [(1 << 20)..<((1 << 20) + unit), (far - 4096)..<(far + 8192)])
        #expect(try f.stat().allocatedBytes == 2 * unit)
        try v.sync()
        // Both grains from the one file block this host fills with single grains.
        #expect(try v.usage().allocatedBytes == 1 << 20)
        try v.close()
        #expect(try t.open(readOnly: true).check().isClean)
    }

    @Test("truncate down frees blocks and zeroes the tail; truncate up reads zeros")
    func truncate() throws {
        let t = try TestVolume()
        let v = try t.open()
        let f = try v.create("/t")
        try f.write(bytes(5 << 20, seed: 4), at: 0)
        try f.truncate(to: (2 << 20) + 100)
        #expect(try f.stat().allocatedBytes == (2 << 20) + (try f.stat().unitSize))
        try f.truncate(to: 4 << 20)
        let back = try f.read(at: 0, count: 4 << 20)
        #expect(Array(back[0..<((2 << 20) + 100)]) == Array(bytes(5 << 20, seed: 4)[0..<((2 << 20) + 100)]))
        #expect(back[((2 << 20) + 100)...].allSatisfy { $0 == 0 })
        try f.truncate(to: 0)
        #expect(try f.stat().allocatedBytes == 0)
        try v.close()
        #expect(try t.open(readOnly: true).check().isClean)
    }

    @Test("discard frees whole blocks and zeroes partial ones")
    func discard() throws {
        let t = try TestVolume()
        let v = try t.open()
        let f = try v.create("/d")
        try f.write(bytes(4 << 20, seed: 5), at: 0)
        try f.discard(at: (1 << 20) - 4096, length: (2 << 20) + 8192)
        #expect(try f.allocatedRanges() == [0..<(1 << 20), (3 << 20)..<(4 << 20)])
        let back = try f.read(at: 0, count: 4 << 20)
        let original = bytes(4 << 20, seed: 5)
        #expect(Array(back[0..<((1 << 20) - 4096)]) == Array(original[0..<((1 << 20) - 4096)]))
        #expect(back[((1 << 20) - 4096)..<((3 << 20) + 4096)].allSatisfy { $0 == 0 })
        #expect(Array(back[((3 << 20) + 4096)...]) == Array(original[((3 << 20) + 4096)...]))
        try v.close()
        #expect(try t.open(readOnly: true).check().isClean)
    }

    @Test("aligned I/O through extents lands where the file API reads it")
    func extents() throws {
        let t = try TestVolume()
        let v = try t.open()
        let f = try v.create("/e")
        try f.write(bytes(3 << 20, seed: 6), at: 0)
        let pieces = try f.extents(0..<(4 << 20))
        #expect(pieces.count >= 2)
        #expect(pieces.last?.deviceOffset == nil)
        try v.close()
    }

    @Test("a full volume fails the write cleanly and fsck stays clean")
    func fullVolume() throws {
        let t = try TestVolume(size: 400 << 20, options: FormatOptions(blockSize: 1 << 20, maxFiles: 1000))
        let v = try t.open()
        let f = try v.create("/fill")
        let chunk = bytes(1 << 20, seed: 7)
        var written: UInt64 = 0
        var failure: FSError?
        while failure == nil && written < 1 << 30 {
            failure = fsError { try f.write(chunk, at: written) }
            if failure == nil { written += 1 << 20 }
        }
        #expect(failure?.kind == .noSpace(resource: "file blocks"))
        #expect(try f.size == written)
        try v.sync()
        let report = try v.check()
        #expect(report.isClean, "\(report.problems)")
        try v.remove("/fill")
        try v.sync()
        #expect(try v.usage().allocatedBytes == 0)
        try v.close()
    }
}
