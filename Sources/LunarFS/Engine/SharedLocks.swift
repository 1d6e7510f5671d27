import LunarIO

/// The finer locks a host takes while it holds the metadata lock shared (locking.md R8): a
/// directory's lock record (its inode's) before it changes the directory, and a resource
/// cluster's lock record (its header's) before it allocates from the cluster or frees into it.
/// (Directories are read without a lock, checked by their lock's stamp: `lockDirectory`.) Both
/// are taken by compare-and-write of the sector read fresh from disk, without waiting: a lock
/// another live host holds makes the call fail with `lockConflict`, and the volume runs the
/// call again under the exclusive metadata lock (nobody holds finer locks then). No host waits
/// while holding a lock, so hosts cannot deadlock. All of them go back when the metadata lock
/// does, after the host's changes are in place (`releaseFinerLocks`).
///
/// Under an exclusive hold none of this applies: the exclusive holder may touch anything.
extension VolumeCore {
    var holdsShared: Bool { metadataLock?.held == .shared }

    /// Makes directory `d` safe to read (`forWriting` false) or to change in this call.
    ///
    /// Changing takes the directory's lock, exclusive, by compare-and-write, kept until the
    /// hold ends. Reading takes no lock (every host reads the root, and a lock taken by every
    /// reader would be written at every turn): the host notes the lock's stamp, reads, and
    /// `validateReads` checks at the end of the call that the stamp has not moved, i.e. that
    /// no host took the directory to change it meanwhile; if one did, the call runs again
    /// exclusive. Reading a directory another live host holds fails at once the same way.
    /// Either way, a stamp other than the one this host last knew drops cached metadata.
    func lockDirectory(_ d: UInt32, forWriting: Bool) throws(FSError) {
        guard holdsShared, let recovery = metadataLock?.recovery else { return }
        if heldDirectories.contains(d) { return }
        if !forWriting, directoryReads[d] != nil { return }
        guard d > 0, UInt64(d) < header.inodes.count else { throw FSError(.notFound) }
        let offset = inodeOffset(d)
        let me = LockOwner(slot: recovery.me.index, claim: recovery.me.claim)
        if store.isInTransaction(offset) {
            // Made (or changed) by this hold: nobody else can reach it before this host lets go.
            guard forWriting else { return }
            let ino = try modifyInode(d)
            guard ino.type == .directory else { throw FSError(.notDirectory) }
            var lock = try InodeLock.decode(ino, at: offset)
            lock.holders = [me]
            lock.record = LockRecord(mode: .exclusive, ownerSlot: me.slot, ownerClaim: me.claim,
                                     lockGeneration: lock.record.lockGeneration &+ 1, ownerHost: recovery.judge.machine,
                                     acquired: wallClockNanoseconds())
            lock.encode(into: ino)
            heldDirectories.insert(d)
            return
        }
        for _ in 0..<8 {
            let current = try store.readFresh(offset, .inode)
            let ino = InodeRecord(buffer: current)
            if let problem = ino.problem(expectedNumber: d) { throw .corrupt(RecordKind.inode.name, at: offset, problem) }
            guard ino.type == .directory else { throw FSError(ino.type == .free ? .notFound : .notDirectory) }
            let lock = try InodeLock.decode(ino, at: offset)
            let (_, blocker, recovered) = try recovery.liveHolders(lock.holders.filter { $0 != me })
            // Recovering a dead holder replays its journal, which may have rewritten this inode.
            if recovered { continue }
            if let blocker { throw FSError(.lockConflict("directory inode \(d) is held by \(blocker.description)")) }
            let stamp = LockStamp(ino, lock)
            if let seen = directoryReads[d], seen != stamp {
                throw FSError(.lockConflict("directory inode \(d) changed while this call read it"))
            }
            if knownStamps[d] != stamp { dropCache() }
            guard forWriting else {
                knownStamps[d] = stamp
                directoryReads[d] = stamp
                return
            }
            var next = lock
            next.holders = [me]
            next.record = LockRecord(mode: .exclusive, ownerSlot: me.slot, ownerClaim: me.claim,
                                     lockGeneration: lock.record.lockGeneration &+ 1, ownerHost: recovery.judge.machine,
                                     acquired: wallClockNanoseconds())
            if try compareAndWriteInode(offset, expected: current, next) {
                heldDirectories.insert(d)
                directoryReads[d] = nil
                return
            }
            metadataLock?.noteLostRace()
        }
        throw FSError(.lockConflict("directory inode \(d)'s lock kept changing"))
    }

    /// The end of a call under a shared hold: every directory it read without a lock must
    /// still carry the stamp it had (nobody took it to change it meanwhile), or the call's
    /// view may have been torn and it fails with `lockConflict`, to run again exclusive.
    func validateReads() throws(FSError) {
        defer { directoryReads.removeAll() }
        guard holdsShared else { return }
        for (d, stamp) in directoryReads {
            let current = try store.readFresh(inodeOffset(d), .inode)
            let ino = InodeRecord(buffer: current)
            guard ino.problem(expectedNumber: d) == nil, let lock = try? InodeLock.decode(ino, at: inodeOffset(d)),
                  LockStamp(ino, lock) == stamp else {
                throw FSError(.lockConflict("directory inode \(d) changed while this call read it"))
            }
        }
    }

    /// Writes `lock` into the inode at `offset` by compare-and-write against `expected`, the
    /// image on disk; false when another host changed the sector first.
    func compareAndWriteInode(_ offset: UInt64, expected: IOBuffer, _ lock: InodeLock) throws(FSError) -> Bool {
        let next = expected.clone()
        lock.encode(into: InodeRecord(buffer: next))
        next.seal(.inode, at: offset, generation: expected.recordGeneration &+ 1)
        guard try io({ () throws(IOError) in try storage.compareAndWriteBlocking(expected: expected, new: next, at: offset) }).isWritten else {
            store.forget(offset)
            return false
        }
        store.installWritten(offset, next)
        return true
    }

    /// One resource of `kind` from the clusters this shared hold has taken, taking one more
    /// when they are full.
    func allocateShared(_ kind: ResourceKind) throws(FSError) -> UInt64 {
        for c in heldClusters[kind] ?? [] {
            let cluster = try clusterHeader(kind, c, forWriting: false)
            if cluster.freeCount > 0, let bit = cluster.firstFree(from: 0) { return try take(kind, c, bit) }
        }
        let c = try takeCluster(kind)
        let cluster = try clusterHeader(kind, c, forWriting: false)
        guard let bit = cluster.firstFree(from: 0) else {
            throw .corrupt(RecordKind.cluster.name, at: header.area(kind).clusterOffset(c), "counts free resources but its bitmap has none")
        }
        return try take(kind, c, bit)
    }

    private func take(_ kind: ResourceKind, _ c: Int, _ bit: Int) throws(FSError) -> UInt64 {
        let cluster = try clusterHeader(kind, c, forWriting: true)
        cluster.markUsed(bit)
        return cluster.firstResource + UInt64(bit)
    }

    /// Takes the lock of a cluster of `kind` with free resources that no live host holds,
    /// looking from where this host last allocated (its own corner of the area at first).
    /// `noSpace` when every cluster is full and none is held (nobody can be freeing into one),
    /// as the exclusive run would find: a caller with another way (file blocks for a small
    /// file) takes it without the exclusive lock.
    private func takeCluster(_ kind: ResourceKind) throws(FSError) -> Int {
        let clusters = header.area(kind).clusterCount
        let start = cursors.cluster[kind] ?? (Int(slot) * 7919) % clusters
        let held = Set(heldClusters[kind] ?? [])
        var allFull = true
        for i in 0..<clusters {
            let c = (start + i) % clusters
            if held.contains(c) { continue }
            // A damaged cluster is skipped, not fatal (the exclusive run skips it too): fsck
            // rebuilds it from the maps.
            guard let take = try skippingDamage({ () throws(FSError) in try tryTakeCluster(kind, c, needsFree: true) }) else { continue }
            switch take {
            case .taken:
                cursors.cluster[kind] = c
                return c
            case .full(let unheld): allFull = allFull && unheld
            case .held, .changing: allFull = false
            }
        }
        if allFull { throw FSError(.noSpace(resource: kind.description)) }
        throw FSError(.lockConflict("no free \(kind) cluster that no other host holds"))
    }

    /// Makes sure this shared hold has the cluster holding resource `index` (to free it):
    /// `lockConflict` when a live host holds it.
    func holdCluster(of kind: ResourceKind, _ index: UInt64) throws(FSError) {
        let area = header.area(kind)
        guard index > 0, index < area.count else {
            throw .corrupt(kind.description, at: area.dataOffset, "free of resource \(index) outside the area")
        }
        let c = area.cluster(of: index)
        if heldClusters[kind]?.contains(c) == true { return }
        // Nobody allocates from a damaged cluster: the free is left for fsck (see applyFrees).
        guard let take = try skippingDamage({ () throws(FSError) in try tryTakeCluster(kind, c, needsFree: false) }) else { return }
        switch take {
        case .taken: return
        case .held(let holder): throw FSError(.lockConflict("\(kind) cluster \(c) is held by \(holder.description)"))
        case .full, .changing: throw FSError(.lockConflict("\(kind) cluster \(c)'s lock kept changing"))
        }
    }

    /// `full(unheld:)`: no free resource, and whether its lock is free too.
    private enum ClusterTake { case taken, held(LockHolder), full(unheld: Bool), changing }

    /// One try at cluster `c`'s lock: read from disk, judge its holder (recovering a dead
    /// one), compare-and-write it ours.
    private func tryTakeCluster(_ kind: ResourceKind, _ c: Int, needsFree: Bool) throws(FSError) -> ClusterTake {
        guard let recovery = metadataLock?.recovery else { throw FSError(.readOnly) }
        let area = header.area(kind)
        let offset = area.clusterOffset(c)
        for _ in 0..<8 {
            let current = try store.readFresh(offset, .cluster)
            let cluster = ClusterHeader(buffer: current)
            if let problem = cluster.geometryProblem(area: area, cluster: c) { throw .corrupt(RecordKind.cluster.name, at: offset, problem) }
            if needsFree && cluster.freeCount == 0 {
                return .full(unheld: LockRecord.decode(current, at: ClusterHeader.lockOffset)?.mode == .free)
            }
            guard let lock = LockRecord.decode(current, at: ClusterHeader.lockOffset) else {
                throw .corrupt(RecordKind.cluster.name, at: offset, "unknown lock mode")
            }
            let before = recovery.recoveredSlots.count
            let holder = try recovery.holder(of: lock)
            switch holder {
            case .nobody, .me, .stale: break
            case .held, .recovering: return .held(holder)
            }
            // A recovered holder's journal may have rewritten this header: look again.
            if recovery.recoveredSlots.count != before { continue }
            let next = current.clone()
            LockRecord(mode: .exclusive, ownerSlot: recovery.me.index, ownerClaim: recovery.me.claim,
                       lockGeneration: lock.lockGeneration &+ 1, ownerHost: recovery.judge.machine,
                       acquired: wallClockNanoseconds()).encode(into: next, at: ClusterHeader.lockOffset)
            next.seal(.cluster, at: offset, generation: current.recordGeneration &+ 1)
            if try io({ () throws(IOError) in try storage.compareAndWriteBlocking(expected: current, new: next, at: offset) }).isWritten {
                store.installWritten(offset, next)
                // Its reference counts go with its lock: whatever is cached of them may be
                // older than the last holder's changes.
                for k in 0..<Int(area.countSectors) { store.forget(area.countSectorOffset(c, k)) }
                heldClusters[kind, default: []].append(c)
                return .taken
            }
            store.forget(offset)
            metadataLock?.noteLostRace()
        }
        return .changing
    }

    /// Frees the directory and cluster locks of a shared hold; the caller has committed and
    /// checkpointed, so what they guard is in place.
    func releaseFinerLocks() throws(FSError) {
        guard let recovery = metadataLock?.recovery else { return }
        let me = LockOwner(slot: recovery.me.index, claim: recovery.me.claim)
        createdInHold.removeAll()
        modifiedInHold.removeAll()
        for d in heldDirectories.sorted() { try freeInodeLock(d) }
        heldDirectories.removeAll()
        for (kind, clusters) in heldClusters {
            let area = header.area(kind)
            for c in clusters {
                let offset = area.clusterOffset(c)
                let current = try store.readFresh(offset, .cluster)
                guard let lock = LockRecord.decode(current, at: ClusterHeader.lockOffset),
                      lock.ownerSlot == me.slot, lock.ownerClaim == me.claim else { continue }
                var free = LockRecord.free
                free.lockGeneration = lock.lockGeneration &+ 1
                let next = current.clone()
                free.encode(into: next, at: ClusterHeader.lockOffset)
                next.seal(.cluster, at: offset, generation: current.recordGeneration &+ 1)
                // Nobody else writes a cluster header whose lock we hold.
                guard try io({ () throws(IOError) in try storage.compareAndWriteBlocking(expected: current, new: next, at: offset) }).isWritten else {
                    store.forget(offset)
                    throw FSError(.busy("cluster header at byte \(offset) changed on disk while this host held its lock"))
                }
                store.installWritten(offset, next)
            }
        }
        heldClusters.removeAll()
    }
}
