import CLunar
import Glibc
import LunarDisk
import LunarFS
import LunarIO
import Synchronization

/// A virtio-blk device with its one request queue, served by an I/O thread of its own.
///
/// The guest's notifications arrive on an eventfd (KVM signals it for a write to QueueNotify
/// without a VM exit to the VMM, once it is registered as an ioeventfd); the thread then takes
/// the available chains, checks them, and moves the reads and writes its disk channel routes
/// straight to the LUN between guest memory and the LUN through io_uring, many at once,
/// completing them into the used ring in whatever order the LUN finishes them. Requests that
/// need the file system (writes into holes or shared blocks, discards, unaligned pieces) run
/// through the channel's blocking calls on the same thread. Completions raise the interrupt
/// through a second eventfd (an irqfd in a VM) or, where KVM refuses irqfds, through
/// KVM_IRQ_LINE.
///
/// Host-side tests and benchmarks drive it like a guest: lay a queue out in `memory`, then
/// `notify()` (or `serviceQueue()`, which also waits until the device is idle again).
public final class VirtioBlockDevice {
    public let memory: GuestMemory
    let shared: BlockShared
    let model: VirtioBlock
    /// Whether requests can take the direct path (the disk is on a local LUN).
    public let hasDirectPath: Bool
    private var thread: pthread_t?

    public init(memory: GuestMemory, disk: DiskChannel, serial: String) throws(VMMError) {
        self.memory = memory
        model = VirtioBlock(disk: disk, serial: serial)
        let doorbell = lunar_eventfd()
        guard doorbell >= 0 else { throw VMMError.system("eventfd", -doorbell) }
        let interrupt = lunar_eventfd()
        guard interrupt >= 0 else {
            close(doorbell)
            throw VMMError.system("eventfd", -interrupt)
        }
        shared = BlockShared(doorbell: doorbell, interrupt: interrupt)
        let worker = BlockIOThread(shared: shared, memory: memory, model: model)
        hasDirectPath = worker.direct != nil
        let handoff = Handoff(worker)
        let started = startThread {
            var thread = handoff.value
            thread.run()
        }
        switch started {
        case .success(let handle): thread = handle
        case .failure(let e):
            close(doorbell)
            close(interrupt)
            throw VMMError.system("pthread_create (virtio-blk I/O thread)", e.code)
        }
    }

    deinit {
        shutdown()
        close(shared.doorbell)
        close(shared.interrupt)
    }

    /// Finishes what is in flight and ends the I/O thread; the device serves nothing after.
    func shutdown() {
        guard let handle = thread else { return }
        thread = nil
        shared.control.withLock { $0.stopping = true }
        shared.ring()
        pthread_join(handle, nil)
    }

    public var malformedRequests: Int { model.malformedRequests.load(ordering: .relaxed) }

    /// Reads and writes that went straight between guest memory and the LUN (the rest went
    /// through the disk channel's blocking calls).
    public var requestsServedDirectly: Int { shared.direct.load(ordering: .relaxed) }

    /// Why the device stopped serving (the guest broke the virtqueue rules); nil while healthy.
    /// Only a device reset clears it.
    public var broken: String? { shared.brokenReason.withLock { $0 } }

    /// The eventfd the guest's notifications should signal (an ioeventfd on QueueNotify).
    public var notificationEventFD: Int32 { shared.doorbell }
    /// The eventfd the device signals when it completed requests (an irqfd in a VM).
    public var interruptEventFD: Int32 { shared.interrupt }

    /// Sets up the request queue; false when its areas do not fit guest memory or the size is
    /// not a power of two up to 32 768. The I/O thread takes it before it next looks for work.
    @discardableResult
    public func setQueue(size: UInt16, descriptors: UInt64, available: UInt64, used: UInt64) -> Bool {
        guard let queue = Virtqueue(memory: memory, size: size, descriptorTable: descriptors, availableRing: available, usedRing: used) else {
            return false
        }
        shared.control.withLock { $0.pendingQueue = Handoff(queue) }
        shared.ring()
        return true
    }

    /// Stops taking requests, waits until every one in flight has completed, then forgets the
    /// queue and any breakage. The guest may reuse its buffers as soon as this returns.
    public func reset() {
        guard thread != nil else { return }
        let generation = shared.control.withLock { c -> UInt64 in
            c.pendingQueue = nil
            c.reset &+= 1
            return c.reset
        }
        shared.ring()
        shared.progress.wait(reset: generation)
        shared.interruptStatus.store(0, ordering: .sequentiallyConsistent)
    }

    /// Stops taking requests and waits until every one in flight has completed: from its
    /// return until `resume()`, the device touches neither the disk nor the guest's memory, and
    /// the caller may use the disk channel (a snapshot). Requests the guest makes meanwhile
    /// wait in the ring. Pauses nest: the device runs again after as many resumes.
    public func pause() {
        guard thread != nil else { return }
        let generation = shared.control.withLock { c -> UInt64 in
            c.pauses += 1
            c.pause &+= 1
            return c.pause
        }
        shared.ring()
        shared.progress.wait(paused: generation)
    }

    public func resume() {
        shared.control.withLock { c in c.pauses = max(c.pauses - 1, 0) }
        shared.ring()
    }

    /// What a guest's write to QueueNotify does: the I/O thread looks for work.
    public func notify() { shared.ring() }

    /// Notifies, then waits until the device has taken every available request and completed
    /// every one in flight (or stopped serving, broken). Returns how many requests completed
    /// meanwhile.
    @discardableResult
    public func serviceQueue() -> Int {
        guard thread != nil else { return 0 }
        let before = shared.completed.load(ordering: .sequentiallyConsistent)
        let generation = shared.control.withLock { c -> UInt64 in
            c.kick &+= 1
            return c.kick
        }
        shared.ring()
        shared.progress.wait(idle: generation)
        return shared.completed.load(ordering: .sequentiallyConsistent) - before
    }

    /// The interrupt status register: bit 0 used-ring update, bit 1 configuration change (the
    /// device broke).
    public var interruptStatus: UInt32 { shared.interruptStatus.load(ordering: .sequentiallyConsistent) }

    public func acknowledgeInterrupt(_ bits: UInt32) {
        shared.interruptStatus.bitwiseAnd(~bits, ordering: .sequentiallyConsistent)
    }

    /// Where no irqfd could be registered: the I/O thread raises the line with KVM_IRQ_LINE.
    func useInterruptLine(vm: Int32, irq: UInt32) {
        shared.interruptLine.store(1 << 63 | UInt64(UInt32(bitPattern: vm)) << 32 | UInt64(irq), ordering: .releasing)
    }
}

/// Hands a non-Sendable value to exactly one other thread, which becomes its only user.
struct Handoff<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// What the device's owners (vCPU thread, host-side callers) and its I/O thread share.
final class BlockShared: Sendable {
    struct Control {
        /// A queue the I/O thread installs once nothing is in flight on the old one.
        var pendingQueue: Handoff<Virtqueue>?
        /// Raised by `reset`; the thread answers through `progress` once it has drained.
        var reset: UInt64 = 0
        /// Raised by `serviceQueue`; the thread answers once idle after seeing it.
        var kick: UInt64 = 0
        /// Pauses not yet resumed, and the last pause asked for, which the thread answers
        /// once nothing is in flight.
        var pauses = 0
        var pause: UInt64 = 0
        var stopping = false
    }

    let control = Mutex(Control())
    let doorbell: Int32
    let interrupt: Int32
    let interruptStatus = Atomic<UInt32>(0)
    let isBroken = Atomic<Bool>(false)
    let brokenReason = Mutex<String?>(nil)
    let completed = Atomic<Int>(0)
    let direct = Atomic<Int>(0)
    /// 0: signal `interrupt`; else bit 63 | VM fd << 32 | IRQ, for KVM_IRQ_LINE.
    let interruptLine = Atomic<UInt64>(0)
    let progress = Progress()

    init(doorbell: Int32, interrupt: Int32) {
        self.doorbell = doorbell
        self.interrupt = interrupt
    }

    func ring() {
        var one: UInt64 = 1
        _ = write(doorbell, &one, 8)
    }

    /// Sets interrupt status bits, then raises the interrupt: the guest's handler must find the
    /// bits (and the used ring entries written before) when it runs.
    func raise(_ bits: UInt32) {
        interruptStatus.bitwiseOr(bits, ordering: .sequentiallyConsistent)
        let line = interruptLine.load(ordering: .acquiring)
        if line != 0 {
            let vm = Int32(truncatingIfNeeded: (line >> 32) & 0x7FFF_FFFF), irq = UInt32(truncatingIfNeeded: line)
            _ = lunar_kvm_irq_line(vm, irq, 1)
            _ = lunar_kvm_irq_line(vm, irq, 0)
        } else {
            var one: UInt64 = 1
            _ = write(interrupt, &one, 8)
        }
    }
}

/// Lets a caller sleep until the I/O thread got as far as it needs: idle after a given
/// notification, or done with a given reset. A condition variable, so nothing spins and no
/// closure is stored anywhere.
final class Progress: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var idle: UInt64 = 0
    private var reset: UInt64 = 0
    private var paused: UInt64 = 0

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    func publish(idle: UInt64? = nil, reset: UInt64? = nil, paused: UInt64? = nil) {
        pthread_mutex_lock(mutex)
        if let idle { self.idle = max(self.idle, idle) }
        if let reset { self.reset = max(self.reset, reset) }
        if let paused { self.paused = max(self.paused, paused) }
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    func wait(idle target: UInt64) {
        pthread_mutex_lock(mutex)
        while idle < target { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    func wait(reset target: UInt64) {
        pthread_mutex_lock(mutex)
        while reset < target { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    func wait(paused target: UInt64) {
        pthread_mutex_lock(mutex)
        while paused < target { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }
}


/// The device's I/O thread: everything here is touched by that thread alone. A value the
/// thread keeps in a local variable, so its hot state is checked for exclusive access at
/// compile time rather than on every access at run time, as a class's properties would be.
struct BlockIOThread {
    /// The direct path: a queue on the LUN (io_uring on a local one, its own libiscsi session
    /// on an iSCSI one).
    struct Direct {
        let queue: IOQueue
        let sector: UInt64
    }

    /// One request with pieces in flight on the LUN.
    struct Slot {
        var head: UInt16 = 0
        var status: UnsafeMutablePointer<UInt8>?
        var remaining = 0
        var failed = false
        var written: UInt32 = 0
    }

    enum PieceKind { case read, write, flush }

    struct Piece {
        var slot: Int
        var kind: PieceKind
        var buffer: UnsafeMutableRawBufferPointer
        var deviceOffset: UInt64
    }

    /// A flush or discard waiting until nothing is in flight. Flushes wait so that every write
    /// the guest may have seen complete is on the LUN before the LUN is flushed; discards wait
    /// so that no in-flight read or write can touch a block the file system frees (and may
    /// hand to another file).
    struct Parked {
        var head: UInt16
        var status: UnsafeMutablePointer<UInt8>
        var plan: VirtioBlock.Plan
    }

    /// The most one piece moves: a Linux read or write moves at most 2 GiB, so a larger guest
    /// buffer becomes several pieces.
    static let maxPiece = 1 << 30
    static let doorbellTag = UInt64.max

    let shared: BlockShared
    let memory: GuestMemory
    let model: VirtioBlock
    var direct: Direct?
    private var queue: Virtqueue?
    private var broken = false
    private var handledReset: UInt64 = 0
    private var descriptors: [Virtqueue.Descriptor] = []
    private var slots: [Slot] = []
    private var freeSlots: [Int] = []
    private var inFlight = 0
    private var backlog: [Piece] = []
    private var backlogHead = 0
    private var planned: [Piece] = []
    private var zeroFills: [UnsafeMutableRawBufferPointer] = []
    private var parked: Parked?
    private var completedSinceInterrupt = false
    /// Requests completed since the thread last waited: the driver is likely to answer with
    /// new ones soon.
    private var completedSinceWait = false
    private var sawEmpty = false
    private var doorbellArmed = false
    /// What the used ring's flags tell the driver: notify (true), or not while this thread
    /// looks at the ring by itself.
    private var notificationsOn = true
    private var pollWindow = BlockIOThread.minimumPoll

    init(shared: BlockShared, memory: GuestMemory, model: VirtioBlock) {
        self.shared = shared
        self.memory = memory
        self.model = model
        descriptors.reserveCapacity(64)
        if let q = model.disk.makeQueue(depth: 256) {
            direct = Direct(queue: q, sector: UInt64(q.sectorSize))
        }
    }

    mutating func run() {
        while true {
            let control = shared.control.withLock { c -> (reset: UInt64, kick: UInt64, stopping: Bool, queue: Handoff<Virtqueue>?, waiting: Bool,
                                                          paused: Bool, pause: UInt64) in
                // A new queue replaces the old one only once nothing is in flight on it.
                var taken: Handoff<Virtqueue>?
                if inFlight == 0 && c.reset == handledReset {
                    taken = c.pendingQueue
                    c.pendingQueue = nil
                }
                return (c.reset, c.kick, c.stopping, taken, c.pendingQueue != nil, c.pauses > 0, c.pause)
            }
            if let q = control.queue {
                queue = q.value
                parked = nil
                sawEmpty = false
                // Whatever the ring's memory held before, the driver is asked to notify.
                q.value.setNotifications(true)
                notificationsOn = true
            }
            let quiescing = control.reset != handledReset || control.stopping || control.waiting || control.paused
            if !quiescing { pump() }
            submitBacklog()
            if completedSinceInterrupt {
                completedSinceInterrupt = false
                shared.raise(1)
            }
            if quiescing && inFlight == 0 {
                if control.reset != handledReset {
                    queue = nil
                    parked = nil
                    broken = false
                    shared.isBroken.store(false, ordering: .sequentiallyConsistent)
                    shared.brokenReason.withLock { $0 = nil }
                    handledReset = control.reset
                    shared.progress.publish(reset: control.reset)
                    continue
                }
                if control.stopping {
                    shared.progress.publish(idle: .max, paused: .max)
                    return
                }
                if control.waiting { continue }
                if control.paused {
                    // Answered only now, with nothing in flight; then asleep until resumed (the
                    // guest's notifications wake it too, and find it still paused).
                    shared.progress.publish(paused: control.pause)
                    sleepOnDoorbell()
                    continue
                }
            }
            let idle = inFlight == 0 && parked == nil && backlogHead == backlog.count && (queue == nil || broken || sawEmpty)
            if idle { shared.progress.publish(idle: control.kick) }
            waitForWork()
            if completedSinceInterrupt {
                // Before looking for new work: the driver can start on these meanwhile.
                completedSinceInterrupt = false
                shared.raise(1)
            }
        }
    }

    // MARK: taking requests

    /// Runs a parked request once it may, and takes chains until none is left or one parks.
    private mutating func pump() {
        while true {
            if let p = parked {
                guard inFlight == 0 else { return }
                parked = nil
                runBarrier(p)
            }
            guard let queue, !broken else { return }
            let head: UInt16?
            do throws(Virtqueue.Fault) {
                head = try queue.pop(into: &descriptors)
            } catch {
                markBroken("bad descriptor chain: \(error)")
                return
            }
            guard let head else {
                sawEmpty = true
                return
            }
            sawEmpty = false
            start(head)
            // Each request goes to the LUN as soon as it is taken, not with the rest of the
            // driver's burst at the next reap: a burst of 32 4 KiB reads handed over in one
            // io_uring_enter spends ~85 us in it (on a virtio disk) before the first read leaves,
            // and the LUN then finishes them together and idles until the next burst - the
            // lock-step IOQueue.resubmitThreshold describes for completions. One enter per
            // request (as fio submits) keeps the LUN fed: ~1.1x the IOPS of randread and
            // ~1.3x of randwrite at 4K QD 32, at one system call per request.
            if backlogHead < backlog.count { submitNow() }
        }
    }

    private mutating func markBroken(_ why: String) {
        broken = true
        shared.brokenReason.withLock { $0 = why }
        shared.isBroken.store(true, ordering: .sequentiallyConsistent)
        // DEVICE_NEEDS_RESET is announced with a configuration change interrupt.
        shared.raise(2)
    }

    private mutating func start(_ head: UInt16) {
        guard let last = descriptors.last, last.deviceWrites, let base = last.region.baseAddress, last.region.count >= 1 else {
            // Nowhere to put a status: the chain goes back with nothing written.
            model.noteMalformed()
            finish(head, written: 0)
            return
        }
        let status = base.assumingMemoryBound(to: UInt8.self) + (last.region.count - 1)
        let parts = descriptors[0..<(descriptors.count - 1)]
        let plan = model.plan(parts)
        switch plan {
        case .done(let code, let written):
            status.pointee = code
            finish(head, written: written + 1)
        case .transfer(let reading, let offset, let total):
            let buffers = parts.dropFirst()
            if startDirect(head, status: status, reading: reading, offset: offset, total: total, buffers: buffers) { return }
            status.pointee = model.transferBlocking(reading: reading, offset: offset, buffers: buffers)
            let code = status.pointee
            finish(head, written: (reading && code == VirtioBlock.statusOK ? UInt32(clamping: total) : 0) + 1)
        case .flush, .discard:
            parked = Parked(head: head, status: status, plan: plan)
        }
    }

    /// Flushes and discards, with nothing in flight.
    private mutating func runBarrier(_ p: Parked) {
        switch p.plan {
        case .discard(let ranges):
            p.status.pointee = model.discardBlocking(ranges)
            finish(p.head, written: 1)
        case .flush:
            if !model.disk.flushNeedsFileSystem && direct != nil && !model.disk.isReadOnly {
                // Only data went to the LUN since the last flush: flush it without blocking.
                let slot = takeSlot(head: p.head, status: p.status, pieces: 1, written: 1)
                backlog.append(Piece(slot: slot, kind: .flush, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                                     deviceOffset: 0))
            } else {
                p.status.pointee = model.flushBlocking()
                finish(p.head, written: 1)
            }
        default:
            break
        }
    }

    private mutating func finish(_ head: UInt16, written: UInt32) {
        queue?.push(head: head, written: written)
        shared.completed.add(1, ordering: .sequentiallyConsistent)
        completedSinceInterrupt = true
        completedSinceWait = true
    }

    // MARK: the direct path

    /// Sends a read or write to the LUN when the disk channel routes it there and every
    /// buffer is aligned for direct I/O (reads may also cover holes, which read as zeros).
    /// False leaves the request untouched for the blocking path.
    private mutating func startDirect(_ head: UInt16, status: UnsafeMutablePointer<UInt8>, reading: Bool, offset: UInt64, total: UInt64,
                             buffers: ArraySlice<Virtqueue.Descriptor>) -> Bool {
        planned.removeAll(keepingCapacity: true)
        zeroFills.removeAll(keepingCapacity: true)
        let kind: PieceKind = reading ? .read : .write
        let sector = direct?.sector ?? model.disk.sectorSize
        // Guest buffers map onto the disk range one after another; `cursor` is the buffer the
        // channel's next piece falls in and `within` how far into it.
        var cursor = buffers.startIndex
        var within = 0
        let route = model.disk.route(reading: reading, offset..<(offset + total)) { range, device in
            var left = range.count
            var deviceOffset = device
            while left > 0 {
                guard cursor < buffers.endIndex else { return false }
                let region = buffers[cursor].region
                if within == 0 {
                    guard region.count % Int(sector) == 0, let base = region.baseAddress, UInt(bitPattern: base) % UInt(sector) == 0 else {
                        return false
                    }
                }
                let n = min(left, region.count - within)
                var piece = UnsafeMutableRawBufferPointer(rebasing: region[within..<(within + n)])
                if let at = deviceOffset {
                    var pieceOffset = at
                    while piece.count > 0 {
                        let chunk = min(piece.count, Self.maxPiece)
                        planned.append(Piece(slot: 0, kind: kind, buffer: UnsafeMutableRawBufferPointer(rebasing: piece[0..<chunk]),
                                             deviceOffset: pieceOffset))
                        piece = UnsafeMutableRawBufferPointer(rebasing: piece[chunk...])
                        pieceOffset += UInt64(chunk)
                    }
                    deviceOffset = at + UInt64(n)
                } else {
                    zeroFills.append(piece)
                }
                left -= n
                within += n
                if within == region.count {
                    cursor = buffers.index(after: cursor)
                    within = 0
                }
            }
            return true
        }
        switch route {
        case .blocking:
            return false
        case .refused:
            // Fenced off the volume: another host may own this disk now. Not one byte more.
            shared.direct.add(1, ordering: .relaxed)
            status.pointee = VirtioBlock.statusIOError
            finish(head, written: 1)
            return true
        case .direct:
            break
        }
        for z in zeroFills { z.initializeMemory(as: UInt8.self, repeating: 0) }
        let written = (reading ? UInt32(clamping: total) : 0) + 1
        if direct == nil {
            // No queue (none could be made, or it failed): the pieces move one after another
            // on this thread with the LUN's blocking calls, still without the volume's lock.
            let storage = model.disk.storage
            var failed = false
            for p in planned where !failed {
                do throws(IOError) {
                    if reading {
                        try storage.readBlocking(into: p.buffer, at: p.deviceOffset)
                    } else {
                        try storage.writeBlocking(from: UnsafeRawBufferPointer(p.buffer), at: p.deviceOffset)
                    }
                } catch {
                    failed = true
                }
            }
            shared.direct.add(1, ordering: .relaxed)
            status.pointee = failed ? VirtioBlock.statusIOError : VirtioBlock.statusOK
            finish(head, written: failed ? 1 : written)
            return true
        }
        if planned.isEmpty {
            shared.direct.add(1, ordering: .relaxed)
            status.pointee = VirtioBlock.statusOK
            finish(head, written: written)
            return true
        }
        shared.direct.add(1, ordering: .relaxed)
        let slot = takeSlot(head: head, status: status, pieces: planned.count, written: written)
        for var p in planned {
            p.slot = slot
            backlog.append(p)
        }
        return true
    }

    private mutating func takeSlot(head: UInt16, status: UnsafeMutablePointer<UInt8>, pieces: Int, written: UInt32) -> Int {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = slots.count
            slots.append(Slot())
        }
        slots[slot] = Slot(head: head, status: status, remaining: pieces, failed: false, written: written)
        inFlight += 1
        return slot
    }

    private mutating func submitBacklog() {
        guard let d = direct else { return }
        let q = d.queue
        while backlogHead < backlog.count && q.outstanding - (doorbellArmed ? 1 : 0) < q.depth {
            let p = backlog[backlogHead]
            backlogHead += 1
            do throws(IOError) {
                switch p.kind {
                case .read: try q.prepareRead(into: p.buffer, at: p.deviceOffset, tag: UInt64(p.slot))
                case .write: try q.prepareWrite(from: UnsafeRawBufferPointer(p.buffer), at: p.deviceOffset, tag: UInt64(p.slot))
                case .flush: try q.prepareFlush(tag: UInt64(p.slot))
                }
            } catch {
                pieceDone(p.slot, failed: true)
            }
        }
        if backlogHead == backlog.count {
            backlog.removeAll(keepingCapacity: true)
            backlogHead = 0
        }
    }

    /// Hands what is prepared (and what the backlog holds, as far as the ring takes it) to
    /// the kernel now.
    private mutating func submitNow() {
        submitBacklog()
        guard let d = direct else { return }
        do throws(IOError) {
            try d.queue.submit()
        } catch {
            ringFailed()
        }
    }

    private mutating func pieceDone(_ slot: Int, failed: Bool) {
        slots[slot].remaining -= 1
        if failed { slots[slot].failed = true }
        guard slots[slot].remaining == 0 else { return }
        let s = slots[slot]
        s.status?.pointee = s.failed ? VirtioBlock.statusIOError : VirtioBlock.statusOK
        slots[slot].status = nil
        freeSlots.append(slot)
        inFlight -= 1
        finish(s.head, written: s.failed ? 1 : s.written)
    }

    // MARK: waiting

    /// How long the thread keeps looking for completions and new requests before it sleeps,
    /// while requests are in flight or right after it completed some: `pollWindow`, between
    /// these bounds, adapted as QEMU adapts the polling of its I/O threads. Sleeping costs a
    /// wake-up, dear under nested virtualization, every time the LUN or the driver has
    /// something; the look is a few system calls that do not wait. Under steady load the
    /// window grows to cover the LUN's latency, so the thread looks instead of sleeping while
    /// requests are in flight (4K QD 32 randwrite on a virtio disk: ~85K -> ~100K IOPS, the
    /// thread then busy); sparse requests shrink it back, and an idle disk costs nothing.
    static let minimumPoll = 50e-6
    static let maximumPoll = 400e-6

    /// Sleeps until the guest notifies, a caller rings, or I/O completes (whichever first),
    /// handling the completions that arrived.
    private mutating func waitForWork() {
        guard let d = direct else {
            sleepOnDoorbell()
            return
        }
        do throws(IOError) {
            if !doorbellArmed {
                try d.queue.preparePoll(fd: shared.doorbell, tag: Self.doorbellTag)
                doorbellArmed = true
            }
            // After a completion too, with nothing in flight: a driver answers its interrupt
            // with new requests within tens of microseconds, and finding them here spares the
            // second wake-up a notification would cost (the driver's own, then this thread's
            // on the doorbell). Measured on randwrite 4K QD 32, where the LUN finishes all 32
            // together: ~94K -> ~113K IOPS.
            let expectingRequests = completedSinceWait
            completedSinceWait = false
            let polled = inFlight > 0 || expectingRequests
            if polled {
                // Guest notifications cost the guest an exit each and this thread a wake-up:
                // none while it looks at the ring itself.
                setNotifications(false)
                let until = monotonicSeconds() + pollWindow
                repeat {
                    if try d.queue.reap(minimum: 0, { handle($0) }) > 0 { return }
                    if let queue, !broken, queue.hasAvailable { return }
                } while monotonicSeconds() < until
            }
            // About to sleep: a chain made available from now on must wake this thread, and
            // one made available while notifications were off must not wait for the next
            // completion (which may be a long way off).
            setNotifications(true)
            if let queue, !broken, queue.hasAvailable { return }
            let asleep = monotonicSeconds()
            try d.queue.reap(minimum: 1) { handle($0) }
            if polled {
                // Work came after a sleep a longer look would have spared: look longer next
                // time (the LUN answering in a few hundred microseconds under load). It came
                // even later: the look was wasted; shorten it.
                if monotonicSeconds() - asleep + pollWindow <= Self.maximumPoll {
                    pollWindow = min(pollWindow * 2, Self.maximumPoll)
                } else {
                    pollWindow = max(pollWindow / 2, Self.minimumPoll)
                }
            }
        } catch {
            ringFailed()
        }
    }

    /// The ring itself failed, not one request: nothing more completes through it. Fails what
    /// it held; the thread carries on with the blocking path.
    private mutating func ringFailed() {
        direct = nil
        doorbellArmed = false
        for slot in slots.indices where slots[slot].status != nil {
            slots[slot].remaining = 1
            pieceDone(slot, failed: true)
        }
        backlog.removeAll()
        backlogHead = 0
        if completedSinceInterrupt {
            completedSinceInterrupt = false
            shared.raise(1)
        }
    }

    private mutating func setNotifications(_ wanted: Bool) {
        guard wanted != notificationsOn, let queue, !broken else { return }
        queue.setNotifications(wanted)
        notificationsOn = wanted
    }

    private mutating func handle(_ c: IOCompletion) {
        if c.tag == Self.doorbellTag {
            doorbellArmed = false
            drainDoorbell()
        } else {
            pieceDone(Int(c.tag), failed: c.error != nil)
        }
    }

    /// Sleeps until the doorbell rings (whether or not the ring also watches it).
    private func sleepOnDoorbell() {
        var p = pollfd(fd: shared.doorbell, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, -1) < 0 && errno == EINTR {}
        drainDoorbell()
    }

    private func drainDoorbell() {
        var count: UInt64 = 0
        _ = read(shared.doorbell, &count, 8)
    }
}
