import Foundation
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Format 2's shared blocks (format.md §9): clones share every block, a write copies only the
/// grain it changes, removing one copy leaves the others whole, and fsck checks every count.
@Suite("Shared blocks")
struct SharedBlockTests {
    static let grain = 64 << 10

    /// Writes `data` at `offset` into both a file and its model.
    static func write(_ f: File, _ model: inout [UInt8], _ data: [UInt8], at offset: Int) throws {
        try f.write(data, at: UInt64(offset))
        if model.count < offset + data.count { model += [UInt8](repeating: 0, count: offset + data.count - model.count) }
        model.replaceSubrange(offset..<(offset + data.count), with: data)
    }

    static func expectClean(_ v: Volume, _ comment: Comment? = nil) throws {
        let report = try v.check()
        #expect(report.isClean, "\(comment?.rawValue ?? ""): \(report.problems.map(\.message))")
    }

    @Test("a clone reads as its source; a 4 KiB write to either copies one grain and leaves the other as it was")
    func cloneAndCopyOnWrite() throws {
        let t = try TestVolume()
        let v = try t.open()
        #expect(v.header.sharedBlocks)
        var base = bytes(5 << 20 + 12345, seed: 1)
        let f = try v.create("/disk")
        try f.write(base, at: 0)
        try f.close()
        let freeBefore = try v.usage().resources.first { $0.kind == .fileBlock }!.free
        try v.clone("/disk", to: "/snap")
        // Sharing takes no data block.
        #expect(try v.usage().resources.first { $0.kind == .fileBlock }!.free == freeBefore)
        #expect(try v.openFile("/snap", lock: nil).read(at: 0, count: base.count) == base)

        var live = base
        let w = try v.openFile("/disk")
        try Self.write(w, &live, bytes(4096, seed: 2), at: 3 << 20 + 8192)
        try w.close()
        #expect(try v.openFile("/disk", lock: nil).read(at: 0, count: live.count) == live)
        #expect(try v.openFile("/snap", lock: nil).read(at: 0, count: base.count) == base)
        // One grain copied: at most one new file block taken to hold it (none when the
        // block this host fills with single grains has room).
        #expect(try v.usage().resources.first { $0.kind == .fileBlock }!.free >= freeBefore - 1)

        let s = try v.openFile("/snap")
        try Self.write(s, &base, bytes(100, seed: 3), at: 17)
        try s.close()
        #expect(try v.openFile("/snap", lock: nil).read(at: 0, count: base.count) == base)
        #expect(try v.openFile("/disk", lock: nil).read(at: 0, count: live.count) == live)
        try Self.expectClean(v)
        try v.close()
    }

    @Test("clones of clones written at random match their models; removing them one by one gives every block back")
    func treeOfClones() throws {
        let t = try TestVolume()
        let v = try t.open()
        let freeAtStart = try v.usage().resources.map(\.free)
        var models: [String: [UInt8]] = ["/c0": bytes(9 << 20, seed: 10)]
        try v.create("/c0").write(models["/c0"]!, at: 0)
        var rng = SystemRandomNumberGenerator()
        for i in 1..<12 {
            let source = models.keys.sorted()[Int.random(in: 0..<models.count, using: &rng)]
            let name = "/c\(i)"
            try v.clone(source, to: name)
            models[name] = models[source]
            // A few writes to random members of the tree, some across grain boundaries.
            for _ in 0..<4 {
                let target = models.keys.sorted()[Int.random(in: 0..<models.count, using: &rng)]
                let offset = Int.random(in: 0..<(10 << 20), using: &rng)
                let data = bytes(Int.random(in: 1...(100 << 10), using: &rng), seed: UInt64.random(in: 0...1000, using: &rng))
                let f = try v.openFile(target)
                try Self.write(f, &models[target]!, data, at: offset)
                try f.close()
            }
        }
        for (name, model) in models {
            #expect(try v.openFile(name, lock: nil).read(at: 0, count: model.count + 10) == model, "\(name)")
        }
        try Self.expectClean(v, "after the writes")
        // A truncate of one member, then removal of all of them, in an order unlike the tree's.
        let cut = try v.openFile("/c3")
        try cut.truncate(to: 2 << 20 + 777)
        try cut.close()
        models["/c3"] = Array(models["/c3"]!.prefix(2 << 20 + 777))
        for (name, model) in models {
            #expect(try v.openFile(name, lock: nil).read(at: 0, count: model.count + 10) == model, "\(name)")
        }
        try Self.expectClean(v, "after the truncate")
        for name in models.keys.sorted(by: >) {
            try v.remove(name)
            try Self.expectClean(v, "after removing \(name)")
        }
        #expect(try v.usage().resources.map(\.free) == freeAtStart)
        try v.close()
    }

    @Test("two hosts write a file and its clone at once, each through its own hold: each reads its own writes and nothing of the other's")
    func twoHostsWriteRelatives() throws {
        let t = try TestVolume(size: 8 << 30)
        let options = OpenOptions(lockTimeout: 10, heartbeatInterval: 0.2)
        let a = try Volume.open(path: t.path, options: options), b = try Volume.open(path: t.path, options: options)
        var left = bytes(12 << 20, seed: 20)
        try a.create("/left").write(left, at: 0)
        try a.clone("/left", to: "/right")
        try a.relinquishMetadataLock()
        var right = left
        let fa = try a.openFile("/left"), fb = try b.openFile("/right")
        var rng = SplitMix64(seed: 7)
        for i in 0..<60 {
            let offset = Int(rng.next() % UInt64(12 << 20))
            let data = bytes(Int(1 + rng.next() % UInt64(200 << 10)), seed: UInt64(100 + i))
            if i % 2 == 0 { try Self.write(fa, &left, data, at: offset) } else { try Self.write(fb, &right, data, at: offset) }
        }
        #expect(try fa.read(at: 0, count: left.count + 1) == left)
        #expect(try fb.read(at: 0, count: right.count + 1) == right)
        try fa.close()
        try fb.close()
        try a.close()
        try b.close()
        let v = try t.open()
        #expect(try v.openFile("/left", lock: nil).read(at: 0, count: left.count + 1) == left)
        #expect(try v.openFile("/right", lock: nil).read(at: 0, count: right.count + 1) == right)
        try Self.expectClean(v)
        try v.close()
    }

    @Test("a file open for writing on another host is not cloned; the error names the host")
    func cloneOfBusyFile() throws {
        let t = try TestVolume()
        let options = OpenOptions(lockTimeout: 10, heartbeatInterval: 0.2)
        let a = try Volume.open(path: t.path, options: options), b = try Volume.open(path: t.path, options: options)
        let held = try a.create("/vm-disk")
        try held.write(bytes(1 << 20, seed: 1), at: 0)
        try a.relinquishMetadataLock()
        let error = fsError { try b.clone("/vm-disk", to: "/copy") }
        #expect(error?.kind.isBusy == true && error?.description.contains("open for writing") == true, "\(String(describing: error))")
        try held.close()
        try b.clone("/vm-disk", to: "/copy")
        try a.close()
        try b.close()
    }

    @Test("changed ranges between a snapshot and the disk are exactly the grains written since, and applied to the old copy give the new")
    func changedRanges() throws {
        let t = try TestVolume()
        let v = try t.open()
        let start = bytes(70 << 20, seed: 30)
        let f = try v.create("/disk")
        try f.write(start, at: 0)
        try f.close()
        try v.clone("/disk", to: "/snap1")
        #expect(try v.changedRanges(from: "/snap1", to: "/disk").isEmpty)
        var live = start
        var touched = Set<Int>()
        var rng = SplitMix64(seed: 31)
        let w = try v.openFile("/disk")
        for i in 0..<40 {
            // Past the old end too: the disk grows past one pointer block's reach (63 MiB).
            let offset = Int(rng.next() % UInt64(80 << 20))
            let data = bytes(Int(1 + rng.next() % UInt64(150 << 10)), seed: UInt64(200 + i))
            try Self.write(w, &live, data, at: offset)
            for g in (offset / Self.grain)...((offset + data.count - 1) / Self.grain) { touched.insert(g) }
        }
        try w.discard(at: 2 << 20, length: 1 << 20)
        live.replaceSubrange((2 << 20)..<(3 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
        for g in (2 << 20) / Self.grain..<(3 << 20) / Self.grain { touched.insert(g) }
        try w.close()
        let ranges = try v.changedRanges(from: "/snap1", to: "/disk")
        var reported = Set<Int>()
        for r in ranges { for g in Int(r.lowerBound) / Self.grain...(Int(r.upperBound) - 1) / Self.grain { reported.insert(g) } }
        #expect(reported == touched, "reported \(reported.subtracting(touched).sorted().prefix(5)) extra, \(touched.subtracting(reported).sorted().prefix(5)) missing")
        // An incremental backup: the old copy, the changed ranges read from the disk over it.
        var restored = start + [UInt8](repeating: 0, count: max(0, live.count - start.count))
        let r = try v.openFile("/disk", lock: nil)
        for range in ranges {
            let data = try r.read(at: range.lowerBound, count: range.count)
            restored.replaceSubrange(Int(range.lowerBound)..<(Int(range.lowerBound) + data.count), with: data)
        }
        #expect(restored == live)
        // A map that grew a level since the snapshot (60 MiB of grains fit in the root).
        try v.create("/small").write(bytes(1 << 20, seed: 2), at: 0)
        try v.clone("/small", to: "/small-snap")
        let grown = try v.openFile("/small")
        try grown.write(bytes(4096, seed: 3), at: 100 << 20)
        try grown.write(bytes(4096, seed: 4), at: 70_000)
        try grown.close()
        let grownRanges = try v.changedRanges(from: "/small-snap", to: "/small")
        #expect(grownRanges.map(\.lowerBound) == [65536, 100 << 20] && grownRanges.map(\.upperBound) == [131072, (100 << 20) + 4096], "\(grownRanges.map { ($0.lowerBound, $0.upperBound) })")
        #expect(try v.changedRanges(from: "/small", to: "/small-snap") == [65536..<131072, (100 << 20)..<((100 << 20) + 4096)])
        // Unrelated files share nothing: no answer rather than a wrong one.
        try v.create("/other").write(bytes(1 << 20, seed: 1), at: 0)
        #expect(fsError { _ = try v.changedRanges(from: "/other", to: "/disk") }?.description.contains("share no blocks") == true)
        try v.close()
    }

    @Test("a clone survives its source's removal, and reopening the volume")
    func cloneOutlivesSource() throws {
        let t = try TestVolume()
        let data = bytes(3 << 20, seed: 5)
        do {
            let v = try t.open()
            try v.create("/a").write(data, at: 0)
            try v.clone("/a", to: "/b")
            try v.remove("/a")
            try v.close()
        }
        let v = try t.open()
        #expect(try v.openFile("/b", lock: nil).read(at: 0, count: data.count) == data)
        try Self.expectClean(v)
        try v.close()
    }

    @Test("a full volume mid copy-on-write: a clean 'no space', nothing half-written; the snapshot intact; room freed makes writes work again")
    func fullVolumeCopyOnWrite() throws {
        let t = try TestVolume(size: 400 << 20)
        let v = try t.open()
        // Fill most of the volume with one disk, snapshot it, then rewrite the disk at random
        // 4 KiB pieces: every first write to a grain needs a new one, until none is left.
        var disk = [UInt8]()
        let f = try v.create("/disk")
        var size = 0
        while true {
            let chunk = bytes(1 << 20, seed: UInt64(size))
            if fsError({ try f.write(chunk, at: UInt64(size)) })?.kind.isNoSpace == true { break }
            disk += chunk
            size += 1 << 20
        }
        try f.truncate(to: UInt64(size))
        try v.sync()
        try v.clone("/disk", to: "/snap")
        let snapshot = disk
        var generator = SplitMix64(seed: 8)
        var refused = 0
        for i in 0..<20_000 {
            let offset = Int(generator.next() % UInt64(size / 4096)) * 4096
            let data = bytes(4096, seed: UInt64(i) + 1000)
            if let error = fsError({ try f.write(data, at: UInt64(offset)) }) {
                #expect(error.kind.isNoSpace, "\(error)")
                refused += 1
                if refused == 20 { break }
                continue
            }
            disk.replaceSubrange(offset..<(offset + 4096), with: data)
        }
        #expect(refused == 20, "the volume filled up")
        #expect(try v.openFile("/disk", lock: nil).read(at: 0, count: size) == disk, "what was refused left nothing behind")
        #expect(try v.openFile("/snap", lock: nil).read(at: 0, count: size) == snapshot)
        try Self.expectClean(v, "full")
        // Deleting the snapshot gives its blocks back; the refused write now goes through.
        // (No sync between: an allocation that finds the volume full commits what waits for it.)
        try v.remove("/snap")
        try Self.write(f, &disk, bytes(4096, seed: 99), at: 0)
        #expect(try v.openFile("/disk", lock: nil).read(at: 0, count: size) == disk)
        try f.close()
        try Self.expectClean(v, "after the snapshot went")
        try v.close()
    }

    @Test("fsck finds a reference count the maps do not hold, and --repair sets it from them")
    func damagedCount() throws {
        let t = try TestVolume()
        let v = try t.open()
        try v.create("/a").write(bytes(2 << 20, seed: 6), at: 0)
        try v.clone("/a", to: "/b")
        let countSector = v.header.fileBlocks.mapOffset + 4096
        try v.close()
        // Count 100 of file-block cluster 0's first count sector: a grain nothing names.
        changeSector(t.path, at: countSector) { sector in
            DamageTests.store(UInt16(7), at: 64 + 2 * 100, in: &sector)
            DamageTests.reseal(&sector)
        }
        let r = try t.open()
        let found = try r.check()
        #expect(found.problems.contains { $0.message.contains("grain reference counts differ") }, "\(found.problems.map(\.message))")
        let repaired = try r.check(repair: true)
        #expect(repaired.unrepaired.isEmpty, "\(repaired.problems.map(\.message))")
        try Self.expectClean(r, "after the repair")
        try r.close()
    }

    @Test("a format 1 volume opens, keeps file blocks, and refuses a clone with what to do")
    func formatOne() throws {
        let t = try TestVolume(options: FormatOptions(sharedBlocks: false))
        let v = try t.open()
        #expect(!v.header.sharedBlocks)
        try v.create("/a").write(bytes(2 << 20, seed: 7), at: 0)
        #expect(try v.stat("/a").storage == "file blocks")
        let error = fsError { try v.clone("/a", to: "/b") }
        #expect(error?.description.contains("format 1") == true, "\(String(describing: error))")
        try Self.expectClean(v)
        try v.close()
    }
}
