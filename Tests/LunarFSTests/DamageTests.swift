import Foundation
import Glibc
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// The damage campaign: one metadata sector of every kind damaged at a time — garbage, a
/// flipped byte, and crafted values under a valid checksum (as a buggy host or a lost write
/// leaves them). After each: every operation works or fails with a clear error (never a trap
/// or a hang), `fsck --repair` leaves a volume that the next check finds clean and that takes
/// new files, and every file whose own sectors were not damaged is there, byte for byte, at
/// its path or in /lost+found.
@Suite("Bad input: the damage campaign")
struct DamageTests {
    /// What the populated volume holds: path -> content.
    static let files: [String: [UInt8]] = {
        var files: [String: [UInt8]] = [:]
        for i in 0..<300 { files["/dir/f-\(i)"] = bytes(100 + i, seed: UInt64(i)) }
        for i in 0..<5 { files["/dir/sub/s-\(i)"] = bytes(10_000 + i, seed: UInt64(1000 + i)) }
        files["/mid"] = bytes(200_000, seed: 7)
        files["/top"] = bytes(50, seed: 8)
        return files
    }()
    /// A sparse file whose map needs a pointer block: its data sits 1.5 GiB in.
    static let bigOffset: UInt64 = 1536 << 20
    static let bigData = bytes(8192, seed: 9)

    static func populated() throws -> TestVolume {
        let t = try TestVolume()
        let v = try t.open()
        try v.mkdir("/dir")
        try v.mkdir("/dir/sub")
        for (path, content) in files { try v.create(path).write(content, at: 0) }
        try v.create("/big").write(bigData, at: bigOffset)
        try v.close()
        return t
    }

    enum Damage: CustomStringConvertible {
        case garbage(seed: UInt64)
        case flip(byte: Int)
        /// A field set to a value, the record's checksum made valid again.
        case crafted(String, (inout [UInt8]) -> Void)

        var description: String {
            switch self {
            case .garbage: "garbage"
            case .flip(let b): "byte \(b) flipped"
            case .crafted(let what, _): what
            }
        }

        func apply(to sector: inout [UInt8]) {
            switch self {
            case .garbage(let seed):
                var g = seed | 1
                for i in sector.indices {
                    g ^= g << 13; g ^= g >> 7; g ^= g << 17
                    sector[i] = UInt8(truncatingIfNeeded: g)
                }
            case .flip(let b): sector[b] ^= 0x5A
            case .crafted(_, let change):
                change(&sector)
                reseal(&sector)
            }
        }
    }

    static func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in sector: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for (i, b) in raw.enumerated() { sector[offset + i] = b }
        }
    }

    /// The record's CRC32C (bytes 24–27, computed with them zero) made to match its content.
    static func reseal(_ sector: inout [UInt8]) {
        store(UInt32(0), at: 24, in: &sector)
        store(CRC32C.checksum(sector), at: 24, in: &sector)
    }

    static func damage(_ path: String, at offset: UInt64, _ how: Damage) {
        changeSector(path, at: offset) { how.apply(to: &$0) }
    }

    struct Target {
        var record: String
        var offset: UInt64
        /// The files this sector belongs to (their content may be lost with it).
        var owners: Set<String>
        /// For a data cluster: the files with units in it.
        var dataOwners: Set<String> = []
    }

    /// Every record of every file and directory, the volume-wide ones, another host's slot
    /// and journal header, and the clusters that hold the files' inodes and blocks.
    static func targets(_ t: TestVolume) throws -> [Target] {
        let v = try t.open(readOnly: true)
        defer { try? v.close() }
        var byOffset: [UInt64: Target] = [:]
        func add(_ r: MetadataRecordLocation, owner: String?) {
            var target = byOffset[r.offset] ?? Target(record: r.record, offset: r.offset, owners: [])
            if let owner { target.owners.insert(owner) }
            byOffset[r.offset] = target
        }
        for path in ["/", "/dir", "/dir/sub", "/big", "/mid", "/top", "/dir/f-0", "/dir/sub/s-0"] {
            for r in try v.records(of: path) { add(r, owner: path) }
        }
        for r in v.fixedRecords() { add(r, owner: nil) }
        for r in v.slotRecords(7) { add(r, owner: nil) }
        for path in ["/mid", "/dir/f-0", "/big"] {
            for r in try v.clusters(of: path) { add(r, owner: nil) }
        }
        for path in files.keys.sorted() + ["/big"] {
            for r in try v.clusters(of: path) where byOffset[r.offset] != nil { byOffset[r.offset]?.dataOwners.insert(path) }
        }
        return byOffset.values.sorted { $0.offset < $1.offset }
    }

    /// Crafted values for the record kinds whose fields a decoder must range-check.
    static func crafted(for record: String) -> [Damage] {
        switch record {
        case "file descriptor (inode)":
            return [
                .crafted("size 2^64-1") { store(UInt64.max, at: 120, in: &$0) },
                .crafted("size 2^40") { store(UInt64(1) << 40, at: 120, in: &$0) },
                .crafted("allocated units 2^64-1") { store(UInt64.max, at: 128, in: &$0) },
                .crafted("lock mode 9") { $0[32] = 9 },
                .crafted("holder count 2^32-1") { store(UInt32.max, at: 176, in: &$0) },
                .crafted("parent 2^32-1") { store(UInt32.max, at: 168, in: &$0) },
            ]
        case "directory header":
            return [
                .crafted("entry count 2^63") { store(UInt64(1) << 63, at: 48, in: &$0) },
                .crafted("next free 2^32-1") { store(UInt32.max, at: 44, in: &$0) },
            ]
        case "host slot":
            return [.crafted("slot index 9") { store(UInt32(9), at: 32, in: &$0) }]
        case "resource cluster header":
            // A lost bitmap write: every resource of the cluster marked free.
            return [.crafted("bitmap cleared") { sector in
                let resources = Int(UInt32(littleEndian: sector[48..<52].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
                for i in 128..<4096 { sector[i] = 0 }
                store(UInt32(resources), at: 52, in: &sector)
            }]
        default:
            return []
        }
    }

    /// Every operation a user has: each works or fails with an error, nothing more asked.
    static func exercise(_ path: String) {
        if let r = try? Volume.open(path: path, options: OpenOptions(readOnly: true)) {
            _ = try? r.list("/dir")
            _ = try? r.stat("/mid")
            _ = try? r.check()
            try? r.close()
        }
        guard let v = try? Volume.open(path: path, options: OpenOptions(lockTimeout: 2, heartbeatInterval: 0.5)) else { return }
        defer { try? v.close() }
        _ = try? v.list("/")
        _ = try? v.list("/dir")
        _ = try? v.usage()
        for path in files.keys.sorted() + ["/big"] {
            _ = try? v.stat(path)
            if let f = try? v.openFile(path, lock: .sharedReadOnly), let size = try? f.size {
                _ = try? f.read(at: 0, count: Int(min(size, 1 << 20)))
                try? f.close()
            }
        }
        if let f = try? v.create("/new-file") { try? f.write(bytes(30_000, seed: 3), at: 0) }
        _ = try? v.mkdir("/new-dir")
        try? v.remove("/dir/f-1")
        _ = try? v.check()
    }

    /// Where a file ended up: its path, /lost+found/#inode, or inside a directory reconnected
    /// there.
    static func locate(_ v: Volume, _ path: String, inode: UInt32) -> String? {
        if (try? v.stat(path))?.inode == inode { return path }
        if (try? v.stat("/lost+found/#\(inode)"))?.inode == inode { return "/lost+found/#\(inode)" }
        for item in (try? v.list("/lost+found")) ?? [] where item.type == .directory {
            for inner in (try? v.list("/lost+found/\(item.name)")) ?? [] where inner.inode == inode {
                return "/lost+found/\(item.name)/\(inner.name)"
            }
            for inner in (try? v.list("/lost+found/\(item.name)")) ?? [] where inner.type == .directory {
                for deeper in (try? v.list("/lost+found/\(item.name)/\(inner.name)")) ?? [] where deeper.inode == inode {
                    return "/lost+found/\(item.name)/\(inner.name)/\(deeper.name)"
                }
            }
        }
        return nil
    }

    static func read(_ v: Volume, _ path: String, inode: UInt32, at offset: UInt64 = 0, count: Int? = nil) -> [UInt8]? {
        guard let found = locate(v, path, inode: inode), let f = try? v.openFile(found, lock: .sharedReadOnly) else { return nil }
        defer { try? f.close() }
        guard let size = try? f.size else { return nil }
        return try? f.read(at: offset, count: count ?? Int(min(size, 1 << 21)))
    }

    @Test("one damaged sector of every kind: no trap, fsck --repair leaves it clean, writable, every undamaged file intact")
    func campaign() throws {
        let t = try Self.populated()
        let inodes = try { () throws -> [String: UInt32] in
            let v = try t.open(readOnly: true)
            defer { try? v.close() }
            var out: [String: UInt32] = [:]
            for path in Self.files.keys + ["/big"] { out[path] = try v.stat(path).inode }
            return out
        }()
        var cases = 0, repaired = 0, clean = 0, filesChecked = 0
        var failures: [String] = []
        let copy = t.scratch.path("damaged.img")
        for target in try Self.targets(t) {
            let damages: [Damage] = [.garbage(seed: target.offset), .flip(byte: 100), .flip(byte: 40)] + Self.crafted(for: target.record)
            for how in damages {
                cases += 1
                let what = "\(target.record) at \(target.offset) (\(target.owners.sorted().joined(separator: ", "))), \(how)"
                try? FileManager.default.removeItem(atPath: copy)
                try copySparse(from: t.path, to: copy)
                Self.damage(copy, at: target.offset, how)
                Self.exercise(copy)
                // Repair.
                var options = OpenOptions(lockTimeout: 2, heartbeatInterval: 0.5)
                options.repair = true
                var repairs: [String] = []
                do {
                    let v = try Volume.open(path: copy, options: options)
                    let report = try v.check(repair: true)
                    try v.close()
                    repairs = report.problems.map(\.message)
                    if !report.unrepaired.isEmpty {
                        failures.append("\(what): fsck --repair left \(report.unrepaired.prefix(3))")
                        continue
                    }
                    if !report.isClean { repaired += 1 }
                } catch {
                    failures.append("\(what): fsck --repair: \(error)")
                    continue
                }
                // Clean on the next check, writable, the undamaged files intact.
                do {
                    let v = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 2, heartbeatInterval: 0.5))
                    defer { try? v.close() }
                    let again = try v.check()
                    if !again.isClean {
                        failures.append("\(what): the check after repair: \(again.problems.prefix(3))")
                        continue
                    }
                    clean += 1
                    try v.create("/after-repair").write(bytes(70_000, seed: 11), at: 0)
                    if try v.openFile("/after-repair").read(at: 0, count: 70_000) != bytes(70_000, seed: 11) {
                        failures.append("\(what): a file written after repair reads back wrong")
                    }
                    // A small-block cluster whose bitmap a lost write cleared: units of these
                    // files may have been handed out again before fsck ran. Small blocks carry
                    // no owner to check against (inodes and pointer blocks do); fsck gives each
                    // later claimer a copy, but what was overwritten stays overwritten. File
                    // blocks of a format 2 volume hold grains whose counts keep them taken.
                    let kind = TreeDamageTests.load(TreeDamageTests.sector(t.path, target.offset), 32, as: UInt16.self)
                    let mayBeOverwritten = how.description == "bitmap cleared" && kind == 3 ? target.dataOwners : []
                    for (path, expected) in Self.files {
                        // exercise() removed /dir/f-1 itself.
                        if target.owners.contains(path) || mayBeOverwritten.contains(path) || path == "/dir/f-1" { continue }
                        filesChecked += 1
                        if Self.read(v, path, inode: inodes[path]!) != expected {
                            failures.append("\(what): \(path) lost or changed (repairs: \(repairs.prefix(8)))")
                            break
                        }
                    }
                    if !target.owners.contains("/big"), !mayBeOverwritten.contains("/big"),
                       Self.read(v, "/big", inode: inodes["/big"]!, at: Self.bigOffset, count: Self.bigData.count) != Self.bigData {
                        failures.append("\(what): /big lost or changed (repairs: \(repairs.prefix(8)))")
                    }
                } catch {
                    failures.append("\(what): after repair: \(error)")
                }
            }
        }
        print("damage campaign: \(cases) cases, \(repaired) repaired, \(clean) clean afterwards, \(filesChecked) files compared, \(failures.count) failures")
        #expect(failures.isEmpty, "\(failures.count) of \(cases):\n\(failures.prefix(20).joined(separator: "\n"))")
        #expect(cases > 100)
    }
}

/// Damage to the tree itself, crafted under valid checksums: what e2fsck's passes 1B–1D, 2 and
/// 3 mend.
@Suite("Bad input: a damaged tree")
struct TreeDamageTests {
    typealias Entry = (inode: UInt32, type: UInt8, name: [UInt8])

    static func sector(_ path: String, _ offset: UInt64) -> [UInt8] { readSector(path, at: offset) }

    /// Writes a crafted record back under a valid checksum.
    static func write(_ path: String, _ offset: UInt64, _ s: [UInt8]) {
        var s = s
        DamageTests.reseal(&s)
        writeSector(path, at: offset, s)
    }

    static func load<T: FixedWidthInteger>(_ s: [UInt8], _ at: Int, as: T.Type) -> T {
        s[at..<(at + MemoryLayout<T>.size)].withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    /// An inline directory's entries, changed by `change` and written back under a valid
    /// checksum.
    static func editInlineDirectory(_ path: String, _ inodeOffset: UInt64, _ change: (inout [Entry]) -> Void) {
        var s = sector(path, inodeOffset)
        let size = Int(load(s, 120, as: UInt64.self))
        var entries: [Entry] = []
        var at = 256
        while at < 256 + size {
            let length = Int(s[at + 5])
            entries.append((load(s, at, as: UInt32.self), s[at + 4], Array(s[(at + 6)..<(at + 6 + length)])))
            at += 6 + length
        }
        change(&entries)
        for i in 256..<4096 { s[i] = 0 }
        at = 256
        for e in entries {
            DamageTests.store(e.inode, at: at, in: &s)
            s[at + 4] = e.type
            s[at + 5] = UInt8(e.name.count)
            for (i, b) in e.name.enumerated() { s[at + 6 + i] = b }
            at += 6 + e.name.count
        }
        DamageTests.store(UInt64(at - 256), at: 120, in: &s)
        write(path, inodeOffset, s)
    }

    static func inodeOffset(_ v: Volume, _ path: String) throws -> UInt64 {
        try #require(v.records(of: path).first { $0.record == "file descriptor (inode)" }).offset
    }

    static func repairThenCheck(_ path: String) throws -> FsckReport {
        var options = OpenOptions(lockTimeout: 2, heartbeatInterval: 0.5)
        options.repair = true
        let v = try Volume.open(path: path, options: options)
        let report = try v.check(repair: true)
        try v.close()
        let again = try Volume.open(path: path, options: OpenOptions(readOnly: true))
        let recheck = try again.check()
        #expect(recheck.isClean, "\(recheck.problems)")
        return report
    }

    @Test("two entries of one name: the second is renamed, both files kept")
    func duplicateName() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.create("/a").write(bytes(500, seed: 1), at: 0)
        try v.create("/b").write(bytes(600, seed: 2), at: 0)
        let b = try v.stat("/b").inode
        let root = try Self.inodeOffset(v, "/")
        try v.close()
        Self.editInlineDirectory(t.path, root) { entries in
            for i in entries.indices where entries[i].name == Array("b".utf8) { entries[i].name = Array("a".utf8) }
        }
        let report = try Self.repairThenCheck(t.path)
        #expect(report.problems.contains { $0.message.contains("appears twice") })
        let after = try t.open(readOnly: true)
        #expect(try after.openFile("/a", lock: .sharedReadOnly).read(at: 0, count: 500) == bytes(500, seed: 1))
        #expect(try after.openFile("/a~\(b)", lock: .sharedReadOnly).read(at: 0, count: 600) == bytes(600, seed: 2))
    }

    @Test("directory loops: a second name for a reached directory goes; an unreached loop is reconnected once")
    func loops() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.mkdir("/d1/d2", parents: true)
        try v.mkdir("/d3/d4", parents: true)
        try v.create("/d3/d4/kept").write(bytes(300, seed: 3), at: 0)
        let d1 = try v.stat("/d1").inode, d3 = try v.stat("/d3").inode
        let (root, d2, d4) = (try Self.inodeOffset(v, "/"), try Self.inodeOffset(v, "/d1/d2"), try Self.inodeOffset(v, "/d3/d4"))
        try v.close()
        // d2 names its own parent; d4 names d3, and the root no longer names d3.
        Self.editInlineDirectory(t.path, d2) { $0.append((d1, 2, Array("up".utf8))) }
        Self.editInlineDirectory(t.path, d4) { $0.append((d3, 2, Array("up".utf8))) }
        Self.editInlineDirectory(t.path, root) { $0.removeAll { $0.name == Array("d3".utf8) } }
        let report = try Self.repairThenCheck(t.path)
        #expect(report.problems.contains { $0.message.contains("named twice") })
        let after = try t.open(readOnly: true)
        #expect(try after.list("/d1/d2").isEmpty)
        #expect(try after.openFile("/lost+found/#\(d3)/d4/kept", lock: .sharedReadOnly).read(at: 0, count: 300) == bytes(300, seed: 3))
        #expect(try after.list("/lost+found/#\(d3)/d4").map(\.name) == ["kept"])
    }

    @Test("a block two files map: the later one gets its own copy (format 1) or shares it with a count that says so (format 2); writes to one leave the other alone",
          arguments: [false, true])
    func crossLinked(sharedBlocks: Bool) throws {
        let t = try TestVolume(options: FormatOptions(sharedBlocks: sharedBlocks))
        let v = try t.open()
        try v.create("/x").write(bytes(1 << 20, seed: 4), at: 0)
        try v.create("/y").write(bytes(1 << 20, seed: 5), at: 0)
        let (x, y) = (try Self.inodeOffset(v, "/x"), try Self.inodeOffset(v, "/y"))
        try v.close()
        // y's first unit becomes x's.
        var ys = Self.sector(t.path, y)
        DamageTests.store(Self.load(Self.sector(t.path, x), 256, as: UInt32.self), at: 256, in: &ys)
        Self.write(t.path, y, ys)
        let report = try Self.repairThenCheck(t.path)
        let expected = sharedBlocks ? "grain reference counts differ" : "used twice"
        #expect(report.problems.contains { $0.message.contains(expected) && $0.repaired }, "\(report.problems.map(\.message))")
        let after = try t.open()
        defer { try? after.close() }
        #expect(try after.openFile("/x").read(at: 0, count: 1 << 20) == bytes(1 << 20, seed: 4))
        try after.openFile("/y").write(bytes(4096, seed: 6), at: 0)
        #expect(try after.openFile("/x").read(at: 0, count: 1 << 20) == bytes(1 << 20, seed: 4))
        #expect(try after.check().isClean)
    }

    @Test("a block two directories map: the later one does not take a copy of the other's records; nothing is lost")
    func crossLinkedDirectories() throws {
        let t = try TestVolume()
        let v = try t.open()
        for d in ["/d1", "/d2"] {
            try v.mkdir(d)
            // Hashed: more names than an inode holds.
            for i in 0..<300 { try v.create("\(d)/an-entry-with-a-longer-name-\(i)").write(bytes(20, seed: UInt64(i)), at: 0) }
        }
        let (d1, d2) = (try Self.inodeOffset(v, "/d1"), try Self.inodeOffset(v, "/d2"))
        let children = try v.list("/d2").map(\.inode)
        try v.close()
        var s2 = Self.sector(t.path, d2)
        DamageTests.store(Self.load(Self.sector(t.path, d1), 256, as: UInt32.self), at: 256, in: &s2)
        Self.write(t.path, d2, s2)
        let report = try Self.repairThenCheck(t.path)
        let after = try t.open(readOnly: true)
        #expect(try after.list("/d1").count == 300, "\(report.problems)")
        // d2's own records are gone with its unit; its files are reconnected, none lost.
        let found = Set(try after.list("/d2").map(\.inode) + ((try? after.list("/lost+found")) ?? []).map(\.inode))
        #expect(report.problems.contains { $0.message.contains("used twice") && $0.repaired }, "\(report.problems)")
        #expect(Set(children).isSubset(of: found))
    }

    @Test("an inode or pointer block whose bitmap bit was lost is not handed out again")
    func lostBitmapBits() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.create("/live").write(bytes(100, seed: 7), at: 0)
        try v.create("/sparse").write(bytes(4096, seed: 8), at: 1536 << 20)
        let clusters = try v.clusters(of: "/live") + v.clusters(of: "/sparse")
        try v.close()
        // A lost write: every bit of those clusters clear, as a stale header would have them.
        // Inode and pointer-block clusters: their records name what uses them. (Data units
        // carry no such name; fsck repairs a unit two files map, see crossLinked.)
        for c in Set(clusters.map(\.offset)) where [1, 2].contains(Self.load(Self.sector(t.path, c), 32, as: UInt16.self)) {
            var s = Self.sector(t.path, c)
            for i in 128..<4096 { s[i] = 0 }
            DamageTests.store(Self.load(s, 48, as: UInt32.self), at: 52, in: &s)
            Self.write(t.path, c, s)
        }
        let w = try t.open()
        for i in 0..<20 { try w.create("/new-\(i)").write(bytes(100, seed: 100 + UInt64(i)), at: 1536 << 20) }
        #expect(try w.openFile("/live").read(at: 0, count: 100) == bytes(100, seed: 7))
        #expect(try w.openFile("/sparse").read(at: 1536 << 20, count: 4096) == bytes(4096, seed: 8))
        try w.close()
        _ = try Self.repairThenCheck(t.path)
    }
}
