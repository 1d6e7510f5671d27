import Foundation
import Glibc
import LunarExport
import LunarFS
import Testing

/// A volume served on a Unix socket for a test: raw clients connect to it, and stopping it
/// checks that serving left the volume clean.
protocol ServedVolumeFixture: AnyObject {
    var volume: Volume { get }
    var server: ExportServer { get }
    var socket: String { get }
}

extension ServedVolumeFixture {
    func client() throws -> RawClient { try RawClient(socket: socket) }

    func stop() async throws {
        await server.stop()
        let report = try volume.check()
        #expect(report.isClean, "fsck after serving: \(report.problems)")
        try volume.close()
    }
}

/// A client that speaks NBD byte by byte over a Unix socket: for sending what real clients
/// never would, and for reading the server's replies exactly as they come.
final class RawClient {
    struct Closed: Error {}

    let fd: Int32

    init(socket path: String, timeout: Int = 20) throws {
        fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var at = 0
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Closed() }
            at += n
        }
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var at = 0
        while at < count {
            let n = out[at...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw Closed() }
            at += n
        }
        return out
    }

    /// Whether the server hung up (end of stream, or a reset) within the receive timeout.
    func hungUp() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, 0)
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// Says no more will be sent, and reads what comes back until the server hangs up.
    /// Returns false if it never did (within the receive timeout).
    func finishAndDrain() -> Bool {
        shutdown(fd, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return true }
            if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK }
        }
    }

    // MARK: NBD

    /// Reads the greeting and answers it; returns the handshake flags.
    @discardableResult
    func handshake(clientFlags: UInt32 = 3) throws -> UInt16 {
        let greeting = try receive(18)
        guard be64(greeting, 0) == 0x4E42_444D_4147_4943, be64(greeting, 8) == 0x4948_4156_454F_5054 else { throw Closed() }
        try send(u32(clientFlags))
        return be16(greeting, 16)
    }

    func option(_ code: UInt32, _ data: [UInt8] = []) throws {
        try send(u64(0x4948_4156_454F_5054) + u32(code) + u32(UInt32(data.count)) + data)
    }

    struct OptionReply {
        var option: UInt32
        var type: UInt32
        var data: [UInt8]
        var isError: Bool { type & 0x8000_0000 != 0 }
        var message: String { String(decoding: data, as: UTF8.self) }
    }

    func optionReply() throws -> OptionReply {
        let head = try receive(20)
        guard be64(head, 0) == 0x0003_E889_0455_65A9 else { throw Closed() }
        let length = Int(be32(head, 16))
        return OptionReply(option: be32(head, 8), type: be32(head, 12), data: try receive(length))
    }

    /// Replies to one option up to the final ACK or error.
    func optionReplies() throws -> [OptionReply] {
        var replies: [OptionReply] = []
        while true {
            let reply = try optionReply()
            replies.append(reply)
            if reply.type == 1 || reply.isError { return replies }
        }
    }

    static func infoData(_ name: String, requests: [UInt16] = []) -> [UInt8] {
        let n = Array(name.utf8)
        return u32(UInt32(n.count)) + n + u16(UInt16(requests.count)) + requests.flatMap(u16)
    }

    static func metaData(_ name: String, queries: [String]) -> [UInt8] {
        let n = Array(name.utf8)
        return u32(UInt32(n.count)) + n + u32(UInt32(queries.count)) + queries.flatMap { u32(UInt32($0.utf8.count)) + Array($0.utf8) }
    }

    /// Handshake and structured replies, the state metadata context options need.
    func structuredSession() throws {
        try handshake()
        try option(8)
        guard try optionReply().type == 1 else { throw Closed() }
    }

    /// Handshake, structured replies (when asked), base:allocation (when asked), GO.
    /// Returns the export's size and transmission flags.
    @discardableResult
    func open(_ name: String, structured: Bool = true, allocation: Bool = true) throws -> (size: UInt64, flags: UInt16) {
        try handshake()
        if structured {
            try option(8)
            guard try optionReply().type == 1 else { throw Closed() }
            if allocation {
                try option(10, Self.metaData(name, queries: ["base:allocation"]))
                _ = try optionReplies()
            }
        }
        try option(7, Self.infoData(name))
        var size: UInt64 = 0, flags: UInt16 = 0
        for reply in try optionReplies() {
            if reply.isError { throw Closed() }
            if reply.type == 3, be16(reply.data, 0) == 0 {
                size = be64(reply.data, 2)
                flags = be16(reply.data, 10)
            }
        }
        return (size, flags)
    }

    func request(_ type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []) throws {
        try send(u32(0x2560_9513) + u16(flags) + u16(type) + u64(cookie) + u64(offset) + u32(length) + payload)
    }

    struct Chunk {
        var flags: UInt16
        var type: UInt16
        var cookie: UInt64
        var payload: [UInt8]
        var done: Bool { flags & 1 != 0 }
        var errorValue: UInt32 { be32(payload, 0) }
    }

    /// The reply to a request that moves no data: a simple reply, or structured chunks up to
    /// the one marked done (the server may send either). Returns the cookie and the error (0: none).
    func status() throws -> (cookie: UInt64, error: UInt32) {
        let magic = try receive(4)
        if be32(magic, 0) == 0x6744_6698 {
            let rest = try receive(12)
            return (be64(rest, 4), be32(rest, 0))
        }
        guard be32(magic, 0) == 0x668E_33EF else { throw Closed() }
        let head = try receive(16)
        var chunk = Chunk(flags: be16(head, 0), type: be16(head, 2), cookie: be64(head, 4), payload: try receive(Int(be32(head, 12))))
        var error: UInt32 = 0
        while true {
            if chunk.type & 0x8000 != 0 { error = chunk.errorValue }
            if chunk.done { return (chunk.cookie, error) }
            chunk = try self.chunk()
        }
    }

    func simpleReply(dataLength: Int = 0) throws -> (error: UInt32, cookie: UInt64, data: [UInt8]) {
        let head = try receive(16)
        guard be32(head, 0) == 0x6744_6698 else { throw Closed() }
        let error = be32(head, 4)
        return (error, be64(head, 8), error == 0 ? try receive(dataLength) : [])
    }

    func chunk() throws -> Chunk {
        let head = try receive(20)
        guard be32(head, 0) == 0x668E_33EF else { throw Closed() }
        return Chunk(flags: be16(head, 4), type: be16(head, 6), cookie: be64(head, 8), payload: try receive(Int(be32(head, 16))))
    }

    /// The chunks of one structured reply, up to the one marked done.
    func chunks() throws -> [Chunk] {
        var out: [Chunk] = []
        while true {
            let c = try chunk()
            out.append(c)
            if c.done { return out }
        }
    }

    /// A structured read reassembled: the bytes, and which pieces came as holes.
    func structuredRead(cookie: UInt64, offset: UInt64, length: UInt32, flags: UInt16 = 0) throws -> (data: [UInt8], holes: [Range<UInt64>], error: UInt32?) {
        try request(0, flags: flags, cookie: cookie, offset: offset, length: length)
        var data = [UInt8](repeating: 0xEE, count: Int(length))
        var holes: [Range<UInt64>] = []
        for c in try chunks() {
            guard c.cookie == cookie else { throw Closed() }
            switch c.type {
            case 1:
                let at = be64(c.payload, 0)
                data.replaceSubrange(Int(at - offset)..<(Int(at - offset) + c.payload.count - 8), with: c.payload[8...])
            case 2:
                let at = be64(c.payload, 0), count = UInt64(be32(c.payload, 8))
                data.replaceSubrange(Int(at - offset)..<Int(at - offset + count), with: repeatElement(0, count: Int(count)))
                holes.append(at..<(at + count))
            case 0: break
            default: return (data, holes, c.errorValue)
            }
        }
        return (data, holes, nil)
    }
}

func u16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
func be16(_ b: [UInt8], _ at: Int) -> UInt16 { b[at..<(at + 2)].reduce(0) { $0 << 8 | UInt16($1) } }
func be32(_ b: [UInt8], _ at: Int) -> UInt32 { b[at..<(at + 4)].reduce(0) { $0 << 8 | UInt32($1) } }
func be64(_ b: [UInt8], _ at: Int) -> UInt64 { b[at..<(at + 8)].reduce(0) { $0 << 8 | UInt64($1) } }
