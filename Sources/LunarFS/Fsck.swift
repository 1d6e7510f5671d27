import Glibc
import LunarIO

/// What `fsck` found, and what it did about it.
public struct FsckReport: Sendable {
    public struct Problem: Sendable, CustomStringConvertible {
        public var message: String
        /// Whether `--repair` fixed it (or would fix it).
        public var repaired: Bool
        public var description: String { message }
    }
    public var problems: [Problem] = []
    public var notes: [String] = []
    public var inodesChecked = 0
    public var directoriesChecked = 0
    public var unitsReferenced = 0

    public var isClean: Bool { problems.isEmpty }
    public var unrepaired: [Problem] { problems.filter { !$0.repaired } }
    /// e2fsck's convention: 0 clean, 1 errors corrected, 4 errors left.
    public var exitCode: Int32 { problems.isEmpty ? 0 : unrepaired.isEmpty ? 1 : 4 }
}

/// A bitset over one resource area.
struct ResourceBits {
    private var words: [UInt64]
    init(count: UInt64) { words = [UInt64](repeating: 0, count: Int((count + 63) / 64)) }
    /// Sets the bit; returns whether it was already set.
    mutating func mark(_ i: UInt64) -> Bool {
        let w = Int(i / 64), b = UInt64(1) << (i % 64)
        let was = words[w] & b != 0
        words[w] |= b
        return was
    }
    func contains(_ i: UInt64) -> Bool { words[Int(i / 64)] & (UInt64(1) << (i % 64)) != 0 }
}

/// The checker: every record's checksum and fields, the volume lock, host slots and journals,
/// cluster bitmaps against what the tree references (leaked, missing and doubly used
/// resources), the directory tree (dangling and duplicate entries, loops, unreached inodes),
/// sizes against maps.
///
/// With `repair` it mends what it finds so that nothing a sound sector holds is lost: a field
/// that cannot be right is recomputed from the rest of the volume; a damaged slot, journal
/// header or cluster header is written anew (the cluster from what the maps reference); a
/// damaged directory is rebuilt from the entries that can still be read; a map entry naming a
/// damaged pointer block becomes a hole; a unit two files claim is copied for the later one
/// (e2fsck's passes 1B–1D); and every inode in use that no directory reaches — the children
/// of a damaged directory, a whole tree under a damaged root — goes into `/lost+found`, named
/// `#inode` as e2fsck names them. Resources are handed out only after the bitmaps agree with
/// the maps, so no repair allocates a unit some map still references.
final class Checker {
    let core: VolumeCore
    let repair: Bool
    var report = FsckReport()
    private var referenced: [ResourceKind: ResourceBits] = [:]
    /// Inode -> the directory that names it (the root names itself).
    private var reached: [UInt32: UInt32] = [:]
    /// In use but unusable: not reconnected, and whatever only they referenced is freed.
    private var damagedInodes: Set<UInt32> = []
    private var damagedClusters: [(ResourceKind, Int)] = []
    /// Directories to write anew, with the entries they are to hold.
    private var rewrites: [UInt32: [DirectoryEntry]] = [:]
    /// Data units a later owner maps that an earlier one holds: the later one gets a copy.
    private var crossLinks: [(inode: UInt32, unitIndex: UInt64, kind: ResourceKind)] = []
    /// Format 2: map entries naming each pointer block and each grain of a grain map, counted
    /// once per entry however many maps share the block holding it (format.md §9.3).
    private var pointerReferences: [UInt32: Int] = [:]
    private var grainReferences: [UInt32: Int] = [:]
    /// Grain-map pointer blocks already walked: grains below, and the last grain index below
    /// relative to the block's first.
    private var walkedPointerBlocks: [UInt32: (grains: UInt64, last: UInt64?)] = [:]
    /// Whether another host than this one is (or may be) alive: locks it could hold are then
    /// left alone.
    private lazy var otherHostsLive: Bool = computeOtherHostsLive()

    static let lostAndFound: [UInt8] = Array("lost+found".utf8)

    init(core: VolumeCore, repair: Bool) {
        self.core = core
        self.repair = repair
        for kind in ResourceKind.allCases {
            var bits = ResourceBits(count: core.header.area(kind).count)
            _ = bits.mark(0)
            referenced[kind] = bits
        }
    }

    private var canRepair: Bool { repair && !core.isReadOnly }

    private func problem(_ message: String, repaired: Bool = false) {
        report.problems.append(.init(message: message, repaired: repaired))
    }

    /// Runs one repair as an all-or-nothing operation; whether it was made.
    private func fix(_ body: () throws(FSError) -> Void) -> Bool {
        guard canRepair else { return false }
        do throws(FSError) {
            try core.store.operation(body)
            return true
        } catch {
            report.notes.append("repair failed: \(error.withoutAdvice)")
            return false
        }
    }

    func run() -> FsckReport {
        checkHeaders()
        checkVolumeLock()
        checkSlotsAndJournals()
        checkClusters()
        walk(root: core.header.rootInode)
        let unreached = findUnreached()
        checkReferenceCounts()
        rebuildDamagedClusters()
        checkBitmaps()
        // From here on repairs may allocate: every bitmap now agrees with the maps.
        copyCrossLinks()
        rewriteDirectories()
        reconnect(unreached)
        if canRepair && core.store.hasChanges {
            do throws(FSError) {
                try core.store.commit()
            } catch {
                problem("repairs could not be written: \(error.withoutAdvice)")
            }
        }
        return report
    }

    // MARK: headers, the volume lock, slots, journals

    private func checkHeaders() {
        let s = UInt64(RecordHeader.sectorSize)
        let b = IOBuffer(count: Int(s))
        for (name, offset) in [("primary", VolumeHeader.primaryOffset), ("backup", core.header.backupOffset)] {
            do throws(FSError) {
                try io { () throws(IOError) in try core.storage.readBlocking(into: b, at: offset) }
                if let why = b.problem(as: .volumeHeader, at: offset) {
                    if canRepair {
                        let good = IOBuffer(count: Int(s))
                        core.header.encode(into: good)
                        good.seal(.volumeHeader, at: offset, generation: 1)
                        try io { () throws(IOError) in try core.storage.writeBlocking(from: good, at: offset) }
                        problem("\(name) volume header at \(offset): \(why); rewritten from the other copy", repaired: true)
                    } else {
                        problem("\(name) volume header at \(offset): \(why)")
                    }
                } else if try VolumeHeader.decode(b, at: offset) != core.header {
                    problem("\(name) volume header at \(offset) disagrees with the header in use")
                }
            } catch {
                problem("\(name) volume header at \(offset): \(error.withoutAdvice)")
            }
        }
    }

    /// A read-write check holds the lock (a damaged sector was rebuilt by its open, which
    /// `Volume.check` reports); a read-only one reads it like any other record.
    private func checkVolumeLock() {
        do throws(FSError) {
            _ = try VolumeCore.readLockState(core.storage, core.header)
        } catch {
            problem("\(error.withoutAdvice); `lunar fs fsck --repair` rebuilds it once no other host uses the volume")
        }
    }

    private func computeOtherHostsLive() -> Bool {
        guard let recovery = core.metadataLock?.recovery,
              let slots = try? VolumeCore.readSlots(core.storage, core.header) else { return true }
        for record in slots.sound where record.slot != core.slot && record.state != .free {
            if (try? recovery.judge.verdict(record, watch: recovery.watch)) != .dead { return true }
        }
        return false
    }

    private func checkSlotsAndJournals() {
        let slots: (sound: [HeartbeatSlot], damaged: [(slot: Int, error: FSError)])
        do throws(FSError) { slots = try VolumeCore.readSlots(core.storage, core.header) } catch {
            problem("heartbeat region: \(error.withoutAdvice)")
            return
        }
        for (s, error) in slots.damaged { repairSlot(s, error) }
        for slot in slots.sound {
            let s = slot.slot
            if slot.state != .free && s != core.slot {
                report.notes.append("host slot \(s) is held by \(slot.hostName) (pid \(slot.pid))")
            }
            do throws(FSError) {
                let r = try Journal.replay(storage: core.storage, header: core.header, slot: s) { (_, _) throws(FSError) in }
                if r.transactions > 0 && s != core.slot {
                    report.notes.append("journal of host slot \(s) holds \(r.transactions) committed transactions\(core.isReadOnly ? " (replayed in memory for this check)" : "")")
                }
            } catch {
                repairJournal(slot, error)
            }
        }
    }

    /// A damaged slot: its holder, if any, can no longer renew it and has fenced itself (or
    /// will within its fence time, which the wait below covers), so once no process of this
    /// machine holds its token the slot is recovered like a dead host's — its journal replayed
    /// in place, then the slot written free with a new claim generation, which makes every
    /// lock naming the old claim stale.
    private func repairSlot(_ s: Int, _ error: FSError) {
        let index = UInt32(s)
        guard canRepair, let recovery = core.metadataLock?.recovery else {
            problem("host slot \(s): \(error.withoutAdvice)")
            return
        }
        do throws(FSError) {
            guard try recovery.device.tryHold(index) else {
                problem("host slot \(s): \(error.withoutAdvice); a process of this machine still holds it: stop it, then repair again")
                return
            }
            defer { recovery.device.release(index) }
            let interval = core.heartbeat?.interval ?? OpenOptions.toolHeartbeatInterval
            let until = monotonicSeconds() + OpenOptions.lockBreakTimeout(interval: interval)
            while monotonicSeconds() < until { usleep(50_000) }
            var journal = "its journal replayed"
            if try Journal.headerIsSound(storage: core.storage, header: core.header, slot: index) {
                _ = try VolumeCore.replayInPlace(core.storage, core.header, slot: index, store: core.store)
            } else {
                _ = try Journal.rebuildEmptyHeader(storage: core.storage, header: core.header, slot: index)
                journal = "its damaged journal header written anew, empty"
            }
            let offset = core.header.heartbeatSlotOffset(s)
            let old = IOBuffer(count: RecordHeader.sectorSize)
            try io { () throws(IOError) in try core.storage.readBlocking(into: old, at: offset) }
            var fresh = HeartbeatSlot.empty(index)
            fresh.claimGeneration = old.load(40, as: UInt64.self) &+ 1
            let b = IOBuffer(count: RecordHeader.sectorSize)
            fresh.encode(into: b)
            b.seal(.heartbeat, at: offset, generation: old.recordGeneration &+ 1)
            guard try io({ () throws(IOError) in try core.storage.compareAndWriteBlocking(expected: old, new: b, at: offset) }).isWritten else {
                problem("host slot \(s): \(error.withoutAdvice); it changed while being repaired")
                return
            }
            problem("host slot \(s): \(error.withoutAdvice); \(journal), slot written free", repaired: true)
        } catch let failure {
            problem("host slot \(s): \(error.withoutAdvice); repair failed: \(failure.withoutAdvice)")
        }
    }

    /// A journal that cannot be replayed. While its host lives it is left alone (the host
    /// never reads it back; only its recovery would). Otherwise it is written anew, empty:
    /// with the header gone nothing tells which transactions in the log are already in place,
    /// and replaying a stale one would undo later changes. A dead host's last transactions that
    /// had not reached their place are lost; the rest of this check mends what that leaves.
    private func repairJournal(_ slot: HeartbeatSlot, _ error: FSError) {
        let s = slot.slot
        guard case .corrupt = error.kind else {
            problem("journal of host slot \(s): \(error.withoutAdvice)")
            return
        }
        let recovery = core.metadataLock?.recovery
        let holderLives = slot.state != .free && s != core.slot
            && (recovery.flatMap { try? $0.judge.verdict(slot, watch: $0.watch) }) != .dead
        guard canRepair, !holderLives, let recovery else {
            problem("journal of host slot \(s): \(error.withoutAdvice)\(holderLives ? " (its host \(slot.hostName), pid \(slot.pid), may be alive: stop it, then repair again)" : "")")
            return
        }
        do throws(FSError) {
            let sequence = try Journal.rebuildEmptyHeader(storage: core.storage, header: core.header, slot: s)
            var what = "written anew, empty (from sequence \(sequence))"
            if slot.state != .free {
                _ = try recovery.recover(slot)
                what += "; its dead host's slot recovered (transactions it had not written in place are lost)"
            }
            problem("journal of host slot \(s): \(error.withoutAdvice); \(what)", repaired: true)
        } catch let failure {
            problem("journal of host slot \(s): \(error.withoutAdvice); repair failed: \(failure.withoutAdvice)")
        }
    }

    // MARK: clusters

    private func checkClusters() {
        for kind in ResourceKind.allCases {
            let area = core.header.area(kind)
            for c in 0..<area.clusterCount {
                do throws(FSError) {
                    let cluster = try core.clusterHeader(kind, c, forWriting: false)
                    let counted = cluster.countFree()
                    if counted != Int(cluster.freeCount) {
                        let fixed = fix { () throws(FSError) in
                            try core.clusterHeader(kind, c, forWriting: true).freeCount = UInt32(counted)
                        }
                        problem("\(kind) cluster \(c): free count \(cluster.freeCount), bitmap says \(counted)", repaired: fixed)
                    }
                    if LockRecord.decode(cluster.buffer, at: ClusterHeader.lockOffset) == nil {
                        let fixed = !otherHostsLive && fix { () throws(FSError) in
                            LockRecord.free.encode(into: try core.clusterHeader(kind, c, forWriting: true).buffer, at: ClusterHeader.lockOffset)
                        }
                        problem("\(kind) cluster \(c): unknown lock mode\(fixed ? "; lock freed" : "")", repaired: fixed)
                    }
                } catch {
                    damagedClusters.append((kind, c))
                    problem("\(kind) cluster \(c): \(error.withoutAdvice)")
                }
            }
        }
    }

    /// A damaged cluster header written anew: its bitmap from what the maps reference, its
    /// lock free. Until then no host allocates from it.
    private func rebuildDamagedClusters() {
        for (kind, c) in damagedClusters {
            let area = core.header.area(kind)
            let offset = area.clusterOffset(c)
            let refs = referenced[kind]!
            let fixed = !otherHostsLive && fix { () throws(FSError) in
                let b = try core.store.create(offset, .cluster)
                ClusterHeader.initialize(b, area: area, cluster: c)
                let cluster = ClusterHeader(buffer: b)
                for bit in 0..<Int(cluster.resourceCount) where refs.contains(cluster.firstResource + UInt64(bit)) {
                    cluster.markUsed(bit)
                }
            }
            if let i = report.problems.lastIndex(where: { $0.message.hasPrefix("\(kind) cluster \(c): ") }), fixed {
                report.problems[i].message += "; rebuilt from the maps that reference it"
                report.problems[i].repaired = true
            }
        }
    }

    // MARK: the tree

    private enum InodeState {
        case free
        case damaged(String)
        case sound(InodeRecord, [InodeRecord.FieldProblem])
    }

    /// Inode `n` as stored, its record checked but its fields only listed (so they can be
    /// mended rather than the inode dropped).
    private func state(of n: UInt32) -> InodeState {
        do throws(FSError) {
            let ino = InodeRecord(buffer: try core.store.read(core.inodeOffset(n), .inode, validated: false))
            if let why = ino.problem(expectedNumber: n) { return .damaged(why) }
            if ino.type == .free { return .free }
            return .sound(ino, ino.fieldProblems(on: core.header))
        } catch {
            return .damaged(error.withoutAdvice)
        }
    }

    /// The running transaction's copy of inode `n`, whatever its fields say (to mend them).
    private func mend(_ n: UInt32) throws(FSError) -> InodeRecord {
        InodeRecord(buffer: try core.store.modify(core.inodeOffset(n), .inode, validated: false))
    }

    private func walk(root: UInt32) {
        reached[root] = root
        _ = referenced[.inode]!.mark(UInt64(root))
        switch state(of: root) {
        case .sound(let ino, _) where ino.type == .directory:
            walk(from: [root])
        case let other:
            let why: String
            switch other {
            case .damaged(let w): why = w
            case .free: why = "it is free"
            default: why = "it is not a directory"
            }
            // Everything below it is found unreached and reconnected under the new root.
            let fixed = fix { () throws(FSError) in
                let b = try core.store.create(core.inodeOffset(root), .inode)
                let ino = InodeRecord(buffer: b)
                ino.initialize(number: root, type: .directory, mode: 0o755, parent: root, now: wallClockNanoseconds())
            }
            problem("root directory inode \(root): \(why)\(fixed ? "; made anew, empty (what it held goes to /lost+found)" : "")", repaired: fixed)
            report.inodesChecked += 1
            report.directoriesChecked += 1
        }
    }

    /// Walks the directories below `start` (each already reached), checking every inode
    /// they name and everything its map references.
    private func walk(from start: [UInt32]) {
        var queue = start
        while let dir = queue.popLast() {
            guard let ino = checkInode(dir, parent: reached[dir] ?? dir) else { continue }
            report.directoriesChecked += 1
            var changed = false
            let structure = ino.storage == .inline ? [] : core.structuralProblems(dir)
            for message in structure { problem(message) }
            let (entries, lost) = core.salvageEntries(ino)
            if !structure.isEmpty || lost || ino.fieldProblems(on: core.header).contains(where: { if case .size = $0 { true } else { false } }) {
                changed = true
            }
            if lost && structure.isEmpty { problem("directory inode \(dir): entries that cannot be read") }
            var keep: [DirectoryEntry] = []
            var names = Set<[UInt8]>()
            for e in entries {
                let name = String(decoding: e.name, as: UTF8.self)
                guard UInt64(e.inode) < core.header.inodes.count, e.inode != 0 else {
                    problem("directory inode \(dir): entry '\(name)' points outside the inode area")
                    changed = true
                    continue
                }
                if let other = reached[e.inode] {
                    problem("inode \(e.inode) is named twice (in directory \(other) and as '\(name)' in \(dir)): a loop or a hard link LunarFS does not make; the second name goes")
                    changed = true
                    continue
                }
                var fixed = e
                switch state(of: e.inode) {
                case .free:
                    problem("directory inode \(dir): entry '\(name)' points at inode \(e.inode), which is free (dangling entry)")
                    changed = true
                    continue
                case .damaged(let why):
                    problem("directory inode \(dir): entry '\(name)' points at inode \(e.inode), which is damaged: \(why); the entry goes")
                    if isInUse(e.inode) { damagedInodes.insert(e.inode) }
                    changed = true
                    continue
                case .sound(let child, _):
                    if let type = child.type, type != e.type {
                        problem("directory inode \(dir): entry '\(name)' says \(e.type == .directory ? "directory" : "file"), inode \(e.inode) is a \(type == .directory ? "directory" : "file")")
                        fixed.type = type
                        changed = true
                    }
                }
                if names.contains(fixed.name) {
                    fixed.name = uniqueName(fixed.name, inode: fixed.inode, taken: names)
                    problem("directory inode \(dir): name '\(name)' appears twice; inode \(e.inode) renamed '\(String(decoding: fixed.name, as: UTF8.self))'")
                    changed = true
                }
                names.insert(fixed.name)
                keep.append(fixed)
                reached[e.inode] = dir
                _ = referenced[.inode]!.mark(UInt64(e.inode))
                if fixed.type == .directory {
                    queue.append(e.inode)
                } else {
                    _ = checkInode(e.inode, parent: dir)
                }
            }
            if changed { rewrites[dir] = keep }
        }
    }

    /// `name~inode` (shortened to fit), or with a counter should that be taken too.
    private func uniqueName(_ name: [UInt8], inode: UInt32, taken: Set<[UInt8]>) -> [UInt8] {
        var suffix = Array("~\(inode)".utf8)
        var attempt = 0
        while true {
            let candidate = Array(name.prefix(DirectoryEntry.maxNameLength - suffix.count)) + suffix
            if !taken.contains(candidate) { return candidate }
            attempt += 1
            suffix = Array("~\(inode).\(attempt)".utf8)
        }
    }

    private func isInUse(_ n: UInt32) -> Bool {
        let area = core.header.inodes
        guard let cluster = try? core.clusterHeader(.inode, area.cluster(of: UInt64(n)), forWriting: false) else { return true }
        return cluster.isUsed(Int(UInt64(n) - cluster.firstResource))
    }

    /// Verifies one reached inode, mends its fields, and marks everything its map references.
    /// Returns the inode (as mended) when its content can be used.
    @discardableResult
    private func checkInode(_ n: UInt32, parent: UInt32) -> InodeRecord? {
        report.inodesChecked += 1
        let found = state(of: n)
        guard case .sound(let ino, let fields) = found else {
            if case .damaged(let why) = found { problem("inode \(n): \(why)") } else { problem("inode \(n) is free") }
            damagedInodes.insert(n)
            return nil
        }
        for field in fields {
            switch field {
            case .lock(let why):
                let fixed = !otherHostsLive && fix { () throws(FSError) in InodeLock(record: .free, holders: []).encode(into: try mend(n)) }
                problem("inode \(n): \(why)\(fixed ? "; lock freed" : otherHostsLive ? " (left alone while other hosts are alive)" : "")", repaired: fixed)
            default:
                break  // the parent just below; size and allocated units once the map is walked
            }
        }
        if ino.parent != parent {
            let fixed = fix { () throws(FSError) in try mend(n).parent = parent }
            problem("inode \(n) names directory \(ino.parent) as its parent, but is found in \(parent)", repaired: fixed)
        }
        if ino.isOrphan {
            let fixed = fix { () throws(FSError) in
                let m = try mend(n)
                m.isOrphan = false
                m.linkCount = 1
            }
            problem("inode \(n) is flagged as being removed but is still named in a directory", repaired: fixed)
        }
        guard let storage = ino.storage else { return nil }
        var units: UInt64 = 0
        var lastUnit: UInt64?
        var damaged: [(VolumeCore.MapEntry, FSError)] = []
        let map = storage == .grains ? "grain map" : "block map"
        do throws(FSError) {
            if storage == .grains {
                (units, lastUnit) = try walkGrainMap(ino) { entry, error in damaged.append((entry, error)) }
            } else if storage != .inline {
                let kind = core.unitKind(storage)
                try core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in
                    self.reference(.pointerBlock, UInt64(p), by: n, unitIndex: nil)
                }, damaged: { entry, error in damaged.append((entry, error)) }) { (u, unitNumber) throws(FSError) -> Bool in
                    units += 1
                    lastUnit = u
                    reference(kind, UInt64(unitNumber), by: n, unitIndex: u)
                    return true
                }
            }
        } catch {
            problem("inode \(n): \(map): \(error.withoutAdvice)")
            damagedInodes.insert(n)
            return nil
        }
        // A hole where a damaged block was. In a grain map's block other maps share it is a
        // hole in each of them; the counts are set from what the maps hold afterwards.
        for (entry, error) in damaged {
            let fixed = fix { () throws(FSError) in try core.clearMapEntry(n, entry) }
            problem("inode \(n): \(map): \(error.withoutAdvice)\(fixed ? "; a hole where it pointed" : "")", repaired: fixed)
        }
        if units != ino.allocatedUnits {
            let fixed = fix { () throws(FSError) in try mend(n).allocatedUnits = units }
            problem("inode \(n) counts \(ino.allocatedUnits) allocated blocks, its map holds \(units)", repaired: fixed)
        }
        if ino.type == .regular {
            checkSize(n, ino, storage: storage, lastUnit: lastUnit)
        }
        return canRepair ? (try? core.inode(n)) ?? ino : ino
    }

    /// A regular file's size against its storage's limit (mended to what its map holds) and
    /// its map against its size (units past the end freed).
    private func checkSize(_ n: UInt32, _ ino: InodeRecord, storage: InodeRecord.Storage, lastUnit: UInt64?) {
        let limit = InodeRecord.maxSize(type: .regular, storage: storage, on: core.header)
        let unit = storage == .inline ? 1 : core.unitSize(ino)
        var size = ino.size
        if size > limit {
            size = min(limit, lastUnit.map { ($0 + 1) * unit } ?? (storage == .inline ? limit : 0))
            let fixed = fix { () throws(FSError) in try mend(n).size = size }
            problem("inode \(n): size \(ino.size) exceeds the \(limit) bytes its storage can hold\(fixed ? "; set to \(size), the end of its data" : "")", repaired: fixed)
        }
        guard storage != .inline, let lastUnit else { return }
        let end = (size + unit - 1) / unit
        if lastUnit >= end {
            let fixed = fix { () throws(FSError) in try core.freeUnits(n, from: end) }
            problem("inode \(n) maps blocks past its size \(size)\(fixed ? "; freed" : "")", repaired: fixed)
        }
    }

    /// Counts the entries of a grain map (format.md §9.6): a pointer block other maps share is
    /// walked once, and only its reference counted again. Returns the grains the map names and
    /// the last grain index.
    /// An entry naming a grain outside the area or a damaged pointer block goes to `damaged`
    /// (once, from the first map that reaches it) and counts as a hole.
    private func walkGrainMap(_ ino: InodeRecord, damaged: (VolumeCore.MapEntry, FSError) -> Void) throws(FSError) -> (UInt64, UInt64?) {
        let h = ino.height
        let span = VolumeCore.span(height: h)
        var grains: UInt64 = 0
        var last: UInt64?
        for i in 0..<InodeRecord.rootEntries {
            let e = ino.rootEntry(i)
            if e == 0 { continue }
            let base = UInt64(i) * span
            let entry = VolumeCore.MapEntry(pointerBlock: nil, level: h, index: i)
            let (g, l) = try walkGrainEntry(e, at: entry, level: h, owner: ino.family, damaged: damaged)
            grains += g
            if let l { last = base + l }
        }
        return (grains, last)
    }

    private func walkGrainEntry(_ e: UInt32, at entry: VolumeCore.MapEntry, level: UInt8, owner: UInt32,
                                damaged: (VolumeCore.MapEntry, FSError) -> Void) throws(FSError) -> (UInt64, UInt64?) {
        if level == 0 {
            guard core.isValidGrain(e) else {
                damaged(entry, .corrupt(RecordKind.pointerBlock.name, at: core.header.fileBlocks.dataOffset, "names grain \(e), outside the file-block area"))
                return (0, nil)
            }
            grainReferences[e, default: 0] += 1
            if grainReferences[e] == 1 { report.unitsReferenced += 1 }
            return (1, 0)
        }
        if let seen = walkedPointerBlocks[e] {
            pointerReferences[e, default: 0] += 1
            return seen
        }
        let pb: PointerBlock
        do throws(FSError) {
            pb = try core.pointerBlock(e, owner: owner, level: level)
        } catch {
            guard case .corrupt = error.kind else { throw error }
            damaged(entry, error)
            return (0, nil)
        }
        pointerReferences[e, default: 0] += 1
        let entries = (0..<PointerBlock.entries).map { pb.entry($0) }
        let span = VolumeCore.span(height: level - 1)
        var grains: UInt64 = 0
        var last: UInt64?
        for (i, child) in entries.enumerated() where child != 0 {
            let inner = VolumeCore.MapEntry(pointerBlock: e, level: level, index: i)
            let (g, l) = try walkGrainEntry(child, at: inner, level: level - 1, owner: owner, damaged: damaged)
            grains += g
            if let l { last = UInt64(i) * span + l }
        }
        walkedPointerBlocks[e] = (grains, last)
        return (grains, last)
    }

    /// Format 2: every count against the entries the walk found, and the bits of pointer
    /// blocks and of file blocks holding named grains marked referenced.
    private func checkReferenceCounts() {
        guard core.header.sharedBlocks else { return }
        for p in pointerReferences.keys.sorted() where referenced[.pointerBlock]!.mark(UInt64(p)) {
            problem("pointer block \(p) belongs to a grain map and to another map too")
        }
        let g = core.grainsPerBlock
        for block in Set(grainReferences.keys.map { UInt64($0) / g }).sorted() {
            if referenced[.fileBlock]!.mark(block) {
                problem("file block \(block) holds grains of grain maps and is a whole unit of another map too")
            }
        }
        for kind in [ResourceKind.pointerBlock, .fileBlock] {
            let area = core.header.area(kind)
            let perResource = UInt64(area.countsPerResource)
            var wrong: [(UInt32, UInt16, Int)] = []
            for c in 0..<area.clusterCount {
                for r in area.resources(inCluster: c) where r > 0 {
                    for k in 0..<perResource {
                        let e = UInt32(r * perResource + k)
                        let expected = kind == .pointerBlock ? pointerReferences[UInt32(r)] ?? 0 : grainReferences[e] ?? 0
                        let key = kind == .pointerBlock ? UInt32(r) : e
                        guard let stored = try? core.referenceCount(kind, key) else {
                            problem("\(kind) \(r): its reference count sector cannot be read")
                            continue
                        }
                        if Int(stored) != expected { wrong.append((key, stored, expected)) }
                    }
                }
            }
            guard !wrong.isEmpty else { continue }
            let fixed = fix { () throws(FSError) in
                for (key, _, expected) in wrong { try core.setReferenceCount(kind, key, UInt16(clamping: expected)) }
            }
            let (key, stored, expected) = wrong[0]
            let what = kind == .pointerBlock ? "pointer block" : "grain"
            problem("\(wrong.count) \(what) reference counts differ from the maps, e.g. \(what) \(key) counts \(stored), \(expected) entries name it\(fixed ? "; set from the maps" : "")", repaired: fixed)
        }
    }

    private func reference(_ kind: ResourceKind, _ index: UInt64, by owner: UInt32, unitIndex: UInt64?) {
        guard index < core.header.area(kind).count else {
            problem("inode \(owner) references \(kind) \(index), outside the area")
            return
        }
        if referenced[kind]!.mark(index) {
            if let unitIndex {
                crossLinks.append((owner, unitIndex, kind))
                problem("\(kind) \(index) is used twice (again by inode \(owner))")
            } else {
                problem("\(kind) \(index) is used twice (again by inode \(owner))")
            }
        }
        if kind == .fileBlock || kind == .smallBlock { report.unitsReferenced += 1 }
    }

    // MARK: unreached inodes

    /// Inodes in use that no directory reaches: a removal cut short is finished (or its blocks
    /// kept, without repair); every other one is checked, its subtree walked, and returned to
    /// be reconnected. Directories first, so that an unreached directory's children are
    /// reached through it rather than reconnected one by one.
    private func findUnreached() -> [UInt32] {
        var candidates: [(UInt32, InodeRecord)] = []
        let area = core.header.inodes
        for c in 0..<area.clusterCount {
            // A damaged cluster says nothing of which inodes are in use: every sound, non-free
            // inode of its range counts as in use (a freed inode is written free).
            let cluster = try? core.clusterHeader(.inode, c, forWriting: false)
            if let cluster, cluster.freeCount == cluster.resourceCount { continue }
            for i in area.resources(inCluster: c) {
                if let cluster, !cluster.isUsed(Int(i - cluster.firstResource)) { continue }
                let n = UInt32(i)
                if n == 0 || reached[n] != nil || damagedInodes.contains(n) { continue }
                switch state(of: n) {
                case .sound(let ino, _): candidates.append((n, ino))
                case .damaged(let why):
                    if cluster != nil { problem("inode \(n) is marked in use but does not hold a sound inode: \(why)") }
                case .free:
                    break
                }
            }
        }
        var found: [UInt32] = []
        for (n, ino) in candidates.sorted(by: { ($0.1.type == .directory ? 0 : 1, $0.0) < ($1.1.type == .directory ? 0 : 1, $1.0) }) {
            if reached[n] != nil { continue }
            if ino.isOrphan {
                let fixed = fix { () throws(FSError) in try core.destroyNode(n) }
                problem("inode \(n): removal was cut short\(fixed ? "; finished" : "")", repaired: fixed)
                if !fixed { markMap(ino, n) }
                _ = referenced[.inode]!.mark(UInt64(n))
                continue
            }
            reached[n] = n
            _ = referenced[.inode]!.mark(UInt64(n))
            found.append(n)
            if ino.type == .directory {
                walk(from: [n])
            } else {
                checkInode(n, parent: ino.parent)
            }
        }
        return found
    }

    /// Counts a kept inode's blocks as referenced, so they are not freed as leaked.
    private func markMap(_ ino: InodeRecord, _ n: UInt32) {
        guard let storage = ino.storage, storage != .inline else { return }
        if storage == .grains {
            _ = try? walkGrainMap(ino) { _, _ in }
            return
        }
        let kind = core.unitKind(storage)
        try? core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in
            self.reference(.pointerBlock, UInt64(p), by: n, unitIndex: nil)
        }, damaged: { _, _ in }) { (u, unitNumber) throws(FSError) -> Bool in
            reference(kind, UInt64(unitNumber), by: n, unitIndex: u)
            return true
        }
    }

    // MARK: bitmaps

    private func checkBitmaps() {
        let damaged = Set(damagedClusters.map { "\($0.0) \($0.1)" })
        for kind in ResourceKind.allCases {
            let area = core.header.area(kind)
            let refs = referenced[kind]!
            for c in 0..<area.clusterCount where !damaged.contains("\(kind) \(c)") {
                guard let cluster = try? core.clusterHeader(kind, c, forWriting: false) else { continue }
                var leaked: [Int] = [], missing: [Int] = []
                for bit in 0..<Int(cluster.resourceCount) {
                    let index = cluster.firstResource + UInt64(bit)
                    let used = cluster.isUsed(bit)
                    let refd = refs.contains(index)
                    if used && !refd { leaked.append(bit) }
                    if !used && refd { missing.append(bit) }
                }
                if leaked.isEmpty && missing.isEmpty { continue }
                let fixed = fix { () throws(FSError) in
                    let w = try core.clusterHeader(kind, c, forWriting: true)
                    for bit in leaked { w.setUsed(bit, false) }
                    for bit in missing { w.setUsed(bit, true) }
                    w.freeCount = UInt32(w.countFree())
                }
                let first = cluster.firstResource
                if !leaked.isEmpty {
                    problem("\(kind) cluster \(c): \(leaked.count) in use but referenced by nothing (leaked), e.g. \(first + UInt64(leaked[0]))\(fixed ? "; freed" : "")", repaired: fixed)
                }
                if !missing.isEmpty {
                    problem("\(kind) cluster \(c): \(missing.count) referenced but marked free, e.g. \(first + UInt64(missing[0]))\(fixed ? "; marked in use" : "")", repaired: fixed)
                }
            }
        }
    }

    // MARK: repairs that allocate

    /// Each later claimer of a doubly used unit gets its own copy of the unit's bytes as they
    /// are now, so both files keep the data they read today and neither writes the other's.
    /// A directory that is a later claimer gets no copy: its records would sit at offsets
    /// other than their own and read as damaged. The unit becomes a hole in its map instead
    /// (it stays the other owner's), and the directory is written anew from its entries.
    private func copyCrossLinks() {
        for link in crossLinks {
            let fixed = fix { () throws(FSError) in
                let ino = try core.inode(link.inode)
                let old = try core.lookupUnit(ino, link.unitIndex)
                guard old != 0 else { return }
                if ino.type == .directory {
                    if rewrites[link.inode] == nil { rewrites[link.inode] = core.salvageEntries(ino).entries }
                    try core.setUnit(link.inode, link.unitIndex, 0)
                    return
                }
                let area = core.header.area(link.kind)
                let copy = try core.allocate(link.kind)
                let bytes = IOBuffer(count: Int(area.resourceSize))
                try io { () throws(IOError) in try core.storage.readBlocking(into: bytes, at: area.offset(of: UInt64(old))) }
                try io { () throws(IOError) in try core.storage.writeBlocking(from: bytes, at: area.offset(of: copy)) }
                try core.setUnit(link.inode, link.unitIndex, UInt32(copy))
            }
            if let i = report.problems.lastIndex(where: { $0.message.contains("used twice (again by inode \(link.inode))") }), fixed {
                report.problems[i].message += rewrites[link.inode] != nil ? "; left to the other owner, directory \(link.inode) written anew" : "; inode \(link.inode) given its own copy"
                report.problems[i].repaired = true
            }
        }
    }

    private func rewriteDirectories() {
        for (dir, entries) in rewrites.sorted(by: { $0.key < $1.key }) {
            let fixed = fix { () throws(FSError) in
                _ = try mend(dir)  // its own fields may be what is wrong; the rewrite sets them
                try core.rewriteDirectory(dir, entries)
            }
            problem("directory inode \(dir): \(fixed ? "written anew with" : "to be written anew from") its \(entries.count) sound entries", repaired: fixed)
            if fixed {
                // Every problem found in it is mended by the rewrite.
                for i in report.problems.indices where report.problems[i].message.hasPrefix("directory inode \(dir):") {
                    report.problems[i].repaired = true
                }
            }
        }
    }

    /// Links every unreached inode into `/lost+found` (made if missing) as `#inode`.
    private func reconnect(_ unreached: [UInt32]) {
        guard !unreached.isEmpty else { return }
        let root = core.header.rootInode
        var lostAndFound: UInt32?
        _ = fix { () throws(FSError) in
            if let e = try core.lookup(root, Self.lostAndFound), e.type == .directory {
                lostAndFound = e.inode
            } else {
                var name = Self.lostAndFound
                if try core.lookup(root, name) != nil { name = Array("lost+found~\(wallClockNanoseconds())".utf8) }
                lostAndFound = try core.createNode(in: root, name: name, type: .directory, mode: 0o700)
            }
        }
        for n in unreached {
            let fixed = lostAndFound.map { dir in
                fix { () throws(FSError) in
                    let ino = try core.inode(n)
                    try core.insert(dir, DirectoryEntry(name: Array("#\(n)".utf8), inode: n, type: ino.type ?? .regular))
                    try mend(n).parent = dir
                }
            } ?? false
            problem("inode \(n) is in use but no directory names it\(fixed ? "; linked as /lost+found/#\(n)" : "")", repaired: fixed)
        }
    }
}

extension Volume {
    /// Checks the volume; with `repair`, fixes what is safe to fix (the volume must be open
    /// read-write). Opening already replayed the journals of dead hosts.
    public func check(repair: Bool = false) throws(FSError) -> FsckReport {
        try locked { (core) throws(FSError) -> FsckReport in
            if repair && core.isReadOnly { throw FSError(.readOnly) }
            try? core.store.commit()
            var report = Checker(core: core, repair: repair).run()
            if let why = mountReport.rebuiltLockSector {
                report.problems.insert(.init(message: "\(why); rebuilt, free", repaired: true), at: 0)
            }
            if mountReport.usedBackupHeader {
                report.problems.insert(.init(message: "primary volume header unusable (\(mountReport.primaryHeaderProblem ?? "?")); opened from the backup", repaired: repair), at: 0)
            }
            if !mountReport.recoveredSlots.isEmpty {
                report.notes.append("replayed \(mountReport.replayedTransactions) journal transactions of dead host slots \(mountReport.recoveredSlots.map(String.init).joined(separator: ", "))")
            }
            return report
        }
    }
}
