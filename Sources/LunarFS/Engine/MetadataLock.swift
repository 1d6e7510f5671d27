import Glibc
import LunarIO

/// The metadata lock: the lock record in the volume lock sector, taken by compare-and-write.
///
/// Every host that has a volume open read-write holds a slot and renews its heartbeat for as
/// long as it is open, but holds the metadata lock only while it works on metadata: it takes it
/// for a call that reads or changes the tree, keeps it while calls keep coming, and lets go
/// once it has been idle for `OpenOptions.metadataLockLinger` or has held it for
/// `metadataLockMaxHold` (then it pauses briefly before taking it again, so that a waiting
/// host gets its turn). Letting go commits the running transaction, writes it in place and
/// empties the journal first (locking.md R6): the next holder reads every change from its home
/// sector, and a host's journal holds anything only while it holds the lock.
///
/// Cached metadata stays valid while nobody else held the lock: every change of the lock bumps
/// its generation, so finding on acquire the generation this host wrote on release means no
/// other host has changed anything; any other generation drops the cache.
final class MetadataLock {
    let recovery: Recovery
    let timeout: Double
    let linger: Double
    let maxHold: Double
    private(set) var held = false
    private var releasedGeneration: UInt64?
    private(set) var heldSince = 0.0
    var lastUse = 0.0
    private var courtesyUntil = 0.0
    private(set) var statistics = MetadataLockStatistics()

    init(recovery: Recovery, options: OpenOptions) {
        self.recovery = recovery
        timeout = options.lockTimeout
        linger = options.metadataLockLinger
        maxHold = options.metadataLockMaxHold
    }

    /// Takes the lock unless held; false when the cache must be dropped (another host held the
    /// lock since this one let go of it).
    func acquire() throws(FSError) -> Bool {
        let now = monotonicSeconds()
        lastUse = now
        if held { return true }
        if courtesyUntil > now { usleep(UInt32((courtesyUntil - now) * 1_000_000)) }
        let start = monotonicSeconds()
        let generation = try VolumeCore.takeVolumeLock(recovery, timeout: timeout, statistics: &statistics)
        held = true
        heldSince = monotonicSeconds()
        lastUse = heldSince
        statistics.acquisitions += 1
        statistics.waitedSeconds += heldSince - start
        let cacheValid = releasedGeneration == generation - 1
        if !cacheValid { statistics.cacheDrops += 1 }
        return cacheValid
    }

    /// Whether it is time to look for dead hosts again: every half of the default lock-break
    /// timeout, so that a host silent for the whole timeout is seen so by two looks.
    func sweepDue(now: Double) -> Bool {
        guard now - lastSweep >= sweepEvery else { return false }
        lastSweep = now
        return true
    }
    private var lastSweep = monotonicSeconds()
    private var sweepEvery: Double { OpenOptions.lockBreakTimeout(interval: recovery.judge.defaultInterval) / 2 }

    /// Whether the lingering lock is due to go back: idle long enough, or held long enough
    /// that others may be waiting.
    func releaseDue(now: Double) -> Bool {
        held && (now - lastUse >= linger || now - heldSince >= maxHold)
    }

    /// Writes the free lock record; the caller has committed and checkpointed.
    func release() throws(FSError) {
        guard held else { return }
        let now = monotonicSeconds()
        if now - heldSince >= maxHold { courtesyUntil = now + Self.courtesy }
        held = false
        releasedGeneration = try VolumeCore.releaseVolumeLock(recovery.storage, recovery.header, slot: recovery.me.index)
    }

    /// Forgets the lock without touching the disk (it was never taken, or we were fenced).
    func abandon() { held = false }

    /// How long a host that let go after `maxHold` waits before taking the lock again: a few
    /// polls of a waiting host.
    static let courtesy = 0.004
}

/// Counters for benchmarks and `lunar fs bench`.
public struct MetadataLockStatistics: Sendable {
    public var acquisitions = 0
    /// Compare-and-writes of the lock record that found it changed since it was read.
    public var lostRaces = 0
    public var waitedSeconds = 0.0
    public var cacheDrops = 0
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
    /// Judges the holder of `lock` without waiting. A holder found dead is recovered on the
    /// spot (slot claimed, journal replayed, slot freed), which makes its lock stale. The
    /// caller must hold the metadata lock, or be breaking it: recovery writes replayed
    /// metadata in place.
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
    static func readLock(_ storage: any BlockStorage, _ header: VolumeHeader) throws(FSError) -> (IOBuffer, LockRecord) {
        let offset = header.volumeLockOffset
        let b = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: offset) }
        try b.verify(.volumeLock, at: offset)
        guard let lock = LockRecord.decode(b, at: VolumeLockSector.lockOffset) else {
            throw .corrupt(RecordKind.volumeLock.name, at: offset, "unknown lock mode")
        }
        return (b, lock)
    }

    private static func writeLock(_ storage: any BlockStorage, _ header: VolumeHeader, expected: IOBuffer, _ lock: LockRecord) throws(FSError) -> Bool {
        let next = expected.clone()
        lock.encode(into: next, at: VolumeLockSector.lockOffset)
        next.seal(.volumeLock, at: header.volumeLockOffset, generation: expected.recordGeneration &+ 1)
        return try io { () throws(IOError) in try storage.compareAndWriteBlocking(expected: expected, new: next, at: header.volumeLockOffset) }.isWritten
    }

    /// Takes the metadata lock, breaking it when its holder is dead (the holder's slot is
    /// recovered first: claimed, its journal replayed, freed). Returns the lock generation
    /// written.
    static func takeVolumeLock(_ recovery: Recovery, timeout: Double,
                               statistics: inout MetadataLockStatistics) throws(FSError) -> UInt64 {
        let storage = recovery.storage, header = recovery.header, slot = recovery.me
        let deadline = monotonicSeconds() + timeout
        // Poll fast at first (a lingering holder lets go within milliseconds), then back off.
        var pause: UInt32 = 100
        while true {
            let (sector, lock) = try readLock(storage, header)
            let holder = try recovery.holder(of: lock)
            switch holder {
            case .nobody, .me, .stale:
                let mine = LockRecord(mode: .exclusive, ownerSlot: slot.index, ownerClaim: slot.claim,
                                      lockGeneration: lock.lockGeneration + 1, ownerHost: recovery.judge.machine,
                                      acquired: wallClockNanoseconds())
                if try writeLock(storage, header, expected: sector, mine) { return mine.lockGeneration }
                statistics.lostRaces += 1
                continue
            case .held, .recovering:
                if monotonicSeconds() >= deadline {
                    throw FSError(.busy("the volume's metadata lock is held by \(holder.description); waited \(timeout) s — retry, or wait longer (lock timeout)"), path: storage.path)
                }
                usleep(pause)
                pause = min(pause * 2, 2_000)
            }
        }
    }

    /// Frees the metadata lock if this host holds it; returns the lock generation written.
    @discardableResult
    static func releaseVolumeLock(_ storage: any BlockStorage, _ header: VolumeHeader, slot: UInt32) throws(FSError) -> UInt64? {
        for _ in 0..<100 {
            let (sector, lock) = try readLock(storage, header)
            guard lock.mode != .free, lock.ownerSlot == slot else { return nil }
            var free = LockRecord.free
            free.lockGeneration = lock.lockGeneration + 1
            if try writeLock(storage, header, expected: sector, free) { return free.lockGeneration }
        }
        return nil
    }

    /// Recovers the hosts found dead that hold nothing anyone asked for (a host holding a lock
    /// is recovered by whoever wants the lock): otherwise their slots would stay taken until
    /// the next open on their machine. Watches every slot in use; takes the metadata lock only
    /// when a dead one is found, since recovery replays its journal in place.
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
        guard !dead.isEmpty else { return }
        try enterMetadata()
        for record in dead { _ = try recovery.recover(record) }
    }

    /// Takes the metadata lock for a call; drops cached metadata when another host may have
    /// changed it.
    func enterMetadata() throws(FSError) {
        guard let metadataLock else { return }
        if let why = fence?.fencedBecause {
            throw FSError(.busy("this host was fenced off the volume (\(why)); close and open the volume again"))
        }
        if try !metadataLock.acquire() { store.dropCache() }
    }

    /// Lets go of the metadata lock: commit, write in place, empty the journal, free the lock.
    func leaveMetadata() throws(FSError) {
        guard let metadataLock, metadataLock.held else { return }
        if fence?.fencedBecause != nil {
            metadataLock.abandon()
            return
        }
        try store.commit()
        try store.checkpoint()
        try metadataLock.release()
    }
}
