import CLunar
import Glibc

/// io_uring: the device's fd is a registered (fixed) file, buffers may be registered for
/// READ_FIXED/WRITE_FIXED, and each `reap` costs at most one `io_uring_enter` that both
/// submits the prepared batch and waits.
final class UringEngine: IOEngine {
    var kind: IOEngineKind { .uring }

    private let ring: UnsafeMutablePointer<io_uring>
    private let fd: Int32
    private let fixedFile: Bool
    private var registered: [(start: UInt, end: UInt)] = []
    private var unsubmitted = false
    private let capacity: Int
    private let userData: UnsafeMutablePointer<UInt64>
    private let results: UnsafeMutablePointer<Int32>

    static func make(fd: Int32, depth: Int) -> Result<any IOEngine, SystemErrno> {
        let entries = UInt32(max(8, depth + 1))
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        // COOP_TASKRUN avoids interrupting this thread for completions; older kernels refuse
        // the flag, so fall back to no flags at all.
        var r = lunar_uring_init(entries, ring, UInt32(IORING_SETUP_COOP_TASKRUN))
        if r == -EINVAL { r = lunar_uring_init(entries, ring, 0) }
        guard r == 0 else {
            ring.deallocate()
            return .failure(SystemErrno(-r))
        }
        return .success(UringEngine(ring: ring, entries: entries, fd: fd))
    }

    private init(ring: UnsafeMutablePointer<io_uring>, entries: UInt32, fd: Int32) {
        self.ring = ring
        self.fd = fd
        self.fixedFile = lunar_uring_register_file(ring, fd) == 0
        self.capacity = Int(entries) * 2
        self.userData = .allocate(capacity: capacity)
        self.results = .allocate(capacity: capacity)
    }

    deinit {
        lunar_uring_exit(ring)
        ring.deallocate()
        userData.deallocate()
        results.deallocate()
    }

    func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) -> Bool {
        guard !regions.isEmpty else { return false }
        var iovecs = regions.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        guard lunar_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count)) == 0 else { return false }
        registered = regions.map { (UInt(bitPattern: $0.baseAddress), UInt(bitPattern: $0.baseAddress) + UInt($0.count)) }
        return true
    }

    private func bufferIndex(_ p: UnsafeRawPointer, _ length: Int) -> Int32 {
        let start = UInt(bitPattern: p)
        for (i, r) in registered.enumerated() where start >= r.start && start + UInt(length) <= r.end {
            return Int32(i)
        }
        return -1
    }

    func prepare(_ request: EngineRequest, userData: UInt64) -> Int32 {
        let target = fixedFile ? 0 : fd
        let fixed: Int32 = fixedFile ? 1 : 0
        let r: Int32
        switch request {
        case .read(let p, let n, let off):
            r = lunar_uring_prep_rw(ring, 0, target, fixed, p, UInt32(n), off, bufferIndex(p, n), userData)
        case .write(let p, let n, let off):
            r = lunar_uring_prep_rw(ring, 1, target, fixed, UnsafeMutableRawPointer(mutating: p), UInt32(n), off,
                                    bufferIndex(p, n), userData)
        case .flush:
            r = lunar_uring_prep_fsync(ring, target, fixed, 1, userData)
        case .discard(let off, let len):
            r = lunar_uring_prep_fallocate(ring, target, fixed, lunar_punch_hole_mode(), off, len, userData)
        case .pollReadable(let wakeFD):
            r = lunar_uring_prep_poll_in(ring, wakeFD, userData)
        }
        if r == 0 { unsubmitted = true }
        return r
    }

    func submit() -> Int32 {
        guard unsubmitted else { return 0 }
        unsubmitted = false
        return lunar_uring_submit(ring)
    }

    private func drain(_ handler: (UInt64, Int64) -> Void) -> Int {
        var total = 0
        while true {
            let n = Int(lunar_uring_reap(ring, userData, results, UInt32(capacity)))
            for i in 0..<n { handler(userData[i], Int64(results[i])) }
            total += n
            if n < capacity { return total }
        }
    }

    func reap(minimum: Int, _ handler: (UInt64, Int64) -> Void) -> Int {
        var total = drain(handler)
        if minimum == 0 && total == 0 && !unsubmitted {
            // A caller polling without waiting: completions the kernel has but has not posted
            // yet (COOP_TASKRUN defers posting until this thread enters the kernel) would stay
            // invisible to it however long it looked.
            let r = lunar_uring_get_events(ring)
            if r < 0 { return Int(r) }
            total = drain(handler)
        }
        if total >= minimum {
            let r = submit()
            return r < 0 ? Int(r) : total
        }
        while total < minimum {
            unsubmitted = false
            let r = lunar_uring_submit_and_wait(ring, 1)
            if r < 0 { return Int(r) }
            total += drain(handler)
        }
        return total
    }
}
