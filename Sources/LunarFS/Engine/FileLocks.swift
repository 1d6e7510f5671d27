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
        // Judge the other holders first: recovering a dead one replays its journal, which may
        // rewrite this very inode.
        let before = try InodeLock.decode(try lockedInode(n), at: inodeOffset(n))
        let (live, blocker, _) = try liveHolders(of: before, except: me)
        let current = try InodeLock.decode(try lockedInode(n), at: inodeOffset(n))
        if let blocker {
            let sharing = mode != .exclusive && current.record.mode == mode.record && live.count < InodeLock.maxSharedHolders
            if !sharing { return blocker }
        }
        var next = current
        next.holders = live + [me]
        next.record = LockRecord(mode: mode.record, ownerSlot: next.holders[0].slot, ownerClaim: next.holders[0].claim,
                                 lockGeneration: current.record.lockGeneration &+ 1, ownerHost: recovery.judge.machine,
                                 acquired: wallClockNanoseconds())
        try writeLock(n, next)
        fileLocks[n] = HeldFileLock(mode: mode, handles: (fileLocks[n]?.handles ?? 0) + 1)
        return nil
    }

    /// Drops one handle's hold on inode `n`; the last one frees this host's lock.
    func unlockFile(_ n: UInt32) throws(FSError) {
        guard var held = fileLocks[n] else { return }
        held.handles -= 1
        if held.handles > 0 {
            fileLocks[n] = held
            return
        }
        guard let recovery = metadataLock?.recovery else {
            fileLocks[n] = nil
            return
        }
        // Forgotten only once freed on disk: a call retried after a lost race frees it then.
        let me = InodeLock.Holder(slot: recovery.me.index, claim: recovery.me.claim)
        // Removed (or removed and reused) since: nothing of ours is left in it.
        guard let ino = try? lockedInode(n) else {
            fileLocks[n] = nil
            return
        }
        var next = try InodeLock.decode(ino, at: inodeOffset(n))
        guard next.holders.contains(me) else {
            fileLocks[n] = nil
            return
        }
        next.holders.removeAll { $0 == me }
        if next.holders.isEmpty {
            next.record = LockRecord.free
            next.record.lockGeneration = (try InodeLock.decode(ino, at: inodeOffset(n))).record.lockGeneration &+ 1
        } else {
            next.record.ownerSlot = next.holders[0].slot
            next.record.ownerClaim = next.holders[0].claim
            next.record.lockGeneration &+= 1
        }
        try writeLock(n, next)
        fileLocks[n] = nil
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

    private func writeLock(_ n: UInt32, _ lock: InodeLock) throws(FSError) {
        let offset = inodeOffset(n)
        if store.isInTransaction(offset) {
            lock.encode(into: try modifyInode(n))
            return
        }
        let current = try store.read(offset, .inode)
        guard try compareAndWriteInode(offset, expected: current, lock) else {
            if holdsShared {
                metadataLock?.noteLostRace()
                throw FSError(.lockConflict("inode \(n)'s lock changed while this host was taking it"))
            }
            // Under an exclusive hold nobody else writes this sector: what we cached is not on
            // disk. The caller may retry.
            throw FSError(.busy("inode \(n) changed on disk under the metadata lock; retry"))
        }
    }
}
