import LunarIO

/// Directory content: entries inline in the inode while they fit (a few dozen names), then an
/// extendible hash of 4 KiB leaves (see `DirectoryLayout`) in the directory's small blocks, or
/// in file blocks when the volume has no small block free as the directory becomes hashed.
extension VolumeCore {
    func nameHash(_ name: [UInt8]) -> UInt64 { SipHash24.hash(name, key: header.hashKey) }

    /// Where logical sector `l` of hashed directory `ino` lies: the index of the map unit that
    /// holds it, and the sector's volume offset (nil while that unit is a hole). Logical
    /// sectors are numbered through the directory's map, `perUnit` = unit size / 4096 of them
    /// to a unit (16 in small blocks, B / 4096 in file blocks): sector `l` is sector
    /// `l % perUnit` of unit index `l / perUnit`. This is the one place that says so: every
    /// reader and writer of directory records, fsck's walk and salvage, and `records(of:)` go
    /// through it.
    func directorySectorAddress(_ ino: InodeRecord, _ l: UInt64) throws(FSError) -> (unitIndex: UInt64, offset: UInt64?) {
        guard let storage = ino.storage, storage != .inline else {
            throw .corrupt(RecordKind.inode.name, at: inodeOffset(ino.number), "directory \(ino.number) is not hashed")
        }
        let perUnit = unitSize(ino) / sectorSize
        let u = l / perUnit
        let unit = try lookupUnit(ino, u)
        return (u, unit == 0 ? nil : unitArea(storage).offset(of: UInt64(unit)) + (l % perUnit) * sectorSize)
    }

    /// The volume offset of logical sector `l` of hashed directory `dir`, allocating the unit
    /// that holds it (small or file block, as the directory's storage) when `allocate` is set;
    /// nil for a hole.
    private func directorySector(_ dir: UInt32, _ l: UInt32, allocate: Bool) throws(FSError) -> UInt64? {
        let ino = try inode(dir)
        let place = try directorySectorAddress(ino, UInt64(l))
        guard place.offset == nil, allocate, let storage = ino.storage else { return place.offset }
        try setUnit(dir, place.unitIndex, UInt32(try allocateDataUnit(unitKind(storage))))
        return try directorySectorAddress(try inode(dir), UInt64(l)).offset
    }

    /// Where logical sector `l` of `dir`, which must hold a `kind` record, lies.
    private func directoryRecordOffset(_ dir: UInt32, _ l: UInt32, _ kind: RecordKind) throws(FSError) -> UInt64 {
        guard let offset = try directorySector(dir, l, allocate: false) else {
            throw .corrupt(RecordKind.inode.name, at: inodeOffset(dir), "directory \(dir) has no \(kind.name) at logical sector \(l)")
        }
        return offset
    }

    private func directoryRecord(_ dir: UInt32, _ l: UInt32, _ kind: RecordKind, forWriting: Bool = false) throws(FSError) -> (IOBuffer, UInt64) {
        let offset = try directoryRecordOffset(dir, l, kind)
        let b = forWriting ? try store.modify(offset, kind) : try store.read(offset, kind)
        guard b.load(32, as: UInt32.self) == dir else {
            throw .corrupt(kind.name, at: offset, "belongs to directory \(b.load(32, as: UInt32.self)), reached from directory \(dir)")
        }
        return (b, offset)
    }

    private func newDirectoryRecord(_ dir: UInt32, _ l: UInt32, _ kind: RecordKind) throws(FSError) -> IOBuffer {
        guard let offset = try directorySector(dir, l, allocate: true) else {
            throw .corrupt(RecordKind.inode.name, at: inodeOffset(dir), "directory \(dir) maps no unit for logical sector \(l) just allocated")
        }
        return try store.create(offset, kind)
    }

    /// The records of hashed directory `dir` and where they lie: its header, the table sectors
    /// in use, the leaves.
    func directoryRecords(_ dir: UInt32) throws(FSError) -> [(kind: RecordKind, offset: UInt64)] {
        let h = try directoryHeader(dir)
        var sectors: [(RecordKind, UInt32)] = [(.directoryHeader, DirectoryLayout.headerSector)]
        for t in 0..<h.tableSectors { sectors.append((.directoryTable, DirectoryLayout.firstTableSector + t)) }
        for l in DirectoryLayout.firstLeafSector..<h.nextFreeSector { sectors.append((.directoryLeaf, l)) }
        var out: [(kind: RecordKind, offset: UInt64)] = []
        for (kind, l) in sectors { out.append((kind, try directoryRecordOffset(dir, l, kind))) }
        return out
    }

    private func inlineEntries(_ ino: InodeRecord) throws(FSError) -> [DirectoryEntry] {
        guard ino.size <= UInt64(InodeRecord.inlineCapacity) else {
            throw .corrupt(RecordKind.inode.name, at: inodeOffset(ino.number), "inline directory size \(ino.size)")
        }
        switch DirectoryEntry.decodeAll(UnsafeRawBufferPointer(rebasing: ino.inlineBytes[0..<Int(ino.size)]), count: nil) {
        case .success(let e): return e
        case .failure(let damage): throw .corrupt(RecordKind.inode.name, at: inodeOffset(ino.number), "inline directory: \(damage.reason)")
        }
    }

    private func directoryHeader(_ dir: UInt32, forWriting: Bool = false) throws(FSError) -> DirectoryHeader {
        let (b, offset) = try directoryRecord(dir, DirectoryLayout.headerSector, .directoryHeader, forWriting: forWriting)
        let h = DirectoryHeader(buffer: b)
        // A split moves the size and the next free sector together, inside one operation.
        if !forWriting, let problem = h.problem(inodeSize: try inode(dir).size) {
            throw .corrupt(RecordKind.directoryHeader.name, at: offset, problem)
        }
        return h
    }

    private func tableSlot(_ dir: UInt32, _ slot: Int, limit: UInt32) throws(FSError) -> UInt32 {
        let sector = DirectoryLayout.firstTableSector + UInt32(slot / DirectoryLayout.slotsPerTableSector)
        let (b, offset) = try directoryRecord(dir, sector, .directoryTable)
        let leaf = DirectoryTableSector(buffer: b).slot(slot % DirectoryLayout.slotsPerTableSector)
        guard leaf >= DirectoryLayout.firstLeafSector, leaf < limit else {
            throw .corrupt(RecordKind.directoryTable.name, at: offset, "slot \(slot) points at logical sector \(leaf)")
        }
        return leaf
    }

    private func setTableSlot(_ dir: UInt32, _ slot: Int, _ leaf: UInt32) throws(FSError) {
        let sector = DirectoryLayout.firstTableSector + UInt32(slot / DirectoryLayout.slotsPerTableSector)
        let (b, _) = try directoryRecord(dir, sector, .directoryTable, forWriting: true)
        DirectoryTableSector(buffer: b).setSlot(slot % DirectoryLayout.slotsPerTableSector, leaf)
    }

    private func slotIndex(_ hash: UInt64, depth: UInt8) -> Int {
        depth == 0 ? 0 : Int(hash >> (64 - UInt64(depth)))
    }

    /// The leaf that holds (or would hold) `name`.
    private func leafFor(_ dir: UInt32, hash: UInt64) throws(FSError) -> (leafSector: UInt32, entries: [DirectoryEntry], depth: UInt8) {
        let (l, leaf, offset) = try leafRecord(dir, hash: hash)
        return (l, try leaf.entries(at: offset), leaf.localDepth)
    }

    /// The leaf that holds (or would hold) a name of this hash, as it is (not decoded).
    private func leafRecord(_ dir: UInt32, hash: UInt64) throws(FSError) -> (leafSector: UInt32, leaf: DirectoryLeaf, offset: UInt64) {
        let h = try directoryHeader(dir)
        let l = try tableSlot(dir, slotIndex(hash, depth: h.depth), limit: h.nextFreeSector)
        let (b, offset) = try directoryRecord(dir, l, .directoryLeaf)
        let leaf = DirectoryLeaf(buffer: b)
        guard leaf.localDepth <= h.depth else {
            throw .corrupt(RecordKind.directoryLeaf.name, at: offset, "local depth \(leaf.localDepth) above global depth \(h.depth)")
        }
        return (l, leaf, offset)
    }

    /// fsck's view of a hashed directory: header, every table sector and slot, every leaf, and
    /// each name in the leaf its hash leads to. Each problem names the record and its offset.
    func structuralProblems(_ dir: UInt32) -> [String] {
        guard let ino = try? inode(dir), ino.storage != .inline else { return [] }
        var problems: [String] = []
        let h: DirectoryHeader
        do throws(FSError) { h = try directoryHeader(dir) } catch { return ["directory inode \(dir): \(error)"] }
        for s in 0..<h.tableSectors {
            do throws(FSError) { _ = try directoryRecord(dir, DirectoryLayout.firstTableSector + s, .directoryTable) } catch {
                problems.append("directory inode \(dir): \(error)")
            }
        }
        guard problems.isEmpty else { return problems }
        var table: [UInt32] = []
        for i in 0..<(1 << Int(h.depth)) {
            do throws(FSError) { table.append(try tableSlot(dir, i, limit: h.nextFreeSector)) } catch {
                return problems + ["directory inode \(dir): \(error)"]
            }
        }
        var count: UInt64 = 0
        for l in DirectoryLayout.firstLeafSector..<h.nextFreeSector {
            do throws(FSError) {
                let (b, offset) = try directoryRecord(dir, l, .directoryLeaf)
                let leaf = DirectoryLeaf(buffer: b)
                let entries = try leaf.entries(at: offset)
                count += UInt64(entries.count)
                if leaf.localDepth > h.depth {
                    problems.append("directory inode \(dir): leaf at byte offset \(offset) is deeper (\(leaf.localDepth)) than its table (\(h.depth))")
                }
                for e in entries where table[slotIndex(nameHash(e.name), depth: h.depth)] != l {
                    problems.append("directory inode \(dir): '\(String(decoding: e.name, as: UTF8.self))' in the leaf at byte offset \(offset) is not where its hash leads (unreachable by lookup)")
                }
            } catch {
                problems.append("directory inode \(dir): \(error)")
            }
        }
        if problems.isEmpty && count != h.entryCount {
            problems.append("directory inode \(dir): header counts \(h.entryCount) entries, leaves hold \(count)")
        }
        return problems
    }

    // MARK: repair

    /// Every entry of directory `ino` that can still be read, and whether any could not
    /// (fsck): an inline directory's entries up to the first damaged one; a hashed directory's
    /// entries of every leaf that verifies, whatever its header and table say. Entries of a
    /// damaged leaf are lost here; their inodes are found unreached and reconnected.
    func salvageEntries(_ ino: InodeRecord) -> (entries: [DirectoryEntry], lost: Bool) {
        let dir = ino.number
        if ino.storage == .inline {
            let used = Int(min(ino.size, UInt64(InodeRecord.inlineCapacity)))
            switch DirectoryEntry.decodeAll(UnsafeRawBufferPointer(rebasing: ino.inlineBytes[0..<used]), count: nil) {
            case .success(let e): return (e, UInt64(used) != ino.size)
            case .failure(let damage): return (damage.salvaged, true)
            }
        }
        let sectors = min(ino.size / sectorSize, UInt64(DirectoryLayout.maxLogicalSectors))
        var all: [DirectoryEntry] = []
        var lost = false
        var l = UInt64(DirectoryLayout.firstLeafSector)
        while l < sectors {
            defer { l += 1 }
            guard let offset = (try? directorySectorAddress(ino, l))?.offset else { lost = true; continue }
            guard let b = try? store.read(offset, .directoryLeaf), b.load(32, as: UInt32.self) == dir else { lost = true; continue }
            switch DirectoryEntry.decodeAll(UnsafeRawBufferPointer(DirectoryLeaf(buffer: b).usedEntries), count: nil) {
            case .success(let e): all += e
            case .failure(let damage): all += damage.salvaged; lost = true
            }
        }
        return (all, lost)
    }

    /// Writes directory `dir` anew holding exactly `entries` (fsck): its blocks go back, it
    /// starts again inline and grows as inserts need, so header, table and leaves are all
    /// rebuilt from the entries, whatever state they were in.
    func rewriteDirectory(_ dir: UInt32, _ entries: [DirectoryEntry]) throws(FSError) {
        knownNames.forgetAll()
        try freeUnits(dir, from: 0)
        try resetStorage(dir, to: .inline).size = 0
        for e in entries {
            try insert(dir, e)
            try store.commitIfLarge()
        }
    }

    // MARK: the directory interface

    func lookup(_ dir: UInt32, _ name: [UInt8]) throws(FSError) -> DirectoryEntry? {
        try lockDirectory(dir, forWriting: false)
        let ino = try inode(dir)
        guard ino.type == .directory else { throw FSError(.notDirectory) }
        if ino.storage == .inline { return try inlineEntries(ino).first { $0.name == name } }
        let (_, leaf, offset) = try leafRecord(dir, hash: nameHash(name))
        return try leaf.find(name, at: offset)
    }

    func entries(_ dir: UInt32) throws(FSError) -> [DirectoryEntry] {
        try lockDirectory(dir, forWriting: false)
        let ino = try inode(dir)
        guard ino.type == .directory else { throw FSError(.notDirectory) }
        if ino.storage == .inline { return try inlineEntries(ino) }
        let h = try directoryHeader(dir)
        var all: [DirectoryEntry] = []
        all.reserveCapacity(Int(h.entryCount))
        for l in DirectoryLayout.firstLeafSector..<h.nextFreeSector {
            let (b, offset) = try directoryRecord(dir, l, .directoryLeaf)
            all += try DirectoryLeaf(buffer: b).entries(at: offset)
        }
        return all
    }

    func isEmptyDirectory(_ dir: UInt32) throws(FSError) -> Bool {
        try lockDirectory(dir, forWriting: false)
        let ino = try inode(dir)
        if ino.storage == .inline { return ino.size == 0 }
        return try directoryHeader(dir).entryCount == 0
    }

    /// The directory's inode in the running transaction, its times set to now.
    private func changingDirectory(_ dir: UInt32) throws(FSError) -> InodeRecord {
        try lockDirectory(dir, forWriting: true)
        let ino = try modifyInode(dir)
        guard ino.type == .directory else { throw FSError(.notDirectory) }
        ino.mtime = wallClockNanoseconds()
        ino.ctime = ino.mtime
        return ino
    }

    func insert(_ dir: UInt32, _ entry: DirectoryEntry) throws(FSError) {
        let ino = try changingDirectory(dir)
        if ino.storage == .inline {
            var list = try inlineEntries(ino)
            if list.contains(where: { $0.name == entry.name }) { throw FSError(.exists) }
            list.append(entry)
            let bytes = list.reduce(0) { $0 + $1.encodedSize }
            if bytes <= InodeRecord.inlineCapacity {
                ino.size = UInt64(DirectoryEntry.encodeAll(list, into: ino.inlineBytes))
                return
            }
            list.removeLast()
            try convertToHashed(dir, list)
        }
        try hashedInsert(dir, entry)
    }

    /// Moves inline entries into a fresh hashed layout: header, one table sector, one leaf, in
    /// small blocks while the volume has them free, else in file blocks. A layout half made
    /// in small blocks (the header's block taken, the leaf's not there) is undone first.
    private func convertToHashed(_ dir: UInt32, _ list: [DirectoryEntry]) throws(FSError) {
        do {
            try store.attempt { () throws(FSError) in try layOutHashed(dir, list, in: .small) }
        } catch {
            guard case .noSpace = error.kind else { throw error }
            try layOutHashed(dir, list, in: .blocks)
        }
    }

    private func layOutHashed(_ dir: UInt32, _ list: [DirectoryEntry], in storage: InodeRecord.Storage) throws(FSError) {
        try resetStorage(dir, to: storage).size = 0
        let hb = try newDirectoryRecord(dir, DirectoryLayout.headerSector, .directoryHeader)
        DirectoryHeader.initialize(hb, directory: dir)
        let h = DirectoryHeader(buffer: hb)
        h.depth = 0
        h.tableSectors = 1
        h.nextFreeSector = DirectoryLayout.firstLeafSector + 1
        h.entryCount = UInt64(list.count)
        let tb = try newDirectoryRecord(dir, DirectoryLayout.firstTableSector, .directoryTable)
        DirectoryTableSector.initialize(tb, directory: dir, index: 0)
        DirectoryTableSector(buffer: tb).setSlot(0, DirectoryLayout.firstLeafSector)
        let lb = try newDirectoryRecord(dir, DirectoryLayout.firstLeafSector, .directoryLeaf)
        DirectoryLeaf.initialize(lb, directory: dir, depth: 0)
        guard DirectoryLeaf(buffer: lb).setEntries(list) else {
            throw FSError(.invalidArgument("inline directory entries do not fit one leaf"))
        }
        try modifyInode(dir).size = UInt64(h.nextFreeSector) * sectorSize
    }

    private func hashedInsert(_ dir: UInt32, _ entry: DirectoryEntry) throws(FSError) {
        let hash = nameHash(entry.name)
        while true {
            let (l, leaf, offset) = try leafRecord(dir, hash: hash)
            if try leaf.find(entry.name, at: offset) != nil { throw FSError(.exists) }
            let (b, _) = try directoryRecord(dir, l, .directoryLeaf, forWriting: true)
            if DirectoryLeaf(buffer: b).append(entry) {
                try directoryHeader(dir, forWriting: true).entryCount += 1
                return
            }
            let found = try leafFor(dir, hash: hash)
            try split(dir, leafSector: found.leafSector, entries: found.entries, localDepth: found.depth, hash: hash)
        }
    }

    /// Splits a full leaf by the next hash bit, doubling the table first when the leaf is
    /// already as deep as the table.
    private func split(_ dir: UInt32, leafSector: UInt32, entries: [DirectoryEntry], localDepth: UInt8, hash: UInt64) throws(FSError) {
        var h = try directoryHeader(dir, forWriting: true)
        if localDepth == h.depth {
            guard h.depth < DirectoryLayout.maxDepth else {
                throw FSError(.noSpace(resource: "room in this directory's hash table (too many names share a hash prefix)"))
            }
            let old = 1 << Int(h.depth)
            var slots: [UInt32] = []
            slots.reserveCapacity(old * 2)
            for i in 0..<old { slots.append(try tableSlot(dir, i, limit: h.nextFreeSector)) }
            let newDepth = h.depth + 1
            let newSectors = DirectoryLayout.tableSectors(depth: newDepth)
            for s in h.tableSectors..<newSectors {
                let tb = try newDirectoryRecord(dir, DirectoryLayout.firstTableSector + s, .directoryTable)
                DirectoryTableSector.initialize(tb, directory: dir, index: s)
            }
            for i in 0..<(old * 2) { try setTableSlot(dir, i, slots[i / 2]) }
            h = try directoryHeader(dir, forWriting: true)
            h.depth = newDepth
            h.tableSectors = newSectors
        }
        let depth = h.depth
        let newLeaf = h.nextFreeSector
        h.nextFreeSector += 1
        try modifyInode(dir).size = UInt64(newLeaf + 1) * sectorSize

        let bit = 63 - UInt64(localDepth)
        var stay: [DirectoryEntry] = [], move: [DirectoryEntry] = []
        for e in entries {
            if (nameHash(e.name) >> bit) & 1 == 1 { move.append(e) } else { stay.append(e) }
        }
        let (ob, _) = try directoryRecord(dir, leafSector, .directoryLeaf, forWriting: true)
        let oldLeaf = DirectoryLeaf(buffer: ob)
        _ = oldLeaf.setEntries(stay)
        oldLeaf.localDepth = localDepth + 1
        let nb = try newDirectoryRecord(dir, newLeaf, .directoryLeaf)
        DirectoryLeaf.initialize(nb, directory: dir, depth: localDepth + 1)
        _ = DirectoryLeaf(buffer: nb).setEntries(move)

        // The slots that shared the old leaf: a run of 2^(depth - localDepth); its upper half
        // now points at the new leaf.
        let prefix = localDepth == 0 ? 0 : Int(hash >> (64 - UInt64(localDepth)))
        let run = 1 << Int(depth - localDepth)
        let first = prefix << Int(depth - localDepth)
        for i in (first + run / 2)..<(first + run) { try setTableSlot(dir, i, newLeaf) }
    }

    @discardableResult
    func removeEntry(_ dir: UInt32, _ name: [UInt8]) throws(FSError) -> DirectoryEntry {
        knownNames.forgetAll()
        let ino = try changingDirectory(dir)
        if ino.storage == .inline {
            var list = try inlineEntries(ino)
            guard let i = list.firstIndex(where: { $0.name == name }) else { throw FSError(.notFound) }
            let removed = list.remove(at: i)
            ino.size = UInt64(DirectoryEntry.encodeAll(list, into: ino.inlineBytes))
            return removed
        }
        let found = try leafFor(dir, hash: nameHash(name))
        guard let i = found.entries.firstIndex(where: { $0.name == name }) else { throw FSError(.notFound) }
        var list = found.entries
        let removed = list.remove(at: i)
        let (b, _) = try directoryRecord(dir, found.leafSector, .directoryLeaf, forWriting: true)
        _ = DirectoryLeaf(buffer: b).setEntries(list)
        let (hb, offset) = try directoryRecord(dir, DirectoryLayout.headerSector, .directoryHeader, forWriting: true)
        let h = DirectoryHeader(buffer: hb)
        guard h.entryCount > 0 else { throw .corrupt(RecordKind.directoryHeader.name, at: offset, "counts no entries, but a leaf holds one") }
        h.entryCount -= 1
        return removed
    }
}
