import LunarFS
import LunarIO
import NIOCore
import NIOSSL

/// How much one connection may hold and how long it may dawdle (`Spec/export.md` §6).
public struct ExportLimits: Sendable {
    /// The largest read or write one request may move (`NBD_INFO_BLOCK_SIZE` maximum payload).
    public var maxPayload: Int = 32 << 20
    /// Option data beyond this is refused with `NBD_REP_ERR_TOO_BIG` and skipped unread.
    public var maxOptionLength: Int = 64 << 10
    /// Requests taken but not answered (their reply not yet handed to the socket) per
    /// connection; past either bound the connection stops reading until replies drain.
    public var maxRequestsInFlight = 64
    public var maxBytesInFlight = 96 << 20
    /// Seconds a connection may take to reach transmission.
    public var handshakeSeconds: Int64 = 30
    /// Connections served at once; more are closed as they arrive.
    public var maxConnections = 4096
    /// Descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk.
    public var maxDescriptors = 1 << 16

    public init() {}
}

/// The exports one server offers, by canonical name.
struct ExportCatalog: Sendable {
    let exports: [ServedExport]
    private let byName: [ExportName: ServedExport]

    init(_ exports: [ServedExport]) {
        self.exports = exports
        var byName: [ExportName: ServedExport] = [:]
        for e in exports { byName[e.name] = e }
        self.byName = byName
    }

    /// The export a client's name selects, or why none does. The empty name is the default
    /// export, which exists when the server offers exactly one.
    func lookup(_ requested: String) -> Result<ServedExport, OptionFailure> {
        if requested.isEmpty {
            if exports.count == 1 { return .success(exports[0]) }
            return .failure(OptionFailure(.errorUnknown, "no default export: this server offers \(exports.count); name one"))
        }
        let name: ExportName
        do { name = try ExportName(parsing: requested) } catch { return .failure(OptionFailure(.errorUnknown, error.description)) }
        guard let export = byName[name] else { return .failure(OptionFailure(.errorUnknown, "\(name): not exported by this server")) }
        return .success(export)
    }
}

/// A metadata context NBD_OPT_SET_META_CONTEXT selected, with the ID its block status chunks
/// carry; changes are worked out when the context is selected and kept for the session.
enum SelectedContext: Sendable {
    case allocation(id: UInt32)
    case changes(id: UInt32, snapshot: String, ChangeList)

    var id: UInt32 {
        switch self {
        case .allocation(let id), .changes(let id, _, _): id
        }
    }

    var name: String {
        switch self {
        case .allocation: MetaContext.allocation.name
        case .changes(_, let snapshot, _): MetaContext.dirtyBitmap(snapshot: snapshot).name
        }
    }
}

/// One client: the handshake, then requests, on the channel's event loop. Work that blocks
/// (file calls) runs on the export's worker queue and LunarIO's reactor, and comes back here.
final class NBDConnection: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase { case greeting, options, transmission, closed }

    /// A write's payload on its way in: kept in an aligned buffer, or, for a write that is
    /// refused, counted and dropped so that the stream stays in step.
    private struct Payload {
        var request: Request
        var buffer: IOBuffer?
        var received = 0
        var refusal: (NBD.Errno, String)?
    }

    /// A read whose pieces are in flight on the LUN.
    private final class ReadJob {
        let request: Request
        var parts: [ByteBuffer]
        /// For each part that receives device data: where its header goes once the data is in.
        var finish: [(part: Int, header: Int, dataLength: Int, type: NBD.ChunkType?, offset: UInt64)] = []
        var pending = 0
        var failure: String?
        let bytes: Int

        init(request: Request, parts: [ByteBuffer], bytes: Int) {
            self.request = request
            self.parts = parts
            self.bytes = bytes
        }
    }

    private let catalog: ExportCatalog
    private let limits: ExportLimits
    /// Set when the server requires TLS; `tlsStarted` once the session runs over it.
    private let tls: ExportTLS?
    private var tlsStarted = false
    /// Bytes the client sent after the option being answered.
    private var unreadAfterOption = 0
    private var phase = Phase.greeting
    private var inbound: ByteBuffer?
    private var noZeroes = false
    private var structured = false
    /// The contexts the last NBD_OPT_SET_META_CONTEXT selected, and for which export; the
    /// ones block status answers once transmission began.
    private var selection: (export: ExportName, contexts: [SelectedContext])?
    private var contexts: [SelectedContext] = []
    /// An option is being answered off the event loop: the next one waits for its reply.
    private var optionBusy = false
    private var export: ServedExport?
    private var skipping = 0
    private var payload: Payload?
    private var requestsInFlight = 0
    private var bytesInFlight = 0
    private var readHeld = false
    private var disconnecting = false
    private var jobs: [UInt64: ReadJob] = [:]
    private var nextJob: UInt64 = 0
    private var context: ChannelHandlerContext?
    private var handshakeTimer: Scheduled<Void>?

    init(catalog: ExportCatalog, limits: ExportLimits, tls: ExportTLS?) {
        self.catalog = catalog
        self.limits = limits
        self.tls = tls
    }

    // MARK: channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        inbound = context.channel.allocator.buffer(capacity: 4096)
        var greeting = context.channel.allocator.buffer(capacity: 18)
        greeting.writeInteger(NBD.initPassword)
        greeting.writeInteger(NBD.optionMagic)
        greeting.writeInteger(NBD.HandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: .seconds(limits.handshakeSeconds)) {
            let connection = bound.value
            if connection.phase == .greeting || connection.phase == .options { connection.hardClose() }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        phase = .closed
        inbound = nil
        payload = nil
        self.context = nil
        handshakeTimer?.cancel()
        handshakeTimer = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset peer, a failed write: this connection ends, nobody else notices.
        hardClose()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard phase != .closed else { return }
        if let sink = payload {
            // Straight into the write's buffer, without gathering in `inbound` first.
            payload = absorb(&bytes, into: sink)
        }
        if bytes.readableBytes > 0 { inbound?.writeBuffer(&bytes) }
        process()
    }

    func read(context: ChannelHandlerContext) {
        // Backpressure: while this connection holds as much as it may, the socket is not read
        // and the client's sends wait in its own buffers.
        // A write's payload is always taken: the request it completes is what frees the budget.
        // While an option is answered off the event loop nothing more is taken either: the
        // bytes a client sends meanwhile wait in its own buffers, not in this connection's.
        if (overBudget && payload == nil) || optionBusy {
            readHeld = true
        } else {
            context.read()
        }
    }

    private var overBudget: Bool {
        requestsInFlight >= limits.maxRequestsInFlight || bytesInFlight >= limits.maxBytesInFlight
    }

    private func hardClose() {
        phase = .closed
        context?.close(promise: nil)
    }

    // MARK: the input loop

    private func process() {
        while phase != .closed, let context, var buffer = inbound {
            inbound = nil
            let progressed: Bool
            do throws(WireError) {
                progressed = try step(&buffer, context)
            } catch {
                hardClose()
                return
            }
            if phase == .closed { return }
            if buffer.readerIndex > 64 << 10 { buffer.discardReadBytes() }
            inbound = buffer
            if !progressed { break }
        }
        if phase == .transmission, disconnecting, requestsInFlight == 0 { hardClose() }
    }

    /// Takes one message from `buffer`; false when more bytes are needed (or reading waits).
    private func step(_ buffer: inout ByteBuffer, _ context: ChannelHandlerContext) throws(WireError) -> Bool {
        if skipping > 0 {
            let n = min(skipping, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skipping -= n
            return n > 0
        }
        if let sink = payload {
            payload = absorb(&buffer, into: sink)
            return payload == nil
        }
        switch phase {
        case .greeting:
            guard let flags = buffer.readInteger(as: UInt32.self) else { return false }
            let client = NBD.ClientFlags(rawValue: flags)
            // A client whose flags the server does not know is dropped (Spec/export.md §2).
            guard client.isSubset(of: .known) else { throw WireError("unknown client flags 0x\(String(flags, radix: 16))") }
            noZeroes = client.contains(.noZeroes)
            phase = .options
            return true
        case .options:
            if optionBusy { return false }
            guard let header = try OptionHeader.peek(buffer) else { return false }
            if Int(header.length) > limits.maxOptionLength {
                buffer.moveReaderIndex(forwardBy: OptionHeader.size)
                skipping = Int(header.length)
                optionError(header.option, OptionFailure(.errorTooBig, "option data of \(header.length) bytes; at most \(limits.maxOptionLength) are taken"))
                return true
            }
            guard buffer.readableBytes >= OptionHeader.size + Int(header.length) else { return false }
            buffer.moveReaderIndex(forwardBy: OptionHeader.size)
            guard let data = buffer.readSlice(length: Int(header.length)) else { return false }
            unreadAfterOption = buffer.readableBytes
            handleOption(header.option, data, context)
            return true
        case .transmission:
            if disconnecting || overBudget { return false }
            guard let request = try Request.read(&buffer) else { return false }
            handleRequest(request)
            return true
        case .closed:
            return false
        }
    }

    // MARK: options

    private func handleOption(_ code: UInt32, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
        let option = NBD.Option(rawValue: code)
        if tls != nil && !tlsStarted && option != .startTLS && option != .abort {
            // Nothing but STARTTLS and ABORT before TLS (Spec/export.md §7); EXPORT_NAME cannot
            // be answered with an error, so it ends the session.
            if option == .exportName { return hardClose() }
            return optionError(code, OptionFailure(.errorTLSRequired, "this server requires TLS: send NBD_OPT_STARTTLS first"))
        }
        guard let option else {
            return optionError(code, OptionFailure(.errorUnsupported, "option \(code) is not supported"))
        }
        switch option {
        case .exportName:
            var data = data
            let name = data.readString(length: data.readableBytes) ?? ""
            // No way to say no but to hang up (Spec/export.md §2).
            guard case .success(let export) = catalog.lookup(name) else { return hardClose() }
            var reply = context.channel.allocator.buffer(capacity: 134)
            reply.writeInteger(export.size)
            reply.writeInteger(export.transmissionFlags(structured: structured).rawValue)
            if !noZeroes { reply.writeRepeatingByte(0, count: 124) }
            enterTransmission(export, requestedName: name)
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        case .abort:
            var reply = context.channel.allocator.buffer(capacity: 20)
            reply.writeOptionReply(code, .ack, length: 0)
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in bound.value.hardClose() }
            phase = .closed
        case .list:
            guard data.readableBytes == 0 else { return optionError(code, OptionFailure(.errorInvalid, "NBD_OPT_LIST takes no data")) }
            var reply = context.channel.allocator.buffer(capacity: 64 * (catalog.exports.count + 1))
            for export in catalog.exports {
                let name = Array(export.name.description.utf8)
                reply.writeOptionReply(code, .server, length: 4 + name.count)
                reply.writeInteger(UInt32(name.count))
                reply.writeBytes(name)
            }
            reply.writeOptionReply(code, .ack, length: 0)
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        case .startTLS:
            startTLS(code, data, context)
        case .info, .go:
            answerInfo(code, go: option == .go, data, context)
        case .structuredReply:
            guard data.readableBytes == 0 else { return optionError(code, OptionFailure(.errorInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")) }
            structured = true
            ack(code)
        case .listMetaContext, .setMetaContext:
            answerMetaContext(code, setting: option == .setMetaContext, data, context)
        }
    }

    private func startTLS(_ code: UInt32, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
        guard let tls else { return optionError(code, OptionFailure(.errorPolicy, "this server was not given a TLS certificate")) }
        guard !tlsStarted else { return optionError(code, OptionFailure(.errorInvalid, "TLS is already running")) }
        guard data.readableBytes == 0 else { return optionError(code, OptionFailure(.errorInvalid, "NBD_OPT_STARTTLS takes no data")) }
        // The client waits for the ACK before its TLS hello: bytes after the option are a
        // client that does not, and nothing sent in the clear may ride into the session.
        guard unreadAfterOption == 0 else { return hardClose() }
        // The ACK leaves in the clear, below where the TLS handler then goes.
        ack(code)
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
        } catch {
            return hardClose()
        }
        tlsStarted = true
        // Nothing negotiated before STARTTLS survives it (Spec/export.md §7).
        structured = false
        selection = nil
    }

    private func ack(_ code: UInt32) {
        guard let context else { return }
        var reply = context.channel.allocator.buffer(capacity: 20)
        reply.writeOptionReply(code, .ack, length: 0)
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    private func optionError(_ code: UInt32, _ failure: OptionFailure) {
        guard let context else { return }
        let message = Array(failure.message.utf8.prefix(ExportName.maxLength))
        var reply = context.channel.allocator.buffer(capacity: 20 + message.count)
        reply.writeOptionReply(code, failure.reply, length: message.count)
        reply.writeBytes(message)
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    private func answerInfo(_ code: UInt32, go: Bool, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
        let request: InfoRequest
        do { request = try InfoRequest.parse(data) } catch { return optionError(code, error) }
        let export: ServedExport
        switch catalog.lookup(request.name) {
        case .success(let found): export = found
        case .failure(let failure): return optionError(code, failure)
        }
        var reply = context.channel.allocator.buffer(capacity: 256)
        reply.writeOptionReply(code, .info, length: 12)
        reply.writeInteger(NBD.Info.export.rawValue)
        reply.writeInteger(export.size)
        reply.writeInteger(export.transmissionFlags(structured: structured).rawValue)
        // Sent whether asked or not: the maximum payload is a limit the server enforces.
        reply.writeOptionReply(code, .info, length: 14)
        reply.writeInteger(NBD.Info.blockSize.rawValue)
        reply.writeInteger(UInt32(1))
        reply.writeInteger(UInt32(export.sector))
        reply.writeInteger(UInt32(limits.maxPayload))
        if request.requests.contains(NBD.Info.name.rawValue) {
            let name = Array(export.name.description.utf8)
            reply.writeOptionReply(code, .info, length: 2 + name.count)
            reply.writeInteger(NBD.Info.name.rawValue)
            reply.writeBytes(name)
        }
        if request.requests.contains(NBD.Info.description.rawValue) {
            let what = export.snapshot.map { "snapshot \($0) of LunarFS disk \(export.name.path)" } ?? "LunarFS file \(export.name.path)"
            let text = Array("\(what), \(export.writable ? "writable" : "read-only")".utf8)
            reply.writeOptionReply(code, .info, length: 2 + text.count)
            reply.writeInteger(NBD.Info.description.rawValue)
            reply.writeBytes(text)
        }
        reply.writeOptionReply(code, .ack, length: 0)
        if go { enterTransmission(export, requestedName: request.name) }
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    /// What a metadata context option found: the contexts a listing names, or the ones a
    /// selection chose, with their IDs.
    private enum MetaAnswer {
        case listed([MetaContext])
        case selected([SelectedContext])
    }

    private func answerMetaContext(_ code: UInt32, setting: Bool, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
        if setting { selection = nil }
        guard structured else {
            return optionError(code, OptionFailure(.errorInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts"))
        }
        let request: MetaContextRequest
        do { request = try MetaContextRequest.parse(data) } catch { return optionError(code, error) }
        let export: ServedExport
        switch catalog.lookup(request.name) {
        case .success(let found): export = found
        case .failure(let failure): return optionError(code, failure)
        }
        let queries = request.queries
        // Listing with no query lists everything; setting with none selects nothing.
        let needsSnapshots = queries.isEmpty ? !setting : queries.contains(where: MetaContext.needsSnapshots)
        guard needsSnapshots else {
            let found = Self.resolve(queries, listing: !setting, snapshots: [])
            return finishMetaContext(code, export, setting ? .selected(Self.select(found, changes: [:])) : .listed(found))
        }
        // The snapshot record and the block maps are read from the volume, which may wait on
        // other hosts' locks: off the event loop, and no further option is taken meanwhile.
        optionBusy = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        export.metadata.async {
            let outcome = Result(catching: { () throws(ExportError) -> MetaAnswer in
                let sources = try export.changeSources()
                let found = NBDConnection.resolve(queries, listing: !setting, snapshots: sources.map(\.name))
                guard setting else { return .listed(found) }
                var changes: [String: ChangeList] = [:]
                for case .dirtyBitmap(let name) in found {
                    guard let source = sources.first(where: { $0.name == name }) else { continue }
                    changes[name] = try export.changes(since: source)
                }
                return .selected(NBDConnection.select(found, changes: changes))
            })
            bound.eventLoop.execute {
                let connection = bound.value
                connection.optionBusy = false
                guard connection.phase == .options, let context = connection.context else { return }
                switch outcome {
                case .success(let answer): connection.finishMetaContext(code, export, answer)
                case .failure(let error):
                    connection.optionError(code, OptionFailure(.errorUnknown, "changed blocks of \(export.name): \(error)"))
                }
                connection.process()
                // Reading resumes unless the options that followed hold it again (another one off
                // the loop, or requests past the budget).
                if connection.readHeld, connection.phase != .closed, !connection.optionBusy,
                   !(connection.overBudget && connection.payload == nil) {
                    connection.readHeld = false
                    context.read()
                }
            }
        }
    }

    /// The contexts `queries` find, each once, in the order first found.
    private static func resolve(_ queries: [String], listing: Bool, snapshots: [String]) -> [MetaContext] {
        if queries.isEmpty { return listing ? [.allocation] + snapshots.map { .dirtyBitmap(snapshot: $0) } : [] }
        var found: [MetaContext] = []
        var seen = Set<String>()
        for query in queries {
            for c in MetaContext.matching(query, listing: listing, snapshots: snapshots) where seen.insert(c.name).inserted { found.append(c) }
        }
        return found
    }

    /// IDs for the contexts a selection found: 1, 2, … in order (0 is what listings carry).
    private static func select(_ found: [MetaContext], changes: [String: ChangeList]) -> [SelectedContext] {
        var out: [SelectedContext] = []
        for c in found {
            let id = UInt32(out.count + 1)
            switch c {
            case .allocation: out.append(.allocation(id: id))
            case .dirtyBitmap(let snapshot):
                if let list = changes[snapshot] { out.append(.changes(id: id, snapshot: snapshot, list)) }
            }
        }
        return out
    }

    private func finishMetaContext(_ code: UInt32, _ export: ServedExport, _ answer: MetaAnswer) {
        guard let context else { return }
        let named: [(id: UInt32, name: String)]
        switch answer {
        case .listed(let found): named = found.map { (0, $0.name) }
        case .selected(let chosen): named = chosen.map { ($0.id, $0.name) }
        }
        var reply = context.channel.allocator.buffer(capacity: 64 * (named.count + 1))
        for c in named {
            let name = Array(c.name.utf8)
            reply.writeOptionReply(code, .metaContext, length: 4 + name.count)
            // Listing replies carry ID 0; a selected context gets the ID its chunks use (Spec/export.md §2).
            reply.writeInteger(c.id)
            reply.writeBytes(name)
        }
        reply.writeOptionReply(code, .ack, length: 0)
        if case .selected(let chosen) = answer { selection = (export.name, chosen) }
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    private func enterTransmission(_ export: ServedExport, requestedName: String) {
        self.export = export
        // Contexts chosen for another export do not carry over (Spec/export.md §2).
        if let selection, selection.export == export.name {
            contexts = selection.contexts
        } else {
            contexts = []
        }
        phase = .transmission
        handshakeTimer?.cancel()
        handshakeTimer = nil
    }

    // MARK: requests

    private func handleRequest(_ r: Request) {
        guard let export else { return hardClose() }
        begin(bytes: 0)
        guard let command = NBD.Command(rawValue: r.type) else { return fail(r, .invalid, "unknown command \(r.type)") }
        let allowed: NBD.CommandFlags
        switch command {
        case .read: allowed = structured ? [.fua, .dontFragment] : [.fua]
        case .writeZeroes: allowed = [.fua, .noHole, .fastZero]
        case .blockStatus: allowed = [.fua, .requestOne]
        default: allowed = [.fua]
        }
        let badFlags = !r.flags.isSubset(of: allowed)
        guard let range = r.range else {
            if command == .write { return takePayload(r, refusal: (.invalid, "offset + length overflows")) }
            return fail(r, .invalid, "offset + length overflows")
        }
        let inside = range.upperBound <= export.size
        switch command {
        case .write:
            if badFlags { return takePayload(r, refusal: (.invalid, "flags 0x\(String(r.flags.rawValue, radix: 16)) are not valid on a write")) }
            if !export.writable { return takePayload(r, refusal: (.permission, "export is read-only")) }
            if Int(r.length) > limits.maxPayload { return takePayload(r, refusal: (.invalid, "write of \(r.length) bytes; at most \(limits.maxPayload)")) }
            if !inside { return takePayload(r, refusal: (.noSpace, "write past the end of the export (\(export.size) bytes)")) }
            takePayload(r, refusal: nil)
        case .disconnect:
            disconnecting = true
            end(bytes: 0)
        default:
            if badFlags { return fail(r, .invalid, "flags 0x\(String(r.flags.rawValue, radix: 16)) are not valid on this command") }
            serve(command, r, range, inside: inside, export)
        }
    }

    private func serve(_ command: NBD.Command, _ r: Request, _ range: Range<UInt64>, inside: Bool, _ export: ServedExport) {
        switch command {
        case .read:
            if Int(r.length) > limits.maxPayload { return fail(r, .invalid, "read of \(r.length) bytes; at most \(limits.maxPayload)") }
            if !inside { return fail(r, .invalid, "read past the end of the export (\(export.size) bytes)") }
            startRead(r, range, export)
        case .flush:
            guard export.writable else { return succeed(r) }
            blocking(r, export) { (file) throws(FSError) in try file.flush() }
        case .trim:
            if !export.writable { return fail(r, .permission, "export is read-only") }
            if !inside { return fail(r, .invalid, "trim past the end of the export (\(export.size) bytes)") }
            let fua = r.flags.contains(.fua)
            blocking(r, export) { (file) throws(FSError) in
                try file.discard(at: r.offset, length: UInt64(r.length))
                if fua { try file.flush() }
            }
        case .writeZeroes:
            if !export.writable { return fail(r, .permission, "export is read-only") }
            if !inside { return fail(r, .noSpace, "write past the end of the export (\(export.size) bytes)") }
            let noHole = r.flags.contains(.noHole)
            // Zeroes without a hole are written byte for byte: no faster than a write.
            if noHole && r.flags.contains(.fastZero) { return fail(r, .notSupported, "zeroes without a hole are no faster than a write") }
            let fua = r.flags.contains(.fua)
            blocking(r, export) { (file) throws(FSError) in
                if noHole {
                    try writeZeroes(file, range)
                } else {
                    try file.discard(at: r.offset, length: UInt64(r.length))
                }
                if fua { try file.flush() }
            }
        case .cache:
            if !inside { return fail(r, .invalid, "cache past the end of the export (\(export.size) bytes)") }
            // A hint the server may ignore; reads go to the LUN unbuffered anyway (Spec/export.md §5).
            succeed(r)
        case .blockStatus:
            guard !contexts.isEmpty else { return fail(r, .invalid, "no metadata context was selected (NBD_OPT_SET_META_CONTEXT)") }
            if !inside || r.length == 0 { return fail(r, .invalid, "block status of \(range) outside the export (\(export.size) bytes)") }
            answerBlockStatus(r, range, export)
        case .write, .disconnect:
            break
        }
    }

    /// A request that takes no time and moves no data.
    private func succeed(_ r: Request) {
        guard let context else { return }
        var reply = context.channel.allocator.buffer(capacity: 16)
        reply.writeSimpleReply(cookie: r.cookie, error: 0)
        send([reply], bytes: 0)
    }

    private func fail(_ r: Request, _ error: NBD.Errno, _ message: String) {
        guard let context else { return }
        send([errorReply(r, error, message, allocator: context.channel.allocator)], bytes: 0)
    }

    /// The error reply for `r`: a structured error chunk with a message when structured replies
    /// were negotiated (a read must not get a simple reply then), else a simple reply.
    private func errorReply(_ r: Request, _ error: NBD.Errno, _ message: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        let text = Array(message.utf8.prefix(1024))
        var reply = allocator.buffer(capacity: 32 + text.count)
        if structured {
            reply.writeChunkHeader(cookie: r.cookie, done: true, type: .error, length: 6 + text.count)
            reply.writeInteger(error.rawValue)
            reply.writeInteger(UInt16(text.count))
            reply.writeBytes(text)
        } else {
            reply.writeSimpleReply(cookie: r.cookie, error: error.rawValue)
        }
        return reply
    }

    // MARK: in-flight accounting

    private func begin(bytes: Int) {
        requestsInFlight += 1
        bytesInFlight += bytes
    }

    private func end(bytes: Int) {
        requestsInFlight -= 1
        bytesInFlight -= bytes
        guard phase != .closed, let context else { return }
        if !overBudget {
            if readHeld {
                readHeld = false
                context.read()
            }
            process()
        }
        if disconnecting && requestsInFlight == 0 { hardClose() }
    }

    /// Writes a reply's buffers; the request counts as in flight until the socket took them.
    private func send(_ parts: [ByteBuffer], bytes: Int) {
        guard let context, phase != .closed else { return end(bytes: bytes) }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        for part in parts.dropLast() { context.write(wrapOutboundOut(part), promise: nil) }
        guard let last = parts.last else { return end(bytes: bytes) }
        context.writeAndFlush(wrapOutboundOut(last)).whenComplete { _ in bound.value.end(bytes: bytes) }
    }

    // MARK: writes

    private func takePayload(_ r: Request, refusal: (NBD.Errno, String)?) {
        var sink = Payload(request: r, buffer: nil, refusal: refusal)
        if refusal == nil {
            sink.buffer = IOBuffer(count: max(Int(r.length), 1))
            bytesInFlight += Int(r.length)
        }
        payload = sink
        if r.length == 0 { payload = absorb(&emptyBuffer, into: sink) }
    }

    private var emptyBuffer = ByteBuffer()

    /// Moves what `bytes` holds of the payload into `sink`; the finished write goes on its way
    /// and nil comes back, else the sink with what it still lacks.
    private func absorb(_ bytes: inout ByteBuffer, into sink: Payload) -> Payload? {
        var sink = sink
        let want = Int(sink.request.length) - sink.received
        let n = min(want, bytes.readableBytes)
        if let buffer = sink.buffer, n > 0 {
            _ = bytes.readWithUnsafeReadableBytes { raw in
                UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[sink.received..<(sink.received + n)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                return n
            }
        } else {
            bytes.moveReaderIndex(forwardBy: n)
        }
        sink.received += n
        guard sink.received == Int(sink.request.length) else { return sink }
        let r = sink.request
        if let (error, message) = sink.refusal {
            fail(r, error, message)
        } else if let buffer = sink.buffer, let export {
            let fua = r.flags.contains(.fua)
            let length = Int(r.length)
            blocking(r, export, holding: length) { (file) throws(FSError) in
                try file.write(buffer, at: r.offset, count: length)
                if fua { try file.flush() }
            }
        }
        return nil
    }

    /// Runs a file call on the export's worker queue and answers `r` with its outcome.
    private func blocking(_ r: Request, _ export: ServedExport, holding bytes: Int = 0,
                          _ body: @escaping @Sendable (File) throws(FSError) -> Void) {
        guard let context else { return end(bytes: bytes) }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let file = export.file
        export.worker.async {
            let outcome: (NBD.Errno, String)?
            do throws(FSError) {
                try body(file)
                outcome = nil
            } catch {
                outcome = (nbdErrno(error), error.description)
            }
            bound.eventLoop.execute {
                let connection = bound.value
                guard let context = connection.context else { return connection.end(bytes: bytes) }
                let reply: ByteBuffer
                if let (error, message) = outcome {
                    reply = connection.errorReply(r, error, message, allocator: context.channel.allocator)
                } else {
                    var ok = context.channel.allocator.buffer(capacity: 16)
                    ok.writeSimpleReply(cookie: r.cookie, error: 0)
                    reply = ok
                }
                connection.send([reply], bytes: bytes)
            }
        }
    }

    // MARK: reads

    private func startRead(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport) {
        guard let context else { return }
        let length = Int(r.length)
        if length == 0 {
            var reply = context.channel.allocator.buffer(capacity: 20)
            if structured {
                reply.writeChunkHeader(cookie: r.cookie, done: true, type: .none, length: 0)
            } else {
                reply.writeSimpleReply(cookie: r.cookie, error: 0)
            }
            return send([reply], bytes: 0)
        }
        if let why = export.mapRefusal { return fail(r, .io, why) }
        bytesInFlight += length
        let whole = !structured || r.flags.contains(.dontFragment)
        if let map = export.map, let device = export.device {
            readDirect(r, range, export, map: map, device: device, sector: export.sector, whole: whole, context)
        } else {
            readBlocking(r, range, export, whole: whole, context)
        }
    }

    /// A buffer whose bytes from `header` on hold `dataLength` bytes of data preceded by a
    /// header of `header` bytes, the data read from the LUN at a sector boundary `lead` bytes
    /// before it: `region` is where that read lands (sector-aligned memory, `readLength` long).
    /// The region points into the buffer's storage, which stays put while nothing changes the
    /// buffer; the job keeps the buffer alive until the read completes.
    private static func alignedPart(header: Int, lead: Int, readLength: Int, sector: Int,
                                    allocator: ByteBufferAllocator) -> (ByteBuffer, region: UnsafeMutableRawBufferPointer, headerIndex: Int) {
        let capacity = header + sector + readLength
        var buffer = allocator.buffer(capacity: capacity)
        var region = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var headerIndex = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { raw in
            guard let base = raw.baseAddress else { return 0 }
            let address = UInt(bitPattern: base)
            let earliest = address + UInt(max(header - lead, 0))
            let aligned = (earliest + UInt(sector) - 1) / UInt(sector) * UInt(sector)
            let start = Int(aligned - address)
            region = UnsafeMutableRawBufferPointer(rebasing: raw[start..<(start + readLength)])
            headerIndex = start + lead - header
            return 0
        }
        return (buffer, region, headerIndex)
    }

    private func readDirect(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport, map: ExtentMap, device: BlockDevice, sector: UInt64,
                            whole: Bool, _ context: ChannelHandlerContext) {
        let allocator = context.channel.allocator
        let s = Int(sector)
        var pieces: [(range: Range<UInt64>, device: UInt64?)] = []
        _ = map.visit(range) { piece, at, _ in
            pieces.append((piece, at))
            return true
        }
        let job = ReadJob(request: r, parts: [], bytes: Int(r.length))
        var reads: [(part: Int, region: UnsafeMutableRawBufferPointer, at: UInt64)] = []
        if whole {
            // One buffer for the whole range: holes zero-filled in it, data read into it.
            let lead = Int(range.lowerBound % sector)
            let span = (lead + Int(r.length) + s - 1) / s * s
            let header = structured ? 28 : 16
            let (buffer, region, headerIndex) = Self.alignedPart(header: header, lead: lead, readLength: span, sector: s, allocator: allocator)
            job.parts = [buffer]
            job.finish = [(0, headerIndex, Int(r.length), structured ? NBD.ChunkType.offsetData : nil, r.offset)]
            let alignedStart = range.lowerBound - UInt64(lead)
            for p in pieces {
                let at = Int(p.range.lowerBound - alignedStart)
                if let d = p.device {
                    let within = Int(d % sector)
                    let length = (within + p.range.count + s - 1) / s * s
                    // A file's blocks sit at the same offset within a sector on the LUN as in
                    // the file; a map that says otherwise is read the slow way.
                    guard at >= within, (at - within) % s == 0, at - within + length <= span else {
                        return readBlocking(r, range, export, whole: whole, context)
                    }
                    reads.append((0, UnsafeMutableRawBufferPointer(rebasing: region[(at - within)..<(at - within + length)]), d - UInt64(within)))
                } else {
                    UnsafeMutableRawBufferPointer(rebasing: region[at..<(at + p.range.count)]).initializeMemory(as: UInt8.self, repeating: 0)
                }
            }
        } else {
            for p in pieces {
                if let d = p.device {
                    let within = Int(d % sector)
                    let length = (within + p.range.count + s - 1) / s * s
                    let (buffer, region, headerIndex) = Self.alignedPart(header: 28, lead: within, readLength: length, sector: s, allocator: allocator)
                    job.finish.append((job.parts.count, headerIndex, p.range.count, .offsetData, p.range.lowerBound))
                    reads.append((job.parts.count, region, d - UInt64(within)))
                    job.parts.append(buffer)
                } else {
                    var hole = allocator.buffer(capacity: 32)
                    hole.writeChunkHeader(cookie: r.cookie, done: false, type: .offsetHole, length: 12)
                    hole.writeInteger(p.range.lowerBound)
                    hole.writeInteger(UInt32(p.range.count))
                    job.parts.append(hole)
                }
            }
        }
        let id = nextJob
        nextJob &+= 1
        jobs[id] = job
        job.pending = reads.count
        if reads.isEmpty { return finishRead(id) }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        for read in reads {
            device.read(into: read.region, at: read.at) { result in
                let failure: String? = switch result {
                case .success: nil
                case .failure(let error): "\(error)"
                }
                bound.eventLoop.execute { bound.value.pieceDone(id, failure: failure) }
            }
        }
    }

    private func pieceDone(_ id: UInt64, failure: String?) {
        guard let job = jobs[id] else { return }
        job.pending -= 1
        if let failure, job.failure == nil { job.failure = failure }
        if job.pending == 0 { finishRead(id) }
    }

    /// Puts the headers in front of the data that arrived and sends the reply.
    private func finishRead(_ id: UInt64) {
        guard let job = jobs.removeValue(forKey: id) else { return }
        let r = job.request
        guard let context, phase != .closed else { return end(bytes: job.bytes) }
        if let failure = job.failure {
            // Simple replies can carry an error but no message; structured ones carry both.
            return send([errorReply(r, .io, "read failed: \(failure)", allocator: context.channel.allocator)], bytes: job.bytes)
        }
        // The job lets go of its buffers, and each is taken out of the array while it is
        // changed, so that no change copies a buffer that is still shared.
        var parts = job.parts
        job.parts = []
        for f in job.finish {
            var part = parts[f.part]
            parts[f.part] = ByteBuffer()
            part.moveWriterIndex(to: f.header)
            if let type = f.type {
                part.writeChunkHeader(cookie: r.cookie, done: false, type: type, length: 8 + f.dataLength)
                part.writeInteger(f.offset)
            } else {
                part.writeSimpleReply(cookie: r.cookie, error: 0)
            }
            part.moveReaderIndex(to: f.header)
            part.moveWriterIndex(forwardBy: f.dataLength)
            parts[f.part] = part
        }
        if structured, var last = parts.popLast() {
            // The final chunk says so (flags are the 2 bytes after the magic).
            last.setInteger(NBD.replyFlagDone, at: last.readerIndex + 4)
            parts.append(last)
        }
        send(parts, bytes: job.bytes)
    }

    /// Reads through the file API on the worker: writable exports, and files without a map.
    private func readBlocking(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport, whole: Bool, _ context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let structured = self.structured
        let allocator = context.channel.allocator
        export.worker.async {
            let built = Result(catching: { () throws(FSError) -> [ByteBuffer] in
                try buildBlockingRead(r, range, export, whole: whole, structured: structured, allocator: allocator)
            })
            bound.eventLoop.execute {
                let connection = bound.value
                switch built {
                case .success(let parts): connection.send(parts, bytes: Int(r.length))
                case .failure(let error):
                    connection.send([connection.errorReply(r, nbdErrno(error), "read failed: \(error)", allocator: allocator)], bytes: Int(r.length))
                }
            }
        }
    }

    // MARK: block status

    /// One chunk per selected context, in one reply. The descriptors are shared out among the
    /// contexts so that a reply stays within `maxDescriptors` however many are selected.
    private func answerBlockStatus(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport) {
        guard let context else { return }
        let contexts = self.contexts
        let limit = r.flags.contains(.requestOne) ? 1 : max(1, limits.maxDescriptors / contexts.count)
        let allocator = context.channel.allocator
        if let why = export.mapRefusal { return fail(r, .io, why) }
        let readsFile = export.map == nil && contexts.contains { if case .allocation = $0 { true } else { false } }
        if !readsFile {
            do throws(FSError) {
                let chunks = try blockStatusChunks(r, range, export, contexts, limit: limit, allocator: allocator)
                sendHeld(chunks)
            } catch {
                fail(r, nbdErrno(error), "\(error)")
            }
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        export.worker.async {
            let built = Result(catching: { () throws(FSError) -> [ByteBuffer] in
                try blockStatusChunks(r, range, export, contexts, limit: limit, allocator: allocator)
            })
            bound.eventLoop.execute {
                let connection = bound.value
                switch built {
                case .success(let chunks): connection.sendHeld(chunks)
                case .failure(let error): connection.send([connection.errorReply(r, nbdErrno(error), "\(error)", allocator: allocator)], bytes: 0)
                }
            }
        }
    }

    /// Sends a reply built here, its bytes counted against the connection's budget until the
    /// socket takes them (a block status reply can be half a megabyte).
    private func sendHeld(_ parts: [ByteBuffer]) {
        let bytes = parts.reduce(0) { $0 + $1.readableBytes }
        bytesInFlight += bytes
        send(parts, bytes: bytes)
    }
}

// MARK: work done off the event loop

/// The block status chunks for `range`, one per context, the last flagged done.
private func blockStatusChunks(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport, _ contexts: [SelectedContext], limit: Int,
                               allocator: ByteBufferAllocator) throws(FSError) -> [ByteBuffer] {
    var chunks: [ByteBuffer] = []
    for (i, c) in contexts.enumerated() {
        let descriptors: [(length: UInt32, flags: UInt32)]
        switch c {
        case .allocation: descriptors = try allocationDescriptors(range, export, limit: limit)
        case .changes(_, _, let list): descriptors = list.descriptors(range, limit: limit)
        }
        var chunk = allocator.buffer(capacity: 24 + 8 * descriptors.count)
        chunk.writeChunkHeader(cookie: r.cookie, done: i == contexts.count - 1, type: .blockStatus, length: 4 + 8 * descriptors.count)
        chunk.writeInteger(c.id)
        for d in descriptors {
            chunk.writeInteger(d.length)
            chunk.writeInteger(d.flags)
        }
        chunks.append(chunk)
    }
    return chunks
}

/// `base:allocation` for `range`: holes read as zeros (HOLE|ZERO), data is data (0).
private func allocationDescriptors(_ range: Range<UInt64>, _ export: ServedExport, limit: Int) throws(FSError) -> [(length: UInt32, flags: UInt32)] {
    var descriptors: [(length: UInt32, flags: UInt32)] = []
    for piece in try export.pieces(range) {
        let flags = piece.data ? 0 : NBD.stateHole | NBD.stateZero
        if let last = descriptors.last, last.flags == flags, UInt64(last.length) + UInt64(piece.range.count) <= UInt64(UInt32.max) {
            descriptors[descriptors.count - 1].length += UInt32(piece.range.count)
        } else {
            if descriptors.count == limit { break }
            // A piece is within one request, whose length is 32 bits.
            descriptors.append((UInt32(piece.range.count), flags))
        }
    }
    return descriptors
}

/// A read through the file API, holes still sent as holes when replies are structured.
private func buildBlockingRead(_ r: Request, _ range: Range<UInt64>, _ export: ServedExport, whole: Bool, structured: Bool,
                               allocator: ByteBufferAllocator) throws(FSError) -> [ByteBuffer] {
    let file = export.file
    func readInto(_ buffer: inout ByteBuffer, _ piece: Range<UInt64>) throws(FSError) {
        let count = piece.count
        var failure: FSError?
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            let target = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
            do throws(FSError) {
                let n = try file.read(into: target, at: piece.lowerBound)
                // Short only if the file shrank under a writable export: the rest reads as zeros.
                if n < count { UnsafeMutableRawBufferPointer(rebasing: target[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
            } catch {
                failure = error
            }
            return count
        }
        if let failure { throw failure }
    }
    if whole {
        var buffer = allocator.buffer(capacity: 28 + range.count)
        if structured {
            buffer.writeChunkHeader(cookie: r.cookie, done: true, type: .offsetData, length: 8 + range.count)
            buffer.writeInteger(r.offset)
        } else {
            buffer.writeSimpleReply(cookie: r.cookie, error: 0)
        }
        try readInto(&buffer, range)
        return [buffer]
    }
    var parts: [ByteBuffer] = []
    for piece in try export.pieces(range) {
        if piece.data {
            var buffer = allocator.buffer(capacity: 28 + piece.range.count)
            buffer.writeChunkHeader(cookie: r.cookie, done: false, type: .offsetData, length: 8 + piece.range.count)
            buffer.writeInteger(piece.range.lowerBound)
            try readInto(&buffer, piece.range)
            parts.append(buffer)
        } else {
            var hole = allocator.buffer(capacity: 32)
            hole.writeChunkHeader(cookie: r.cookie, done: false, type: .offsetHole, length: 12)
            hole.writeInteger(piece.range.lowerBound)
            hole.writeInteger(UInt32(piece.range.count))
            parts.append(hole)
        }
    }
    if var last = parts.popLast() {
        last.setInteger(NBD.replyFlagDone, at: last.readerIndex + 4)
        parts.append(last)
    }
    return parts
}

/// Zeros written byte for byte (`NBD_CMD_FLAG_NO_HOLE`): the range stays allocated.
private func writeZeroes(_ file: File, _ range: Range<UInt64>) throws(FSError) {
    let chunk = 1 << 20
    let zeros = IOBuffer(count: chunk)
    zeros.fill(0)
    var at = range.lowerBound
    while at < range.upperBound {
        let n = Int(min(UInt64(chunk), range.upperBound - at))
        try file.write(zeros, at: at, count: n)
        at += UInt64(n)
    }
}

/// The NBD error value for a file-system failure (`Spec/export.md` §6).
func nbdErrno(_ error: FSError) -> NBD.Errno {
    switch error.kind {
    case .noSpace, .fileTooLarge: .noSpace
    case .readOnly: .permission
    case .invalidArgument: .invalid
    default: .io
    }
}
