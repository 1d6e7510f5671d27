import Glibc
import LunarIO

/// Options for opening a volume.
public struct OpenOptions: Sendable {
    public var readOnly: Bool
    /// How long to wait for another process working on the volume to finish.
    public var lockTimeout: Double
    public var hostName: String
    /// Seconds between heartbeat renewals of this host's slot.
    public var heartbeatInterval: Double
    /// How long the metadata lock stays with this host after its last call, in seconds:
    /// longer saves lock traffic for a host working alone, shorter lets other hosts in sooner.
    public var metadataLockLinger: Double
    /// The longest this host keeps the metadata lock while calls keep coming, in seconds.
    public var metadataLockMaxHold: Double
    /// Opening for `fsck --repair`: a damaged volume lock sector, which every other open
    /// refuses, is rebuilt once no other live host uses the volume.
    public var repair = false

    public init(readOnly: Bool = false, lockTimeout: Double = 30, hostName: String? = nil, heartbeatInterval: Double = 3,
                metadataLockLinger: Double = 0.01, metadataLockMaxHold: Double = 0.25) {
        self.readOnly = readOnly
        self.lockTimeout = lockTimeout
        self.hostName = hostName ?? OpenOptions.localHostName()
        self.heartbeatInterval = heartbeatInterval
        self.metadataLockLinger = metadataLockLinger
        self.metadataLockMaxHold = metadataLockMaxHold
    }

    /// Silence that makes a holder dead, as observers judge it (5 intervals).
    public static func lockBreakTimeout(interval: Double) -> Double { 5 * interval }

    /// Seconds between heartbeats for `lunar` and `lunar-vmm`: 3, or LUNAR_HEARTBEAT_INTERVAL
    /// (tests shorten it so that a dead host is declared so in a fraction of a second).
    public static var toolHeartbeatInterval: Double {
        getenv("LUNAR_HEARTBEAT_INTERVAL").flatMap { Double(String(cString: $0)) } ?? 3
    }
    /// When a host whose renewals stopped succeeding writes no more (locking.md `T_fence`):
    /// half the lock-break timeout, so that a write which passed the check has `M` = 2.5
    /// intervals to land before any host may break the lock. One interval was too little: on
    /// a loaded machine a thread can sit that long between the check and its write (the
    /// torture test lost an update so, with 0.2 s intervals and both cores busy).
    public static func fenceAfter(interval: Double) -> Double { lockBreakTimeout(interval: interval) / 2 }

    public static func localHostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// What opening found and did, for `lunar fs fsck` and the curious.
public struct MountReport: Sendable {
    public var usedBackupHeader = false
    public var primaryHeaderProblem: String?
    /// Host slots whose holder had died, whose journals this open replayed.
    public var recoveredSlots: [UInt32] = []
    public var replayedTransactions = 0
    /// Why the volume lock sector was rebuilt by a repairing open, if it was.
    public var rebuiltLockSector: String?
}

/// Opening and closing: host slot, metadata lock, journal recovery.
///
/// Any number of processes, here or on other machines, may have a volume open read-write:
/// each claims a host slot (its own journal, its heartbeat) and takes the metadata lock by
/// compare-and-write whenever it works on metadata (`MetadataLock`). Whether the holder of a
/// slot or of a lock is alive is for `LivenessJudge` to say: at once by presence token for a
/// process of this machine, by heartbeat silence for the lock-break timeout for any other. A
/// holder found dead is recovered before anything of its changes hands: its slot is claimed
/// (which fences it, should it only have stalled), its journal replayed, the slot freed.
extension VolumeCore {
    static func mount(_ storage: any BlockStorage, options: OpenOptions) throws(FSError) -> (VolumeCore, MountReport) {
        let (header, usedBackup, primaryProblem) = try Formatter.readHeader(storage)
        var report = MountReport(usedBackupHeader: usedBackup, primaryHeaderProblem: primaryProblem)
        guard header.volumeSize <= storage.size else {
            throw FSError(.corrupt(record: RecordKind.volumeHeader.name, offset: 0,
                                   reason: "volume of \(header.volumeSize) bytes on a device of \(storage.size)"), path: storage.path)
        }
        if options.readOnly || storage.isReadOnly {
            let store = MetadataStore(storage: storage, volumeSize: header.volumeSize)
            // Read-only: no slot, no lock. Every slot's journal is replayed into memory only, so
            // what was committed but not yet written in place (by a dead or a live host) is seen.
            for s in 0..<header.hostSlots {
                // A journal that cannot be read is left out (its host's last changes not yet in
                // place are not seen); fsck reports it, fsck --repair mends it.
                let r = try skippingDamage { () throws(FSError) in
                    try Journal.replay(storage: storage, header: header, slot: s) { (offset, image) throws(FSError) in
                        try store.applyReplayed(offset, image, inPlace: false)
                    }
                }
                report.replayedTransactions += r?.transactions ?? 0
            }
            return (VolumeCore(storage: storage, header: header, store: store, slot: LockRecord.noOwner, isReadOnly: true), report)
        }

        guard options.heartbeatInterval >= 0.05, options.heartbeatInterval <= 600 else {
            throw FSError(.invalidArgument("heartbeat interval must be from 0.05 to 600 s"))
        }
        // Every call takes the metadata lock: a damaged lock record is refused at open, unless
        // this open is to repair it.
        var damagedLock: FSError?
        do throws(FSError) {
            _ = try readLockState(storage, header)
        } catch {
            guard options.repair, case .corrupt = error.kind else { throw error }
            damagedLock = error
        }
        let device = PresenceTokens(device: storage.localDevice)
        let me = LivenessJudge.thisMachine()
        let slot = try claimSlot(storage, header, device: device, host: me, name: options.hostName,
                                 interval: options.heartbeatInterval)
        // Every write of this host goes through the fence from here on.
        let fenced = FencedStorage(storage)
        let heartbeat: Heartbeat
        do throws(FSError) {
            let offset = header.heartbeatSlotOffset(Int(slot.index))
            let current = IOBuffer(count: RecordHeader.sectorSize)
            try io { () throws(IOError) in try storage.readBlocking(into: current, at: offset) }
            heartbeat = Heartbeat(storage: storage, offset: offset, current: current, interval: options.heartbeatInterval,
                                  fenceAfter: OpenOptions.fenceAfter(interval: options.heartbeatInterval),
                                  fence: { [fenced] why in fenced.fence(why) })
            fenced.watch(heartbeat)
            do throws(SystemErrno) {
                try heartbeat.start()
            } catch {
                throw FSError(.busy("no thread for the heartbeat (\(String(cString: strerror(error.code)))): the system is out of threads"))
            }
        } catch {
            try? updateSlot(storage, header, Int(slot.index)) { $0.release() }
            device.release(slot.index)
            throw error
        }
        let store = MetadataStore(storage: fenced, volumeSize: header.volumeSize)
        let recovery = Recovery(storage: fenced, header: header, device: device, store: store, me: slot,
                                judge: LivenessJudge(storage: storage, header: header, device: device, machine: me,
                                                     defaultInterval: options.heartbeatInterval))
        let metadataLock = MetadataLock(recovery: recovery, options: options)
        do throws(FSError) {
            // Recover the dead holders this machine can judge at once (a remote one is judged
            // by watching it: when something it holds is wanted, and by the sweep), then
            // whatever a dead predecessor left in our own journal. No metadata lock is needed
            // for that: a dead host's journal holds only what lies under the locks it still
            // holds (locking.md R6), which nobody else may touch until it is recovered.
            for record in try readAllSlots(storage, header) where record.slot != slot.index {
                // A dead host whose journal is damaged stays unrecovered (its locks held) until
                // fsck --repair judges the journal; everything else goes on.
                if record.state == .live, record.host == me, try recovery.judge.verdict(record, watch: recovery.watch) == .dead {
                    _ = try skippingDamage { () throws(FSError) in try recovery.recover(record) }
                } else if record.state == .recovering, try recovery.recovererGone(record) {
                    _ = try skippingDamage { () throws(FSError) in try recovery.recover(record) }
                }
            }
            if let damagedLock {
                try rebuildLockSector(recovery, options: options)
                report.rebuiltLockSector = damagedLock.description
            }
            let own = try recovery.replay(slot.index)
            report.replayedTransactions += recovery.replayedTransactions + own.transactions + slot.replayed
            report.recoveredSlots = recovery.recoveredSlots
            if own.transactions + slot.replayed > 0 { report.recoveredSlots.append(slot.index) }
            let ownNext = own.nextSequence
            store.attach(Journal(storage: fenced, header: header, slot: slot.index, sequence: ownNext))
            let core = VolumeCore(storage: fenced, header: header, store: store, slot: slot.index, isReadOnly: false)
            core.metadataLock = metadataLock
            core.heartbeat = heartbeat
            core.fence = fenced
            return (core, report)
        } catch {
            heartbeat.stop()
            try? updateSlot(storage, header, Int(slot.index)) { $0.release() }
            device.release(slot.index)
            throw error
        }
    }

    /// Commits, empties the journal, lets go of the lock and the slot.
    func unmount() throws(FSError) {
        guard !isReadOnly else { return }
        defer { PresenceTokens(device: storage.localDevice).release(slot) }
        if let why = fence?.fencedBecause {
            heartbeat?.stop()
            // The slot and the lock belong to whoever fenced us: touch nothing.
            throw FSError(.busy("this host was fenced off the volume (\(why)); its last changes may be lost"))
        }
        // Changes exist only under the metadata lock, and letting go of it commits them.
        try leaveMetadata()
        heartbeat?.stop()
        try Self.updateSlot(storage, header, Int(slot)) { $0.release() }
        try io { () throws(IOError) in try storage.flushBlocking() }
    }

    // MARK: slots

    static func readSlot(_ storage: any BlockStorage, _ header: VolumeHeader, _ s: Int) throws(FSError) -> HeartbeatSlot {
        try readSlotImage(storage, header, s).1
    }

    /// Every sound slot, read in one request (the heartbeat region is contiguous). A damaged
    /// slot is left out: no host can renew it (its compare-and-write no longer matches, so a
    /// holder fences itself), no host can claim it, and fsck rebuilds it.
    static func readAllSlots(_ storage: any BlockStorage, _ header: VolumeHeader) throws(FSError) -> [HeartbeatSlot] {
        try readSlots(storage, header).sound
    }

    /// Every slot: the sound ones, and the damage found in the others.
    static func readSlots(_ storage: any BlockStorage, _ header: VolumeHeader) throws(FSError) -> (sound: [HeartbeatSlot], damaged: [(slot: Int, error: FSError)]) {
        let sector = RecordHeader.sectorSize
        let region = IOBuffer(count: Int(header.hostSlots) * sector)
        try io { () throws(IOError) in try storage.readBlocking(into: region, at: header.heartbeatSlotOffset(0)) }
        var slots: [HeartbeatSlot] = []
        var damaged: [(slot: Int, error: FSError)] = []
        slots.reserveCapacity(Int(header.hostSlots))
        for s in 0..<Int(header.hostSlots) {
            let offset = header.heartbeatSlotOffset(s)
            let b = IOBuffer(copying: UnsafeRawBufferPointer(region.slice((s * sector)..<((s + 1) * sector))))
            do throws(FSError) {
                try b.verify(.heartbeat, at: offset)
                slots.append(try HeartbeatSlot.decode(b, index: s, at: offset))
            } catch {
                damaged.append((s, error))
            }
        }
        return (slots, damaged)
    }

    /// Rewrites a slot record by compare-and-write against what was just read.
    static func updateSlot(_ storage: any BlockStorage, _ header: VolumeHeader, _ s: Int,
                           _ change: (inout HeartbeatSlot) -> Void) throws(FSError) {
        for _ in 0..<100 {
            let (current, _) = try readSlotImage(storage, header, s)
            if try swapSlot(storage, header, s, expected: current, change) != nil { return }
        }
        throw FSError(.busy("host slot \(s) keeps changing under us"), path: storage.path)
    }

    struct ClaimedSlot {
        var index: UInt32
        var claim: UInt64
        /// Transactions of a dead predecessor in the slot, replayed before it was claimed.
        var replayed = 0
    }

    private static func claimSlot(_ storage: any BlockStorage, _ header: VolumeHeader, device: PresenceTokens,
                                  host: VolumeID, name: String, interval: Double) throws(FSError) -> ClaimedSlot {
        for s in 0..<header.hostSlots {
            // A slot in use by another machine may be alive: only recovery, after judging it,
            // takes that. One of this machine's is free exactly when its presence token is.
            // A damaged slot, or one whose journal header is damaged, waits for fsck; the
            // volume stays usable through the others.
            guard let (image, record) = try skippingDamage({ () throws(FSError) in try readSlotImage(storage, header, Int(s)) }),
                  try Journal.headerIsSound(storage: storage, header: header, slot: s) else { continue }
            if record.state == .recovering || (record.state != .free && (record.host != host || !device.canTell)) { continue }
            guard try device.tryHold(s) else { continue }
            do throws(FSError) {
                var expected = image
                var replayed = 0
                if record.state != .free {
                    // A dead predecessor of this machine. Its journal may hold committed changes
                    // not yet in place, and until they are, its locks must not look stale (as
                    // they would the moment this slot is live under a new claim): recover it
                    // under the recovering state first, which makes every other host wait.
                    guard let recovering = try swapSlot(storage, header, Int(s), expected: image, { r in
                        r.state = .recovering
                        r.claimGeneration += 1
                        r.recoveredBy = s
                    }) else { device.release(s); continue }
                    replayed = try replayInPlace(storage, header, slot: s, store: nil).transactions
                    expected = recovering
                }
                // One compare-and-write against the image judged free: a host elsewhere that
                // claims the same slot first wins it, and this one moves on.
                guard let claimed = try swapSlot(storage, header, Int(s), expected: expected, { r in
                    r.state = .live
                    r.claimGeneration += 1
                    r.counter += 1
                    r.host = host
                    r.hostName = name
                    r.pid = UInt32(truncatingIfNeeded: getpid())
                    r.recoveredBy = LockRecord.noOwner
                    r.intervalMillis = UInt32(interval * 1000)
                }) else { device.release(s); continue }
                return ClaimedSlot(index: s, claim: try HeartbeatSlot.decode(claimed, index: Int(s), at: header.heartbeatSlotOffset(Int(s))).claimGeneration,
                                   replayed: replayed)
            } catch {
                device.release(s)
                throw error
            }
        }
        throw FSError(.busy("all \(header.hostSlots) host slots are in use"), path: storage.path)
    }

    static func readSlotImage(_ storage: any BlockStorage, _ header: VolumeHeader, _ s: Int) throws(FSError) -> (IOBuffer, HeartbeatSlot) {
        let offset = header.heartbeatSlotOffset(s)
        let b = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: offset) }
        try b.verify(.heartbeat, at: offset)
        return (b, try HeartbeatSlot.decode(b, index: s, at: offset))
    }

    /// One compare-and-write of slot `s` from `expected` to `expected` changed by `change`;
    /// the new image, or nil when the slot no longer holds `expected`.
    static func swapSlot(_ storage: any BlockStorage, _ header: VolumeHeader, _ s: Int, expected: IOBuffer,
                         _ change: (inout HeartbeatSlot) -> Void) throws(FSError) -> IOBuffer? {
        let offset = header.heartbeatSlotOffset(s)
        var record = try HeartbeatSlot.decode(expected, index: s, at: offset)
        change(&record)
        record.slot = UInt32(s)
        let next = IOBuffer(count: RecordHeader.sectorSize)
        record.encode(into: next)
        next.seal(.heartbeat, at: offset, generation: expected.recordGeneration &+ 1)
        return try io({ () throws(IOError) in try storage.compareAndWriteBlocking(expected: expected, new: next, at: offset) }).isWritten ? next : nil
    }

    /// Replays slot `s`'s journal in place (through `store`, keeping its cache current, when
    /// there is one) and empties it.
    static func replayInPlace(_ storage: any BlockStorage, _ header: VolumeHeader, slot s: UInt32,
                              store: MetadataStore?) throws(FSError) -> Journal.ReplayResult {
        let r = try Journal.replay(storage: storage, header: header, slot: s) { (offset, image) throws(FSError) in
            if let store {
                try store.applyReplayed(offset, image, inPlace: true)
            } else {
                try io { () throws(IOError) in try storage.writeBlocking(from: image, at: offset) }
            }
        }
        try io { () throws(IOError) in try storage.flushBlocking() }
        try Journal(storage: storage, header: header, slot: s, sequence: r.nextSequence).markEmpty()
        return r
    }
}


/// Recovery of dead hosts' slots during an open.
final class Recovery {
    let storage: any BlockStorage
    let header: VolumeHeader
    let device: PresenceTokens
    let store: MetadataStore
    let me: VolumeCore.ClaimedSlot
    let judge: LivenessJudge
    let watch = SlotWatch()
    private(set) var replayedTransactions = 0
    private(set) var recoveredSlots: [UInt32] = []

    init(storage: any BlockStorage, header: VolumeHeader, device: PresenceTokens, store: MetadataStore,
         me: VolumeCore.ClaimedSlot, judge: LivenessJudge) {
        self.storage = storage
        self.header = header
        self.device = device
        self.store = store
        self.me = me
        self.judge = judge
    }

    /// Replays slot `s`'s journal in place and empties it.
    func replay(_ s: UInt32) throws(FSError) -> Journal.ReplayResult {
        try VolumeCore.replayInPlace(storage, header, slot: s, store: store)
    }

    /// Recovers a slot judged dead: claims it by compare-and-write against the very image
    /// judged (so a holder that was only stalled finds its slot taken and fences itself before
    /// anything of its is touched), holds its presence token while replaying its journal, then
    /// frees it. False when the slot changed since it was judged — its holder is alive after
    /// all, or another host got there first.
    func recover(_ judged: HeartbeatSlot) throws(FSError) -> Bool {
        let s = judged.slot
        // The token keeps other processes of this machine off the slot while it is replayed.
        // Held by a process claiming this machine's identity, it says that process lives. Held
        // by one claiming another identity (LUNAR_MACHINE_ID), it says nothing: that process
        // is judged by its heartbeat, like any other machine's.
        let holding = try device.tryHold(s)
        guard holding || judged.host != judge.machine else { return false }
        defer { if holding { device.release(s) } }
        let (current, record) = try VolumeCore.readSlotImage(storage, header, Int(s))
        guard record.counter == judged.counter, record.claimGeneration == judged.claimGeneration,
              record.state == judged.state else { return false }
        let claimed = try VolumeCore.swapSlot(storage, header, Int(s), expected: current) { [me, judge] r in
            r.state = .recovering
            r.claimGeneration += 1
            r.recoveredBy = me.index
            r.host = judge.machine
            r.pid = UInt32(truncatingIfNeeded: getpid())
            r.intervalMillis = 0
        }
        guard claimed != nil else { return false }
        let r = try replay(s)
        replayedTransactions += r.transactions
        if r.transactions > 0 { recoveredSlots.append(s) }
        try VolumeCore.updateSlot(storage, header, Int(s)) { $0.release() }
        return true
    }
}
