import Foundation
import LunarDisk
import LunarFS
import LunarTesting
import Testing

@Suite("Disk info, resize, import targets")
struct DiskDataTests {
    static func failure(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("info: size, allocated, unique and shared bytes, the snapshot count and parent, for the disk and for a snapshot")
    func info() throws {
        let (v, _) = try VirtualDiskTests.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 64 << 20)
        var i = try disk.info()
        #expect(i.snapshot == nil && i.size == 64 << 20 && i.allocatedBytes == 0 && i.uniqueBytes == 0 && i.snapshotCount == 0)
        #expect(i.parent == nil && i.created == nil)
        try VirtualDiskTests.write(v, disk.path, pattern(4 << 20, seed: 1).array, at: 0)
        try disk.snapshot("a")
        try VirtualDiskTests.write(v, disk.path, pattern(4096, seed: 2).array, at: 0)
        i = try disk.info()
        #expect(i.size == 64 << 20 && i.allocatedBytes == 4 << 20 && i.uniqueBytes == 64 << 10 && i.sharedBytes == (4 << 20) - (64 << 10))
        #expect(i.snapshotCount == 1 && i.parent == "a" && i.created == nil)
        try disk.snapshot("b")
        let a = try disk.info(snapshot: "a")
        #expect(a.snapshot == "a" && a.parent == nil && a.snapshotCount == 2 && a.size == 64 << 20 && a.created != nil)
        #expect(a.allocatedBytes == 4 << 20 && a.uniqueBytes == 64 << 10)
        #expect(try disk.info(snapshot: "b").parent == "a")
        #expect(Self.failure { _ = try disk.info(snapshot: "nope") }?.contains("no snapshot 'nope'") == true)
        #expect(Self.failure { _ = try VirtualDisk(v, path: "/missing.raw").info() }?.contains("no such file") == true)
        try v.close()
    }

    @Test("resize: absolute, +N, -N; a shrink only when allowed; whole sectors only")
    func resize() throws {
        let (v, _) = try VirtualDiskTests.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 16 << 20)
        #expect(try disk.resize(to: .absolute(32 << 20)) == (16 << 20, 32 << 20))
        #expect(try disk.resize(to: .grow(by: 1 << 20)) == (32 << 20, 33 << 20))
        #expect(Self.failure { try disk.resize(to: .shrink(by: 1 << 20)) }?.contains("--shrink") == true)
        #expect(Self.failure { try disk.resize(to: .absolute(1 << 20)) }?.contains("--shrink") == true)
        #expect(Self.failure { try disk.resize(to: .absolute(1000)) }?.contains("512-byte sectors: give 1024 or 512") == true)
        #expect(Self.failure { try disk.resize(to: .grow(by: 1)) }?.contains("512-byte sectors") == true)
        #expect(Self.failure { try disk.resize(to: .shrink(by: 1 << 30), allowShrink: true) }?.contains("more than it holds") == true)
        #expect(try v.stat(disk.path).size == 33 << 20, "a refused resize changes nothing")
        try VirtualDiskTests.write(v, disk.path, pattern(8 << 20, seed: 3).array, at: 0)
        #expect(try disk.resize(to: .shrink(by: 29 << 20), allowShrink: true) == (33 << 20, 4 << 20))
        #expect(try disk.info().allocatedBytes <= 4 << 20, "the data past the end are dropped")
        #expect(try VirtualDiskTests.read(v, disk.path, count: 8 << 20) == Array(pattern(8 << 20, seed: 3).array[0..<(4 << 20)]))
        #expect(DiskSize(argument: "+10G") == .grow(by: 10 << 30) && DiskSize(argument: "-512M") == .shrink(by: 512 << 20)
                && DiskSize(argument: "20G") == .absolute(20 << 30) && DiskSize(argument: "+") == nil && DiskSize(argument: "x") == nil)
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("a snapshot keeps its size when the disk is resized, and a revert brings the snapshot's size and data back")
    func resizeAndSnapshots() throws {
        let (v, _) = try VirtualDiskTests.volume()
        let disk = try VirtualDisk.create(v, path: "/d.raw", size: 8 << 20)
        let data = pattern(8 << 20, seed: 4).array
        try VirtualDiskTests.write(v, disk.path, data, at: 0)
        try disk.snapshot("small")
        try disk.resize(to: .absolute(24 << 20))
        try VirtualDiskTests.write(v, disk.path, pattern(1 << 20, seed: 5).array, at: 20 << 20)
        try disk.snapshot("large")
        #expect(try disk.info(snapshot: "small").size == 8 << 20)
        #expect(try disk.info(snapshot: "large").size == 24 << 20)
        try disk.revert(to: "small")
        #expect(try disk.info().size == 8 << 20)
        #expect(try VirtualDiskTests.read(v, disk.path, count: 9 << 20) == data)
        // Shrunk, then reverted to a larger snapshot: the data past the cut are back.
        try disk.revert(to: "large")
        try disk.resize(to: .absolute(4 << 20), allowShrink: true)
        try disk.revert(to: "large")
        #expect(try disk.info().size == 24 << 20)
        let back = try VirtualDiskTests.read(v, disk.path, count: 24 << 20)
        #expect(Array(back[0..<(8 << 20)]) == data && Array(back[(20 << 20)..<(21 << 20)]) == pattern(1 << 20, seed: 5).array)
        #expect(try v.check().isClean)
        try v.close()
    }

    @Test("a disk another host holds open is not resized; the error names the host")
    func resizeBusy() throws {
        let scratch = Scratch()
        let path = scratch.path("lun.img")
        try Volume.format(path: path, size: 2 << 30)
        let options = OpenOptions(lockTimeout: 10, heartbeatInterval: 0.2)
        let a = try Volume.open(path: path, options: options), b = try Volume.open(path: path, options: options)
        _ = try VirtualDisk.create(a, path: "/vm.raw", size: 8 << 20)
        let held = try a.openFile("/vm.raw")
        try a.relinquishMetadataLock()
        let error = Self.failure { try VirtualDisk(b, path: "/vm.raw").resize(to: .grow(by: 1 << 20)) }
        #expect(error?.contains("held by host") == true && error?.contains("pid \(getpid())") == true, "\(error ?? "resized")")
        #expect(try b.stat("/vm.raw").size == 8 << 20)
        try held.close()
        try VirtualDisk(b, path: "/vm.raw").resize(to: .grow(by: 1 << 20))
        #expect(try b.stat("/vm.raw").size == 9 << 20)
        try a.close()
        try b.close()
    }

    @Test("import targets: a new disk sized to the data, an existing one grown by --size only, data past its end refused")
    func importTargets() throws {
        let (v, _) = try VirtualDiskTests.volume()
        var t = try VirtualDisk.openForImport(v, path: "/new.raw", offset: 0, length: 1000, size: nil)
        var size = try t.file.size
        #expect(t.created && size == 1024, "rounded up to a sector")
        try t.file.close()
        t = try VirtualDisk.openForImport(v, path: "/new.raw", offset: 24, length: 1000, size: nil)
        #expect(!t.created)
        try t.file.close()
        #expect(Self.failure { _ = try VirtualDisk.openForImport(v, path: "/new.raw", offset: 25, length: 1000, size: nil) }?.contains("give --size") == true)
        t = try VirtualDisk.openForImport(v, path: "/new.raw", offset: 1 << 20, length: 1000, size: 2 << 20)
        size = try t.file.size
        #expect(size == 2 << 20)
        try t.file.close()
        #expect(Self.failure { _ = try VirtualDisk.openForImport(v, path: "/new.raw", offset: 0, length: 1, size: 1 << 20) }?.contains("never shrinks") == true)
        #expect(Self.failure { _ = try VirtualDisk.openForImport(v, path: "/other.raw", offset: 0, length: 1, size: 1000) }?.contains("512-byte sectors") == true)
        #expect(Self.failure { _ = try VirtualDisk.openForImport(v, path: "/other.raw", offset: 4096, length: 4096, size: 4096) }?.contains("larger --size") == true)
        #expect(try !v.exists("/other.raw"))
        try v.close()
    }

    @Test("foreign image formats are known by their magic; anything else is raw")
    func foreignFormats() throws {
        func format(_ bytes: [UInt8]) -> String? { bytes.withUnsafeBytes { VirtualDisk.foreignFormat($0) } }
        #expect(format([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]) == "qcow2")
        #expect(format(Array("KDMV".utf8) + [1, 0, 0, 0]) == "vmdk")
        #expect(format(Array("# Disk DescriptorFile\nversion=1\n".utf8)) == "vmdk")
        #expect(format(Array("vhdxfile".utf8)) == "vhdx")
        var vdi = [UInt8](repeating: 0, count: 512)
        vdi.replaceSubrange(64..<68, with: [0x7f, 0x10, 0xda, 0xbe])
        #expect(format(vdi) == "vdi")
        #expect(format([UInt8](repeating: 0, count: 512)) == nil && format([]) == nil && format([0x51, 0x46, 0x49]) == nil)
        let message = Self.failure { try ([0x51, 0x46, 0x49, 0xfb] as [UInt8]).withUnsafeBytes { (b) throws in try VirtualDisk.checkRaw(b, source: "a.qcow2") } }
        #expect(message?.contains("qemu-img convert -O raw a.qcow2") == true, "\(message ?? "accepted")")
    }
}
