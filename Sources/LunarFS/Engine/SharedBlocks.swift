import LunarIO

/// Format 2's shared blocks (format.md §9): reference counts of pointer blocks and grains,
/// grain allocation, copy on write and clones. A grain map's tree may be shared by several
/// inodes (a file, its snapshots, its clones); a pointer block or grain whose count is above 1
/// is copied before it is changed, so each map reads as if it were alone.
extension VolumeCore {
    static let grainSize = UInt64(Geometry.grainSize)
    var grainsPerBlock: UInt64 { UInt64(header.grainsPerBlock) }

    /// The owner a pointer block of this inode's map carries: the family for a grain map,
    /// whose blocks several inodes of one family may share.
    func mapOwner(_ ino: InodeRecord) -> UInt32 { ino.storage == .grains ? ino.family : ino.number }

    func grainOffset(_ g: UInt32) -> UInt64 {
        header.fileBlocks.offset(of: UInt64(g) / grainsPerBlock) + (UInt64(g) % grainsPerBlock) * Self.grainSize
    }

    func isValidGrain(_ g: UInt32) -> Bool {
        let block = UInt64(g) / grainsPerBlock
        return block >= 1 && block < header.fileBlocks.count
    }

    // MARK: counts

    /// Where a count lives: the resource and the grain within it (0 for a pointer block).
    private func countPlace(_ kind: ResourceKind, _ e: UInt32) -> (index: UInt64, grain: Int) {
        kind == .fileBlock ? (UInt64(e) / grainsPerBlock, Int(UInt64(e) % grainsPerBlock)) : (UInt64(e), 0)
    }

    private func countSector(_ kind: ResourceKind, _ index: UInt64, grain: Int, forWriting: Bool) throws(FSError) -> (ReferenceCountSector, Int) {
        let area = header.area(kind)
        guard header.sharedBlocks, area.countSectors > 0 else {
            throw FSError(.invalidArgument("this volume keeps no reference counts (format 1); blocks cannot be shared on it"))
        }
        guard index > 0, index < area.count else {
            throw .corrupt(kind.description, at: area.dataOffset, "reference count of resource \(index), outside the area")
        }
        let place = area.countLocation(index, grain: grain)
        if forWriting && holdsShared { try holdCluster(of: kind, index) }
        let b = forWriting ? try store.modify(place.offset, .referenceCounts) : try store.read(place.offset, .referenceCounts)
        let sector = ReferenceCountSector(buffer: b)
        if let problem = sector.problem(kind: kind, cluster: place.cluster, sector: place.sector) {
            throw .corrupt(RecordKind.referenceCounts.name, at: place.offset, problem)
        }
        return (sector, place.slot)
    }

    /// How many map entries name pointer block `e` (`.pointerBlock`) or grain `e` (`.fileBlock`).
    func referenceCount(_ kind: ResourceKind, _ e: UInt32) throws(FSError) -> UInt16 {
        let (index, grain) = countPlace(kind, e)
        let (sector, slot) = try countSector(kind, index, grain: grain, forWriting: false)
        return sector.count(slot)
    }

    func setReferenceCount(_ kind: ResourceKind, _ e: UInt32, _ value: UInt16) throws(FSError) {
        let (index, grain) = countPlace(kind, e)
        let (sector, slot) = try countSector(kind, index, grain: grain, forWriting: true)
        sector.setCount(slot, value)
    }

    /// The kind of what an entry at `level` of a grain map names: a grain at level 0.
    static func referencedKind(level: UInt8) -> ResourceKind { level == 0 ? .fileBlock : .pointerBlock }

    /// Changes the count of `e` by `delta` (+1 or −1) and returns the count before. The
    /// count is read under its cluster's lock (a shared hold takes it first), never from what
    /// was cached before: another host may have changed it since.
    private func adjustReferenceCount(_ kind: ResourceKind, _ e: UInt32, by delta: Int) throws(FSError) -> UInt16 {
        let (index, grain) = countPlace(kind, e)
        let (sector, slot) = try countSector(kind, index, grain: grain, forWriting: true)
        let count = sector.count(slot)
        let what = kind == .fileBlock ? "grain" : "pointer block"
        guard count > 0 else {
            throw .corrupt(kind.description, at: header.area(kind).dataOffset, "a map names \(what) \(e), whose reference count is 0")
        }
        guard Int(count) + delta <= Int(ReferenceCountSector.maximum) else {
            throw FSError(.invalidArgument("\(what) \(e) is shared by \(count) maps already, the most a count holds; delete snapshots or clones first"))
        }
        sector.setCount(slot, UInt16(Int(count) + delta))
        store.noteRecount(kind, e)
        return count
    }

    /// One more map entry names `e` (a grain at level 0, else a pointer block).
    func addReference(_ e: UInt32, level: UInt8) throws(FSError) {
        _ = try adjustReferenceCount(Self.referencedKind(level: level), e, by: 1)
    }

    /// One map entry fewer names `e`. What no entry names any more is released: a pointer
    /// block's own entries first, then the block; a grain, and its file block once all its
    /// grains are free. `owner` is the family the pointer blocks below carry.
    func dropReference(_ e: UInt32, level: UInt8, owner: UInt32) throws(FSError) {
        guard try adjustReferenceCount(Self.referencedKind(level: level), e, by: -1) == 1 else { return }
        if level == 0 {
            let block = UInt64(e) / grainsPerBlock
            if try !grainsInUse(block) {
                if cursors.grainBlock == block { cursors.grainBlock = nil }
                try freeAtCommit(.fileBlock, block)
            }
            return
        }
        // Releases empty a block before it goes (`releaseEntry`); one still holding entries
        // gives them up here, in the same transaction.
        let pb = try pointerBlock(e, owner: owner, level: level)
        let children = (0..<PointerBlock.entries).map { pb.entry($0) }.filter { $0 != 0 }
        for child in children { try dropReference(child, level: level - 1, owner: owner) }
        try freeAtCommit(.pointerBlock, UInt64(e))
    }

    // MARK: grains

    /// A free grain, its count set to 1: from the file block this host is filling, else from a
    /// new one.
    func allocateGrain() throws(FSError) -> UInt32 {
        if let block = cursors.grainBlock, let k = try freeGrain(in: block) {
            let g = UInt32(block * grainsPerBlock) + k
            try setReferenceCount(.fileBlock, g, 1)
            return g
        }
        cursors.grainBlock = nil
        let first = try allocateGrainBlock(grains: 1)
        cursors.grainBlock = UInt64(first) / grainsPerBlock
        return first
    }

    /// A new file block whose first `grains` grains are taken (count 1); returns its first.
    /// A run of a whole block's grains lies contiguous, as a file block would.
    func allocateGrainBlock(grains: Int) throws(FSError) -> UInt32 {
        let block = try allocateDataUnit(.fileBlock)
        let first = UInt32(block * grainsPerBlock)
        for k in 0..<UInt32(grains) { try setReferenceCount(.fileBlock, first + k, 1) }
        return first
    }

    /// A data unit (small block or file block) for a map. On a shared volume a file block
    /// whose bit was lost while grains of it are still named keeps its bit and is passed over.
    func allocateDataUnit(_ kind: ResourceKind) throws(FSError) -> UInt64 {
        while true {
            let unit = try allocate(kind)
            guard kind == .fileBlock, header.sharedBlocks, try grainsInUse(unit) else { return unit }
        }
    }

    private func grainsInUse(_ block: UInt64) throws(FSError) -> Bool {
        for k in 0..<UInt32(grainsPerBlock) where try referenceCount(.fileBlock, UInt32(block * grainsPerBlock) + k) > 0 { return true }
        return false
    }

    /// A free grain of `block`, if the block is still one this host may take grains from: in
    /// use as grains (its bit set, a grain of it named) and, under a shared hold, in a cluster
    /// this hold has.
    private func freeGrain(in block: UInt64) throws(FSError) -> UInt32? {
        let area = header.fileBlocks
        guard block > 0, block < area.count else { return nil }
        let c = area.cluster(of: block)
        if holdsShared, heldClusters[.fileBlock]?.contains(c) != true { return nil }
        guard let cluster = try skippingDamage({ () throws(FSError) in try clusterHeader(.fileBlock, c, forWriting: false) }),
              cluster.isUsed(Int(block - cluster.firstResource)) else { return nil }
        var free: UInt32?
        var named = false
        for k in 0..<UInt32(grainsPerBlock) {
            let g = UInt32(block * grainsPerBlock) + k
            if try referenceCount(.fileBlock, g) == 0 {
                // Freed by a change not yet committed: the committed maps may still name it.
                if free == nil, !store.isRecounted(.fileBlock, g) { free = k }
            } else {
                named = true
            }
        }
        return named ? free : nil
    }

    // MARK: copy on write

    /// Makes pointer block `p` (at `level`, named by one entry of a map of `owner`) this map's
    /// own: when another map names it too, a copy takes its place, every entry of the copy one
    /// reference more, `p` one fewer. Returns the block to change (the copy, or `p`).
    func unshare(_ p: UInt32, level: UInt8, owner: UInt32) throws(FSError) -> UInt32 {
        guard try referenceCount(.pointerBlock, p) > 1 else { return p }
        let source = try pointerBlock(p, owner: owner, level: level)
        let values = (0..<PointerBlock.entries).map { source.entry($0) }
        let copy = try newPointerBlock(owner: owner, level: level, counted: true)
        let target = try pointerBlock(copy, owner: owner, level: level, forWriting: true)
        for (i, e) in values.enumerated() where e != 0 {
            target.setEntry(i, e)
            try addReference(e, level: level - 1)
        }
        try dropReference(p, level: level, owner: owner)
        return copy
    }

    /// A new inode at `path` whose map is `source`'s, sharing every block: O(root entries),
    /// whatever the size. Files that fit in their inode or one small block are copied.
    func cloneFile(_ source: UInt32, into dir: UInt32, name: [UInt8]) throws(FSError) -> UInt32 {
        let from = try inode(source)
        guard from.type == .regular else { throw FSError(.isDirectory) }
        // A writer elsewhere may write its blocks in place, straight to the device, after they
        // became shared: only a file nobody else writes is cloned here.
        let lock = try InodeLock.decode(from, at: inodeOffset(source))
        if lock.record.mode != .sharedReadOnly, let holder = try otherHolder(of: source) {
            throw FSError(.busy("it is open for writing on \(holder.description); close it there first"))
        }
        guard header.sharedBlocks else {
            throw FSError(.invalidArgument("this volume was made by format 1, which cannot share blocks; make a new volume (`lunar fs mkfs`) and copy the files to it"))
        }
        let n = try createNode(in: dir, name: name, type: .regular, mode: from.mode)
        switch from.storage {
        case .inline, .small, nil:
            // At most 64 KiB: a copy costs less than sharing would save.
            if from.size > 0 {
                let bytes = IOBuffer(count: Int(from.size))
                _ = try read(source, at: 0, into: bytes.bytes)
                try write(n, at: 0, from: UnsafeRawBufferPointer(bytes.bytes))
            }
            try modifyInode(n).size = from.size
        case .blocks:
            throw FSError(.invalidArgument("file was written before this volume kept shared blocks; copy it (`lunar fs cp`) to make it one that can be cloned"))
        case .grains:
            let m = try modifyInode(n)
            m.setStorage(.grains)
            m.family = from.family
            m.height = from.height
            m.size = from.size
            m.allocatedUnits = from.allocatedUnits
            let level = from.height
            for i in 0..<InodeRecord.rootEntries {
                let e = try inode(source).rootEntry(i)
                guard e != 0 else { continue }
                try addReference(e, level: level)
                try modifyInode(n).setRootEntry(i, e)
            }
        }
        return n
    }
}

// MARK: releasing a grain map's entries

extension VolumeCore {
    /// Unmaps every grain of grain map `n` at index `from` or beyond, one reference fewer to
    /// each: what other maps share stays for them, what was this map's alone is freed. Each
    /// step (committed along the way when the transaction grows large) leaves a consistent
    /// map: holes where data was.
    func releaseGrains(_ n: UInt32, from: UInt64) throws(FSError) {
        let ino = try inode(n)
        let owner = mapOwner(ino)
        let h = ino.height
        let span = Self.span(height: h)
        for i in 0..<InodeRecord.rootEntries {
            let e = try inode(n).rootEntry(i)
            if e == 0 { continue }
            let base = UInt64(i) * span
            if base + span <= from { continue }
            if h == 0 || base >= from {
                try releaseEntry(n, e, level: h, owner: owner) { () throws(FSError) in try modifyInode(n).setRootEntry(i, 0) }
            } else {
                let own = try unshare(e, level: h, owner: owner)
                if own != e { try modifyInode(n).setRootEntry(i, own) }
                try releaseBelow(n, own, level: h, base: base, span: span, from: from, owner: owner)
            }
            try store.commitIfLarge()
        }
    }

    /// Releases the entries of pointer block `p` (this map's own) that cover `from` or beyond.
    private func releaseBelow(_ n: UInt32, _ p: UInt32, level: UInt8, base: UInt64, span: UInt64, from: UInt64, owner: UInt32) throws(FSError) {
        let child = span / Self.fanout
        for i in 0..<PointerBlock.entries {
            let e = try pointerBlock(p, owner: owner, level: level).entry(i)
            if e == 0 { continue }
            let lo = base + UInt64(i) * child
            if lo + child <= from { continue }
            let clear = { () throws(FSError) in try self.pointerBlock(p, owner: owner, level: level, forWriting: true).setEntry(i, 0) }
            if level == 1 || lo >= from {
                try releaseEntry(n, e, level: level - 1, owner: owner, clear: clear)
            } else {
                let own = try unshare(e, level: level - 1, owner: owner)
                if own != e { try pointerBlock(p, owner: owner, level: level, forWriting: true).setEntry(i, own) }
                try releaseBelow(n, own, level: level - 1, base: lo, span: child, from: from, owner: owner)
            }
            try store.commitIfLarge()
        }
    }

    /// Releases one entry of map `n` naming `e` at `level` (`clear` makes the entry a hole).
    /// Shared with other maps: the entry goes, with one reference. This map's alone: a
    /// pointer block's own entries go first, one by one, then the entry and the block.
    private func releaseEntry(_ n: UInt32, _ e: UInt32, level: UInt8, owner: UInt32, clear: () throws(FSError) -> Void) throws(FSError) {
        var lost: UInt64 = 1
        if level > 0 {
            if try referenceCount(.pointerBlock, e) == 1 {
                for i in 0..<PointerBlock.entries {
                    let c = try pointerBlock(e, owner: owner, level: level).entry(i)
                    if c == 0 { continue }
                    try releaseEntry(n, c, level: level - 1, owner: owner) { () throws(FSError) in
                        try self.pointerBlock(e, owner: owner, level: level, forWriting: true).setEntry(i, 0)
                    }
                    try store.commitIfLarge()
                }
                lost = 0
            } else {
                lost = try grainsNamed(below: e, level: level, owner: owner)
            }
        }
        try clear()
        try dropReference(e, level: level, owner: owner)
        let m = try modifyInode(n)
        m.allocatedUnits -= min(lost, m.allocatedUnits)
    }

    /// Grains the subtree under pointer block `p` names.
    func grainsNamed(below p: UInt32, level: UInt8, owner: UInt32) throws(FSError) -> UInt64 {
        let pb = try pointerBlock(p, owner: owner, level: level)
        var total: UInt64 = 0
        for i in 0..<PointerBlock.entries {
            let e = pb.entry(i)
            if e == 0 { continue }
            total += level == 1 ? 1 : try grainsNamed(below: e, level: level - 1, owner: owner)
        }
        return total
    }

    /// Whether any pointer block on grain index `u`'s path in `ino`'s map is shared with
    /// another map (then a change must copy the path first). `orRecounted`: or had its count
    /// changed by a change not yet committed (then the committed maps may share it).
    func pathIsShared(_ ino: InodeRecord, _ u: UInt64, orRecounted: Bool = false) throws(FSError) -> Bool {
        let h = ino.height
        guard h > 0, u < Self.capacity(height: h) else { return false }
        let owner = mapOwner(ino)
        var span = Self.span(height: h)
        var entry = ino.rootEntry(Int(u / span))
        var rem = u % span
        var level = h
        while level > 0, entry != 0 {
            if try referenceCount(.pointerBlock, entry) > 1 { return true }
            if orRecounted, store.isRecounted(.pointerBlock, entry) { return true }
            let pb = try pointerBlock(entry, owner: owner, level: level)
            span /= Self.fanout
            entry = pb.entry(Int(rem / span))
            rem %= span
            level -= 1
        }
        return false
    }

    /// Whether data may be written in place into grain `g`, mapped at index `u` of `ino`'s map:
    /// this map alone names it, and the committed maps, which a crash would bring back, name it
    /// the same way — neither its count nor that of a pointer block on its path was changed by
    /// a change not yet committed. Otherwise a write copies the grain (format.md §9.4).
    func isOwnGrain(_ ino: InodeRecord, _ u: UInt64, _ g: UInt32) throws(FSError) -> Bool {
        guard try referenceCount(.fileBlock, g) == 1, !store.isRecounted(.fileBlock, g) else { return false }
        return try !pathIsShared(ino, u, orRecounted: true)
    }
}

// MARK: changed blocks

extension VolumeCore {
    /// The byte ranges where grain map `newer` differs from `older` (two maps of one family: a
    /// disk and its snapshot, two snapshots, a clone), from the maps alone: a subtree both
    /// name by the same pointer block is the same and is not read, so the cost follows what
    /// changed, not the size. A range that became a hole counts as changed (it reads zeros now).
    func changedRanges(from older: UInt32, to newer: UInt32) throws(FSError) -> [Range<UInt64>] {
        let a = try inode(older), b = try inode(newer)
        guard a.storage == .grains, b.storage == .grains, a.family == b.family else {
            throw FSError(.invalidArgument("the two files are not a disk and its snapshot or clone (they share no blocks); changes are known only within one tree"))
        }
        let owner = a.family
        var ranges: [Range<UInt64>] = []
        func emit(_ first: UInt64, _ count: UInt64) {
            let range = (first * Self.grainSize)..<((first + count) * Self.grainSize)
            if let last = ranges.last, last.upperBound == range.lowerBound {
                ranges[ranges.count - 1] = last.lowerBound..<range.upperBound
            } else {
                ranges.append(range)
            }
        }
        func entries(_ p: UInt32, level: UInt8) throws(FSError) -> [UInt32] {
            guard p != 0 else { return [] }
            let pb = try pointerBlock(p, owner: owner, level: level)
            return (0..<PointerBlock.entries).map { pb.entry($0) }
        }
        /// Entries at `level` (0: grains), entry i covering `span` grains from `base + i × span`.
        func compare(_ x: [UInt32], _ y: [UInt32], level: UInt8, base: UInt64, span: UInt64) throws(FSError) {
            for i in 0..<max(x.count, y.count) {
                let p = i < x.count ? x[i] : 0, q = i < y.count ? y[i] : 0
                if p == q { continue }
                let start = base + UInt64(i) * span
                if level == 0 {
                    emit(start, 1)
                } else {
                    try compare(try entries(p, level: level), try entries(q, level: level), level: level - 1, base: start, span: span / Self.fanout)
                }
            }
        }
        var x = (0..<InodeRecord.rootEntries).map { a.rootEntry($0) }, y = (0..<InodeRecord.rootEntries).map { b.rootEntry($0) }
        var lx = a.height, ly = b.height
        // A taller map's root entry 0 holds what the shorter map's whole root covers (a map
        // grows by moving its root into a new pointer block): what lies past it is compared
        // with holes, then both sides go down to the same level.
        while lx != ly {
            if lx > ly {
                try compare(Array([0] + x.dropFirst()), [], level: lx, base: 0, span: Self.span(height: lx))
                x = try entries(x[0], level: lx)
                lx -= 1
            } else {
                try compare([], Array([0] + y.dropFirst()), level: ly, base: 0, span: Self.span(height: ly))
                y = try entries(y[0], level: ly)
                ly -= 1
            }
        }
        try compare(x, y, level: lx, base: 0, span: Self.span(height: lx))
        // Past the end of the shorter file a longer one reads what it holds: its holes too
        // are zeros either way. Ranges end at the larger size.
        let end = max(a.size, b.size)
        // The parts past a taller root's first entry came first: in order, joined, clipped.
        var ordered: [Range<UInt64>] = []
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) where r.lowerBound < end {
            let clipped = r.lowerBound..<min(r.upperBound, end)
            if let last = ordered.last, last.upperBound == clipped.lowerBound {
                ordered[ordered.count - 1] = last.lowerBound..<clipped.upperBound
            } else {
                ordered.append(clipped)
            }
        }
        return ordered
    }
}

// MARK: what a map holds alone

extension VolumeCore {
    /// Grains map `n` names, and of them those no other map names (every block on the way to
    /// them, and they, counted once): what removing the file would give back.
    func grainUsage(_ n: UInt32) throws(FSError) -> (mapped: UInt64, alone: UInt64) {
        let ino = try inode(n)
        guard ino.storage == .grains else {
            let units = ino.allocatedUnits
            return (units, units)
        }
        let owner = mapOwner(ino)
        var mapped: UInt64 = 0, alone: UInt64 = 0
        func visit(_ e: UInt32, level: UInt8, shared: Bool) throws(FSError) {
            if level == 0 {
                mapped += 1
                if !shared, try referenceCount(.fileBlock, e) == 1 { alone += 1 }
                return
            }
            var below = shared
            if !below { below = try referenceCount(.pointerBlock, e) > 1 }
            let pb = try pointerBlock(e, owner: owner, level: level)
            for child in (0..<PointerBlock.entries).map({ pb.entry($0) }) where child != 0 {
                try visit(child, level: level - 1, shared: below)
            }
        }
        for i in 0..<InodeRecord.rootEntries {
            let e = ino.rootEntry(i)
            if e != 0 { try visit(e, level: ino.height, shared: false) }
        }
        return (mapped, alone)
    }
}
