import CLunar
import Glibc

/// Linux native AIO through libaio. `userData` is the queue's slot number and doubles as the
/// index of the iocb that carries the request. Discards have no AIO opcode: they run at once
/// (fallocate) and complete on the next reap.
final class AIOEngine: IOEngine {
    var kind: IOEngineKind { .libaio }

    private let context: io_context_t
    private let fd: Int32
    private let capacity: Int
    private let iocbs: UnsafeMutablePointer<iocb>
    private let pending: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    private var pendingCount = 0
    private let events: UnsafeMutablePointer<io_event>
    private let eventData: UnsafeMutablePointer<UInt64>
    private let eventResults: UnsafeMutablePointer<Int64>
    private var ready: [(UInt64, Int64)] = []

    static func make(fd: Int32, depth: Int) -> Result<any IOEngine, SystemErrno> {
        let capacity = depth + 1
        var context: io_context_t?
        let r = io_setup(Int32(capacity), &context)
        guard r == 0, let context else { return .failure(SystemErrno(r < 0 ? -r : EINVAL)) }
        return .success(AIOEngine(context: context, fd: fd, capacity: capacity))
    }

    private init(context: io_context_t, fd: Int32, capacity: Int) {
        self.context = context
        self.fd = fd
        self.capacity = capacity
        iocbs = .allocate(capacity: capacity)
        iocbs.initialize(repeating: iocb(), count: capacity)
        pending = .allocate(capacity: capacity)
        events = .allocate(capacity: capacity)
        eventData = .allocate(capacity: capacity)
        eventResults = .allocate(capacity: capacity)
        ready.reserveCapacity(capacity)
    }

    deinit {
        io_destroy(context)
        iocbs.deallocate()
        pending.deallocate()
        events.deallocate()
        eventData.deallocate()
        eventResults.deallocate()
    }

    func prepare(_ request: EngineRequest, userData: UInt64) -> Int32 {
        guard userData < UInt64(capacity), pendingCount < capacity else { return -EBUSY }
        let cb = iocbs + Int(userData)
        switch request {
        case .read(let p, let n, let off):
            lunar_aio_prep_rw(cb, 0, fd, p, n, Int64(off), userData)
        case .write(let p, let n, let off):
            lunar_aio_prep_rw(cb, 1, fd, UnsafeMutableRawPointer(mutating: p), n, Int64(off), userData)
        case .flush:
            lunar_aio_prep_fdsync(cb, fd, userData)
        case .pollReadable(let wakeFD):
            lunar_aio_prep_poll_in(cb, wakeFD, userData)
        case .discard:
            ready.append((userData, performBlocking(request, fd: fd)))
            return 0
        }
        pending[pendingCount] = cb
        pendingCount += 1
        return 0
    }

    func submit() -> Int32 {
        var submitted: Int32 = 0
        while pendingCount > 0 {
            let r = io_submit(context, pendingCount, pending)
            if r < 0 {
                if r == -EINTR || r == -EAGAIN { continue }
                // The first iocb was refused: complete it with the error, go on with the rest.
                if let first = pending[0] { ready.append((UInt64(UInt(bitPattern: first.pointee.data)), Int64(r))) }
                dropPending(1)
                continue
            }
            submitted += r
            dropPending(Int(r))
        }
        return submitted
    }

    private func dropPending(_ n: Int) {
        pendingCount -= n
        if pendingCount > 0 { (pending).update(from: pending + n, count: pendingCount) }
    }

    func reap(minimum: Int, _ handler: (UInt64, Int64) -> Void) -> Int {
        _ = submit()
        var total = 0
        if !ready.isEmpty {
            let done = ready
            ready.removeAll(keepingCapacity: true)
            for (data, result) in done { handler(data, result) }
            total += done.count
        }
        repeat {
            let want = max(0, minimum - total)
            let n = Int(lunar_aio_getevents(context, want, capacity, events, eventData, eventResults))
            if n < 0 { return n }
            for i in 0..<n { handler(eventData[i], eventResults[i]) }
            total += n
        } while total < minimum
        return total
    }
}

/// pread/pwrite on the owner's thread: each request runs to completion at submit. A doorbell
/// poll is the one request that waits, and only inside `reap`.
final class SyncEngine: IOEngine {
    var kind: IOEngineKind { .sync }

    private let fd: Int32
    private var pending: [(EngineRequest, UInt64)] = []
    private var armedPoll: (fd: Int32, userData: UInt64)?
    private var ready: [(UInt64, Int64)] = []

    init(fd: Int32) { self.fd = fd }

    func prepare(_ request: EngineRequest, userData: UInt64) -> Int32 {
        if case .pollReadable(let wakeFD) = request {
            armedPoll = (wakeFD, userData)
        } else {
            pending.append((request, userData))
        }
        return 0
    }

    func submit() -> Int32 {
        let batch = pending
        pending.removeAll(keepingCapacity: true)
        for (request, userData) in batch { ready.append((userData, performBlocking(request, fd: fd))) }
        return Int32(batch.count)
    }

    func reap(minimum: Int, _ handler: (UInt64, Int64) -> Void) -> Int {
        _ = submit()
        if ready.count < minimum, let poll = armedPoll {
            armedPoll = nil
            ready.append((poll.userData, performBlocking(.pollReadable(poll.fd), fd: fd)))
        }
        let done = ready
        ready.removeAll(keepingCapacity: true)
        for (data, result) in done { handler(data, result) }
        return done.count
    }
}
