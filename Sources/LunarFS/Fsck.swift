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

/// The checker: every record's checksum, cluster bitmaps against what the tree references
/// (leaked and doubly-used resources), the directory tree (orphans, loops, dangling entries),
/// sizes against maps, and the journals.
final class Checker {
    let core: VolumeCore
    let repair: Bool
    var report = FsckReport()
    private var referenced: [ResourceKind: ResourceBits] = [:]
    private var doublyUsed: Set<String> = []
    private var reached: [UInt32: UInt32] = [:] // inode -> parent directory that names it
    private var badInodes: Set<UInt32> = []

    init(core: VolumeCore, repair: Bool) {
        self.core = core
        self.repair = repair
        for kind in ResourceKind.allCases {
            var bits = ResourceBits(count: core.header.area(kind).count)
            _ = bits.mark(0)
            referenced[kind] = bits
        }
    }

    private func problem(_ message: String, repaired: Bool = false) {
        report.problems.append(.init(message: message, repaired: repaired))
    }

    private func reference(_ kind: ResourceKind, _ index: UInt64, by owner: String) {
        guard index < core.header.area(kind).count else {
            problem("\(owner) references \(kind) \(index), outside the area")
            return
        }
        if referenced[kind]!.mark(index) {
            problem("\(kind) \(index) is used twice (again by \(owner))")
            doublyUsed.insert("\(kind) \(index)")
        }
        if kind == .fileBlock || kind == .smallBlock { report.unitsReferenced += 1 }
    }

    func run() -> FsckReport {
        checkHeaders()
        checkSlotsAndJournals()
        let clustersSound = checkClusters()
        walkTree()
        checkUnreached()
        if clustersSound { checkBitmaps() }
        if repair && core.store.hasChanges {
            do throws(FSError) {
                try core.store.commit()
            } catch {
                problem("repairs could not be written: \(error)")
            }
        }
        return report
    }

    // MARK: headers, slots, journals

    private func checkHeaders() {
        let s = UInt64(RecordHeader.sectorSize)
        let b = IOBuffer(count: Int(s))
        for (name, offset) in [("primary", VolumeHeader.primaryOffset), ("backup", core.header.backupOffset)] {
            do throws(FSError) {
                try io { () throws(IOError) in try core.storage.readBlocking(into: b, at: offset) }
                if let why = b.problem(as: .volumeHeader, at: offset) {
                    if repair, !core.isReadOnly {
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
                problem("\(name) volume header at \(offset): \(error)")
            }
        }
    }

    private func checkSlotsAndJournals() {
        for s in 0..<Int(core.header.hostSlots) {
            do throws(FSError) {
                let slot = try VolumeCore.readSlot(core.storage, core.header, s)
                if slot.state != .free && UInt32(s) != core.slot {
                    report.notes.append("host slot \(s) is held by \(slot.hostName) (pid \(slot.pid))")
                }
                let r = try Journal.replay(storage: core.storage, header: core.header, slot: UInt32(s)) { (_, _) throws(FSError) in }
                if r.transactions > 0 && UInt32(s) != core.slot {
                    report.notes.append("journal of host slot \(s) holds \(r.transactions) committed transactions\(core.isReadOnly ? " (replayed in memory for this check)" : "")")
                }
            } catch {
                problem("host slot \(s): \(error)")
            }
        }
    }

    // MARK: clusters

    private func checkClusters() -> Bool {
        var sound = true
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
                } catch {
                    sound = false
                    problem("\(kind) cluster \(c): \(error)")
                }
            }
        }
        return sound
    }

    private func fix(_ body: () throws(FSError) -> Void) -> Bool {
        guard repair, !core.isReadOnly else { return false }
        do throws(FSError) {
            try core.store.operation(body)
            return true
        } catch {
            report.notes.append("repair failed: \(error)")
            return false
        }
    }

    // MARK: the tree

    private func walkTree() {
        let root = core.header.rootInode
        reached[root] = root
        _ = referenced[.inode]!.mark(UInt64(root))
        var queue: [UInt32] = [root]
        while let dir = queue.popLast() {
            guard checkInode(dir, expectedType: .directory, parent: reached[dir] ?? root) else { continue }
            report.directoriesChecked += 1
            for message in core.structuralProblems(dir) { problem(message) }
            let entries: [DirectoryEntry]
            do throws(FSError) {
                entries = try core.entries(dir)
            } catch {
                problem("directory inode \(dir): \(error)")
                continue
            }
            for e in entries {
                let name = String(decoding: e.name, as: UTF8.self)
                guard UInt64(e.inode) < core.header.inodes.count else {
                    let fixed = fix { () throws(FSError) in try core.removeEntry(dir, e.name) }
                    problem("directory inode \(dir): entry '\(name)' points outside the inode area", repaired: fixed)
                    continue
                }
                if let other = reached[e.inode] {
                    problem("inode \(e.inode) is named twice (in directory \(other) and as '\(name)' in \(dir)): a loop or a hard link LunarFS does not make")
                    continue
                }
                let isUsed = (try? core.clusterHeader(.inode, core.header.inodes.cluster(of: UInt64(e.inode)), forWriting: false))
                    .map { $0.isUsed(Int(UInt64(e.inode) - $0.firstResource)) } ?? false
                var damage: String?
                do throws(FSError) { _ = try core.inode(e.inode) } catch { damage = error.description }
                if let damage {
                    // Either way the entry goes; a damaged inode's map cannot be trusted, so its
                    // number and blocks then count as leaked and are freed below.
                    let fixed = fix { () throws(FSError) in try core.removeEntry(dir, e.name) }
                    problem("directory inode \(dir): entry '\(name)' points at inode \(e.inode), which is \(isUsed ? "damaged: \(damage)" : "free (dangling entry)")\(fixed ? "; entry removed" : "")", repaired: fixed)
                    if isUsed { badInodes.insert(e.inode) }
                    continue
                }
                reached[e.inode] = dir
                _ = referenced[.inode]!.mark(UInt64(e.inode))
                if e.type == .directory {
                    queue.append(e.inode)
                } else {
                    _ = checkInode(e.inode, expectedType: .regular, parent: dir)
                }
            }
        }
    }

    /// Verifies one reached inode and marks everything its map references.
    private func checkInode(_ n: UInt32, expectedType: InodeRecord.FileType, parent: UInt32) -> Bool {
        report.inodesChecked += 1
        let ino: InodeRecord
        do throws(FSError) { ino = try core.inode(n) } catch {
            problem("inode \(n): \(error)")
            badInodes.insert(n)
            return false
        }
        if ino.type != expectedType {
            problem("inode \(n) is a \(ino.type == .directory ? "directory" : "file") but its directory entry says otherwise")
        }
        if ino.parent != parent && n != core.header.rootInode {
            let fixed = fix { () throws(FSError) in try core.modifyInode(n).parent = parent }
            problem("inode \(n) names directory \(ino.parent) as its parent, but is found in \(parent)", repaired: fixed)
        }
        if ino.isOrphan {
            problem("inode \(n) is flagged as being removed but is still named in a directory")
        }
        guard let storage = ino.storage, storage != .inline else { return true }
        let kind: ResourceKind = storage == .small ? .smallBlock : .fileBlock
        let unit = core.unitSize(ino)
        var units: UInt64 = 0
        var pastEnd: UInt64 = 0
        let limit = ino.type == .directory ? UInt64.max : (ino.size + unit - 1) / unit
        do throws(FSError) {
            try core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in
                self.reference(.pointerBlock, UInt64(p), by: "inode \(n)")
            }) { (u, unitNumber) throws(FSError) -> Bool in
                units += 1
                if u >= limit { pastEnd += 1 }
                reference(kind, UInt64(unitNumber), by: "inode \(n)")
                return true
            }
        } catch {
            problem("inode \(n): block map: \(error)")
            badInodes.insert(n)
            return false
        }
        if units != ino.allocatedUnits {
            let fixed = fix { () throws(FSError) in try core.modifyInode(n).allocatedUnits = units }
            problem("inode \(n) counts \(ino.allocatedUnits) allocated blocks, its map holds \(units)", repaired: fixed)
        }
        if pastEnd > 0 {
            let fixed = fix { () throws(FSError) in try core.freeUnits(n, from: limit) }
            problem("inode \(n) maps \(pastEnd) blocks past its size \(ino.size)\(fixed ? "; freed" : "")", repaired: fixed)
        }
        return true
    }

    // MARK: unreached inodes and bitmaps

    private func checkUnreached() {
        let area = core.header.inodes
        for c in 0..<area.clusterCount {
            guard let cluster = try? core.clusterHeader(.inode, c, forWriting: false) else { continue }
            if cluster.freeCount == cluster.resourceCount { continue }
            for bit in 0..<Int(cluster.resourceCount) where cluster.isUsed(bit) {
                let n = UInt32(cluster.firstResource + UInt64(bit))
                if n == 0 || reached[n] != nil || badInodes.contains(n) { continue }
                guard let ino = try? core.inode(n) else {
                    problem("inode \(n) is marked in use but does not hold a sound inode")
                    continue
                }
                if ino.isOrphan {
                    let fixed = fix { () throws(FSError) in try core.destroyNode(n) }
                    problem("inode \(n): removal was cut short\(fixed ? "; finished" : "")", repaired: fixed)
                    if !fixed { markMap(ino, n) }
                } else {
                    problem("inode \(n) is in use but no directory names it (orphan)")
                    markMap(ino, n)
                }
                _ = referenced[.inode]!.mark(UInt64(n))
            }
        }
    }

    /// Counts an unreached inode's blocks as referenced, so they are not reported as leaked.
    private func markMap(_ ino: InodeRecord, _ n: UInt32) {
        guard let storage = ino.storage, storage != .inline else { return }
        let kind: ResourceKind = storage == .small ? .smallBlock : .fileBlock
        try? core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in
            self.reference(.pointerBlock, UInt64(p), by: "inode \(n)")
        }) { (_, unitNumber) throws(FSError) -> Bool in
            reference(kind, UInt64(unitNumber), by: "inode \(n)")
            return true
        }
    }

    private func checkBitmaps() {
        for kind in ResourceKind.allCases {
            let area = core.header.area(kind)
            let refs = referenced[kind]!
            for c in 0..<area.clusterCount {
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
}

extension Volume {
    /// Checks the volume; with `repair`, fixes what is safe to fix (the volume must be open
    /// read-write). Opening already replayed the journals of dead hosts.
    public func check(repair: Bool = false) throws(FSError) -> FsckReport {
        try locked { (core) throws(FSError) -> FsckReport in
            if repair && core.isReadOnly { throw FSError(.readOnly) }
            try? core.store.commit()
            var report = Checker(core: core, repair: repair).run()
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
