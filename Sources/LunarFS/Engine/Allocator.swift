import LunarIO

/// Hands out resources from the clusters of each area, starting where the last allocation of
/// that kind left off, so a run of allocations touches one cluster header, not the volume.
struct AllocationCursors {
    var cluster: [ResourceKind: Int] = [:]
    var bit: [ResourceKind: Int] = [:]
    /// The file block this host takes single grains from (format 2), while it has free ones.
    var grainBlock: UInt64?
}

extension VolumeCore {
    func clusterHeader(_ kind: ResourceKind, _ cluster: Int, forWriting: Bool) throws(FSError) -> ClusterHeader {
        let area = header.area(kind)
        let offset = area.clusterOffset(cluster)
        let b = forWriting ? try store.modify(offset, .cluster) : try store.read(offset, .cluster)
        let c = ClusterHeader(buffer: b)
        if let problem = c.geometryProblem(area: area, cluster: cluster) {
            throw .corrupt(RecordKind.cluster.name, at: offset, problem)
        }
        return c
    }

    /// Allocates one resource of `kind`; the bitmap change is part of the running transaction.
    func allocate(_ kind: ResourceKind) throws(FSError) -> UInt64 {
        if holdsShared { return try allocateShared(kind) }
        let area = header.area(kind)
        let clusters = area.clusterCount
        var c = cursors.cluster[kind] ?? (Int(slot) * 7919) % clusters
        var startBit = cursors.bit[kind] ?? 0
        for _ in 0..<clusters {
            // A damaged cluster is skipped, not fatal: fsck rebuilds it from the maps.
            if let readOnly = try skippingDamage({ () throws(FSError) in try clusterHeader(kind, c, forWriting: false) }),
               readOnly.freeCount > 0, let bit = readOnly.firstFree(from: startBit) {
                let cluster = try clusterHeader(kind, c, forWriting: true)
                cluster.markUsed(bit)
                cursors.cluster[kind] = c
                cursors.bit[kind] = bit + 1
                return cluster.firstResource + UInt64(bit)
            }
            c = (c + 1) % clusters
            startBit = 0
        }
        throw FSError(.noSpace(resource: kind.description))
    }

    /// Frees a resource when the running transaction commits. Under a shared hold its cluster
    /// must be this host's: the cluster's lock is taken first (`lockConflict` when another live
    /// host holds it, and the call runs again exclusive). `heldRecords`: a data unit that held
    /// journaled records (a hashed directory's), see `MetadataStore.freeAtCommit`.
    func freeAtCommit(_ kind: ResourceKind, _ index: UInt64, heldRecords: Bool = false) throws(FSError) {
        if holdsShared { try holdCluster(of: kind, index) }
        store.freeAtCommit(kind, index, heldRecords: heldRecords)
    }

    /// Bitmap changes for resources freed by the transaction being committed.
    func applyFrees(_ frees: [(ResourceKind, UInt64)]) throws(FSError) {
        for (kind, index) in frees {
            let area = header.area(kind)
            guard index > 0, index < area.count else {
                throw .corrupt(kind.description, at: area.dataOffset, "free of resource \(index) outside the area")
            }
            let c = area.cluster(of: index)
            // A resource of a damaged cluster stays marked until fsck rebuilds the cluster from
            // the maps: leaked for now, never handed out twice.
            guard let cluster = try skippingDamage({ () throws(FSError) in try clusterHeader(kind, c, forWriting: true) }) else { continue }
            let bit = Int(index - cluster.firstResource)
            guard cluster.isUsed(bit) else {
                throw .corrupt(RecordKind.cluster.name, at: area.clusterOffset(c), "\(kind) \(index) freed twice")
            }
            cluster.setUsed(bit, false)
            cluster.freeCount += 1
        }
    }

    /// After the commit that freed them is durable: give data space back to the backing store.
    func releaseFreedSpace(_ frees: [(ResourceKind, UInt64)]) {
        for (kind, index) in frees where kind == .fileBlock || kind == .smallBlock {
            let area = header.area(kind)
            // Best effort: a device without discard keeps the bytes, which is harmless.
            try? storage.discardBlocking(at: area.offset(of: index), length: UInt64(area.resourceSize))
        }
    }

    /// Free and total counts of every area, from the cluster headers.
    func resourceUsage(_ kind: ResourceKind) throws(FSError) -> (free: UInt64, total: UInt64) {
        let area = header.area(kind)
        var free: UInt64 = 0
        for c in 0..<area.clusterCount {
            free += UInt64(try clusterHeader(kind, c, forWriting: false).freeCount)
        }
        // A free count above the cluster's resources is refused with the cluster; one that
        // counts the reserved resource 0 as free is fsck's to correct, not a reason to trap.
        return (min(free, area.count - 1), area.count - 1)
    }
}
