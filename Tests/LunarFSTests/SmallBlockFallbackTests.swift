import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Small blocks are 1/64 of a volume: once they are used up, files and directories that would
/// have gone to them take file blocks instead, and read, list, look up, remove and check as
/// any other.
@Suite("Small blocks used up: files and directories fall back to file blocks")
struct SmallBlockFallbackTests {
    /// 512 MiB: the fewest small blocks mkfs makes (256, 255 usable) for every block size.
    static let volumeSize: UInt64 = 512 << 20

    static func free(_ v: Volume, _ kind: ResourceKind) throws -> UInt64 {
        try #require(try v.usage().resources.first { $0.kind == kind }).free
    }

    /// Uses small blocks up to `leaving` free: hashed directories of 19 long names (each takes
    /// two small blocks, for its header and its first leaf), then files of 3841 bytes (one
    /// each, where files use small blocks at all).
    static func fill(_ v: Volume, leaving: UInt64) throws {
        let names = (0..<19).map { "\($0)-" + String(repeating: "n", count: 200) }
        var k = 0
        while try free(v, .smallBlock) >= leaving + 2 {
            try v.mkdir("/fill-\(k)")
            for name in names { _ = try v.create("/fill-\(k)/\(name)") }
            #expect(try v.stat("/fill-\(k)").storage == "small blocks")
            k += 1
        }
        guard v.header.blockSize > 64 << 10 else { return }
        while try free(v, .smallBlock) > leaving {
            try v.create("/fill-file-\(k)").write(bytes(3841, seed: UInt64(k)), at: 0)
            k += 1
        }
        #expect(try free(v, .smallBlock) == leaving)
    }

    static func entryName(_ i: Int) -> String { "entry-\(i)-" + String(repeating: "x", count: 50) }

    /// A directory of `count` entries, made where no small block can be had.
    static func makeDirectory(_ v: Volume, _ path: String, count: Int) throws {
        try v.mkdir(path)
        for i in 0..<count { _ = try v.create("\(path)/\(entryName(i))") }
    }

    /// What the volume holds beside the fillers: the directories and files made on file blocks.
    static func verify(_ v: Volume, directories: [String], count: Int, files: [String: [UInt8]]) throws {
        for d in directories {
            #expect(try v.stat(d).storage == "file blocks", "\(d)")
            let listed = try v.list(d).map(\.name)
            #expect(listed.count == count)
            #expect(Set(listed) == Set((0..<count).map(entryName)))
            for i in stride(from: 0, to: count, by: 7) { #expect(try v.stat("\(d)/\(entryName(i))").type == .file) }
            #expect(fsError { _ = try v.stat("\(d)/\(entryName(count))") }?.kind == .notFound)
        }
        for (path, data) in files {
            let info = try v.stat(path)
            // A file past a small block is in grains of file blocks (format 2).
            #expect(info.storage == "grains (shareable)", "\(path)")
            #expect(info.size == UInt64(data.count))
            #expect(try v.openFile(path, lock: nil).read(at: 0, count: data.count + 100) == data, "\(path)")
        }
    }

    @Test("a 30 KB file and directories of hundreds of entries take file blocks, read back, and go away; fsck clean throughout",
          arguments: [UInt32(64 << 10), 1 << 20, 8 << 20])
    func fallback(blockSize: UInt32) throws {
        let t = try TestVolume(size: Self.volumeSize, options: FormatOptions(blockSize: blockSize))
        let count = 600
        var v = try t.open()
        #expect(v.header.smallBlocks.count == 256)
        try Self.fill(v, leaving: 1)
        try v.sync()
        let before = (small: try Self.free(v, .smallBlock), file: try Self.free(v, .fileBlock))

        // One small block left, a directory needs two: the half-made small layout is undone
        // and the directory goes to file blocks, the small block still free.
        try Self.makeDirectory(v, "/half", count: count)
        #expect(try Self.free(v, .smallBlock) == 1)
        if blockSize > 64 << 10 {
            try v.create("/last-small").write(bytes(3841, seed: 99), at: 0)
            #expect(try v.stat("/last-small").storage == "small blocks")
            #expect(try Self.free(v, .smallBlock) == 0)
        }
        // None left at all.
        try Self.makeDirectory(v, "/none", count: count)
        let thirty = bytes(30_000, seed: 30)
        try v.create("/thirty").write(thirty, at: 0)
        // A small file made by truncate holds no block yet; its first write falls back.
        let sparse = try v.create("/sparse")
        try sparse.truncate(to: 30_000)
        try sparse.write(bytes(100, seed: 31), at: 20_000)
        try sparse.close()
        var sparseData = [UInt8](repeating: 0, count: 30_000)
        sparseData.replaceSubrange(20_000..<20_100, with: bytes(100, seed: 31))
        let files = ["/thirty": thirty, "/sparse": sparseData]
        let directories = ["/half", "/none"]

        try Self.verify(v, directories: directories, count: count, files: files)
        var report = try v.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
        try v.close()

        v = try t.open()
        try Self.verify(v, directories: directories, count: count, files: files)
        report = try v.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
        try v.remove("/half", recursive: true)
        try v.remove("/none", recursive: true)
        for path in files.keys { try v.remove(path) }
        if blockSize > 64 << 10 { try v.remove("/last-small") }
        try v.sync()
        #expect(try Self.free(v, .smallBlock) == before.small)
        #expect(try Self.free(v, .fileBlock) == before.file)
        report = try v.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
        try v.close()

        let r = try t.open(readOnly: true)
        #expect(try r.list("/").allSatisfy { $0.name.hasPrefix("fill-") })
        report = try r.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
    }

    @Test("under a shared hold the fallback stays shared: full small-block clusters nobody holds mean no space, not a conflict")
    func sharedHold() throws {
        let t = try TestVolume(size: Self.volumeSize)
        do {
            let v = try t.open()
            try Self.fill(v, leaving: 0)
            try v.close()
        }
        let v = try Volume.open(path: t.path, options: OpenOptions(lockTimeout: 5, heartbeatInterval: 0.2,
                                                                   metadataLockLinger: 60, metadataLockMaxHold: 60))
        let data = bytes(30_000, seed: 5)
        try v.mkdir("/own")
        let f = try v.create("/own/thirty")
        try f.write(data, at: 0)
        try Self.makeDirectory(v, "/own/dir", count: 200)
        let statistics = try #require(v.metadataLockStatistics)
        #expect(statistics.sharedAcquisitions >= 1)
        #expect(statistics.retriedExclusive == 0)
        #expect(try f.read(at: 0, count: 40_000) == data)
        try f.close()
        try Self.verify(v, directories: ["/own/dir"], count: 200, files: ["/own/thirty": data])
        try v.close()
        let r = try t.open(readOnly: true)
        let report = try r.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
    }

    @Test("fsck --repair rebuilds a directory on file blocks whose header is damaged from its leaves, on file blocks again")
    func repairOnFileBlocks() throws {
        let t = try TestVolume(size: Self.volumeSize)
        var v = try t.open()
        try Self.fill(v, leaving: 0)
        try Self.makeDirectory(v, "/d", count: 600)
        let header = try #require(try v.records(of: "/d").first { $0.record == "directory header" })
        try v.close()
        try CorruptionTests.damage(t.path, at: header.offset, .garbage)

        v = try t.open()
        #expect(fsError { _ = try v.list("/d") }?.kind.isCorrupt == true)
        let repair = try v.check(repair: true)
        #expect(repair.exitCode == 1, "\(repair.problems.prefix(5))")
        try Self.verify(v, directories: ["/d"], count: 600, files: [:])
        try v.close()
        v = try t.open()
        let report = try v.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
        try v.close()
    }

    @Test("a directory's file block reused for data after the directory went: a crash and journal replay leave the data intact")
    func replayAfterReuse() throws {
        let t = try TestVolume(size: Self.volumeSize)
        // One host that keeps the metadata lock (and so its journal) while it works, as a busy
        // host does; a copy of its image taken while it runs is what a crash leaves.
        let v = try Volume.open(path: t.path, options: OpenOptions(heartbeatInterval: 0.1, metadataLockLinger: 60, metadataLockMaxHold: 60))
        try Self.fill(v, leaving: 0)
        try v.sync()
        // Few entries (a short transaction), long names (hashed all the same).
        try v.mkdir("/d")
        for i in 0..<25 { _ = try v.create("/d/\(i)-" + String(repeating: "n", count: 200)) }
        #expect(try v.stat("/d").storage == "file blocks")
        try v.sync()
        try v.remove("/d", recursive: true)
        try v.sync()
        // Every free file block, the directory's among them, gets data.
        let f = try v.create("/data")
        var written: [UInt64] = []
        var failure: FSError?
        while failure == nil {
            let at = UInt64(written.count) << 20
            failure = fsError { try f.write(bytes(4096, seed: UInt64(written.count)), at: at) }
            if failure == nil { written.append(at) }
        }
        #expect(failure?.kind == .noSpace(resource: "file blocks"))
        try v.sync()
        let (copy, _) = try RemoteHolderTests.crashCopy(t, v)
        let r = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 10, heartbeatInterval: 0.1))
        let g = try r.openFile("/data", lock: nil)
        for (i, at) in written.enumerated() {
            #expect(try g.read(at: at, count: 4096) == bytes(4096, seed: UInt64(i)), "block at \(at)")
        }
        #expect(r.recoveredSlots.contains(0))
        let report = try r.check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
        try r.close()
    }
}
