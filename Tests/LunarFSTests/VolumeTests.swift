import Foundation
import LunarFS
import LunarIO
import LunarTesting
import Testing

@Suite("Volume: format, open, tree")
struct VolumeTests {
    @Test("format then open reads back the header; the root is an empty directory")
    func formatAndOpen() throws {
        let t = try TestVolume(options: FormatOptions(label: "test vol", blockSize: 1 << 20))
        let v = try t.open()
        #expect(v.header.label == "test vol")
        #expect(v.header.blockSize == 1 << 20)
        #expect(v.header.hostSlots == 256)
        #expect(try v.list("/").isEmpty)
        let usage = try v.usage()
        #expect(usage.allocatedBytes == 0)
        try v.close()
        let report = try t.open(readOnly: true).check()
        #expect(report.isClean, "\(report.problems)")
    }

    @Test("mkdir, create, list, stat, rename and remove")
    func tree() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.mkdir("/vms")
        try v.mkdir("/vms/web01/disks", parents: true)
        let f = try v.create("/vms/web01/web01.vmx")
        try f.write(Array("memsize = 1024\n".utf8), at: 0)
        #expect(try v.list("/vms").map(\.name) == ["web01"])
        #expect(try v.list("/vms/web01").map(\.name) == ["disks", "web01.vmx"])
        #expect(try v.stat("/vms/web01/web01.vmx").size == 15)
        #expect(try v.stat("/vms/web01").type == .directory)
        #expect(fsError { try v.mkdir("/vms") }?.kind == .exists)
        #expect(fsError { _ = try v.create("/vms/web01/web01.vmx", exclusive: true) }?.kind == .exists)
        #expect(fsError { _ = try v.stat("/nope") }?.kind == .notFound)
        #expect(fsError { try v.mkdir("/vms/web01/web01.vmx/x") }?.kind == .notDirectory)
        #expect(fsError { try v.mkdir("/" + String(repeating: "a", count: 256)) }?.kind == .nameTooLong)
        try v.mkdir("/" + String(repeating: "é", count: 127))

        try v.rename("/vms/web01", to: "/vms/web02")
        #expect(try v.list("/vms").map(\.name) == ["web02"])
        #expect(try v.openFile("/vms/web02/web01.vmx").read(at: 0, count: 100) == Array("memsize = 1024\n".utf8))
        #expect(fsError { try v.rename("/vms", to: "/vms/web02/inside") }?.kind == .invalidArgument("cannot move a directory into itself"))
        #expect(fsError { try v.remove("/vms") }?.kind == .directoryNotEmpty)
        try v.remove("/vms", recursive: true)
        #expect(try v.list("/").count == 1)
        try v.close()
        let report = try t.open(readOnly: true).check()
        #expect(report.isClean, "\(report.problems)")
    }

    @Test("rename replaces an existing file atomically")
    func renameReplaces() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.create("/a").write(bytes(200_000, seed: 1), at: 0)
        try v.create("/b").write(bytes(5000, seed: 2), at: 0)
        let before = try v.usage().allocatedBytes
        try v.rename("/a", to: "/b")
        #expect(try v.list("/").map(\.name) == ["b"])
        #expect(try v.openFile("/b").read(at: 0, count: 300_000) == bytes(200_000, seed: 1))
        try v.sync()
        #expect(try v.usage().allocatedBytes <= before)
        try v.close()
        #expect(try t.open(readOnly: true).check().isClean)
    }

    @Test("changes survive close and reopen")
    func persistence() throws {
        let t = try TestVolume()
        do {
            let v = try t.open()
            try v.mkdir("/d")
            try v.create("/d/f").write(bytes(3 << 20, seed: 3), at: 12345)
            try v.close()
        }
        let v = try t.open()
        let f = try v.openFile("/d/f")
        #expect(try f.size == 12345 + 3 << 20)
        #expect(try f.read(at: 12345, count: 3 << 20) == bytes(3 << 20, seed: 3))
        #expect(try f.read(at: 0, count: 12345) == [UInt8](repeating: 0, count: 12345))
        try v.close()
    }

    @Test("a directory of 100 000 entries: every name found, list complete, fsck clean")
    func bigDirectory() throws {
        let t = try TestVolume(size: 4 << 30, options: FormatOptions(maxFiles: 120_000))
        let v = try t.open()
        try v.mkdir("/big")
        let count = Int(ProcessInfo.processInfo.environment["LUNAR_BIG_DIRECTORY"] ?? "") ?? 100_000
        for i in 0..<count { _ = try v.create("/big/file-\(i).vmdk") }
        for i in stride(from: 0, to: count, by: 997) { #expect(try v.stat("/big/file-\(i).vmdk").type == .file) }
        #expect(fsError { _ = try v.stat("/big/file-\(count).vmdk") }?.kind == .notFound)
        let names = Set(try v.list("/big").map(\.name))
        #expect(names.count == count)
        for i in stride(from: 0, to: count, by: 2) { try v.remove("/big/file-\(i).vmdk") }
        #expect(try v.list("/big").count == count / 2)
        try v.close()
        let report = try t.open(readOnly: true).check()
        #expect(report.isClean, "\(report.problems.prefix(5))")
    }
}

@Suite("Limits")
struct LimitTests {
    @Test("a 64 TiB volume lays out with room for 10^6 files and 64 TiB files", arguments: [UInt32(64 << 10), 1 << 20, 8 << 20])
    func sixtyFourTebibytes(blockSize: UInt32) throws {
        let h = try Volume.plan(size: 64 << 40, options: FormatOptions(blockSize: blockSize, maxFiles: 1_000_000))
        #expect(h.volumeSize == 64 << 40)
        #expect(h.inodes.count - 1 >= 1_000_000)
        #expect(h.fileBlocks.count * UInt64(blockSize) >= (64 << 40) * 9 / 10)
        #expect(h.maxFileSize >= 64 << 40)
        let defaults = try Volume.plan(size: 64 << 40)
        #expect(defaults.inodes.count - 1 >= 1_000_000)
    }

    @Test("sizes too small or too large for a volume are refused with the limit named, never a trap",
          arguments: [UInt32(64 << 10), 1 << 20, 8 << 20])
    func sizeLimits(blockSize: UInt32) throws {
        let options = FormatOptions(blockSize: blockSize)
        for size: UInt64 in [0, 1, 4095, 4096, 64 << 10, 1 << 20] {
            let error = fsError { _ = try Volume.plan(size: size, options: options) }
            guard case .invalidArgument(let why)? = error?.kind else { Issue.record("\(size): \(String(describing: error))"); continue }
            #expect(why.contains("too small") && why.contains("needs at least"), "\(why)")
        }
        // The minimum named is exact, to the MiB: that size lays out, one MiB less does not.
        let why = fsError { _ = try Volume.plan(size: 0, options: options) }?.description ?? ""
        let words = why.split(separator: " ")
        let mib = try #require(words.firstIndex(of: "least").flatMap { UInt64(words[$0 + 1]) }, "\(why)")
        #expect(throws: Never.self) { _ = try Volume.plan(size: mib << 20, options: options) }
        #expect(fsError { _ = try Volume.plan(size: (mib - 1) << 20, options: options) } != nil)

        // At most 2^32 − 1 file blocks (format 1), or 2^32 grains of 64 KiB in them (format 2):
        // that much data fits, 2^64 − 1 bytes is refused saying so.
        for shared in [false, true] {
            let options = FormatOptions(blockSize: blockSize, sharedBlocks: shared)
            let grains = UInt64(blockSize >> 16)
            let largest = shared ? UInt64(UInt32.max) / grains * UInt64(blockSize) : UInt64(UInt32.max) * UInt64(blockSize)
            let h = try Volume.plan(size: largest, options: options)
            #expect(h.fileBlocks.count * (shared ? grains : 1) <= UInt64(UInt32.max))
            for size in [UInt64.max, UInt64.max / 2, largest * 2] {
                let error = fsError { _ = try Volume.plan(size: size, options: options) }
                guard case .invalidArgument(let why)? = error?.kind else { Issue.record("\(size): \(String(describing: error))"); continue }
                #expect(why.contains("too large") && why.contains("\(largest) bytes"), "\(why)")
            }
        }
        // Huge values of the other settings are refused too, not overflowed.
        for huge in [FormatOptions(blockSize: blockSize, maxFiles: .max), FormatOptions(blockSize: blockSize, journalSize: .max),
                     FormatOptions(blockSize: .max)] {
            #expect(fsError { _ = try Volume.plan(size: .max, options: huge) } != nil)
            #expect(fsError { _ = try Volume.plan(size: 0, options: huge) } != nil)
        }
    }

    @Test("format of a new image file to a size no volume can have leaves no file behind")
    func formatRefusedSize() throws {
        let scratch = Scratch()
        for size: UInt64 in [0, 4095, UInt64.max] {
            let path = scratch.path("new-\(size).img")
            #expect(fsError { try Volume.format(path: path, size: size) } != nil)
            #expect(access(path, F_OK) != 0, "\(size): a refused format left \(path) behind")
        }
        // LunarIO refuses an image larger than a file offset can say, rather than trap.
        #expect(throws: IOError.self) { _ = try BlockDevice.createImage(scratch.path("huge.img"), size: .max) }
        #expect(access(scratch.path("huge.img"), F_OK) != 0)
    }

    @Test("a 15 TiB sparse volume formats, opens, and holds a file written past 10 TiB")
    func largeSparseVolume() throws {
        let t = try TestVolume(size: 15 << 40)
        let v = try t.open()
        let f = try v.create("/far")
        let data = bytes(1 << 20, seed: 11)
        try f.write(data, at: 10 << 40)
        try v.close()
        let again = try t.open(readOnly: true)
        #expect(try again.openFile("/far").read(at: 10 << 40, count: 1 << 20) == data)
        #expect(try again.usage().allocatedBytes == 1 << 20)
        #expect(try again.check().isClean)
    }

    @Test("running out of inodes fails the create cleanly; fsck stays clean")
    func outOfInodes() throws {
        let t = try TestVolume(size: 1 << 30, options: FormatOptions(maxFiles: 100))
        let v = try t.open()
        var failure: FSError?
        var made = 0
        while failure == nil && made < 10_000 {
            failure = fsError { _ = try v.create("/f\(made)") }
            if failure == nil { made += 1 }
        }
        #expect(failure?.kind == .noSpace(resource: "file descriptors (inodes)"))
        #expect(made >= 100)
        #expect(try v.list("/").count == made)
        #expect(try v.check().isClean)
        try v.close()
    }
}
