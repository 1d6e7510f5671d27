import Glibc
import LunarFS
import LunarIO
import Synchronization

/// Where a running VM's `lunar-vmm` takes requests from `lunar` on the same host: an owner-only
/// Unix socket, one JSON object per line each way (`Spec/vm-control.md`).
///
/// Its path follows from the volume and the VM's name alone, so any `lunar` command on the host
/// finds a running VM's socket without asking anyone: `RUN/VOLUME/NAME.sock`, RUN being
/// `$LUNAR_RUN_DIR`, else `/run/lunar` for root, else `$XDG_RUNTIME_DIR/lunar`, else
/// `/tmp/lunar-UID`; VOLUME the first 8 bytes of the volume's UUID in hex. A path longer than a
/// socket address takes (107 bytes) uses the CRC32C of the name instead of the name.
public enum VMControl {
    public static func socketPath(volume: VolumeID, vm name: String) -> String {
        let folder = runDirectory() + "/" + volume.bytes.prefix(8).map { hex($0) }.joined()
        let named = folder + "/" + name + ".sock"
        if named.utf8.count <= 107 { return named }
        let crc = CRC32C.checksum(Array(name.utf8))
        return folder + "/" + String(crc, radix: 16) + ".sock"
    }

    static func runDirectory() -> String {
        if let dir = environment("LUNAR_RUN_DIR"), !dir.isEmpty { return dir }
        if getuid() == 0 { return "/run/lunar" }
        if let dir = environment("XDG_RUNTIME_DIR"), dir.hasPrefix("/") { return dir + "/lunar" }
        return "/tmp/lunar-\(getuid())"
    }

    private static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }

    /// Sends one request to the VM's socket and returns the answer; nil when no VMM listens
    /// there (the VM does not run on this host). `timeout` bounds the wait for the answer.
    public static func request(_ message: JSONValue, path: String, timeout: Double = 30) throws(VMControlError) -> JSONValue? {
        guard var address = sockaddr_un(path: path) else { throw VMControlError("socket path \(path) is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMControlError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard address.withSocketAddress({ connect(fd, $0, $1) }) == 0 else {
            if errno == ENOENT || errno == ECONNREFUSED { return nil }
            throw VMControlError("cannot reach the VMM at \(path): \(String(cString: strerror(errno)))")
        }
        setTimeout(fd, timeout)
        let line = Array((message.compact + "\n").utf8)
        guard sendAll(fd, line) else { throw VMControlError("the VMM at \(path) went away: \(String(cString: strerror(errno)))") }
        var reader = LineReader(fd: fd)
        switch reader.next() {
        case .line(let bytes):
            do throws(JSONError) { return try JSONValue(parsing: bytes) } catch { throw VMControlError("the VMM answered something that is not JSON (\(error))") }
        case .tooLong: throw VMControlError("the VMM's answer is longer than \(LineReader.maxLine) bytes")
        case .end: throw VMControlError("the VMM closed the connection without an answer (did the VM stop?)")
        case .failed(let e): throw VMControlError(e == EAGAIN ? "the VMM did not answer within \(Int(timeout)) s" : "reading the VMM's answer: \(String(cString: strerror(e)))")
        }
    }

    static func setTimeout(_ fd: Int32, _ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }
}

public struct VMControlError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Lines off a socket, each at most `maxLine` bytes (a request or answer is one small object).
struct LineReader {
    static let maxLine = 64 << 10
    enum Next { case line([UInt8]), tooLong, end, failed(Int32) }

    let fd: Int32
    private var buffer: [UInt8] = []

    init(fd: Int32) { self.fd = fd }

    mutating func next() -> Next {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return .line(line)
            }
            guard buffer.count <= Self.maxLine else { return .tooLong }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return .failed(errno) }
            if n == 0 { return .end }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

/// The VMM's side: listens on the VM's control socket and answers each request line with
/// `handle`'s object, on a thread of its own, one connection at a time (requests are rare and
/// short: a snapshot, a status). The socket file is made owner-only and removed at close.
final class ControlSocket: Sendable {
    let path: String
    private let listenFD: Int32
    private let closed = Atomic<Bool>(false)

    /// Binds the socket at `path`, making its folder (owner-only) as needed. A stale socket
    /// file left by a VMM that died is replaced; one that answers means the VM runs already.
    init(path: String) throws(VMConfigError) {
        func failure(_ reason: String) -> VMConfigError { VMConfigError(.hostFile(path: path, reason: reason)) }
        guard var address = sockaddr_un(path: path) else { throw failure("a control socket path must be 1 to 107 bytes long") }
        try Self.makeFolders(of: path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw failure("exists and is not a socket; remove it") }
            if (try? VMControl.request(.object(["op": .string("status")]), path: path, timeout: 2)) != nil {
                throw failure("another lunar-vmm answers on it: the VM runs on this host already")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw failure("socket: \(String(cString: strerror(errno)))") }
        // Owner-only from the start: no moment where another user could connect.
        let oldMask = umask(0o177)
        let bound = address.withSocketAddress { bind(fd, $0, $1) }
        umask(oldMask)
        guard bound == 0, listen(fd, 4) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            if bound == 0 { unlink(path) }
            throw failure(reason)
        }
        self.path = path
        listenFD = fd
    }

    private static func makeFolders(of path: String) throws(VMConfigError) {
        var folder = ""
        for part in path.split(separator: "/").dropLast() {
            folder += "/" + part
            if mkdir(folder, 0o700) != 0 && errno != EEXIST {
                throw VMConfigError(.hostFile(path: folder, reason: String(cString: strerror(errno))))
            }
        }
    }

    /// Serves requests until `close()`: each connection's lines in turn, `handle` answering
    /// each request object (a line that is not a JSON object gets an error answer).
    func serve(_ handle: @escaping @Sendable (JSONValue) -> JSONValue) throws(VMMError) {
        let fd = listenFD
        let started = startThread { [self] in
            while !closed.load(ordering: .acquiring) {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    return
                }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                // A client that stops reading or writing cannot hold the socket for long.
                VMControl.setTimeout(client, 60)
                var reader = LineReader(fd: client)
                lines: while true {
                    let answer: JSONValue
                    switch reader.next() {
                    case .line(let bytes):
                        if let request = try? JSONValue(parsing: bytes), case .object = request {
                            answer = handle(request)
                        } else {
                            answer = ControlAnswer.failure("a request is one JSON object on one line, such as {\"op\":\"status\"}")
                        }
                    case .tooLong:
                        _ = VMControl.sendAll(client, Array((ControlAnswer.failure("request longer than \(LineReader.maxLine) bytes").compact + "\n").utf8))
                        break lines
                    case .end, .failed:
                        break lines
                    }
                    guard VMControl.sendAll(client, Array((answer.compact + "\n").utf8)) else { break lines }
                }
                Glibc.close(client)
            }
        }
        switch started {
        case .success(let thread): pthread_detach(thread)
        case .failure(let e): throw VMMError.system("pthread_create (control socket)", e.code)
        }
    }

    /// Stops taking connections and removes the socket file.
    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        unlink(path)
        // Wakes the thread out of accept.
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
    }

    deinit { close() }
}

/// The answers' common shape: `{"ok": true, …}` or `{"ok": false, "error": "…"}`.
public enum ControlAnswer {
    public static func success(_ fields: [String: JSONValue] = [:]) -> JSONValue {
        var object = fields
        object["ok"] = .bool(true)
        return .object(object)
    }

    public static func failure(_ why: String) -> JSONValue { .object(["ok": .bool(false), "error": .string(why)]) }
}
