import Foundation
import LunarExport
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// The NBD server in this process, driven by a raw client over a Unix socket: the handshake,
/// reads with holes, block status, writes, and clients that break the rules.
@Suite("NBD server", .serialized)
struct ExportServerTests {
    static let mib: UInt64 = 1 << 20

    /// A volume with `/vms/disk.raw`: 8 MiB + 1000 bytes, data at [0, 2 MiB) and [5 MiB, 6 MiB),
    /// holes elsewhere (1 MiB blocks), and `/small.txt` stored inline; served on a Unix socket.
    final class Fixture: ServedVolumeFixture {
        let scratch = Scratch()
        let volume: Volume
        let server: ExportServer
        let socket: String
        let content: [UInt8]
        static let size = 8 * mib + 1000

        init(writable: Bool = false, limits: ExportLimits = ExportLimits()) async throws {
            try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
            volume = try Volume.open(path: scratch.path("lun.img"))
            try volume.mkdir("/vms")
            let file = try volume.create("/vms/disk.raw")
            var content = [UInt8](repeating: 0, count: Int(Self.size))
            let head = pattern(2 << 20, seed: 3).array, middle = pattern(1 << 20, seed: 4).array
            content.replaceSubrange(0..<(2 << 20), with: head)
            content.replaceSubrange((5 << 20)..<(6 << 20), with: middle)
            try file.truncate(to: Self.size)
            try file.write(head, at: 0)
            try file.write(middle, at: 5 * mib)
            try file.close()
            let small = try volume.create("/small.txt")
            try small.write(Array("hello, inline".utf8), at: 0)
            try small.close()
            try volume.sync()
            self.content = content
            socket = scratch.path("nbd.sock")
            let exports = [try ServedExport.open(.file(path: "/vms/disk.raw"), on: volume, writable: writable),
                           try ServedExport.open(.file(path: "/small.txt"), on: volume, writable: writable)]
            server = try await ExportServer.start(exports: exports, endpoint: .unix(path: socket), limits: limits)
        }
    }

    @Test("the handshake answers LIST, INFO, GO and the metadata options as the protocol says")
    func handshake() async throws {
        let f = try await Fixture()
        let c = try f.client()
        let flags = try c.handshake()
        #expect(flags == 3, "fixed newstyle and no zeroes")

        try c.option(3)
        let list = try c.optionReplies()
        #expect(list.map(\.type) == [2, 2, 1])
        #expect(Set(list.dropLast().map { String(decoding: $0.data[4...], as: UTF8.self) }) == ["/vms/disk.raw", "/small.txt"])
        try c.option(3, [1])
        #expect(try c.optionReply().type == 0x8000_0003, "LIST with data is invalid")

        try c.option(6, RawClient.infoData("vms/disk.raw", requests: [1, 3]))
        let info = try c.optionReplies()
        #expect(info.last?.type == 1)
        let export = try #require(info.first { $0.type == 3 && be16($0.data, 0) == 0 })
        #expect(be64(export.data, 2) == Fixture.size)
        let tflags = be16(export.data, 10)
        #expect(tflags & 0x0102 == 0x0102, "read-only and multi-conn")
        #expect(tflags & (1 << 5 | 1 << 6) == 0, "no trim, no write zeroes on a read-only export")
        let blockSize = try #require(info.first { $0.type == 3 && be16($0.data, 0) == 3 })
        #expect(be32(blockSize.data, 2) == 1 && be32(blockSize.data, 6) == 4096 && be32(blockSize.data, 10) == 32 << 20)
        let name = try #require(info.first { $0.type == 3 && be16($0.data, 0) == 1 })
        #expect(String(decoding: name.data[2...], as: UTF8.self) == "/vms/disk.raw")

        try c.option(6, RawClient.infoData("/vms/nothere.raw"))
        #expect(try c.optionReply().type == 0x8000_0006)
        try c.option(6, RawClient.infoData("/vms/disk.raw@nightly"))
        let snapshot = try c.optionReply()
        #expect(snapshot.type == 0x8000_0006 && snapshot.message.contains("not exported by this server"), "\(snapshot.message)")
        try c.option(6, RawClient.infoData(""))
        #expect(try c.optionReply().type == 0x8000_0006, "two exports: no default")
        try c.option(6, u32(100) + [0x41])
        #expect(try c.optionReply().type == 0x8000_0003, "name length past the data")
        try c.option(6, RawClient.infoData("/vms/disk.raw") + [0])
        #expect(try c.optionReply().type == 0x8000_0003, "a stray byte after the requests")
        try c.option(99)
        #expect(try c.optionReply().type == 0x8000_0001)
        try c.option(5)
        #expect(try c.optionReply().type == 0x8000_0002, "no TLS without a certificate")

        // Metadata contexts need structured replies first.
        try c.option(9, RawClient.metaData("/vms/disk.raw", queries: []))
        #expect(try c.optionReply().type == 0x8000_0003)
        try c.option(8)
        #expect(try c.optionReply().type == 1)
        try c.option(9, RawClient.metaData("/vms/disk.raw", queries: []))
        let listed = try c.optionReplies()
        #expect(listed.map(\.type) == [4, 1])
        #expect(String(decoding: listed[0].data[4...], as: UTF8.self) == "base:allocation")
        try c.option(9, RawClient.metaData("/vms/disk.raw", queries: ["qemu:dirty-bitmap:nightly", "x-other:thing"]))
        #expect(try c.optionReplies().map(\.type) == [1], "a disk without snapshots offers no changed blocks")
        try c.option(10, RawClient.metaData("/vms/disk.raw", queries: ["nocolon"]))
        #expect(try c.optionReply().type == 0x8000_0003)
        try c.option(10, RawClient.metaData("/vms/disk.raw", queries: ["base:allocation"]))
        let set = try c.optionReplies()
        #expect(set.map(\.type) == [4, 1] && be32(set[0].data, 0) != 0)

        // An option too long to take is refused, skipped, and the session goes on.
        try c.option(10, [UInt8](repeating: 7, count: 200_000))
        #expect(try c.optionReply().type == 0x8000_0009)
        try c.option(7, RawClient.infoData("/vms/disk.raw"))
        #expect(try c.optionReplies().last?.type == 1)
        let read = try c.structuredRead(cookie: 1, offset: 0, length: 4096)
        #expect(read.error == nil && read.data == Array(f.content[0..<4096]))
        try c.request(2, cookie: 2, offset: 0, length: 0)
        #expect(c.hungUp(), "DISC ends the session")
        try await f.stop()
    }

    @Test("reads send data as data and holes as OFFSET_HOLE, any alignment, simple replies with zeros")
    func reads() async throws {
        let f = try await Fixture()
        let c = try f.client()
        let (size, _) = try c.open("/vms/disk.raw")
        #expect(size == Fixture.size)

        let whole = try c.structuredRead(cookie: 7, offset: 0, length: UInt32(Fixture.size))
        #expect(whole.error == nil)
        #expect(whole.data == f.content)
        #expect(whole.holes == [2 * Self.mib..<5 * Self.mib, 6 * Self.mib..<Fixture.size])

        for (offset, length) in [(12345, 100_000), (2 * Self.mib - 777, 5000), (5 * Self.mib - 1, 2), (Fixture.size - 3000, 3000), (4095, 1)] {
            let r = try c.structuredRead(cookie: offset, offset: offset, length: UInt32(length))
            #expect(r.error == nil)
            #expect(r.data == Array(f.content[Int(offset)..<Int(offset + UInt64(length))]), "read \(offset)+\(length)")
        }
        // Don't fragment: one data chunk, holes as zeros in it.
        try c.request(0, flags: 4, cookie: 9, offset: 2 * Self.mib - 4096, length: 8192)
        let df = try c.chunks()
        #expect(df.count == 1 && df[0].type == 1)
        #expect(Array(df[0].payload[8...]) == Array(f.content[Int(2 * Self.mib - 4096)..<Int(2 * Self.mib + 4096)]))

        // Many reads in flight at once, answered in any order.
        for i in 0..<40 { try c.request(0, cookie: 1000 + UInt64(i), offset: UInt64(i) * 200_000, length: 65536) }
        var seen = Set<UInt64>()
        for _ in 0..<40 {
            var bytes = [UInt8]()
            var cookie: UInt64 = 0
            for chunk in try c.chunks() {
                cookie = chunk.cookie
                if chunk.type == 1 { bytes += chunk.payload[8...] }
                if chunk.type == 2 { bytes += [UInt8](repeating: 0, count: Int(be32(chunk.payload, 8))) }
            }
            let at = Int(cookie - 1000) * 200_000
            #expect(bytes == Array(f.content[at..<(at + 65536)]), "read \(cookie)")
            seen.insert(cookie)
        }
        #expect(seen.count == 40)

        // Without structured replies: the data itself, zeros for holes.
        let simple = try f.client()
        try simple.open("vms/disk.raw", structured: false)
        try simple.request(0, cookie: 5, offset: 2 * Self.mib - 100, length: 300)
        let reply = try simple.simpleReply(dataLength: 300)
        #expect(reply.error == 0 && reply.cookie == 5)
        #expect(reply.data == Array(f.content[Int(2 * Self.mib - 100)..<Int(2 * Self.mib + 200)]))

        // A file stored inline in its inode is served through the file API.
        let inline = try f.client()
        let (inlineSize, _) = try inline.open("/small.txt")
        let small = try inline.structuredRead(cookie: 1, offset: 0, length: UInt32(inlineSize))
        #expect(String(decoding: small.data, as: UTF8.self) == "hello, inline")
        try await f.stop()
    }

    @Test("block status answers base:allocation from the file's map")
    func blockStatus() async throws {
        let f = try await Fixture()
        let c = try f.client()
        try c.open("/vms/disk.raw")
        try c.request(7, cookie: 1, offset: 0, length: UInt32(Fixture.size))
        let chunks = try c.chunks()
        #expect(chunks.count == 1 && chunks[0].type == 5)
        let p = chunks[0].payload
        let descriptors = stride(from: 4, to: p.count, by: 8).map { (be32(p, $0), be32(p, $0 + 4)) }
        #expect(descriptors.map { $0.0 } == [2 << 20, 3 << 20, 1 << 20, UInt32(Fixture.size - 6 * Self.mib)])
        #expect(descriptors.map { $0.1 } == [0, 3, 0, 3])

        try c.request(7, flags: 8, cookie: 2, offset: 1000, length: 4096)
        let one = try c.chunks()
        #expect(one[0].payload.count == 12 && be32(one[0].payload, 4) == 4096 && be32(one[0].payload, 8) == 0, "REQ_ONE: one extent, within the request")
        try c.request(7, cookie: 3, offset: Fixture.size, length: 1)
        #expect(try c.chunks().first?.errorValue == 22)

        let none = try f.client()
        try none.open("/vms/disk.raw", allocation: false)
        try none.request(7, cookie: 4, offset: 0, length: 4096)
        #expect(try none.chunks().first?.errorValue == 22, "no context selected")
        try await f.stop()
    }

    @Test("requests that break the rules get the protocol's errors and the session goes on")
    func hostileRequests() async throws {
        let f = try await Fixture()
        let c = try f.client()
        try c.open("/vms/disk.raw")
        func errorOf(_ type: UInt16, flags: UInt16 = 0, offset: UInt64, length: UInt32, payload: [UInt8] = []) throws -> UInt32? {
            try c.request(type, flags: flags, cookie: 77, offset: offset, length: length, payload: payload)
            let reply = try c.status()
            #expect(reply.cookie == 77)
            return reply.error == 0 ? nil : reply.error
        }
        #expect(try errorOf(0, offset: Fixture.size - 10, length: 11) == 22, "read past the end")
        #expect(try errorOf(0, offset: UInt64.max - 5, length: 4096) == 22, "offset + length overflows")
        #expect(try errorOf(0, offset: 0, length: 33 << 20) == 22, "read over the maximum payload")
        #expect(try errorOf(42, offset: 0, length: 0) == 22, "unknown command")
        #expect(try errorOf(0, flags: 8, offset: 0, length: 512) == 22, "REQ_ONE is not a read flag")
        #expect(try errorOf(1, offset: 0, length: 4096, payload: [UInt8](repeating: 0xAB, count: 4096)) == 1, "write to a read-only export")
        #expect(try errorOf(4, offset: 0, length: 4096) == 1, "trim on a read-only export")
        #expect(try errorOf(6, offset: 0, length: 4096) == 1, "write zeroes on a read-only export")
        #expect(try errorOf(5, offset: 0, length: 1 << 20) == nil, "cache")
        #expect(try errorOf(3, offset: 0, length: 0) == nil, "flush")
        #expect(try errorOf(7, offset: 0, length: 0) == 22, "block status of nothing")
        // A write's payload is taken even when the write is refused: the next request parses.
        let intact = try c.structuredRead(cookie: 8, offset: 0, length: 8192)
        #expect(intact.data == Array(f.content[0..<8192]), "the refused write changed nothing")
        // A refused write bigger than the maximum payload is read past too, without being kept.
        try c.request(1, cookie: 9, offset: 0, length: 40 << 20)
        try c.send([UInt8](repeating: 1, count: 40 << 20))
        let big = try c.status()
        #expect(big.cookie == 9 && big.error != 0)
        #expect(try c.structuredRead(cookie: 10, offset: 0, length: 512).data == Array(f.content[0..<512]))

        // A wrong request magic cannot be followed: the server hangs up on that client alone.
        let other = try f.client()
        try other.open("/vms/disk.raw")
        try c.send([UInt8](repeating: 0x5A, count: 28))
        #expect(c.hungUp())
        #expect(try other.structuredRead(cookie: 1, offset: 5 * Self.mib, length: 4096).data == Array(f.content[(5 << 20)..<((5 << 20) + 4096)]))

        // Bad client flags, a bad option magic, garbage: each of those connections is dropped.
        let badFlags = try f.client()
        try badFlags.handshake(clientFlags: 0xFFFF_FFFF)
        #expect(badFlags.hungUp())
        let badMagic = try f.client()
        try badMagic.handshake()
        try badMagic.send([UInt8](repeating: 0xFF, count: 16))
        #expect(badMagic.hungUp())
        // Clients that leave mid-request: in a header, in a write's payload, in an option.
        for partial in [u32(0x2560_9513) + [0, 0], u32(0x2560_9513) + u16(0) + u16(1) + u64(1) + u64(0) + u32(65536) + [1, 2, 3]] {
            let quitter = try f.client()
            try quitter.open("/vms/disk.raw")
            try quitter.send(partial)
        }
        let quitter = try f.client()
        try quitter.handshake()
        try quitter.send(u64(0x4948_4156_454F_5054) + u32(7) + u32(1000) + [1, 2])
        #expect(try other.structuredRead(cookie: 2, offset: 0, length: 65536).data == Array(f.content[0..<65536]))
        try await f.stop()
    }

    @Test("a client that stops reading replies stops being read; its replies all arrive once it reads again")
    func backpressure() async throws {
        var limits = ExportLimits()
        limits.maxRequestsInFlight = 8
        limits.maxBytesInFlight = 4 << 20
        let f = try await Fixture(limits: limits)
        let c = try f.client()
        try c.open("/vms/disk.raw")
        // 300 reads of 1 MiB sent before one reply is read: the server holds at most 8 of them.
        let requests = (0..<300).flatMap { i -> [UInt8] in
            u32(0x2560_9513) + u16(0) + u16(0) + u64(UInt64(i)) + u64(UInt64(i % 6) * Self.mib) + u32(1 << 20)
        }
        try c.send(requests)
        var received = 0
        for _ in 0..<300 {
            var cookie: UInt64 = 0
            var bytes = 0
            for chunk in try c.chunks() {
                cookie = chunk.cookie
                bytes += chunk.type == 1 ? chunk.payload.count - 8 : Int(be32(chunk.payload, 8))
            }
            #expect(cookie < 300 && bytes == 1 << 20)
            received += 1
        }
        #expect(received == 300)
        try await f.stop()
    }

    @Test("a writable export takes writes, trims and zeroes, and leaves the volume consistent")
    func writable() async throws {
        let f = try await Fixture(writable: true)
        let c = try f.client()
        let (_, flags) = try c.open("/vms/disk.raw")
        #expect(flags & 0x0002 == 0 && flags & 0x0100 == 0, "writable: not read-only, not multi-conn")
        #expect(flags & (1 << 3 | 1 << 5 | 1 << 6) == (1 << 3 | 1 << 5 | 1 << 6), "FUA, trim, write zeroes")
        var expected = f.content
        func reply(_ cookie: UInt64) throws -> UInt32 {
            let reply = try c.status()
            #expect(reply.cookie == cookie)
            return reply.error
        }
        // Unaligned writes, into data and into a hole.
        let a = pattern(10_000, seed: 9).array
        try c.request(1, cookie: 1, offset: 4000, length: UInt32(a.count), payload: a)
        #expect(try reply(1) == 0)
        expected.replaceSubrange(4000..<14000, with: a)
        let b = pattern(70_000, seed: 10).array
        try c.request(1, flags: 1, cookie: 2, offset: 3 * Self.mib + 5, length: UInt32(b.count), payload: b)
        #expect(try reply(2) == 0)
        expected.replaceSubrange(Int(3 * Self.mib + 5)..<Int(3 * Self.mib + 70_005), with: b)
        // Trim a whole block: it becomes a hole again.
        try c.request(4, cookie: 3, offset: 5 * Self.mib, length: UInt32(Self.mib))
        #expect(try reply(3) == 0)
        expected.replaceSubrange((5 << 20)..<(6 << 20), with: repeatElement(0, count: 1 << 20))
        // Zeroes that must stay allocated, and zeroes that may become a hole.
        try c.request(6, flags: 2, cookie: 4, offset: 100, length: 1000)
        #expect(try reply(4) == 0)
        expected.replaceSubrange(100..<1100, with: repeatElement(0, count: 1000))
        try c.request(6, flags: 2 | 16, cookie: 5, offset: 0, length: 4096)
        #expect(try reply(5) == 95, "fast zeroes without a hole: not supported")
        try c.request(1, cookie: 6, offset: Fixture.size - 10, length: 20, payload: [UInt8](repeating: 1, count: 20))
        #expect(try reply(6) == 28, "write past the end: no space")
        try c.request(3, cookie: 7, offset: 0, length: 0)
        #expect(try reply(7) == 0)

        let back = try c.structuredRead(cookie: 8, offset: 0, length: UInt32(Fixture.size))
        #expect(back.error == nil)
        #expect(back.data == expected)
        #expect(back.holes.contains { $0.lowerBound <= 5 * Self.mib && $0.upperBound >= 6 * Self.mib }, "the trimmed block reads as a hole: \(back.holes)")
        try c.request(7, cookie: 9, offset: 0, length: UInt32(Fixture.size))
        let status = try c.chunks()[0].payload
        let descriptors = stride(from: 4, to: status.count, by: 8).map { (be32(status, $0), be32(status, $0 + 4)) }
        #expect(descriptors.map { $0.1 } == [0, 3, 0, 3], "data, hole, the written block, holes: \(descriptors)")
        try c.request(2, cookie: 10, offset: 0, length: 0)
        #expect(c.hungUp())
        try await f.stop()

        // The bytes are on the volume for the next reader.
        let volume = try Volume.open(path: f.scratch.path("lun.img"), options: OpenOptions(readOnly: true))
        let file = try volume.openFile("/vms/disk.raw", lock: nil)
        #expect(try file.read(at: 0, count: Int(Fixture.size)) == expected)
        try volume.close()
    }

    @Test("a thousand idle connections leave the server answering the next client")
    func manyConnections() async throws {
        // Both ends of every connection live in this process.
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        if getrlimit(resource, &limit) == 0, limit.rlim_cur < 2500 {
            limit.rlim_cur = min(limit.rlim_max, 4096)
            _ = setrlimit(resource, &limit)
        }
        try #require(getrlimit(resource, &limit) == 0 && limit.rlim_cur >= 2100, "needs 2100 descriptors")
        let f = try await Fixture()
        var idle: [RawClient] = []
        for _ in 0..<1000 { idle.append(try f.client()) }
        let c = try f.client()
        try c.open("/vms/disk.raw")
        #expect(try c.structuredRead(cookie: 1, offset: 0, length: 4096).data == Array(f.content[0..<4096]))
        idle.removeAll()
        try await f.stop()
    }

    @Test("sessions mutated at random (flipped, dropped, repeated, inserted bytes) never take the server down or damage the volume")
    func mutatedSessions() async throws {
        let f = try await Fixture(writable: true)
        // One session that touches every part of the protocol.
        var session = u32(3)
        func option(_ code: UInt32, _ data: [UInt8]) -> [UInt8] { u64(0x4948_4156_454F_5054) + u32(code) + u32(UInt32(data.count)) + data }
        func request(_ type: UInt16, _ flags: UInt16, _ offset: UInt64, _ length: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
            u32(0x2560_9513) + u16(flags) + u16(type) + u64(UInt64(type)) + u64(offset) + u32(length) + payload
        }
        session += option(3, []) + option(8, []) + option(9, RawClient.metaData("/vms/disk.raw", queries: ["base:"]))
        // A query in QEMU's namespace is answered off the event loop: garbage around it too.
        session += option(9, RawClient.metaData("/vms/disk.raw", queries: ["qemu:dirty-bitmap:"]))
        session += option(10, RawClient.metaData("/vms/disk.raw", queries: ["base:allocation", "qemu:dirty-bitmap:x"]))
        session += option(6, RawClient.infoData("/vms/disk.raw", requests: [0, 1, 2, 3])) + option(7, RawClient.infoData("/vms/disk.raw", requests: [3]))
        session += request(0, 0, 4096, 65536) + request(0, 4, 2 * Self.mib - 512, 4096) + request(7, 8, 0, 1 << 20)
        session += request(1, 1, 12345, 3000, pattern(3000, seed: 5).array) + request(4, 0, 7 * Self.mib, 4096)
        session += request(6, 2, 100, 5000) + request(5, 0, 0, 8192) + request(3, 0, 0, 0) + request(2, 0, 0, 0)

        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func random(_ bound: Int) -> Int {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Int(state % UInt64(bound))
        }
        var hungUp = 0
        for _ in 0..<1000 {
            var bytes = session
            for _ in 0..<(1 + random(6)) {
                let at = random(bytes.count)
                switch random(5) {
                case 0: bytes[at] ^= UInt8(1 << random(8))
                case 1: bytes[at] = UInt8(random(256))
                case 2: bytes.removeSubrange(at..<min(bytes.count, at + 1 + random(40)))
                case 3: bytes.insert(contentsOf: (0..<(1 + random(40))).map { _ in UInt8(random(256)) }, at: at)
                default: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 28)], at: at)
                }
                if bytes.isEmpty { bytes = [0] }
            }
            let c = try RawClient(socket: f.socket, timeout: 10)
            _ = try c.receive(18)
            try? c.send(bytes)
            // Every session ends: the server answers what it can and hangs up at the end of input.
            if c.finishAndDrain() { hungUp += 1 }
        }
        #expect(hungUp == 1000, "every mutated session was ended by the server")
        let c = try f.client()
        try c.open("/vms/disk.raw")
        let read = try c.structuredRead(cookie: 1, offset: 0, length: 4096)
        #expect(read.error == nil && read.data.count == 4096)
        try await f.stop()
    }

    @Test("export names: paths, snapshots, what is refused")
    func names() throws {
        #expect(try ExportName(parsing: "vms//web01/disk0.raw") == .file(path: "/vms/web01/disk0.raw"))
        #expect(try ExportName(parsing: "/vms/web01/disk0.raw@nightly-2026-12-06") == .snapshot(path: "/vms/web01/disk0.raw", snapshot: "nightly-2026-12-06"))
        for bad in ["", "/", "/vms/../etc", "/a/./b", "/disk@", "/disk@a/b", String(repeating: "x", count: 5000)] {
            #expect(throws: ExportError.self, "\(bad)") { try ExportName(parsing: bad) }
        }
        #expect(try ExportServer.Endpoint.parse(listen: "127.0.0.1:0") == .tcp(host: "127.0.0.1", port: 0))
        #expect(try ExportServer.Endpoint.parse(listen: "[::1]:10809").isLocal)
        #expect(try !ExportServer.Endpoint.parse(listen: "0.0.0.0:10809").isLocal)
        #expect(try !ExportServer.Endpoint.parse(listen: "127.0.0.1.example:1").isLocal)
        #expect(throws: ExportError.self) { try ExportServer.Endpoint.parse(listen: "127.0.0.1:70000") }
    }
}
