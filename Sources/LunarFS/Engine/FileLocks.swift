import LunarIO

/// How a file is held open, as written in its inode's lock record.
public enum FileLockMode: String, Sendable, Codable, CaseIterable {
    /// One host reads and writes (a running VM's disk).
    case exclusive
    /// Up to six hosts read; nobody writes (a template every linked clone reads).
    case sharedReadOnly = "shared-read-only"
    /// Up to six hosts read and write (clustered applications that coordinate themselves).
    case multiWriter = "multi-writer"

    var record: LockRecord.Mode {
        switch self {
        case .exclusive: .exclusive
        case .sharedReadOnly: .sharedReadOnly
        case .multiWriter: .multiWriter
        }
    }

    public var allowsWrites: Bool { self != .sharedReadOnly }
}

/// The holders of an inode's lock: the lock record (at 32) and, for the shared modes, the
/// holder list (at 176; format.md §3.7).
struct InodeLock {
    typealias Holder = LockOwner

    static let countOffset = 176
    static let holdersOffset = 180
    static let maxSharedHolders = 6

    var record: LockRecord
    var holders: [Holder]

    /// Why the lock fields of `ino` are not ones any host writes, or nil.
    static func problem(_ ino: InodeRecord) -> String? {
        let rawMode: UInt8 = ino.buffer.load(InodeRecord.lockOffset)
        guard let mode = LockRecord.Mode(rawValue: rawMode) else { return "unknown lock mode \(rawMode)" }
        let count: UInt32 = ino.buffer.load(countOffset)
        switch mode {
        case .free, .exclusive:
            if count != 0 { return "\(count) shared holders on a lock that is not shared" }
        case .sharedReadOnly, .multiWriter:
            if !(1...UInt32(maxSharedHolders)).contains(count) { return "shared lock with \(count) holders (1 to \(maxSharedHolders))" }
        }
        return nil
    }

    static func decode(_ ino: InodeRecord, at offset: UInt64) throws(FSError) -> InodeLock {
        guard let record = LockRecord.decode(ino.buffer, at: InodeRecord.lockOffset) else {
            throw .corrupt(RecordKind.inode.name, at: offset, "unknown lock mode \(ino.buffer.load(InodeRecord.lockOffset, as: UInt8.self))")
        }
        switch record.mode {
        case .free:
            return InodeLock(record: record, holders: [])
        case .exclusive:
            return InodeLock(record: record, holders: [Holder(slot: record.ownerSlot, claim: record.ownerClaim)])
        case .sharedReadOnly, .multiWriter:
            let count = Int(ino.buffer.load(countOffset, as: UInt32.self))
            guard (1...maxSharedHolders).contains(count) else {
                throw .corrupt(RecordKind.inode.name, at: offset, "shared lock with \(count) holders (1 to \(maxSharedHolders))")
            }
            let holders = (0..<count).map { i in
                Holder(slot: ino.buffer.load(holdersOffset + 12 * i), claim: ino.buffer.load(holdersOffset + 12 * i + 4))
            }
            return InodeLock(record: record, holders: holders)
        }
    }

    func encode(into ino: InodeRecord) {
        record.encode(into: ino.buffer, at: InodeRecord.lockOffset)
        let shared = record.mode == .sharedReadOnly || record.mode == .multiWriter
        ino.buffer.store(UInt32(shared ? holders.count : 0), at: Self.countOffset)
        for i in 0..<Self.maxSharedHolders {
            let h = shared && i < holders.count ? holders[i] : Holder(slot: 0, claim: 0)
            ino.buffer.store(h.slot, at: Self.holdersOffset + 12 * i)
            ino.buffer.store(h.claim, at: Self.holdersOffset + 12 * i + 4)
        }
    }
}

/// What identifies an inode lock's state across hosts: the lock generation, which every change
/// of the lock bumps, and the inode's reuse generation, since a freed and reused inode starts
/// its lock afresh.
struct LockStamp: Equatable {
    var reuse: UInt32
    var generation: UInt64

    init(_ ino: InodeRecord, _ lock: InodeLock) {
        reuse = ino.reuseGeneration
        generation = lock.record.lockGeneration
    }
}

/// This process's hold on a file: the mode and how many open handles share it.
struct HeldFileLock {
    var mode: FileLockMode
    var handles: Int
}

extension VolumeCore {
    /// Takes (or adds a handle to) this host's lock on inode `n`. Returns the live holder in
    /// the way, or nil when the lock is ours. The caller holds the metadata lock.
    ///
    /// Lock changes are written by compare-and-write of the inode's sector when that sector is
    /// not part of the running transaction, and ride in the transaction when it is (a file
    /// created by it): either way under the metadata lock, so no host writes the sector
    /// between our read and our write.
    func lockFile(_ n: UInt32, _ mode: FileLockMode) throws(FSError) -> LockHolder? {
        if var held = fileLocks[n], held.mode == mode || held.mode == .exclusive {
            held.handles += 1
            fileLocks[n] = held
            return nil
        }
        guard let recovery = metadataLock?.recovery else { return nil }
        let me = InodeLock.Holder(slot: recovery.me.index, claim: recovery.me.claim)
        let offset = inodeOffset(n)
        // The holders are judged, and the new lock computed, from the very image the
        // compare-and-write expects: under a shared hold other hosts change it meanwhile.
        for _ in 0..<8 {
            let image = try lockedInode(n)
            let current = try InodeLock.decode(image, at: offset)
            let (live, blocker, recovered) = try recovery.liveHolders(current.holders.filter { $0 != me })
            // Recovering a dead holder replays its journal, which may rewrite this very inode.
            if recovered { continue }
            if let blocker {
                let sharing = mode != .exclusive && current.record.mode == mode.record && live.count < InodeLock.maxSharedHolders
                if !sharing { return blocker }
            }
            // Under a shared hold, another host may have written the file since it was cached.
            if holdsShared, !store.isInTransaction(offset), knownStamps[n] != LockStamp(image, current) {
                dropCache()
            }
            var next = current
            next.holders = live + [me]
            next.record = LockRecord(mode: mode.record, ownerSlot: next.holders[0].slot, ownerClaim: next.holders[0].claim,
                                     lockGeneration: current.record.lockGeneration &+ 1, ownerHost: recovery.judge.machine,
                                     acquired: wallClockNanoseconds())
            if try writeLock(n, next, expected: image) {
                fileLocks[n] = HeldFileLock(mode: mode, handles: (fileLocks[n]?.handles ?? 0) + 1)
                return nil
            }
        }
        throw lockKeptChanging(n)
    }

    /// Drops one handle's hold on inode `n`; the last one frees this host's lock.
    func unlockFile(_ n: UInt32) throws(FSError) {
        guard var held = fileLocks[n] else { return }
        held.handles -= 1
        if held.handles > 0 {
            fileLocks[n] = held
            return
        }
        // Under a shared hold, what this host changed of the file may still be in its journal,
        // and the next holder must not see a replay of it write old images over its work: the
        // lock goes back after a checkpoint (locking.md R6). A file made by this hold needs
        // none: nobody can reach it before the hold ends, which checkpoints anyway.
        if holdsShared, modifiedInHold.contains(n), !createdInHold.contains(n) {
            try store.commit()
            try store.checkpoint()
            modifiedInHold.removeAll()
        }
        try freeInodeLock(n)
        fileLocks[n] = nil
    }

    /// Takes this host out of inode `n`'s lock on disk: a file's, or a directory's. The caller
    /// forgets the lock only once this is done, so a call retried after a lost race frees it.
    func freeInodeLock(_ n: UInt32) throws(FSError) {
        guard let recovery = metadataLock?.recovery else { return }
        let me = InodeLock.Holder(slot: recovery.me.index, claim: recovery.me.claim)
        for _ in 0..<1000 {
            // Removed (or removed and reused) since: nothing of ours is left in it.
            guard let image = try? lockedInode(n) else { return }
            var next = try InodeLock.decode(image, at: inodeOffset(n))
            guard next.holders.contains(me) else { return }
            next.holders.removeAll { $0 == me }
            let generation = next.record.lockGeneration &+ 1
            if next.holders.isEmpty {
                next.record = LockRecord.free
            } else {
                next.record.ownerSlot = next.holders[0].slot
                next.record.ownerClaim = next.holders[0].claim
            }
            next.record.lockGeneration = generation
            if try writeLock(n, next, expected: image) {
                knownStamps[n] = LockStamp(image, next)
                return
            }
        }
        throw lockKeptChanging(n)
    }

    private func lockKeptChanging(_ n: UInt32) -> FSError {
        holdsShared ? FSError(.lockConflict("inode \(n)'s lock kept changing")) : FSError(.busy("inode \(n)'s lock kept changing on disk; retry"))
    }

    /// Another live host holding inode `n` open, if any (removal and replacement refuse then).
    func otherHolder(of n: UInt32) throws(FSError) -> LockHolder? {
        guard let recovery = metadataLock?.recovery else { return nil }
        let lock = try InodeLock.decode(try lockedInode(n), at: inodeOffset(n))
        for h in lock.holders {
            switch try recovery.holder(slot: h.slot, claim: h.claim) {
            case .nobody, .me, .stale: continue
            case let other: return other
            }
        }
        return nil
    }

    /// Inode `n` for its lock: under a shared hold as on disk now (other hosts may have taken
    /// or freed their holds since it was cached), else as cached.
    private func lockedInode(_ n: UInt32) throws(FSError) -> InodeRecord {
        guard holdsShared, !store.isInTransaction(inodeOffset(n)) else { return try inode(n) }
        guard n > 0, UInt64(n) < header.inodes.count else { throw FSError(.notFound) }
        let offset = inodeOffset(n)
        let ino = InodeRecord(buffer: try store.readFresh(offset, .inode))
        if let problem = ino.problem(expectedNumber: n) { throw .corrupt(RecordKind.inode.name, at: offset, problem) }
        guard ino.type != .free else { throw FSError(.notFound) }
        return ino
    }

    /// Writes `lock` into inode `n`: inside the running transaction when the inode is part of
    /// it, else by compare-and-write against `expected` (the image the lock was computed from).
    /// False when another host changed the sector first.
    private func writeLock(_ n: UInt32, _ lock: InodeLock, expected: InodeRecord) throws(FSError) -> Bool {
        let offset = inodeOffset(n)
        if store.isInTransaction(offset) {
            lock.encode(into: try modifyInode(n))
            return true
        }
        if try compareAndWriteInode(offset, expected: expected.buffer, lock) { return true }
        metadataLock?.noteLostRace()
        return false
    }
}
