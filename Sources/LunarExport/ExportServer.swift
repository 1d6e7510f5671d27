import Glibc
import LunarFS
import NIOCore
import NIOPosix
import Synchronization

/// The NBD server: exports (files opened by `ServedExport.open`) served on one listening
/// socket to any number of clients (`Spec/export.md`).
public final class ExportServer: Sendable {
    /// Where the server listens.
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        /// `ADDR:PORT` (`[::1]:10809` for IPv6), or a Unix socket's path.
        public static func parse(listen text: String) throws(ExportError) -> Endpoint {
            var host = Substring(text)
            var portText: Substring = "10809"
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]") else { throw ExportError(.invalidAddress("'\(text)': an IPv6 address goes in brackets, e.g. [::1]:10809")) }
                host = text[text.index(after: text.startIndex)..<close]
                let rest = text[text.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.hasPrefix(":") else { throw ExportError(.invalidAddress("'\(text)': write [ADDR]:PORT")) }
                    portText = rest.dropFirst()
                }
            } else if let colon = text.lastIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            }
            guard !host.isEmpty else { throw ExportError(.invalidAddress("'\(text)': give an address, e.g. 127.0.0.1:10809")) }
            guard let port = Int(portText), (0...65535).contains(port) else {
                throw ExportError(.invalidAddress("'\(text)': the port must be 0 to 65535"))
            }
            return .tcp(host: String(host), port: port)
        }

        /// Whether only this machine can connect: a Unix socket or a loopback address.
        public var isLocal: Bool {
            switch self {
            case .unix: return true
            case .tcp(let host, _):
                if host == "localhost" || host == "::1" { return true }
                let parts = host.split(separator: ".", omittingEmptySubsequences: false)
                return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
            }
        }

        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): path
            }
        }
    }

    public let exports: [ServedExport]
    /// Whether clients must start TLS.
    public let tls: Bool
    /// Where clients connect (the real port when 0 was asked for).
    public let endpoint: Endpoint
    private let group: MultiThreadedEventLoopGroup
    private let listener: Channel
    private let connections: Connections

    /// Children accepted and still open, so that `stop` can end them.
    private final class Connections: Sendable {
        let open = Mutex<[ObjectIdentifier: Channel]>([:])
    }

    private init(exports: [ServedExport], endpoint: Endpoint, tls: Bool, group: MultiThreadedEventLoopGroup, listener: Channel, connections: Connections) {
        self.exports = exports
        self.tls = tls
        self.endpoint = endpoint
        self.group = group
        self.listener = listener
        self.connections = connections
    }

    /// Listens on `endpoint` and serves `exports` until `stop`. A Unix socket is made owner-only.
    /// With `tls`, every client must start TLS before anything else.
    public static func start(exports: [ServedExport], endpoint: Endpoint, limits: ExportLimits = ExportLimits(),
                             tls: ExportTLS? = nil) async throws(ExportError) -> ExportServer {
        guard !exports.isEmpty else { throw ExportError(.noExports) }
        var seen = Set<ExportName>()
        for e in exports where !seen.insert(e.name).inserted { throw ExportError(.duplicate(e.name.description)) }
        let catalog = ExportCatalog(exports)
        let connections = Connections()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let isTCP: Bool
        if case .tcp = endpoint { isTCP = true } else { isTCP = false }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                let admitted = connections.open.withLock { open -> Bool in
                    guard open.count < limits.maxConnections else { return false }
                    open[id] = channel
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in _ = connections.open.withLock { $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    if isTCP { try channel.syncOptions?.setOption(.socketOption(.tcp_nodelay), value: 1) }
                    try channel.pipeline.syncOperations.addHandler(NBDConnection(catalog: catalog, limits: limits, tls: tls))
                }
            }
        do {
            let listener: Channel
            let bound: Endpoint
            switch endpoint {
            case .tcp(let host, let port):
                listener = try await bootstrap.bind(host: host, port: port).get()
                bound = .tcp(host: host, port: listener.localAddress?.port ?? port)
            case .unix(let path):
                listener = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
                // Whoever can connect can read every export: the owner only.
                chmod(path, 0o600)
                bound = endpoint
            }
            return ExportServer(exports: exports, endpoint: bound, tls: tls != nil, group: group, listener: listener, connections: connections)
        } catch {
            try? await group.shutdownGracefully()
            throw ExportError(.bind("cannot listen on \(endpoint): \(error)"))
        }
    }

    /// Completes when the listening socket closes.
    public func waitUntilStopped() async {
        try? await listener.closeFuture.get()
    }

    /// Stops listening, ends every connection, and releases the exports' file locks.
    public func stop() async {
        listener.close(promise: nil)
        try? await listener.closeFuture.get()
        let open = connections.open.withLock { Array($0.values) }
        for channel in open {
            channel.close(promise: nil)
            try? await channel.closeFuture.get()
        }
        try? await group.shutdownGracefully()
        if case .unix(let path) = endpoint { unlink(path) }
        for e in exports { try? e.close() }
    }

    /// NBD URIs clients can use, one per export (`nbd://HOST:PORT/NAME`, `nbd+unix:///NAME?socket=PATH`;
    /// `nbds` with TLS).
    public func uri(for export: ServedExport) -> String {
        // A URI's path is the export name without its leading slash, which the server adds back.
        let name = export.name.description.dropFirst()
        switch endpoint {
        case .tcp(let host, let port):
            return "nbd\(tls ? "s" : "")://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(name)"
        case .unix(let path):
            return "nbd\(tls ? "s" : "")+unix:///\(name)?socket=\(path)"
        }
    }
}
