import Dispatch
import Glibc
import LunarIO
import Synchronization

/// A host's heartbeat: a thread that bumps the counter of its slot by compare-and-write every
/// interval. The compare half is the fence: if the slot no longer holds the image this host
/// last wrote, another host has claimed it (declared us dead) and this host must not write
/// again. Nor may it when renewals have failed for longer than `fenceAfter`, because by then an
/// observer may have declared it dead.
final class Heartbeat: @unchecked Sendable {
    let storage: any BlockStorage
    let offset: UInt64
    let interval: Double
    let fenceAfter: Double
    private let fence: @Sendable (String) -> Void
    private let state = Mutex<(last: IOBuffer, lastRenewal: Double, stopping: Bool)>((IOBuffer(count: 0), 0, false))
    /// Signalled once by `stop()`: the thread's sleep between renewals ends early.
    private let stopping = DispatchSemaphore(value: 0)
    private var thread: pthread_t?

    init(storage: any BlockStorage, offset: UInt64, current: IOBuffer, interval: Double, fenceAfter: Double,
         fence: @escaping @Sendable (String) -> Void) {
        self.storage = storage
        self.offset = offset
        self.interval = interval
        self.fenceAfter = fenceAfter
        self.fence = fence
        state.withLock { $0 = (current, Self.ownClock(), false) }
    }

    /// Starts the thread; fails only when the system has no thread to give.
    func start() throws(SystemErrno) {
        thread = try startThread { [self] in run() }.get()
    }

    /// Stops renewing; returns once the thread is gone. The slot image it last wrote is
    /// what the caller's next compare-and-write of the slot must expect.
    func stop() {
        guard let thread else { return }
        state.withLock { $0.stopping = true }
        stopping.signal()
        pthread_join(thread, nil)
        self.thread = nil
    }

    private func run() {
        while true {
            if stopping.wait(timeout: .now() + interval) == .success || state.withLock({ $0.stopping }) { return }
            switch renew() {
            case .renewed: continue
            case .fenced(let why):
                fence(why)
                return
            case .failed(let why):
                let silent = Self.ownClock() - state.withLock { $0.lastRenewal }
                if silent >= fenceAfter {
                    fence("could not renew the heartbeat for \(Int(silent)) s (\(why))")
                    return
                }
            }
        }
    }

    private enum Renewal { case renewed, fenced(String), failed(String) }

    /// This host's own age clock: CLOCK_BOOTTIME, which keeps counting through a suspend, so a
    /// host that slept never believes itself younger than observers do.
    static func ownClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Why this host must not write now (its last renewal is older than `fenceAfter`, so an
    /// observer may already count it dead), or nil. Checked before every write, not only by
    /// the heartbeat thread: a process waking from a long stall must not write before it.
    func staleness() -> String? {
        let age = Self.ownClock() - state.withLock { $0.lastRenewal }
        return age >= fenceAfter ? "heartbeat not renewed for \(fixedPoint(age, places: 1)) s" : nil
    }

    private func renew() -> Renewal {
        let last = state.withLock { $0.last }
        // The renewal counts from when it was issued, not from when it completed: observers
        // start their wait from the counter they saw, which is no later than the issue.
        let issued = Self.ownClock()
        guard let record = try? HeartbeatSlot.decode(last, index: Int(last.load(32, as: UInt32.self)), at: offset) else { return .fenced("own heartbeat slot unreadable") }
        var next = record
        next.counter &+= 1
        let image = IOBuffer(count: RecordHeader.sectorSize)
        next.encode(into: image)
        image.seal(.heartbeat, at: offset, generation: last.recordGeneration &+ 1)
        do {
            switch try storage.compareAndWriteBlocking(expected: last, new: image, at: offset) {
            case .written:
                state.withLock { $0.last = image; $0.lastRenewal = issued }
                return .renewed
            case .mismatch:
                return .fenced("host slot \(record.slot) was claimed by another host")
            }
        } catch {
            return .failed("\(error)")
        }
    }
}

/// The volume's device as a fenced host sees it: once `fence` is called, every write, discard
/// and compare-and-write fails, so a host declared dead cannot touch the volume again.
final class FencedStorage: BlockStorage, @unchecked Sendable {
    let base: any BlockStorage
    private let reason = Mutex<String?>(nil)
    /// Asked before every write whether this host's heartbeat is still fresh. Set once, before
    /// the heartbeat thread starts and before any write.
    private weak var heartbeat: Heartbeat?

    init(_ base: any BlockStorage) { self.base = base }

    func fence(_ why: String) { reason.withLock { if $0 == nil { $0 = why } } }
    var fencedBecause: String? { reason.withLock { $0 } }

    func watch(_ heartbeat: Heartbeat) { self.heartbeat = heartbeat }

    /// Why this host may not write now (fenced, or its heartbeat too old, which fences it), or
    /// nil: the check before every write (locking.md R3).
    func refusal() -> String? {
        if fencedBecause == nil, let stale = heartbeat?.staleness() { fence(stale) }
        return fencedBecause
    }

    private func check(_ op: IOOperationKind, _ offset: UInt64?) throws(IOError) {
        if let why = refusal() {
            throw IOError(.unsupported("this host is fenced off the volume: \(why)"), op, path: base.path, offset: offset)
        }
    }

    var path: String { base.path }
    var size: UInt64 { base.size }
    var sectorSize: Int { base.sectorSize }
    var isReadOnly: Bool { base.isReadOnly }
    var localDevice: BlockDevice? { base.localDevice }
    var iscsiLUN: ISCSILun? { base.iscsiLUN }

    func readBlocking(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try base.readBlocking(into: region, at: offset)
    }

    func writeBlocking(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError) {
        try check(.write, offset)
        try base.writeBlocking(from: region, at: offset)
    }

    func flushBlocking() throws(IOError) { try base.flushBlocking() }

    func discardBlocking(at offset: UInt64, length: UInt64) throws(IOError) {
        try check(.discard, offset)
        try base.discardBlocking(at: offset, length: length)
    }

    func compareAndWriteBlocking(expected: IOBuffer, new: IOBuffer, at offset: UInt64) throws(IOError) -> CompareAndWriteOutcome {
        try check(.compareAndWrite, offset)
        return try base.compareAndWriteBlocking(expected: expected, new: new, at: offset)
    }
}
