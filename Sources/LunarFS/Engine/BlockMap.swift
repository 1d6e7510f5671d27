import LunarIO

/// A file's map from unit index (offset / unit size) to data unit numbers: up to 960 root
/// entries in the inode, each the top of a pointer-block tree of the inode's height. Grows in
/// height as the file grows; holes cost nothing.
extension VolumeCore {
    static let fanout = UInt64(PointerBlock.entries)
    static let rootEntries = UInt64(InodeRecord.rootEntries)

    /// Units a map of `height` can address.
    static func capacity(height: UInt8) -> UInt64 {
        var span: UInt64 = 1
        for _ in 0..<height { span *= fanout }
        return rootEntries * span
    }

    static func span(height: UInt8) -> UInt64 {
        var span: UInt64 = 1
        for _ in 0..<height { span *= fanout }
        return span
    }

    func unitArea(_ storage: InodeRecord.Storage) -> ResourceArea {
        storage == .small ? header.smallBlocks : header.fileBlocks
    }

    /// The resource a map of this storage maps: small blocks or file blocks (whose grains a
    /// grain map names).
    func unitKind(_ storage: InodeRecord.Storage) -> ResourceKind {
        storage == .small ? .smallBlock : .fileBlock
    }

    func unitSize(_ ino: InodeRecord) -> UInt64 {
        switch ino.storage {
        case .small: UInt64(header.smallBlockSize)
        case .grains: Self.grainSize
        default: UInt64(header.blockSize)
        }
    }

    /// Where the data unit a map entry names begins on the device.
    func unitOffset(_ storage: InodeRecord.Storage, _ unit: UInt32) -> UInt64 {
        storage == .grains ? grainOffset(unit) : unitArea(storage).offset(of: UInt64(unit))
    }

    /// Gives inode `n`, whose map holds no unit, an empty map of `storage` (an empty body,
    /// for inline storage) and returns it, in the running transaction.
    @discardableResult
    func resetStorage(_ n: UInt32, to storage: InodeRecord.Storage) throws(FSError) -> InodeRecord {
        let m = try modifyInode(n)
        m.clearBody()
        m.height = 0
        m.allocatedUnits = 0
        m.setStorage(storage)
        // A new grain map begins a family of its own (format.md §9.2).
        m.family = storage == .grains ? n : 0
        return m
    }

    private func pointerOffset(_ p: UInt32) -> UInt64 { header.pointerBlocks.offset(of: UInt64(p)) }

    func pointerBlock(_ p: UInt32, owner: UInt32, level: UInt8, forWriting: Bool = false) throws(FSError) -> PointerBlock {
        guard p > 0, UInt64(p) < header.pointerBlocks.count else {
            throw .corrupt(RecordKind.inode.name, at: inodeOffset(owner), "map refers to pointer block \(p), outside its area")
        }
        let offset = pointerOffset(p)
        if forWriting && holdsShared { modifiedInHold.insert(owner) }
        let b = forWriting ? try store.modify(offset, .pointerBlock) : try store.read(offset, .pointerBlock)
        let pb = PointerBlock(buffer: b)
        guard pb.owner == owner, pb.level == level else {
            throw .corrupt(RecordKind.pointerBlock.name, at: offset,
                           "belongs to inode \(pb.owner) at level \(pb.level), reached from inode \(owner) at level \(level)")
        }
        return pb
    }

    private func checkUnit(_ unit: UInt32, _ ino: InodeRecord, from offset: UInt64, _ what: RecordKind) throws(FSError) {
        guard let storage = ino.storage, storage == .grains ? isValidGrain(unit) : UInt64(unit) < unitArea(storage).count else {
            throw .corrupt(what.name, at: offset, "maps a data unit \(unit) outside its area")
        }
    }

    /// The data unit behind unit index `u`, or 0 for a hole.
    func lookupUnit(_ ino: InodeRecord, _ u: UInt64) throws(FSError) -> UInt32 {
        let h = ino.height
        guard u < Self.capacity(height: h) else { return 0 }
        var span = Self.span(height: h)
        var entry = ino.rootEntry(Int(u / span))
        var rem = u % span
        var level = h
        var from = inodeOffset(ino.number), fromKind = RecordKind.inode
        while level > 0 {
            if entry == 0 { return 0 }
            let pb = try pointerBlock(entry, owner: mapOwner(ino), level: level)
            from = pointerOffset(entry); fromKind = .pointerBlock
            span /= Self.fanout
            entry = pb.entry(Int(rem / span))
            rem %= span
            level -= 1
        }
        if entry != 0 { try checkUnit(entry, ino, from: from, fromKind) }
        return entry
    }

    /// Points unit index `u` of inode `n` at `unit` (0 makes it a hole), building pointer
    /// blocks and height as needed. Returns the unit it pointed at before.
    /// In a grain map, every pointer block on the way that other maps share is first made
    /// this map's own (`unshare`); what the entry named keeps its count (the caller's).
    @discardableResult
    func setUnit(_ n: UInt32, _ u: UInt64, _ unit: UInt32) throws(FSError) -> UInt32 {
        var ino = try modifyInode(n)
        let owner = mapOwner(ino)
        let shared = ino.storage == .grains
        guard u < Self.capacity(height: InodeRecord.maxHeight) else { throw FSError(.fileTooLarge) }
        while u >= Self.capacity(height: ino.height) {
            if unit == 0 { return 0 }
            try growHeight(n)
            ino = try modifyInode(n)
        }
        let h = ino.height
        var span = Self.span(height: h)
        let rootIndex = Int(u / span)
        var rem = u % span
        if h == 0 {
            let old = ino.rootEntry(rootIndex)
            ino.setRootEntry(rootIndex, unit)
            adjustAllocated(ino, old: old, new: unit)
            return old
        }
        var pbNumber = ino.rootEntry(rootIndex)
        if pbNumber == 0 {
            if unit == 0 { return 0 }
            pbNumber = try newPointerBlock(owner: owner, level: h, counted: shared)
            try modifyInode(n).setRootEntry(rootIndex, pbNumber)
        } else if shared {
            let own = try unshare(pbNumber, level: h, owner: owner)
            if own != pbNumber {
                pbNumber = own
                try modifyInode(n).setRootEntry(rootIndex, own)
            }
        }
        var level = h
        while true {
            span /= Self.fanout
            let index = Int(rem / span)
            rem %= span
            let pb = try pointerBlock(pbNumber, owner: owner, level: level, forWriting: true)
            if level == 1 {
                let old = pb.entry(index)
                pb.setEntry(index, unit)
                adjustAllocated(try modifyInode(n), old: old, new: unit)
                return old
            }
            var child = pb.entry(index)
            if child == 0 {
                if unit == 0 { return 0 }
                child = try newPointerBlock(owner: owner, level: level - 1, counted: shared)
                try pointerBlock(pbNumber, owner: owner, level: level, forWriting: true).setEntry(index, child)
            } else if shared {
                let own = try unshare(child, level: level - 1, owner: owner)
                if own != child {
                    child = own
                    try pointerBlock(pbNumber, owner: owner, level: level, forWriting: true).setEntry(index, child)
                }
            }
            pbNumber = child
            level -= 1
        }
    }

    private func adjustAllocated(_ ino: InodeRecord, old: UInt32, new: UInt32) {
        if old == 0 && new != 0 { ino.allocatedUnits += 1 }
        if old != 0 && new == 0 { ino.unitUnmapped() }
    }

    /// A new pointer block of a map whose blocks carry `owner`; `counted` (a grain map's):
    /// its reference count set to 1.
    func newPointerBlock(owner: UInt32, level: UInt8, counted: Bool) throws(FSError) -> UInt32 {
        var p: UInt32
        repeat { p = UInt32(try allocate(.pointerBlock)) } while try pointerBlockInUse(p)
        PointerBlock.initialize(try store.create(pointerOffset(p), .pointerBlock), owner: owner, level: level)
        if counted { try setReferenceCount(.pointerBlock, p, 1) }
        return p
    }

    /// Whether pointer block `p`, just allocated, is still part of the map of the inode it
    /// names as its owner: a bitmap bit lost by a write that never landed. Such a block
    /// keeps its bit (as it should have had) and is not handed out, so no live map is
    /// overwritten. A freed pointer block keeps its stale record, so the owner's map decides.
    private func pointerBlockInUse(_ p: UInt32) throws(FSError) -> Bool {
        // A shared volume counts the references to every pointer block of a grain map.
        if header.sharedBlocks, try referenceCount(.pointerBlock, p) > 0 { return true }
        let offset = pointerOffset(p)
        let raw = try store.readRaw(offset)
        guard raw.problem(as: .pointerBlock, at: offset) == nil,
              let ino = try? inode(PointerBlock(buffer: raw).owner), ino.height > 0 else { return false }
        var found = false
        try? walkMap(ino, pointerBlock: { (q, _) throws(FSError) in if q == p { found = true } }, damaged: { _, _ in }) { (_, _) throws(FSError) -> Bool in
            !found
        }
        return found
    }

    /// One level more: the old root becomes the first 960 entries of a new top pointer block.
    private func growHeight(_ n: UInt32) throws(FSError) {
        let ino = try modifyInode(n)
        let h = ino.height
        guard h < InodeRecord.maxHeight else { throw FSError(.fileTooLarge) }
        if (0..<InodeRecord.rootEntries).allSatisfy({ ino.rootEntry($0) == 0 }) {
            ino.height = h + 1
            return
        }
        let owner = mapOwner(ino)
        let p = try newPointerBlock(owner: owner, level: h + 1, counted: ino.storage == .grains)
        let pb = try pointerBlock(p, owner: owner, level: h + 1, forWriting: true)
        let ino2 = try modifyInode(n)
        for i in 0..<InodeRecord.rootEntries {
            pb.setEntry(i, ino2.rootEntry(i))
            ino2.setRootEntry(i, 0)
        }
        ino2.setRootEntry(0, p)
        ino2.height = h + 1
    }

    /// Where a map entry lives: a root entry of the inode (`pointerBlock` nil) or an entry of
    /// a pointer block.
    struct MapEntry: Equatable {
        var pointerBlock: UInt32?
        /// The level of the pointer block holding it (the map's height for a root entry).
        var level: UInt8
        var index: Int
    }

    /// Calls `body(unitIndex, unit)` for every mapped unit at or after `from`, in order;
    /// `body` returns false to stop. `pointerBlock(p, level)` sees every pointer block walked.
    /// With `damaged`, an entry naming a unit outside its area or a pointer block that is not
    /// sound is handed to it and skipped, and the walk goes on (fsck: what lies under an
    /// intact entry must still count as used); without, it is thrown.
    func walkMap(_ ino: InodeRecord, from: UInt64 = 0,
                 pointerBlock visit: ((UInt32, UInt8) throws(FSError) -> Void)? = nil,
                 damaged: ((MapEntry, FSError) -> Void)? = nil,
                 _ body: (UInt64, UInt32) throws(FSError) -> Bool) throws(FSError) {
        // An inline inode's body is its data, not a map.
        guard ino.storage != .inline else { return }
        let h = ino.height
        let span = Self.span(height: h)
        for i in 0..<InodeRecord.rootEntries {
            let e = ino.rootEntry(i)
            if e == 0 { continue }
            let base = UInt64(i) * span
            if base + span <= from { continue }
            let entry = MapEntry(pointerBlock: nil, level: h, index: i)
            if h == 0 {
                guard try checked(entry, damaged, { () throws(FSError) in try checkUnit(e, ino, from: inodeOffset(ino.number), .inode) }) else { continue }
                if try !body(base, e) { return }
            } else if try !walkSubtree(ino, e, at: entry, level: h, base: base, span: span, from: from, visit, damaged, body) {
                return
            }
        }
    }

    /// Runs a check of one map entry: true when it passed, false when it failed and `damaged`
    /// took the error.
    private func checked(_ entry: MapEntry, _ damaged: ((MapEntry, FSError) -> Void)?,
                         _ check: () throws(FSError) -> Void) throws(FSError) -> Bool {
        do throws(FSError) {
            try check()
            return true
        } catch {
            guard let damaged, case .corrupt = error.kind else { throw error }
            damaged(entry, error)
            return false
        }
    }

    private func walkSubtree(_ ino: InodeRecord, _ p: UInt32, at entry: MapEntry, level: UInt8, base: UInt64, span: UInt64, from: UInt64,
                             _ visit: ((UInt32, UInt8) throws(FSError) -> Void)?,
                             _ damaged: ((MapEntry, FSError) -> Void)?,
                             _ body: (UInt64, UInt32) throws(FSError) -> Bool) throws(FSError) -> Bool {
        var found: PointerBlock?
        guard try checked(entry, damaged, { () throws(FSError) in found = try pointerBlock(p, owner: mapOwner(ino), level: level) }),
              let pb = found else { return true }
        try visit?(p, level)
        let child = span / Self.fanout
        for i in 0..<PointerBlock.entries {
            let e = pb.entry(i)
            if e == 0 { continue }
            let lo = base + UInt64(i) * child
            if lo + child <= from { continue }
            let inner = MapEntry(pointerBlock: p, level: level, index: i)
            if level == 1 {
                guard try checked(inner, damaged, { () throws(FSError) in try checkUnit(e, ino, from: pointerOffset(p), .pointerBlock) }) else { continue }
                if try !body(lo, e) { return false }
            } else if try !walkSubtree(ino, e, at: inner, level: level - 1, base: lo, span: child, from: from, visit, damaged, body) {
                return false
            }
        }
        return true
    }

    /// Makes one map entry a hole without freeing what it named (fsck: a damaged pointer
    /// block, or a unit outside its area, that no walk can trust).
    func clearMapEntry(_ n: UInt32, _ entry: MapEntry) throws(FSError) {
        guard let p = entry.pointerBlock else {
            try modifyInode(n).setRootEntry(entry.index, 0)
            return
        }
        try pointerBlock(p, owner: mapOwner(try inode(n)), level: entry.level, forWriting: true).setEntry(entry.index, 0)
    }

    /// Unmaps every unit at index `from` or beyond and frees it, and every pointer block left
    /// empty, committing along the way when the transaction grows large (each step leaves a
    /// consistent file: a hole where data was). A directory's units held records.
    func freeUnits(_ n: UInt32, from: UInt64) throws(FSError) {
        let ino = try inode(n)
        guard let storage = ino.storage, storage != .inline else { return }
        if storage == .grains { return try releaseGrains(n, from: from) }
        let kind = unitKind(storage)
        let records = ino.type == .directory
        let h = ino.height
        let span = Self.span(height: h)
        for i in 0..<InodeRecord.rootEntries {
            let e = try inode(n).rootEntry(i)
            if e == 0 { continue }
            let base = UInt64(i) * span
            if base + span <= from { continue }
            if h == 0 {
                try freeAtCommit(kind, UInt64(e), heldRecords: records)
                let m = try modifyInode(n)
                m.setRootEntry(i, 0)
                m.unitUnmapped()
            } else if try freeSubtree(n, e, level: h, base: base, span: span, from: from, kind: kind, records: records) {
                try freeAtCommit(.pointerBlock, UInt64(e))
                try modifyInode(n).setRootEntry(i, 0)
            }
            try store.commitIfLarge()
        }
    }

    /// Returns whether the subtree is empty afterwards.
    private func freeSubtree(_ n: UInt32, _ p: UInt32, level: UInt8, base: UInt64, span: UInt64, from: UInt64,
                             kind: ResourceKind, records: Bool) throws(FSError) -> Bool {
        let child = span / Self.fanout
        var empty = true
        for i in 0..<PointerBlock.entries {
            // Re-read each time: a commit in between may have moved the sector out of the
            // running transaction.
            let e = try pointerBlock(p, owner: n, level: level).entry(i)
            if e == 0 { continue }
            let lo = base + UInt64(i) * child
            if lo + child <= from { empty = false; continue }
            if level == 1 {
                try freeAtCommit(kind, UInt64(e), heldRecords: records)
                try pointerBlock(p, owner: n, level: level, forWriting: true).setEntry(i, 0)
                try modifyInode(n).unitUnmapped()
            } else if try freeSubtree(n, e, level: level - 1, base: lo, span: child, from: from, kind: kind, records: records) {
                try freeAtCommit(.pointerBlock, UInt64(e))
                try pointerBlock(p, owner: n, level: level, forWriting: true).setEntry(i, 0)
            } else {
                empty = false
            }
            try store.commitIfLarge()
        }
        return empty
    }
}
