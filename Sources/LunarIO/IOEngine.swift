import CLunar
import Glibc

/// Which kernel interface moves the bytes.
public enum IOEngineKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// io_uring: batched submission, registered file and buffers, one syscall per batch.
    case uring = "io_uring"
    /// Linux native AIO (io_submit/io_getevents), for kernels or sandboxes with io_uring off.
    case libaio
    /// pread/pwrite on the calling thread, one request at a time: the last resort.
    case sync
    /// libiscsi's asynchronous API on a session of the queue's own: an iSCSI LUN's queue
    /// (`ISCSILun.makeQueue`). Not an engine a local device can be opened with.
    case iscsi

    /// The engines a local image file or block device can use.
    public static var allCases: [IOEngineKind] { [.uring, .libaio, .sync] }

    public var description: String { rawValue }

    /// Accepts the engine names a user types: `io_uring`/`uring`, `libaio`/`aio`, `sync`.
    public init?(userName: String) {
        switch userName.lowercased() {
        case "io_uring", "uring", "io-uring": self = .uring
        case "libaio", "aio", "native": self = .libaio
        case "sync", "psync", "pread": self = .sync
        default: return nil
        }
    }

    /// The engine LunarIO picks when the caller names none.
    public static var automatic: IOEngineKind { EngineProbe.shared.automatic }

    /// Why io_uring is unusable on this host, or nil when it works.
    public static var uringUnavailableReason: String? { EngineProbe.shared.uringUnavailableReason }

    /// Choice rule, kept pure so it can be tested: io_uring unless the sysctl forbids it
    /// (`io_uring_disabled` = 2) or creating a ring fails; then libaio unless `io_setup` fails.
    public static func choose(uringDisabledSysctl: Int?, uringSetupErrno: Int32?, aioSetupErrno: Int32?) -> IOEngineKind {
        if uringDisabledSysctl != 2 && uringSetupErrno == nil { return .uring }
        if aioSetupErrno == nil { return .libaio }
        return .sync
    }
}

/// Probes the host once per process.
struct EngineProbe: Sendable {
    static let shared = EngineProbe()

    let automatic: IOEngineKind
    let uringUnavailableReason: String?

    init() {
        let sysctl = EngineProbe.readSysctl("/proc/sys/kernel/io_uring_disabled")
        var uringErrno: Int32?
        if sysctl != 2 {
            var ring = io_uring()
            let r = lunar_uring_init(4, &ring, 0)
            if r < 0 { uringErrno = -r } else { lunar_uring_exit(&ring) }
        }
        // libaio only matters where io_uring does not work, and probing it costs every process
        // ~30 ms: io_destroy waits for an RCU grace period.
        var aioErrno: Int32?
        if sysctl == 2 || uringErrno != nil {
            var ctx: io_context_t?
            let r = io_setup(4, &ctx)
            if r < 0 { aioErrno = -r } else { io_destroy(ctx) }
        }
        automatic = IOEngineKind.choose(uringDisabledSysctl: sysctl, uringSetupErrno: uringErrno, aioSetupErrno: aioErrno)
        if sysctl == 2 {
            uringUnavailableReason = "kernel.io_uring_disabled = 2"
        } else if let uringErrno {
            uringUnavailableReason = "io_uring_setup failed: \(String(cString: strerror(uringErrno)))"
        } else {
            uringUnavailableReason = nil
        }
    }

    static func readSysctl(_ path: String) -> Int? {
        let fd = lunar_open(path, O_RDONLY, 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return Int(String(decoding: bytes[..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
    }
}

/// One request as an engine sees it: already validated by `IOQueue`.
enum EngineRequest {
    case read(UnsafeMutableRawPointer, Int, UInt64)
    case write(UnsafeRawPointer, Int, UInt64)
    case flush
    case discard(UInt64, UInt64)
    /// Completes when `fd` becomes readable: how an async reactor sleeps on a doorbell.
    case pollReadable(Int32)
}

/// The contract every engine meets. Single-threaded: one owner thread drives it.
protocol IOEngine: AnyObject {
    var kind: IOEngineKind { get }
    /// Queues one request; returns 0 or -errno. Not yet visible to the kernel.
    func prepare(_ request: EngineRequest, userData: UInt64) -> Int32
    /// Hands every prepared request to the kernel; returns how many, or -errno.
    func submit() -> Int32
    /// Submits what is prepared, waits until at least `minimum` completions were handled, and
    /// calls `handler(userData, result)` for each (result: bytes or -errno). Returns the count
    /// handled or -errno. The handler may prepare new requests.
    func reap(minimum: Int, _ handler: (UInt64, Int64) -> Void) -> Int
    /// Pins buffers for zero-lookup DMA; returns false where the engine has no such notion.
    func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) -> Bool
    /// The error of a request that completed with a negative result, in the engine's own
    /// words (a SCSI status and sense data), handed out once; nil leaves it to the errno.
    func takeError(userData: UInt64) -> IOError?
}

extension IOEngine {
    func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) -> Bool { false }
    func takeError(userData: UInt64) -> IOError? { nil }
}

/// An errno value carried through `Result`.
public struct SystemErrno: Error, Sendable {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
}

func makeEngine(_ kind: IOEngineKind, fd: Int32, depth: Int) -> Result<any IOEngine, SystemErrno> {
    switch kind {
    case .uring: UringEngine.make(fd: fd, depth: depth)
    case .libaio: AIOEngine.make(fd: fd, depth: depth)
    case .sync: .success(SyncEngine(fd: fd))
    case .iscsi: .failure(SystemErrno(EINVAL))  // only an ISCSILun makes one, on a session
    }
}

/// pread/pwrite until done, retrying EINTR and partial transfers. Bytes moved, or -errno.
func transferFully(fd: Int32, isWrite: Bool, buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64) -> Int64 {
    var done = 0
    while done < length {
        let n = isWrite
            ? pwrite(fd, buffer + done, length - done, off_t(offset) + off_t(done))
            : pread(fd, buffer + done, length - done, off_t(offset) + off_t(done))
        if n < 0 {
            if errno == EINTR { continue }
            return -Int64(errno)
        }
        if n == 0 { break }
        done += n
    }
    return Int64(done)
}

/// The synchronous effect of a flush or discard, for engines without an async form of it.
func performBlocking(_ request: EngineRequest, fd: Int32) -> Int64 {
    switch request {
    case .read(let p, let n, let off): return transferFully(fd: fd, isWrite: false, buffer: p, length: n, offset: off)
    case .write(let p, let n, let off):
        return transferFully(fd: fd, isWrite: true, buffer: UnsafeMutableRawPointer(mutating: p), length: n, offset: off)
    case .flush: return fdatasync(fd) == 0 ? 0 : -Int64(errno)
    case .discard(let off, let len): return Int64(lunar_punch_hole(fd, off, len))
    case .pollReadable(let wakeFD):
        var pfd = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&pfd, 1, -1)
            if r >= 0 { return Int64(r) }
            if errno != EINTR { return -Int64(errno) }
        }
    }
}
