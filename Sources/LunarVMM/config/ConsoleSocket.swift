import Glibc
import Synchronization

/// A console on a Unix socket the VMM listens on (`--console socket:PATH`): one client at a
/// time reads the guest's output and types its input (`socat -,raw,echo=0 UNIX-CONNECT:PATH`).
///
/// A client that attaches first gets the last `backlogSize` bytes the guest printed, so a boot
/// log is not lost to a late attach. Output a client cannot take at once is dropped, as a UART
/// line without flow control drops it: a slow or stopped client never stalls a vCPU. The
/// socket file is made owner-only (a console is a root shell, often) and removed at close.
final class ConsoleSocket: Sendable {
    static let backlogSize = 16 << 10

    let path: String
    let listenFD: Int32

    private struct State {
        var client: Int32 = -1
        /// The client stopped taking bytes (it went away): nothing more is sent until the
        /// watcher has dropped it.
        var clientFailed = false
        var backlog = [UInt8](repeating: 0, count: ConsoleSocket.backlogSize)
        var printed = 0
        var closed = false
    }
    private let state = Mutex(State())

    init(path: String) throws(VMConfigError) {
        func failure(_ reason: String) -> VMConfigError { VMConfigError(.hostFile(path: path, reason: reason)) }
        guard var address = sockaddr_un(path: path) else { throw failure("a console socket path must be 1 to 107 bytes long") }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw failure("exists and is not a socket; choose another path") }
            // A socket file stays behind when its VMM dies; one that answers is in use.
            if Self.answers(path) { throw failure("another process listens on it (is the VM running already?)") }
            unlink(path)
        }
        let fd = Self.streamSocket()
        guard fd >= 0 else { throw failure("socket: \(String(cString: strerror(errno)))") }
        let bound = address.withSocketAddress { bind(fd, $0, $1) }
        guard bound == 0, chmod(path, 0o600) == 0, listen(fd, 4) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            if bound == 0 { unlink(path) }
            throw failure(reason)
        }
        self.path = path
        listenFD = fd
    }

    deinit { close() }

    private static func streamSocket() -> Int32 {
        socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// Whether a process listens on the socket at `path`.
    private static func answers(_ path: String) -> Bool {
        let fd = streamSocket()
        guard fd >= 0, var address = sockaddr_un(path: path) else { return false }
        defer { Glibc.close(fd) }
        return address.withSocketAddress { connect(fd, $0, $1) } == 0
    }

    /// One byte of guest output (from a vCPU thread): into the backlog, and to the client.
    func emit(_ byte: UInt8) {
        state.withLock { s in
            s.backlog[s.printed % Self.backlogSize] = byte
            s.printed += 1
            guard s.client >= 0, !s.clientFailed else { return }
            var b = byte
            if send(s.client, &b, 1, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) < 0, errno != EAGAIN, errno != EINTR {
                s.clientFailed = true
            }
        }
    }

    /// The connected client, or -1.
    var client: Int32 { state.withLock { $0.client } }

    /// Takes a waiting connection (the watcher saw the listening socket readable). A second
    /// client is told the console is taken and let go.
    func accept() {
        // (accept4 is hidden from Swift; this process never execs, so FD_CLOEXEC may come late.)
        let fd = Glibc.accept(listenFD, nil, nil)
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let taken = state.withLock { s -> Bool in
            guard s.client < 0, !s.closed else { return true }
            s.client = fd
            s.clientFailed = false
            // What the guest printed before: oldest first, as much as the socket takes now.
            let start = max(0, s.printed - Self.backlogSize)
            var replay = [UInt8]()
            replay.reserveCapacity(s.printed - start)
            for i in start..<s.printed { replay.append(s.backlog[i % Self.backlogSize]) }
            _ = replay.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            return false
        }
        if taken {
            let message = "lunar: this VM's console is attached elsewhere already\r\n"
            _ = message.withCString { send(fd, $0, strlen($0), Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            Glibc.close(fd)
        }
    }

    /// The client hung up (or failed): the next one may attach.
    func dropClient() {
        let fd = state.withLock { s -> Int32 in
            defer { s.client = -1 }
            return s.client
        }
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Stops listening, lets the client go and removes the socket file.
    func close() {
        let fds = state.withLock { s -> [Int32] in
            guard !s.closed else { return [] }
            s.closed = true
            defer { s.client = -1 }
            return [s.client, listenFD]
        }
        guard !fds.isEmpty else { return }
        for fd in fds where fd >= 0 { Glibc.close(fd) }
        unlink(path)
    }
}
