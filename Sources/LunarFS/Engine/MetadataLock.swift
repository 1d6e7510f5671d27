import Glibc
import LunarIO

/// How a call works on metadata under the metadata lock.
enum MetadataAccess: Equatable {
    /// With other hosts at once, touching only what it holds a finer lock on: directories it
    /// locked, resource clusters it took (to allocate from or free into), files it holds
    /// exclusive (creating files and directories, looking up, opening and closing, and
    /// writing, truncating and discarding a file held exclusive).
    case shared
    /// Alone: anything (removes, renames, writes through handles that do not hold their file
    /// exclusive, fsck).
    case exclusive
}

/// The metadata lock: the lock record in the volume lock sector (`VolumeLockState`), taken by
/// compare-and-write, shared or exclusive.
///
/// Every host that has a volume open read-write holds a slot and renews its heartbeat for as
/// long as it is open, but holds the metadata lock only while it works on metadata: it takes it
/// for a call, keeps it while calls keep coming, and lets go once it has been idle for
/// `OpenOptions.metadataLockLinger` or has held it for `metadataLockMaxHold` (after an
/// exclusive hold it then pauses briefly, so that a waiting host gets its turn). Letting go
/// commits the running transaction, writes it in place and empties the journal first
/// (locking.md R6), then frees the finer locks, then this one: the next holder of anything
/// reads every change from its home sector, and a host's journal holds anything only while it
/// holds the lock.
///
/// Cached metadata: every change of the lock record bumps its generation, so a host that finds
/// only its own writes in the record's history since it last dropped its cache knows nobody
/// else changed anything, and keeps the cache when it takes the lock exclusive. A host joining
/// the shared holders keeps it when no other host held the lock exclusive since (the exclusive
/// epoch is unchanged): whatever shared holders changed lies under finer locks, and the cache
/// is checked against each of those when it is taken (`lockDirectory`, `takeCluster`).
final class MetadataLock {
    let recovery: Recovery
    let timeout: Double
    let linger: Double
    let maxHold: Double
    private(set) var held: MetadataAccess?
    private(set) var heldSince = 0.0
    var lastUse = 0.0
    /// When this host last looked whether to hand the lock back (`releaseDue`).
    var lastLook = 0.0
    /// How often a holder looks: often enough that a waiting host is not kept long, the
    /// lock sector read each time being a small cost beside the calls in between.
    let lookEvery: Double
    static func lookEvery(linger: Double) -> Double { max(0.001, min(linger / 2, 0.05)) }
    private var courtesyUntil = 0.0
    /// The lock generation this host last wrote.
    private var lastWritten: UInt64?
    /// Whether another host wrote the lock record since this host last dropped its cache.
    private var othersSinceDrop = true
    /// The exclusive epoch as of this host's last write of the lock record.
    private var epochSeen: UInt64?
    private(set) var statistics = MetadataLockStatistics()
    /// Whether taking the lock meant waiting for another host: then an exclusive hold goes
    /// back as soon as the calls that needed it are done.
    private(set) var contended = false
    private var knocksWhenTaken: UInt32 = 0

    init(recovery: Recovery, options: OpenOptions) {
        self.recovery = recovery
        timeout = options.lockTimeout
        linger = options.metadataLockLinger
        maxHold = options.metadataLockMaxHold
        lookEvery = Self.lookEvery(linger: linger)
    }

    var me: LockOwner { LockOwner(slot: recovery.me.index, claim: recovery.me.claim) }

    /// Takes the lock in `access` mode unless held (an exclusive hold serves shared calls too;
    /// the caller lets go of a shared hold before asking for exclusive). False when the cache
    /// must be dropped.
    func acquire(_ access: MetadataAccess) throws(FSError) -> Bool {
        let now = monotonicSeconds()
        lastUse = now
        if let held {
            precondition(held == .exclusive || access == .shared, "let go of a shared hold before taking the lock exclusive")
            return true
        }
        if access == .exclusive, courtesyUntil > now { usleep(UInt32((courtesyUntil - now) * 1_000_000)) }
        let start = monotonicSeconds()
        let (before, after, waited) = try VolumeCore.takeVolumeLock(recovery, access, timeout: timeout, statistics: &statistics)
        contended = waited
        knocksWhenTaken = after.knocks
        noteWrite(before: before, after: after)
        held = access
        heldSince = monotonicSeconds()
        lastUse = heldSince
        statistics.acquisitions += 1
        if access == .shared { statistics.sharedAcquisitions += 1 }
        statistics.waitedSeconds += heldSince - start
        let keep: Bool
        switch access {
        case .exclusive: keep = !othersSinceDrop
        case .shared: keep = epochSeen == before.epoch
        }
        epochSeen = after.epoch
        return keep
    }

    func noteRetriedExclusive() { statistics.retriedExclusive += 1 }

    /// A compare-and-write of a finer lock found its sector changed since it was read.
    func noteLostRace() { statistics.lostRaces += 1 }

    /// The cache was dropped. Under an exclusive hold what it holds from now on is current for
    /// as long as nobody else writes the lock record. Under a shared hold it is not: the other
    /// shared holders go on changing what they hold, and one that dies never writes the record
    /// again to say so (its recovery writes no lock record either).
    func cacheDropped(counted: Bool) {
        if held == .exclusive { othersSinceDrop = false }
        if counted { statistics.cacheDrops += 1 }
    }

    private func noteWrite(before: VolumeLockState, after: VolumeLockState) {
        if before.record.lockGeneration != lastWritten { othersSinceDrop = true }
        lastWritten = after.record.lockGeneration
    }

    /// Whether it is time to look for dead hosts again: every half of the default lock-break
    /// timeout, so that a host silent for the whole timeout is seen so by two looks.
    func sweepDue(now: Double) -> Bool {
        guard now - lastSweep >= sweepEvery else { return false }
        lastSweep = now
        return true
    }
    private var lastSweep = monotonicSeconds()
    func secondsUntilSweep(now: Double) -> Double { max(0, lastSweep + sweepEvery - now) }
    private var sweepEvery: Double { OpenOptions.lockBreakTimeout(interval: recovery.judge.defaultInterval) / 2 }

    /// Whether the lingering lock is due to go back: idle long enough, or held long enough
    /// that others may be waiting.
    func releaseDue(now: Double) -> Bool {
        guard let held else { return false }
        if now - lastUse >= linger || now - heldSince >= maxHold { return true }
        // A shared hold goes back at once when a host waits to take the lock exclusive. (A
        // failed look is no reason to let go: the next one, or the hold's end, will do.)
        // An exclusive hold goes back at once when a host knocked since it was taken.
        guard let (_, state) = try? VolumeCore.readLockState(recovery.storage, recovery.header) else { return false }
        switch held {
        case .shared: return state.waiter.map { $0 != me } ?? false
        case .exclusive: return state.knocks != knocksWhenTaken
        }
    }

    /// Frees this host's hold; the caller has committed, checkpointed and freed its finer locks.
    func release() throws(FSError) {
        guard let access = held else { return }
        let now = monotonicSeconds()
        if access == .exclusive, now - heldSince >= maxHold { courtesyUntil = now + Self.courtesy }
        held = nil
        if let (before, after) = try VolumeCore.releaseVolumeLock(recovery.storage, recovery.header, me, statistics: &statistics) {
            noteWrite(before: before, after: after)
            epochSeen = after.epoch
        }
    }

    /// Forgets the lock without touching the disk (it was never taken, or we were fenced).
    func abandon() { held = nil }

    /// How long a host that let go after `maxHold` waits before taking the lock again: a few
    /// polls of a waiting host.
    static let courtesy = 0.004
}

/// Counters for benchmarks and `lunar fs bench`.
public struct MetadataLockStatistics: Sendable {
    public var acquisitions = 0
    /// Of them, shared.
    public var sharedAcquisitions = 0
    /// Compare-and-writes of a lock (the metadata lock, a directory's, a cluster's, a file's)
    /// that found its sector changed since it was read.
    public var lostRaces = 0
    public var waitedSeconds = 0.0
    /// Times cached metadata was dropped because another host may have changed it.
    public var cacheDrops = 0
    /// Shared calls that met a finer lock held elsewhere and ran again exclusive.
    public var retriedExclusive = 0
}

/// Who holds a lock record, as this host judges it now.
enum LockHolder {
    case nobody
    /// This incarnation of this host.
    case me
    /// A holder whose slot was freed or claimed again since: the lock is free to take.
    case stale
    /// Held by a host not (yet) found dead: alive when its counter was seen moving, unknown
    /// while watched for less than its lock-break timeout.
    case held(by: HeartbeatSlot, HostSlotInfo.Liveness)
    /// Its holder died and another host is replaying its journal right now.
    case recovering(HeartbeatSlot)

    /// For error messages: "host NAME (slot S, pid P) — alive".
    var description: String {
        switch self {
        case .nobody, .me, .stale: return "nobody"
        case .held(let s, let liveness):
            let how = liveness == .alive ? "alive" : "not seen renewing yet (dead after 5 heartbeat intervals of silence)"
            return "host \(s.hostName) (host slot \(s.slot), pid \(s.pid)) — \(how)"
        case .recovering(let s): return "host slot \(s.slot), which is being recovered by host slot \(s.recoveredBy)"
        }
    }
}

extension Recovery {
    /// Of `owners`, those that hold their lock as far as this host can tell now (dead ones are
    /// recovered on the way, `holder(slot:claim:)`), the first of them as a `LockHolder`, and
    /// whether a recovery replayed anything (which may have rewritten the record they are in).
    func liveHolders(_ owners: [LockOwner]) throws(FSError) -> (live: [LockOwner], blocker: LockHolder?, recovered: Bool) {
        var live: [LockOwner] = []
        var blocker: LockHolder?
        let before = recoveredSlots.count
        for owner in owners {
            switch try holder(slot: owner.slot, claim: owner.claim) {
            case .nobody, .me, .stale: continue
            case let other:
                live.append(owner)
                if blocker == nil { blocker = other }
            }
        }
        return (live, blocker, recoveredSlots.count != before)
    }

    /// Judges the holder of `lock` without waiting. A holder found dead is recovered on the
    /// spot (slot claimed, journal replayed, slot freed), which makes its lock stale. That
    /// needs no lock of the caller's: the replayed journal holds only sectors under the locks
    /// the dead host still held (locking.md R6), which nobody else touches meanwhile.
    func holder(of lock: LockRecord) throws(FSError) -> LockHolder {
        guard lock.mode != .free else { return .nobody }
        if lock.ownerSlot == me.index && lock.ownerClaim == me.claim { return .me }
        return try holder(slot: lock.ownerSlot, claim: lock.ownerClaim)
    }

    func holder(slot: UInt32, claim: UInt64) throws(FSError) -> LockHolder {
        if slot == me.index && claim == me.claim { return .me }
        guard slot < header.hostSlots else { return .stale }
        let owner = try VolumeCore.readSlot(storage, header, Int(slot))
        switch owner.state {
        case .free:
            return .stale
        case .live where owner.claimGeneration != claim:
            return .stale
        case .live:
            let verdict = try judge.verdict(owner, watch: watch)
            if verdict == .dead {
                return try recover(owner) ? .stale : .held(by: owner, .unknown)
            }
            return .held(by: owner, verdict)
        case .recovering:
            // A breaker that died mid-recovery leaves the slot recovering: whoever finds it so
            // finishes the work (locking.md R5 step 4), from the claim onward.
            if try recovererGone(owner) { return try recover(owner) ? .stale : .recovering(owner) }
            return .recovering(owner)
        }
    }

    /// Whether the host recovering slot `s` is gone: by the slot's presence token when it is a
    /// process of this machine, else by the recoverer's own slot (freed, or judged dead).
    func recovererGone(_ s: HeartbeatSlot) throws(FSError) -> Bool {
        if s.host == judge.machine, let held = try device.heldElsewhere(s.slot) { return !held }
        guard s.recoveredBy < header.hostSlots, s.recoveredBy != s.slot else { return true }
        let recoverer = try VolumeCore.readSlot(storage, header, Int(s.recoveredBy))
        switch recoverer.state {
        case .free: return true
        case .live: return try judge.verdict(recoverer, watch: watch) == .dead
        case .recovering: return false
        }
    }
}

extension VolumeCore {
    static func readLockState(_ storage: any BlockStorage, _ header: VolumeHeader) throws(FSError) -> (IOBuffer, VolumeLockState) {
        let offset = header.volumeLockOffset
        let b = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: offset) }
        try b.verify(.volumeLock, at: offset)
        return (b, try VolumeLockState.decode(b, at: offset))
    }

    /// Writes a damaged volume lock sector anew, free, once every other host that holds a
    /// slot is judged dead (and recovered: its journal replayed) — waiting up to the
    /// lock-break timeout for a verdict on a host of another machine. A live host may be in the
    /// middle of a call it could only have begun before the damage; it must stop first.
    static func rebuildLockSector(_ recovery: Recovery, options: OpenOptions) throws(FSError) {
        let storage = recovery.storage, header = recovery.header
        let deadline = monotonicSeconds() + OpenOptions.lockBreakTimeout(interval: options.heartbeatInterval) + 1
        while true {
            var undecided = false
            for record in try readAllSlots(storage, header) where record.slot != recovery.me.index && record.state != .free {
                switch try recovery.judge.verdict(record, watch: recovery.watch) {
                case .alive:
                    throw FSError(.busy("the volume lock sector is damaged and host \(record.hostName) (pid \(record.pid), slot \(record.slot)) is using the volume: stop it, then run `lunar fs fsck --repair` again"), path: storage.path)
                case .dead: _ = try recovery.recover(record)
                case .unknown: undecided = true
                }
            }
            if !undecided { break }
            guard monotonicSeconds() < deadline else {
                throw FSError(.busy("the volume lock sector is damaged and hosts of other machines hold slots whose heartbeats could not be judged in time; stop them, then run `lunar fs fsck --repair` again"), path: storage.path)
            }
            usleep(50_000)
        }
        let offset = header.volumeLockOffset
        let damaged = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: damaged, at: offset) }
        let fresh = IOBuffer(count: RecordHeader.sectorSize)
        // The epoch moves on, so a cache kept under the damaged record's epoch is never trusted.
        VolumeLockState(record: .free, epoch: damaged.load(VolumeLockState.epochOffset, as: UInt64.self) &+ 1, waiter: nil, holders: [])
            .encode(into: fresh)
        fresh.seal(.volumeLock, at: offset, generation: damaged.recordGeneration &+ 1)
        guard try io({ () throws(IOError) in try storage.compareAndWriteBlocking(expected: damaged, new: fresh, at: offset) }).isWritten else {
            throw FSError(.busy("the volume lock sector changed while it was being rebuilt; run `lunar fs fsck --repair` again"), path: storage.path)
        }
    }

    private static func writeLockState(_ storage: any BlockStorage, _ header: VolumeHeader, expected: IOBuffer,
                                       _ state: VolumeLockState) throws(FSError) -> Bool {
        let next = expected.clone()
        state.encode(into: next)
        next.seal(.volumeLock, at: header.volumeLockOffset, generation: expected.recordGeneration &+ 1)
        return try io { () throws(IOError) in try storage.compareAndWriteBlocking(expected: expected, new: next, at: header.volumeLockOffset) }.isWritten
    }

    /// Takes the metadata lock in `access` mode. An exclusive holder found dead is recovered
    /// first (claimed, its journal replayed, freed); so are dead shared holders when they are
    /// in the way. Returns the lock state found and the one written, and whether another host
    /// was in the way.
    static func takeVolumeLock(_ recovery: Recovery, _ access: MetadataAccess, timeout: Double,
                               statistics: inout MetadataLockStatistics) throws(FSError) -> (VolumeLockState, VolumeLockState, waited: Bool) {
        let storage = recovery.storage, header = recovery.header
        let me = LockOwner(slot: recovery.me.index, claim: recovery.me.claim)
        let deadline = monotonicSeconds() + timeout
        // Poll fast at first (a lingering holder lets go within milliseconds), then back off.
        var pause: UInt32 = 100
        var waited = false
        var knocked = false
        while true {
            let (sector, state) = try readLockState(storage, header)
            var blocker: LockHolder?
            var next = state
            next.record.lockGeneration = state.record.lockGeneration &+ 1
            // A waiter ahead of us keeps us out while it lives; a dead or stale one is dropped.
            if let waiter = state.waiter, waiter != me {
                blocker = try recovery.liveHolders([waiter]).blocker
                if blocker == nil { next.waiter = nil }
            }
            let others = state.holders.filter { $0 != me }
            switch access {
            case .exclusive:
                if blocker == nil { blocker = try recovery.liveHolders(others).blocker }
                if blocker == nil {
                    next.record = LockRecord(mode: .exclusive, ownerSlot: me.slot, ownerClaim: me.claim,
                                             lockGeneration: next.record.lockGeneration, ownerHost: recovery.judge.machine,
                                             acquired: wallClockNanoseconds())
                    next.holders = [me]
                    next.waiter = nil
                    next.epoch = state.epoch &+ 1
                } else if next.waiter == nil {
                    // Name ourselves the waiter, so that no new shared holder joins meanwhile.
                    next.waiter = me
                    _ = try writeLockState(storage, header, expected: sector, next)
                }
            case .shared:
                var sharers: [LockOwner] = []
                if blocker == nil {
                    if state.record.mode == .exclusive {
                        blocker = try recovery.liveHolders(others).blocker
                        if blocker != nil, !knocked {
                            // Tell the exclusive holder someone waits (once; a lost race is
                            // no matter: its hold ends within the longest hold anyway).
                            var knock = state
                            knock.knocks &+= 1
                            knock.record.lockGeneration = state.record.lockGeneration &+ 1
                            _ = try writeLockState(storage, header, expected: sector, knock)
                            knocked = true
                        }
                    } else {
                        sharers = others
                        if sharers.count >= VolumeLockState.maxSharedHolders {
                            // Full: make room by dropping holders that are gone.
                            let judged = try recovery.liveHolders(sharers)
                            sharers = judged.live
                            if sharers.count >= VolumeLockState.maxSharedHolders { blocker = judged.blocker }
                        }
                    }
                }
                if blocker == nil {
                    next.holders = sharers + [me]
                    if sharers.isEmpty {
                        next.record = LockRecord(mode: .multiWriter, ownerSlot: me.slot, ownerClaim: me.claim,
                                                 lockGeneration: next.record.lockGeneration, ownerHost: recovery.judge.machine,
                                                 acquired: wallClockNanoseconds())
                    }
                }
            }
            if let blocker {
                waited = true
                if monotonicSeconds() >= deadline {
                    throw FSError(.busy("the volume's metadata lock is held by \(blocker.description); waited \(timeout) s — retry, or wait longer (lock timeout)"), path: storage.path)
                }
                usleep(pause)
                pause = min(pause * 2, 2_000)
                continue
            }
            if try writeLockState(storage, header, expected: sector, next) { return (state, next, waited) }
            statistics.lostRaces += 1
        }
    }

    /// Takes this host out of the metadata lock (frees it, or leaves the other shared holders
    /// holding it). Returns the state found and the one written; nil when this host held nothing.
    static func releaseVolumeLock(_ storage: any BlockStorage, _ header: VolumeHeader, _ me: LockOwner,
                                  statistics: inout MetadataLockStatistics) throws(FSError) -> (VolumeLockState, VolumeLockState)? {
        for _ in 0..<1000 {
            let (sector, state) = try readLockState(storage, header)
            guard state.holders.contains(me) else { return nil }
            var next = state
            next.holders.removeAll { $0 == me }
            next.record.lockGeneration = state.record.lockGeneration &+ 1
            if next.holders.isEmpty || state.record.mode == .exclusive {
                next.holders = []
                next.record = LockRecord.free
                next.record.lockGeneration = state.record.lockGeneration &+ 1
            } else if next.record.ownerSlot == me.slot {
                // The record names its first holder; the host it names is informational.
                next.record.ownerSlot = next.holders[0].slot
                next.record.ownerClaim = next.holders[0].claim
                next.record.ownerHost = .zero
            }
            if try writeLockState(storage, header, expected: sector, next) { return (state, next) }
            statistics.lostRaces += 1
        }
        throw FSError(.busy("could not free this host's hold on the metadata lock: its record kept changing"))
    }

    /// Recovers the hosts found dead that hold nothing anyone asked for (a host holding a lock
    /// is recovered by whoever wants the lock): otherwise their slots would stay taken until
    /// the next open on their machine. Watches every slot in use.
    func sweepDeadHosts() throws(FSError) {
        guard let recovery = metadataLock?.recovery, fence?.fencedBecause == nil else { return }
        var dead: [HeartbeatSlot] = []
        for record in try Self.readAllSlots(storage, header) where record.slot != slot {
            switch record.state {
            case .free: continue
            case .live: if try recovery.judge.verdict(record, watch: recovery.watch) == .dead { dead.append(record) }
            case .recovering: if try recovery.recovererGone(record) { dead.append(record) }
            }
        }
        // A dead host whose journal is damaged is left for fsck --repair.
        for record in dead { _ = try skippingDamage { () throws(FSError) in try recovery.recover(record) } }
    }

    /// Takes the metadata lock for a call in `access` mode; drops cached metadata when
    /// another host may have changed it. A shared hold is let go of first when the call needs
    /// the lock exclusive.
    func enterMetadata(_ access: MetadataAccess = .exclusive) throws(FSError) {
        guard let metadataLock else { return }
        if let why = fence?.fencedBecause {
            throw FSError(.busy("this host was fenced off the volume (\(why)); close and open the volume again"))
        }
        // Switching modes: a shared hold cannot become exclusive in place; an exclusive hold
        // another host waited for goes back rather than serve shared calls.
        if access == .exclusive, metadataLock.held == .shared { try leaveMetadata() }
        if access == .shared, metadataLock.held == .exclusive, metadataLock.contended { try leaveMetadata() }
        if try !metadataLock.acquire(access) { dropCache() }
        directoryReads.removeAll()
    }

    /// Forgets every cached sector and name (the running transaction stays). The known lock
    /// stamps stay: they vouch only for what is cached, and nothing is now.
    func dropCache() {
        knownNames.forgetAll()
        let had = store.dropCache()
        metadataLock?.cacheDropped(counted: had)
    }

    /// Lets go of the metadata lock: commit, write in place, empty the journal, free the
    /// finer locks of a shared hold, free the lock.
    func leaveMetadata() throws(FSError) {
        guard let metadataLock, metadataLock.held != nil else { return }
        if fence?.fencedBecause != nil {
            metadataLock.abandon()
            heldDirectories.removeAll()
            heldClusters.removeAll()
            modifiedInHold.removeAll()
            createdInHold.removeAll()
            return
        }
        try store.commit()
        try store.checkpoint()
        try releaseFinerLocks()
        try metadataLock.release()
    }
}
