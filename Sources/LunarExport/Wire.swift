import NIOCore

// The byte layouts a client sends, parsed without trusting one field of them
// (`Spec/export.md` §2, §6). Pure functions over the received bytes, so that a fuzz target and
// the tests drive them as the connection does.

/// What the client must send, or may not, when an option cannot be answered.
struct OptionFailure: Error, Equatable {
    var reply: NBD.OptionReply
    var message: String
    init(_ reply: NBD.OptionReply, _ message: String) {
        self.reply = reply
        self.message = message
    }
}

/// The 16 bytes before each option's data.
struct OptionHeader: Equatable {
    static let size = 16
    var option: UInt32
    var length: UInt32

    /// The header at the reader index, or nil while fewer than 16 bytes are there. Throws on a
    /// wrong magic: the stream is then out of step, and only a hard disconnect is left.
    static func peek(_ buffer: ByteBuffer) throws(WireError) -> OptionHeader? {
        guard buffer.readableBytes >= size,
              let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt64.self),
              let option = buffer.getInteger(at: buffer.readerIndex + 8, as: UInt32.self),
              let length = buffer.getInteger(at: buffer.readerIndex + 12, as: UInt32.self) else { return nil }
        guard magic == NBD.optionMagic else { throw WireError("option magic 0x\(String(magic, radix: 16)) is not IHAVEOPT") }
        return OptionHeader(option: option, length: length)
    }
}

/// A violation after which the stream cannot be followed: the connection is dropped.
struct WireError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Reads a string of `count` bytes that must be UTF-8 without NUL (`Spec/export.md` §3).
private func readString(_ data: inout ByteBuffer, count: Int, what: String) throws(OptionFailure) -> String {
    guard count <= ExportName.maxLength else { throw OptionFailure(.errorTooBig, "\(what) longer than \(ExportName.maxLength) bytes") }
    guard let bytes = data.readBytes(length: count) else { throw OptionFailure(.errorInvalid, "\(what) runs past the option's data") }
    guard !bytes.contains(0), let text = String(validating: bytes, as: UTF8.self) else {
        throw OptionFailure(.errorInvalid, "\(what) is not UTF-8 text without NUL")
    }
    return text
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO` data: the export name and the information asked for.
struct InfoRequest: Equatable {
    var name: String
    var requests: [UInt16]

    static func parse(_ data: ByteBuffer) throws(OptionFailure) -> InfoRequest {
        var data = data
        guard let nameLength = data.readInteger(as: UInt32.self) else { throw OptionFailure(.errorInvalid, "option data shorter than 6 bytes") }
        guard Int(nameLength) <= data.readableBytes - 2 else {
            throw OptionFailure(.errorInvalid, "export name length \(nameLength) runs past the option's data")
        }
        let name = try readString(&data, count: Int(nameLength), what: "export name")
        guard let count = data.readInteger(as: UInt16.self) else { throw OptionFailure(.errorInvalid, "information request count missing") }
        guard data.readableBytes == 2 * Int(count) else {
            throw OptionFailure(.errorInvalid, "\(count) information requests take \(2 * Int(count)) bytes, not \(data.readableBytes)")
        }
        var requests: [UInt16] = []
        for _ in 0..<count {
            guard let item = data.readInteger(as: UInt16.self) else { break }
            requests.append(item)
        }
        return InfoRequest(name: name, requests: requests)
    }
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT` data: an export and queries.
struct MetaContextRequest: Equatable {
    /// More queries than a client has any use for are refused with `NBD_REP_ERR_TOO_BIG`.
    static let maxQueries = 128
    var name: String
    var queries: [String]

    static func parse(_ data: ByteBuffer) throws(OptionFailure) -> MetaContextRequest {
        var data = data
        guard let nameLength = data.readInteger(as: UInt32.self), Int(nameLength) <= data.readableBytes else {
            throw OptionFailure(.errorInvalid, "export name runs past the option's data")
        }
        let name = try readString(&data, count: Int(nameLength), what: "export name")
        guard let count = data.readInteger(as: UInt32.self) else { throw OptionFailure(.errorInvalid, "query count missing") }
        guard count <= maxQueries else { throw OptionFailure(.errorTooBig, "\(count) queries; at most \(maxQueries) are taken") }
        var queries: [String] = []
        for _ in 0..<count {
            guard let length = data.readInteger(as: UInt32.self), Int(length) <= data.readableBytes else {
                throw OptionFailure(.errorInvalid, "query runs past the option's data")
            }
            let query = try readString(&data, count: Int(length), what: "query")
            guard let colon = query.firstIndex(of: ":"), colon != query.startIndex else {
                throw OptionFailure(.errorInvalid, "query '\(query)' does not start with a namespace and a colon")
            }
            queries.append(query)
        }
        guard data.readableBytes == 0 else { throw OptionFailure(.errorInvalid, "\(data.readableBytes) bytes after the last query") }
        return MetaContextRequest(name: name, queries: queries)
    }
}

/// One transmission request header (28 bytes); a write's payload follows it.
struct Request: Equatable {
    static let size = 28
    var flags: NBD.CommandFlags
    var type: UInt16
    var cookie: UInt64
    var offset: UInt64
    var length: UInt32

    /// The request at the reader index (consumed), nil while fewer than 28 bytes are there.
    /// Throws on a wrong magic: nothing after it can be trusted to be a request.
    static func read(_ buffer: inout ByteBuffer) throws(WireError) -> Request? {
        guard buffer.readableBytes >= size else { return nil }
        guard let magic = buffer.readInteger(as: UInt32.self), magic == NBD.requestMagic else {
            throw WireError("request magic is not 0x25609513 (extended headers were not negotiated)")
        }
        guard let flags = buffer.readInteger(as: UInt16.self), let type = buffer.readInteger(as: UInt16.self),
              let cookie = buffer.readInteger(as: UInt64.self), let offset = buffer.readInteger(as: UInt64.self),
              let length = buffer.readInteger(as: UInt32.self) else { return nil }
        return Request(flags: NBD.CommandFlags(rawValue: flags), type: type, cookie: cookie, offset: offset, length: length)
    }

    /// The byte range, nil when offset + length overflows.
    var range: Range<UInt64>? {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        return overflow ? nil : offset..<end
    }
}

// MARK: what the server writes

extension ByteBuffer {
    mutating func writeOptionReply(_ option: UInt32, _ type: NBD.OptionReply, length: Int) {
        writeInteger(NBD.optionReplyMagic)
        writeInteger(option)
        writeInteger(type.rawValue)
        writeInteger(UInt32(length))
    }

    mutating func writeSimpleReply(cookie: UInt64, error: UInt32) {
        writeInteger(NBD.simpleReplyMagic)
        writeInteger(error)
        writeInteger(cookie)
    }

    mutating func writeChunkHeader(cookie: UInt64, done: Bool, type: NBD.ChunkType, length: Int) {
        writeInteger(NBD.structuredReplyMagic)
        writeInteger(done ? NBD.replyFlagDone : 0)
        writeInteger(type.rawValue)
        writeInteger(cookie)
        writeInteger(UInt32(length))
    }
}
