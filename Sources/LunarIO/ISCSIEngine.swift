import CLunar
import Glibc

/// The engine behind an iSCSI LUN's `IOQueue` (`ISCSILun.makeQueue`): a libiscsi session of
/// its own, driven with the asynchronous API. A read or write becomes READ(16)s or WRITE(16)s
/// of at most `ISCSILun.maxTransfer` bytes each, moving data straight between the caller's
/// buffer and the socket; a flush is SYNCHRONIZE CACHE(16). Every command is on the wire at
/// once (libiscsi holds back what the target's command window does not take yet).
///
/// `reap` polls the session's socket together with the armed doorbell, so one wait covers
/// completions and wake-ups, as the io_uring engine's poll request does. Outcomes are those
/// of the blocking calls: UNIT ATTENTION, BUSY and the like are re-issued a few times, and
/// RESERVATION CONFLICT (another host's compare-and-write holds the LUN) for up to
/// `reservationWait` seconds, later rather than at once (`SCSIRetry`); anything else fails the
/// request with the target's words (`takeError`). A lost connection fails everything in flight,
/// and from then on `submit` and `reap` fail (-ENOTCONN): the owner drops the queue.
final class ISCSIEngine: IOEngine {
    var kind: IOEngineKind { .iscsi }

    private let queue: OpaquePointer
    private let path: String
    private let blockSize: Int
    private let reservationWait: Double

    private enum Command { case read, write, flush }

    /// One SCSI command of a request, alive until its last outcome.
    private struct Pending {
        var userData: UInt64
        var command: Command
        var base: UnsafeMutableRawPointer?
        var length: Int
        var offset: UInt64
        var retry: SCSIRetry
    }

    /// A request (one `prepare`) whose commands have not all finished.
    private struct Request {
        var remaining: Int
        var moved: Int64 = 0
        var error: IOError?
    }

    private var commands: [Pending?] = []
    private var freeCommands: [Int] = []
    private var requests: [UInt64: Request] = [:]
    private var errors: [UInt64: IOError] = [:]
    /// Commands prepared but not yet handed to libiscsi.
    private var unissued: [Int] = []
    /// Commands to issue again once their pause is over (retries), by monotonic time.
    private var deferred: [(due: Double, command: Int)] = []
    /// Completions ready for the owner's handler: (userData, bytes or -errno).
    private var ready: [(UInt64, Int64)] = []
    private var doorbell: (fd: Int32, userData: UInt64)?
    /// Why the session is gone, once it is.
    private var lost: String?
    private let completions: UnsafeMutablePointer<lunar_iscsi_completion>
    private let completionCapacity = 64

    /// Commands libiscsi holds (issued, no outcome yet), and the most there have been at once.
    private(set) var inFlight = 0
    private(set) var peakInFlight = 0

    init(queue: OpaquePointer, path: String, blockSize: Int, reservationWait: Double) {
        self.queue = queue
        self.path = path
        self.blockSize = blockSize
        self.reservationWait = reservationWait
        completions = .allocate(capacity: completionCapacity)
    }

    deinit {
        lunar_iscsi_queue_close(queue, lost == nil ? 1 : 0)
        completions.deallocate()
    }

    func takeError(userData: UInt64) -> IOError? {
        errors.removeValue(forKey: userData)
    }

    // MARK: requests

    func prepare(_ request: EngineRequest, userData: UInt64) -> Int32 {
        if lost != nil { return -ENOTCONN }
        switch request {
        case .read(let p, let n, let off):
            split(userData, .read, p, n, off)
        case .write(let p, let n, let off):
            split(userData, .write, UnsafeMutableRawPointer(mutating: p), n, off)
        case .flush:
            requests[userData] = Request(remaining: 1)
            unissued.append(add(Pending(userData: userData, command: .flush, base: nil, length: 0, offset: 0,
                                        retry: SCSIRetry(reservationWait: reservationWait))))
        case .discard:
            return -EOPNOTSUPP  // the LUN's blocking calls discard
        case .pollReadable(let fd):
            doorbell = (fd, userData)
        }
        return 0
    }

    private func split(_ userData: UInt64, _ command: Command, _ base: UnsafeMutableRawPointer, _ length: Int, _ offset: UInt64) {
        let pieces = (length + ISCSILun.maxTransfer - 1) / ISCSILun.maxTransfer
        requests[userData] = Request(remaining: pieces)
        var done = 0
        while done < length {
            let n = min(length - done, ISCSILun.maxTransfer)
            unissued.append(add(Pending(userData: userData, command: command, base: base + done, length: n,
                                        offset: offset + UInt64(done), retry: SCSIRetry(reservationWait: reservationWait))))
            done += n
        }
    }

    private func add(_ p: Pending) -> Int {
        if let i = freeCommands.popLast() {
            commands[i] = p
            return i
        }
        commands.append(p)
        return commands.count - 1
    }

    func submit() -> Int32 {
        if lost != nil { return -ENOTCONN }
        let n = issue()
        // Start writing to the socket now rather than at the next reap.
        pump(timeout: 0)
        return Int32(n)
    }

    /// Hands the unissued commands, and the deferred ones whose pause is over, to libiscsi.
    @discardableResult
    private func issue() -> Int {
        if !deferred.isEmpty {
            let now = monotonicSeconds()
            var i = 0
            while i < deferred.count {
                if deferred[i].due <= now {
                    unissued.append(deferred[i].command)
                    deferred.remove(at: i)
                } else {
                    i += 1
                }
            }
        }
        guard lost == nil else { return 0 }
        var count = 0
        for id in unissued {
            guard let p = commands[id] else { continue }
            let lba = p.offset / UInt64(blockSize)
            let tag = UInt64(id)
            let r: Int32
            switch p.command {
            case .read: r = lunar_iscsi_queue_read16(queue, lba, p.base, UInt32(p.length), Int32(blockSize), tag)
            case .write: r = lunar_iscsi_queue_write16(queue, lba, p.base, UInt32(p.length), Int32(blockSize), tag)
            case .flush: r = lunar_iscsi_queue_synchronize_cache16(queue, tag)
            }
            if r == 0 {
                inFlight += 1
                peakInFlight = max(peakInFlight, inFlight)
                count += 1
            } else {
                let why = String(cString: lunar_iscsi_queue_error(queue))
                finish(id, error: IOError(.scsi("libiscsi could not queue \(name(p.command)): \(why)"), operation(p.command),
                                          path: path, offset: offset(p), length: length(p), errno: EIO))
            }
        }
        unissued.removeAll(keepingCapacity: true)
        return count
    }

    // MARK: outcomes

    /// Takes the outcomes libiscsi recorded: done, to retry, or failed.
    private func collect() {
        while true {
            let n = lunar_iscsi_queue_drain(queue, completions, completionCapacity)
            for i in 0..<n { outcome(Int(completions[i].tag), completions[i].result) }
            if n < completionCapacity { return }
        }
    }

    private func outcome(_ id: Int, _ r: lunar_scsi_result) {
        guard let p = commands[id] else { return }
        inFlight -= 1
        let result = ISCSILun.classify(r)
        if result == .good {
            let moved = p.command == .flush ? 0 : p.length - min(Int(clamping: r.residual), p.length)
            finish(id, moved: Int64(moved))
            return
        }
        if lost == nil, let pause = commands[id]!.retry.pause(after: result) {
            deferred.append((monotonicSeconds() + pause, id))
            return
        }
        finish(id, error: ISCSILun.failure(r, name(p.command), operation(p.command), path: path, offset: offset(p),
                                           length: length(p)))
    }

    /// One command is over; its request is once all of them are.
    private func finish(_ id: Int, moved: Int64 = 0, error: IOError? = nil) {
        guard let p = commands[id] else { return }
        commands[id] = nil
        freeCommands.append(id)
        guard var request = requests[p.userData] else { return }
        request.remaining -= 1
        request.moved += moved
        if request.error == nil { request.error = error }
        if request.remaining > 0 {
            requests[p.userData] = request
            return
        }
        requests[p.userData] = nil
        if let error = request.error {
            errors[p.userData] = error
            ready.append((p.userData, -Int64(error.errno ?? EIO)))
        } else {
            ready.append((p.userData, request.moved))
        }
    }

    /// The session is gone: every command not yet finished fails.
    private func fail(_ why: String) {
        if lost == nil {
            lost = why
            lunar_iscsi_queue_cancel_all(queue)
            collect()
        }
        deferred.removeAll()
        unissued.removeAll()
        inFlight = 0
        for id in commands.indices {
            guard let p = commands[id] else { continue }
            finish(id, error: IOError(.scsi("the iSCSI session was lost: \(why)"), operation(p.command), path: path,
                                      offset: offset(p), length: length(p), errno: EIO))
        }
    }

    // MARK: waiting

    func reap(minimum: Int, _ handler: (UInt64, Int64) -> Void) -> Int {
        var total = 0
        var looked = false
        while true {
            issue()
            collect()
            while !ready.isEmpty {
                // The handler may prepare new requests; they are issued below or next time.
                let burst = ready
                ready.removeAll(keepingCapacity: true)
                for (userData, result) in burst { handler(userData, result) }
                total += burst.count
            }
            // Gone: what it held has failed and been handed out; from now on the queue fails.
            if lost != nil { return total > 0 ? total : -Int(ENOTCONN) }
            if total >= minimum && (minimum > 0 || looked) {
                issue()
                return total
            }
            let timeout: Int32
            if total >= minimum {
                timeout = 0
            } else if let next = deferred.map(\.due).min() {
                timeout = Int32(max(0, min((next - monotonicSeconds()) * 1000, 1000)).rounded(.up))
            } else {
                timeout = -1
            }
            if let r = pump(timeout: timeout) { return r }
            looked = true
        }
    }

    /// Waits up to `timeout` ms (-1: without end) for the socket or the doorbell and lets
    /// libiscsi do its part. Nil, or -errno when poll itself fails.
    @discardableResult
    private func pump(timeout: Int32) -> Int? {
        var fds = [pollfd]()
        if lost == nil {
            fds.append(pollfd(fd: lunar_iscsi_queue_fd(queue), events: Int16(truncatingIfNeeded: lunar_iscsi_queue_events(queue)),
                              revents: 0))
        }
        if let doorbell { fds.append(pollfd(fd: doorbell.fd, events: Int16(POLLIN), revents: 0)) }
        guard !fds.isEmpty else { return nil }
        let r = poll(&fds, nfds_t(fds.count), timeout)
        if r < 0 { return errno == EINTR ? nil : -Int(errno) }
        if lost == nil && fds[0].revents != 0 {
            if lunar_iscsi_queue_service(queue, Int32(fds[0].revents)) != 0 {
                fail(String(cString: lunar_iscsi_queue_error(queue)))
            }
        }
        if let bell = doorbell, let last = fds.last, last.fd == bell.fd, last.revents != 0 {
            doorbell = nil
            ready.append((bell.userData, Int64(last.revents)))
        }
        return nil
    }

    // MARK: names

    private func name(_ c: Command) -> String {
        switch c {
        case .read: "READ(16)"
        case .write: "WRITE(16)"
        case .flush: "SYNCHRONIZE CACHE(16)"
        }
    }

    private func operation(_ c: Command) -> IOOperationKind {
        switch c {
        case .read: .read
        case .write: .write
        case .flush: .flush
        }
    }

    private func offset(_ p: Pending) -> UInt64? { p.command == .flush ? nil : p.offset }
    private func length(_ p: Pending) -> Int? { p.command == .flush ? nil : p.length }
}
