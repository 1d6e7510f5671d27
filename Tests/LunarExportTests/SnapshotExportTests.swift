import Foundation
import LunarDisk
import LunarExport
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Snapshots as exports (`disk@SNAP`) and their changed blocks as `qemu:dirty-bitmap:SNAP`
/// contexts, driven by the raw client: what is offered, what is selected, and block status
/// replies checked against a model, including clients that ask for too much.
@Suite("NBD server: snapshots and changed blocks", .serialized)
struct SnapshotExportTests {
    static let kib: UInt64 = 1 << 10
    static let mib: UInt64 = 1 << 20
    static let grain: UInt64 = 64 << 10
    /// Not a whole number of grains: the last grain's changes are cut at the end.
    static let size = 16 * mib + 1000

    /// A disk with data in [0, 2 MiB); snapshot s1; writes into three grains and the tail;
    /// snapshot s2; a write into a fourth grain. Served: the disk, s2 and s1.
    final class Fixture: ServedVolumeFixture {
        let scratch = Scratch()
        let volume: Volume
        let server: ExportServer
        let socket: String
        var s1: [UInt8], s2: [UInt8], now: [UInt8]
        /// What differs between the points, as whole grains cut at the end.
        let s1ToS2: [Range<UInt64>]
        let s1ToNow: [Range<UInt64>]
        let s2ToNow: [Range<UInt64>]

        init(limits: ExportLimits = ExportLimits(), writableDisk: Bool = false) async throws {
            try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
            let volume = try Volume.open(path: scratch.path("lun.img"))
            self.volume = volume
            try volume.mkdir("/vms")
            let disk = try VirtualDisk.create(volume, path: "/vms/disk.raw", size: SnapshotExportTests.size)
            var content = [UInt8](repeating: 0, count: Int(SnapshotExportTests.size))
            func write(_ at: UInt64, _ bytes: [UInt8]) throws {
                let f = try volume.openFile("/vms/disk.raw")
                try f.write(bytes, at: at)
                try f.close()
                content.replaceSubrange(Int(at)..<(Int(at) + bytes.count), with: bytes)
            }
            let mib = SnapshotExportTests.mib, size = SnapshotExportTests.size, grain = SnapshotExportTests.grain
            try write(0, pattern(Int(2 * mib), seed: 1).array)
            try disk.snapshot("s1")
            s1 = content
            try write(3 * mib, pattern(4096, seed: 2).array)
            // Across a grain boundary: two grains change.
            try write(8 * mib - 100, pattern(200, seed: 3).array)
            try write(size - 10, pattern(10, seed: 4).array)
            try disk.snapshot("s2")
            s2 = content
            try write(12 * mib + 5, pattern(100, seed: 5).array)
            now = content
            let tail = (size / grain * grain)..<size
            s1ToS2 = [3 * mib..<(3 * mib + grain), (8 * mib - grain)..<(8 * mib + grain), tail]
            s2ToNow = [12 * mib..<(12 * mib + grain)]
            s1ToNow = [s1ToS2[0], s1ToS2[1], s2ToNow[0], tail]
            try volume.sync()
            socket = scratch.path("nbd.sock")
            let exports = [try ServedExport.open(.file(path: "/vms/disk.raw"), on: volume, writable: writableDisk),
                           try ServedExport.open(.snapshot(path: "/vms/disk.raw", snapshot: "s2"), on: volume, writable: false),
                           try ServedExport.open(.snapshot(path: "/vms/disk.raw", snapshot: "s1"), on: volume, writable: false)]
            server = try await ExportServer.start(exports: exports, endpoint: .unix(path: socket), limits: limits)
        }
    }

    /// The contexts a LIST or SET reply names, with their IDs.
    static func contexts(_ replies: [RawClient.OptionReply]) -> [(id: UInt32, name: String)] {
        replies.filter { $0.type == 4 }.map { (be32($0.data, 0), String(decoding: $0.data[4...], as: UTF8.self)) }
    }

    /// Handshake, structured replies, SET with `queries`, GO: the IDs the server gave.
    static func open(_ c: RawClient, _ name: String, _ queries: [String]) throws -> [String: UInt32] {
        try c.structuredSession()
        try c.option(10, RawClient.metaData(name, queries: queries))
        let set = try c.optionReplies()
        #expect(set.last?.type == 1, "\(set.map(\.message))")
        try c.option(7, RawClient.infoData(name))
        #expect(try c.optionReplies().last?.type == 1)
        var ids: [String: UInt32] = [:]
        for (id, name) in contexts(set) { ids[name] = id }
        return ids
    }

    /// Each chunk's descriptors by context ID.
    static func blockStatus(_ c: RawClient, cookie: UInt64, offset: UInt64, length: UInt32, flags: UInt16 = 0) throws -> [UInt32: [(UInt32, UInt32)]] {
        try c.request(7, flags: flags, cookie: cookie, offset: offset, length: length)
        var out: [UInt32: [(UInt32, UInt32)]] = [:]
        for chunk in try c.chunks() {
            #expect(chunk.cookie == cookie)
            #expect(chunk.type == 5, "a block status chunk, not error \(chunk.errorValue)")
            guard chunk.type == 5 else { continue }
            let p = chunk.payload
            #expect(out[be32(p, 0)] == nil, "one chunk per context")
            out[be32(p, 0)] = stride(from: 4, to: p.count, by: 8).map { (be32(p, $0), be32(p, $0 + 4)) }
        }
        return out
    }

    /// What `qemu:dirty-bitmap:` should say of `range`, worked out a different way from the
    /// server's: cut the range at every change's ends, flag each piece, merge equal neighbours.
    static func model(_ changes: [Range<UInt64>], _ range: Range<UInt64>) -> [(UInt32, UInt32)] {
        var cuts = Set([range.lowerBound, range.upperBound])
        for c in changes {
            for p in [c.lowerBound, c.upperBound] where range.contains(p) { cuts.insert(p) }
        }
        let points = cuts.sorted()
        var out: [(UInt32, UInt32)] = []
        for (a, b) in zip(points, points.dropFirst()) {
            let flag: UInt32 = changes.contains { $0.contains(a) } ? 1 : 0
            if let last = out.last, last.1 == flag {
                out[out.count - 1].0 += UInt32(b - a)
            } else {
                out.append((UInt32(b - a), flag))
            }
        }
        return out
    }

    static func same(_ a: [(UInt32, UInt32)]?, _ b: [(UInt32, UInt32)]) -> Bool {
        guard let a else { return false }
        return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    @Test("a snapshot is served read-only with its own bytes; unknown and writable snapshots are refused, naming the disk")
    func snapshotExports() async throws {
        let f = try await Fixture()
        let c = try f.client()
        try c.handshake()
        try c.option(3)
        let names = Set(try c.optionReplies().filter { $0.type == 2 }.map { String(decoding: $0.data[4...], as: UTF8.self) })
        #expect(names == ["/vms/disk.raw", "/vms/disk.raw@s2", "/vms/disk.raw@s1"])
        try c.option(6, RawClient.infoData("vms/disk.raw@s1", requests: [1, 2]))
        let info = try c.optionReplies()
        let export = try #require(info.first { $0.type == 3 && be16($0.data, 0) == 0 })
        #expect(be64(export.data, 2) == Self.size)
        #expect(be16(export.data, 10) & 0x0102 == 0x0102, "read-only and multi-conn")
        let description = try #require(info.first { $0.type == 3 && be16($0.data, 0) == 2 })
        #expect(String(decoding: description.data[2...], as: UTF8.self).contains("snapshot s1 of LunarFS disk /vms/disk.raw"))
        try c.option(6, RawClient.infoData("/vms/disk.raw@nope"))
        #expect(try c.optionReply().type == 0x8000_0006)

        for (name, expected) in [("/vms/disk.raw@s1", f.s1), ("/vms/disk.raw@s2", f.s2), ("/vms/disk.raw", f.now)] {
            let reader = try f.client()
            try reader.open(name)
            let read = try reader.structuredRead(cookie: 1, offset: 0, length: UInt32(Self.size))
            #expect(read.error == nil && read.data == expected, "\(name)")
            #expect(read.holes.first?.lowerBound == 2 * Self.mib, "the snapshot's holes are holes: \(read.holes)")
            try reader.request(1, cookie: 2, offset: 0, length: 512, payload: [UInt8](repeating: 9, count: 512))
            #expect(try reader.status().error == 1, "a snapshot is never written")
        }

        let unknown = #expect(throws: ExportError.self) {
            try ServedExport.open(.snapshot(path: "/vms/disk.raw", snapshot: "nope"), on: f.volume, writable: false)
        }
        let text = unknown?.description ?? ""
        #expect(text.contains("/vms/disk.raw has no snapshot 'nope'") && text.contains("lunar disk snapshots"), "\(text)")
        #expect(throws: ExportError(.snapshotWritable("/vms/disk.raw@s1"))) {
            try ServedExport.open(.snapshot(path: "/vms/disk.raw", snapshot: "s1"), on: f.volume, writable: true)
        }
        #expect(throws: ExportError.self, "no such disk") {
            try ServedExport.open(.snapshot(path: "/vms/other.raw", snapshot: "s1"), on: f.volume, writable: false)
        }
        try await f.stop()
    }

    @Test("each export offers qemu:dirty-bitmap:SNAP for the snapshots it descends from; wildcards list, unknown names select nothing")
    func negotiation() async throws {
        let f = try await Fixture()
        let c = try f.client()
        try c.structuredSession()
        func list(_ name: String, _ queries: [String]) throws -> [String] {
            try c.option(9, RawClient.metaData(name, queries: queries))
            let replies = try c.optionReplies()
            #expect(replies.last?.type == 1)
            #expect(Self.contexts(replies).allSatisfy { $0.id == 0 }, "listings carry ID 0")
            return Self.contexts(replies).map(\.name)
        }
        #expect(try list("/vms/disk.raw@s2", []) == ["base:allocation", "qemu:dirty-bitmap:s1"])
        #expect(try list("/vms/disk.raw", []) == ["base:allocation", "qemu:dirty-bitmap:s2", "qemu:dirty-bitmap:s1"])
        #expect(try list("/vms/disk.raw@s1", []) == ["base:allocation"], "nothing is older than the first snapshot")
        #expect(try list("/vms/disk.raw", ["qemu:dirty-bitmap:"]) == ["qemu:dirty-bitmap:s2", "qemu:dirty-bitmap:s1"])
        #expect(try list("/vms/disk.raw", ["qemu:"]) == ["qemu:dirty-bitmap:s2", "qemu:dirty-bitmap:s1"])
        #expect(try list("/vms/disk.raw", ["qemu:dirty-bitmap:s1", "base:", "qemu:dirty-bitmap:nope"]) == ["qemu:dirty-bitmap:s1", "base:allocation"])
        #expect(try list("/vms/disk.raw@s2", ["qemu:dirty-bitmap:s2"]) == [], "an export is not older than itself")
        #expect(try list("/vms/disk.raw@s1", ["qemu:dirty-bitmap:s2"]) == [], "nor is a later snapshot")
        #expect(try list("/vms/disk.raw", ["qemu:allocation-depth", "x-other:thing"]) == [])

        func set(_ name: String, _ queries: [String]) throws -> [(id: UInt32, name: String)] {
            try c.option(10, RawClient.metaData(name, queries: queries))
            let replies = try c.optionReplies()
            #expect(replies.last?.type == 1)
            return Self.contexts(replies)
        }
        #expect(try set("/vms/disk.raw", ["qemu:dirty-bitmap:"]).isEmpty, "an empty leaf is for listing only")
        #expect(try set("/vms/disk.raw", ["qemu:"]).isEmpty)
        #expect(try set("/vms/disk.raw", ["qemu:dirty-bitmap:nope"]).isEmpty)
        let both = try set("vms/disk.raw@s2", ["qemu:dirty-bitmap:s1", "base:allocation", "qemu:dirty-bitmap:s1"])
        #expect(both.map(\.name) == ["qemu:dirty-bitmap:s1", "base:allocation"], "each once")
        #expect(Set(both.map(\.id)).count == 2 && !both.contains { $0.id == 0 }, "distinct, non-zero IDs")
        // 128 queries are taken, 129 are too many.
        #expect(try set("/vms/disk.raw", Array(repeating: "qemu:dirty-bitmap:s2", count: 128)).map(\.name) == ["qemu:dirty-bitmap:s2"])
        try c.option(10, RawClient.metaData("/vms/disk.raw", queries: Array(repeating: "qemu:dirty-bitmap:s2", count: 129)))
        #expect(try c.optionReply().type == 0x8000_0009)
        // Options sent back to back while snapshots are read are answered in order.
        try c.option(9, RawClient.metaData("/vms/disk.raw", queries: ["qemu:"]))
        try c.option(3)
        try c.option(9, RawClient.metaData("/vms/disk.raw@s2", queries: []))
        #expect(Self.contexts(try c.optionReplies()).count == 2)
        #expect(try c.optionReplies().last?.option == 3)
        #expect(Self.contexts(try c.optionReplies()).map(\.name) == ["base:allocation", "qemu:dirty-bitmap:s1"])

        // A writable export changes under any list made at the start: it offers none.
        try await f.stop()
        let w = try await Fixture(writableDisk: true)
        let wc = try w.client()
        try wc.structuredSession()
        try wc.option(9, RawClient.metaData("/vms/disk.raw", queries: []))
        #expect(Self.contexts(try wc.optionReplies()).map(\.name) == ["base:allocation"])
        try await w.stop()
    }

    @Test("block status answers base:allocation and the changes since a snapshot in one reply, each chunk under its own ID")
    func blockStatus() async throws {
        let f = try await Fixture()
        let c = try f.client()
        let ids = try Self.open(c, "/vms/disk.raw@s2", ["base:allocation", "qemu:dirty-bitmap:s1"])
        let allocation = try #require(ids["base:allocation"]), dirty = try #require(ids["qemu:dirty-bitmap:s1"])
        #expect(allocation != dirty)

        let whole = try Self.blockStatus(c, cookie: 1, offset: 0, length: UInt32(Self.size))
        #expect(whole.count == 2)
        #expect(Self.same(whole[dirty], Self.model(f.s1ToS2, 0..<Self.size)), "\(whole[dirty] ?? [])")
        #expect(whole[allocation]?.first?.1 == 0 && whole[allocation]?.first?.0 == UInt32(2 * Self.mib), "data first")

        // Pieces that start and end inside changed runs.
        for (offset, length) in [(3 * Self.mib + 100, UInt32(Self.mib)), (8 * Self.mib - 1, 2), (Self.size - 1, 1), (5 * Self.kib, 7)] {
            let r = try Self.blockStatus(c, cookie: 2, offset: offset, length: length)
            #expect(Self.same(r[dirty], Self.model(f.s1ToS2, offset..<(offset + UInt64(length)))), "\(offset)+\(length): \(r[dirty] ?? [])")
            #expect(r[allocation].map { $0.reduce(0) { $0 + UInt64($1.0) } } == UInt64(length), "base:allocation covers the request")
        }
        // REQ_ONE: one descriptor per context, none longer than the request.
        let one = try Self.blockStatus(c, cookie: 3, offset: 3 * Self.mib - 4096, length: 8192, flags: 8)
        #expect(one[dirty].map { $0.count == 1 && $0[0].0 == 4096 && $0[0].1 == 0 } == true, "\(one[dirty] ?? [])")
        #expect(one[allocation].map { $0.count == 1 && $0[0].0 <= 8192 } == true)

        // The disk itself, with the changes since each of its snapshots.
        let d = try f.client()
        let dids = try Self.open(d, "/vms/disk.raw", ["qemu:dirty-bitmap:s1", "qemu:dirty-bitmap:s2"])
        let r = try Self.blockStatus(d, cookie: 4, offset: 0, length: UInt32(Self.size))
        #expect(Self.same(r[try #require(dids["qemu:dirty-bitmap:s1"])], Self.model(f.s1ToNow, 0..<Self.size)))
        #expect(Self.same(r[try #require(dids["qemu:dirty-bitmap:s2"])], Self.model(f.s2ToNow, 0..<Self.size)))

        // Contexts selected for one export do not follow the client to another.
        let other = try f.client()
        try other.structuredSession()
        try other.option(10, RawClient.metaData("/vms/disk.raw@s2", queries: ["qemu:dirty-bitmap:s1"]))
        _ = try other.optionReplies()
        try other.option(7, RawClient.infoData("/vms/disk.raw"))
        _ = try other.optionReplies()
        try other.request(7, cookie: 5, offset: 0, length: 4096)
        #expect(try other.chunks().first?.errorValue == 22, "no context selected for this export")
        try await f.stop()
    }

    @Test("hostile block status: lengths past the end, many contexts under a small descriptor budget, thousands of queries in flight")
    func hostileBlockStatus() async throws {
        var limits = ExportLimits()
        limits.maxDescriptors = 8
        limits.maxRequestsInFlight = 16
        let f = try await Fixture(limits: limits)
        let c = try f.client()
        let ids = try Self.open(c, "/vms/disk.raw", ["base:allocation", "qemu:dirty-bitmap:s1", "qemu:dirty-bitmap:s2"])
        #expect(ids.count == 3)
        func error(_ offset: UInt64, _ length: UInt32) throws -> UInt32 {
            try c.request(7, cookie: 9, offset: offset, length: length)
            return try c.status().error
        }
        #expect(try error(0, UInt32.max) == 22, "past the end")
        #expect(try error(UInt64.max - 10, 4096) == 22, "offset + length overflows")
        #expect(try error(Self.size, 1) == 22)
        #expect(try error(0, 0) == 22)

        // Three contexts share eight descriptors: two each, every chunk still there.
        let capped = try Self.blockStatus(c, cookie: 1, offset: 0, length: UInt32(Self.size))
        #expect(capped.count == 3 && capped.values.allSatisfy { $0.count == 2 }, "\(capped)")

        // Two thousand queries sent before a reply is read, each checked against the model.
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func random(_ bound: UInt64) -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state % bound
        }
        var asked: [UInt64: Range<UInt64>] = [:]
        var batch: [UInt8] = []
        for i in 0..<2000 {
            let offset = random(Self.size)
            let length = 1 + random(min(Self.size - offset, 3 * Self.mib))
            asked[UInt64(i)] = offset..<(offset + length)
            batch += u32(0x2560_9513) + u16(i % 3 == 0 ? 8 : 0) + u16(7) + u64(UInt64(i)) + u64(offset) + u32(UInt32(length))
        }
        try c.send(batch)
        let s1 = try #require(ids["qemu:dirty-bitmap:s1"]), s2 = try #require(ids["qemu:dirty-bitmap:s2"])
        for _ in 0..<2000 {
            var cookie: UInt64 = 0
            var replies: [UInt32: [(UInt32, UInt32)]] = [:]
            for chunk in try c.chunks() {
                cookie = chunk.cookie
                let p = chunk.payload
                replies[be32(p, 0)] = stride(from: 4, to: p.count, by: 8).map { (be32(p, $0), be32(p, $0 + 4)) }
            }
            let removed = asked.removeValue(forKey: cookie)
            let range = try #require(removed)
            #expect(replies.count == 3)
            let covered = replies[try #require(ids["base:allocation"])]?.reduce(UInt64(0)) { $0 + UInt64($1.0) } ?? 0
            #expect(covered > 0 && covered <= UInt64(range.count), "base:allocation stays within the request")
            for (id, changes) in [(s1, f.s1ToNow), (s2, f.s2ToNow)] {
                // The model's answer, cut to the context's share of the budget (one with REQ_ONE).
                let expected = Array(Self.model(changes, range).prefix(cookie % 3 == 0 ? 1 : 2))
                #expect(Self.same(replies[id], expected), "\(range): \(replies[id] ?? []) vs \(expected)")
            }
        }
        #expect(asked.isEmpty)
        try await f.stop()
    }

    @Test("with the default budget, long change lists come back whole and in order")
    func manyRuns() async throws {
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let size = 64 * Self.mib
        let disk = try VirtualDisk.create(volume, path: "/disk.raw", size: size)
        try disk.snapshot("empty")
        // Every other grain written: 512 changed runs.
        let f = try volume.openFile("/disk.raw")
        var changed: [Range<UInt64>] = []
        for g in stride(from: UInt64(0), to: size / Self.grain, by: 2) {
            try f.write([1], at: g * Self.grain + 7)
            changed.append((g * Self.grain)..<((g + 1) * Self.grain))
        }
        try f.close()
        try volume.sync()
        let socket = scratch.path("nbd.sock")
        let server = try await ExportServer.start(exports: [try ServedExport.open(.file(path: "/disk.raw"), on: volume, writable: false)],
                                                  endpoint: .unix(path: socket))
        let c = try RawClient(socket: socket)
        let ids = try Self.open(c, "", ["qemu:dirty-bitmap:empty"])
        let id = try #require(ids["qemu:dirty-bitmap:empty"])
        let r = try Self.blockStatus(c, cookie: 1, offset: 0, length: UInt32(size))
        #expect(r[id]?.count == 1024 && Self.same(r[id], Self.model(changed, 0..<size)))
        await server.stop()
        #expect(try volume.check().isClean)
        try volume.close()
    }
}
