import Glibc
import LunarIO

/// The metadata sectors a volume has in memory, and the running transaction.
///
/// Every change to metadata goes through `modify`/`create`, which put a private copy of the
/// sector into the running transaction. `commit` seals the copies (generation, self offset,
/// CRC32C), makes earlier data writes durable, writes the transaction to the host's journal,
/// makes it durable, and only then writes the sectors in place. Nothing reaches its home
/// location before its journal commit is on disk, so a crash leaves either the old or the new
/// state once the journal is replayed.
///
/// `operation` makes one file-system call all-or-nothing inside the running transaction: if it
/// throws, every sector it touched gets its previous content back.
final class MetadataStore {
    let storage: any BlockStorage
    let volumeSize: UInt64
    private(set) var journal: Journal?

    private struct Dirty {
        var buffer: IOBuffer
        var kind: RecordKind
        var baseGeneration: UInt64
    }

    private var clean: [UInt64: IOBuffer] = [:]
    /// Images replayed into memory on a read-only open: never evicted, never written.
    private var overlay: [UInt64: IOBuffer] = [:]
    private var dirty: [UInt64: Dirty] = [:]
    private var undo: [(UInt64, Dirty?)]?
    private var undoSeen: Set<UInt64> = []
    /// Attempts (`attempt`) running inside the operation.
    private var attempts = 0
    private(set) var pendingFrees: [(ResourceKind, UInt64)] = []
    /// The cluster header sectors those frees will change at commit.
    private var pendingFreeSectors: Set<UInt64> = []
    /// Whether those frees include a block that held journaled records: the commit then
    /// checkpoints (`freeAtCommit`).
    private var freesRecordBlocks = false
    /// Pointer blocks and grains whose reference count a change not yet committed raised or
    /// lowered (`kind << 32 | number`). Until that commit is durable, the maps a crash would
    /// bring back may name them where the running maps do not: a grain at count 0 may still be
    /// another file's, one at count 1 may be shared. So no data is written in place into them,
    /// nor is a freed grain handed out again, before the commit (format.md §9.4) — as a freed
    /// resource's bit is cleared only at commit (`freeAtCommit`). A change rolled back leaves
    /// its marks: they only cost a copy.
    private var recounted: Set<UInt64> = []
    /// Where the bitmap bit of a resource lives; set by the volume.
    var clusterSector: ((ResourceKind, UInt64) -> UInt64)?
    /// Called at commit, before sealing, to turn `pendingFrees` into bitmap changes.
    var applyFrees: (([(ResourceKind, UInt64)]) throws(FSError) -> Void)?
    /// Called after a durable commit with the data units freed by it, to hand the space back.
    var releaseFreedSpace: (([(ResourceKind, UInt64)]) -> Void)?
    /// Set when a commit failed half-way: the volume refuses further changes until reopened.
    private(set) var failure: FSError?
    /// Why a sound `kind` record's fields cannot be right for this volume, or nil; set by the
    /// volume. Applied to every record as it comes from disk or a replayed journal, so that
    /// no caller meets a value out of range.
    var validate: ((RecordKind, IOBuffer, UInt64) -> String?)?

    static let cacheLimit = 32_768

    init(storage: any BlockStorage, volumeSize: UInt64) {
        self.storage = storage
        self.volumeSize = volumeSize
    }

    func attach(_ journal: Journal) { self.journal = journal }

    var dirtyCount: Int { dirty.count }
    var hasChanges: Bool { !dirty.isEmpty || !pendingFrees.isEmpty }

    /// Journal sectors one commit may use; operations commit early to stay under it.
    var commitThreshold: Int { max(16, (journal?.maxImagesPerTransaction ?? 64) / 2) }

    // MARK: reading

    /// The current image of the `kind` record at `offset`, verified. Callers read it only.
    /// `validated: false` skips the field checks of `validate` (fsck, to repair the fields);
    /// such a record is not cached.
    func read(_ offset: UInt64, _ kind: RecordKind, validated: Bool = true) throws(FSError) -> IOBuffer {
        if let d = dirty[offset] {
            guard d.kind == kind else { throw .corrupt(kind.name, at: offset, "in use as a \(d.kind.name)") }
            return d.buffer
        }
        if let b = overlay[offset] {
            try b.verify(kind, at: offset)
            if validated { try checkFields(b, kind, offset) }
            return b
        }
        if let b = clean[offset] {
            // Verified when it came from disk; a changed kind means a stale reference.
            if b.load(RecordHeader.magicOffset, as: UInt32.self) != kind.rawValue { try b.verify(kind, at: offset) }
            return b
        }
        let b = try readVerified(offset, kind)
        if validated {
            try checkFields(b, kind, offset)
            remember(offset, b)
        } else if validate?(kind, b, offset) == nil {
            remember(offset, b)
        }
        return b
    }

    private func checkFields(_ b: IOBuffer, _ kind: RecordKind, _ offset: UInt64) throws(FSError) {
        if let why = validate?(kind, b, offset) { throw .corrupt(kind.name, at: offset, why) }
    }

    /// The sector from disk, verified. A sector another host is writing in place right now
    /// (one this host holds no lock on: a directory looked at for its type, a file's inode
    /// for stat) may be read half old, half new from an image file; such a read fails its
    /// checksum and is read again before it counts as damage.
    private func readVerified(_ offset: UInt64, _ kind: RecordKind) throws(FSError) -> IOBuffer {
        var attempt = 0
        while true {
            let b = try readSector(offset)
            do throws(FSError) {
                try b.verify(kind, at: offset)
                return b
            } catch {
                attempt += 1
                guard attempt < 3, case .corrupt = error.kind else { throw error }
                usleep(1_000)
            }
        }
    }

    /// The `kind` record at `offset` as on disk now, verified and cached: for a sector other
    /// hosts may have changed since it was cached (a lock record another host also writes).
    /// The running transaction's copy, if it has one.
    func readFresh(_ offset: UInt64, _ kind: RecordKind) throws(FSError) -> IOBuffer {
        if let d = dirty[offset] {
            guard d.kind == kind else { throw .corrupt(kind.name, at: offset, "in use as a \(d.kind.name)") }
            return d.buffer
        }
        let b = try readVerified(offset, kind)
        try checkFields(b, kind, offset)
        if overlay[offset] == nil { remember(offset, b) }
        return b
    }

    /// The sector as stored, unverified (fsck, probes).
    func readRaw(_ offset: UInt64) throws(FSError) -> IOBuffer {
        if let d = dirty[offset] { return d.buffer }
        if let b = overlay[offset] ?? clean[offset] { return b }
        return try readSector(offset)
    }

    private func readSector(_ offset: UInt64) throws(FSError) -> IOBuffer {
        guard offset % UInt64(RecordHeader.sectorSize) == 0, offset + UInt64(RecordHeader.sectorSize) <= volumeSize else {
            throw .corrupt("metadata reference", at: offset, "points outside the volume")
        }
        let b = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: offset) }
        return b
    }

    private func remember(_ offset: UInt64, _ b: IOBuffer) {
        if clean.count >= Self.cacheLimit {
            // Forget about half, arbitrarily: a cache, not a working set manager.
            var dropped = 0
            for key in clean.keys where dropped < Self.cacheLimit / 2 {
                clean[key] = nil
                dropped += 1
            }
        }
        clean[offset] = b
    }

    // MARK: changing

    /// A private, writable copy of the `kind` record at `offset` in the running transaction.
    /// `validated: false`: as for `read` (fsck mending the fields).
    func modify(_ offset: UInt64, _ kind: RecordKind, validated: Bool = true) throws(FSError) -> IOBuffer {
        try checkWritable()
        if let d = dirty[offset] {
            guard d.kind == kind else { throw .corrupt(kind.name, at: offset, "in use as a \(d.kind.name)") }
            noteUndo(offset, d)
            return d.buffer
        }
        let current = try read(offset, kind, validated: validated)
        noteUndo(offset, nil)
        let copy = current.clone()
        dirty[offset] = Dirty(buffer: copy, kind: kind, baseGeneration: current.recordGeneration)
        return copy
    }

    /// A new `kind` record at `offset`, zeroed, replacing whatever the sector held (a free
    /// resource's stale content, or nothing).
    func create(_ offset: UInt64, _ kind: RecordKind) throws(FSError) -> IOBuffer {
        try checkWritable()
        guard offset % UInt64(RecordHeader.sectorSize) == 0, offset + UInt64(RecordHeader.sectorSize) <= volumeSize else {
            throw .corrupt(kind.name, at: offset, "would lie outside the volume")
        }
        var generation: UInt64 = 0
        if let d = dirty[offset] {
            noteUndo(offset, d)
            generation = d.baseGeneration
        } else {
            noteUndo(offset, nil)
            if let old = overlay[offset] ?? clean[offset] { generation = old.recordGeneration }
        }
        let b = IOBuffer(count: RecordHeader.sectorSize)
        dirty[offset] = Dirty(buffer: b, kind: kind, baseGeneration: generation)
        return b
    }

    /// Frees a resource when the running transaction commits (not before: until then the
    /// committed state still uses it, so nothing may reuse it).
    ///
    /// `heldRecords`: a small or file block that held records (a hashed directory's), whose
    /// images the journal may still carry. Data written into the block once it is reused does
    /// not go through the journal, so a replay of those images would write them over it: the
    /// commit that frees the block also empties the journal, before anything can reuse it.
    func freeAtCommit(_ kind: ResourceKind, _ index: UInt64, heldRecords: Bool = false) {
        pendingFrees.append((kind, index))
        if let sector = clusterSector?(kind, index) { pendingFreeSectors.insert(sector) }
        if heldRecords { freesRecordBlocks = true }
    }

    /// Whether resources wait for the next commit to be free again (freed, or a grain whose
    /// count fell): an allocation that found none may find them after it.
    var holdsFreesForCommit: Bool { !pendingFrees.isEmpty || !recounted.isEmpty }

    /// Notes that a change not yet committed raised or lowered the count of `number`.
    func noteRecount(_ kind: ResourceKind, _ number: UInt32) {
        recounted.insert(UInt64(kind.rawValue) << 32 | UInt64(number))
    }

    /// Whether a change not yet committed raised or lowered the count of `number`.
    func isRecounted(_ kind: ResourceKind, _ number: UInt32) -> Bool {
        recounted.contains(UInt64(kind.rawValue) << 32 | UInt64(number))
    }

    /// Sectors the running transaction will write if committed now (an upper bound).
    private var transactionSize: Int { dirty.count + pendingFreeSectors.count }

    private func checkWritable() throws(FSError) {
        if let failure { throw failure }
        guard journal != nil else { throw FSError(.readOnly) }
    }

    private func noteUndo(_ offset: UInt64, _ previous: Dirty?) {
        guard undo != nil, !undoSeen.contains(offset) else { return }
        undoSeen.insert(offset)
        var saved = previous
        if let p = previous { saved = Dirty(buffer: p.buffer.clone(), kind: p.kind, baseGeneration: p.baseGeneration) }
        undo?.append((offset, saved))
    }

    /// Runs `body` as one all-or-nothing change of the running transaction.
    func operation<T>(_ body: () throws(FSError) -> T) throws(FSError) -> T {
        precondition(undo == nil, "operations do not nest")
        try checkWritable()
        if transactionSize >= commitThreshold { try commit() }
        undo = []
        undoSeen = []
        let freesMark = pendingFrees.count
        defer { undo = nil; undoSeen = [] }
        do throws(FSError) {
            return try body()
        } catch {
            rollBack(undo ?? [], frees: freesMark)
            throw error
        }
    }

    /// Inside an operation: runs `body` as a step that may fail on its own. If it throws,
    /// every sector it touched and every free it queued go back to what they were when it
    /// started, and the error is passed on; the operation can then take another way (a small
    /// block that is not there: file blocks instead) with nothing of the failed step left.
    func attempt<T>(_ body: () throws(FSError) -> T) throws(FSError) -> T {
        guard let outer = undo else { preconditionFailure("an attempt is part of an operation") }
        let outerSeen = undoSeen
        undo = []
        undoSeen = []
        attempts += 1
        let freesMark = pendingFrees.count
        defer { attempts -= 1 }
        do throws(FSError) {
            let result = try body()
            // The operation keeps its own saved images; a sector first touched by the step
            // was untouched by the operation before it, so the step's saved image is the
            // operation's too.
            undo = outer + (undo ?? []).filter { !outerSeen.contains($0.0) }
            undoSeen.formUnion(outerSeen)
            return result
        } catch {
            rollBack(undo ?? [], frees: freesMark)
            undo = outer
            undoSeen = outerSeen
            throw error
        }
    }

    /// Puts back the sectors `saved` before a change, and drops the frees queued after `frees`.
    private func rollBack(_ saved: [(UInt64, Dirty?)], frees: Int) {
        for (offset, previous) in saved.reversed() { dirty[offset] = previous }
        if frees < pendingFrees.count {
            pendingFrees.removeSubrange(frees...)
            pendingFreeSectors = Set(pendingFrees.compactMap { clusterSector?($0.0, $0.1) })
        }
    }

    /// Inside a long operation (freeing a huge file): commits what is done so far when the
    /// transaction grows large. Only call where the volume is consistent as it stands; never
    /// inside an attempt, whose undo must reach back to its start.
    func commitIfLarge() throws(FSError) {
        guard attempts == 0, transactionSize >= commitThreshold else { return }
        let saved = undo
        undo = nil
        defer { undo = saved.map { _ in [] }; undoSeen = [] }
        try commit()
    }

    // MARK: committing

    func commit() throws(FSError) {
        try checkWritable()
        guard hasChanges, let journal else { return }
        do {
            let frees = pendingFrees
            if !frees.isEmpty {
                try applyFrees?(frees)
            }
            var images: [(UInt64, IOBuffer)] = []
            images.reserveCapacity(dirty.count)
            for (offset, d) in dirty {
                d.buffer.seal(d.kind, at: offset, generation: d.baseGeneration &+ 1)
                images.append((offset, d.buffer))
            }
            images.sort { $0.0 < $1.0 }
            // Data written before this commit must be durable before metadata that points at it.
            try io { () throws(IOError) in try storage.flushBlocking() }
            try journal.append(images)
            // Durable: the committed maps are the running ones.
            recounted.removeAll()
            for (offset, image) in images {
                try io { () throws(IOError) in try storage.writeBlocking(from: image, at: offset) }
            }
            dirty.removeAll(keepingCapacity: true)
            pendingFrees.removeAll()
            pendingFreeSectors.removeAll()
            for (offset, image) in images { remember(offset, image) }
            if !frees.isEmpty { releaseFreedSpace?(frees) }
        } catch {
            failure = error
            throw error
        }
        if freesRecordBlocks {
            freesRecordBlocks = false
            try checkpoint()
        }
    }

    /// Flushes the LUN with nothing to commit: file data written since the last flush (blocks
    /// already allocated, so no metadata changed) becomes durable.
    func flushData() throws(FSError) {
        try checkWritable()
        try io { () throws(IOError) in try storage.flushBlocking() }
    }

    /// After a clean commit: nothing in the journal is needed any more.
    func checkpoint() throws(FSError) {
        guard let journal, failure == nil, !journal.emptyOnDisk else { return }
        try io { () throws(IOError) in try storage.flushBlocking() }
        try journal.markEmpty()
    }

    // MARK: replay

    /// Puts replayed images in place (read-write) or in memory only (read-only).
    func applyReplayed(_ offset: UInt64, _ image: IOBuffer, inPlace: Bool) throws(FSError) {
        clean[offset] = nil
        if inPlace {
            try io { () throws(IOError) in try storage.writeBlocking(from: image, at: offset) }
            if let kind = RecordKind(rawValue: image.load(RecordHeader.magicOffset)), validate?(kind, image, offset) == nil {
                remember(offset, image)
            }
        } else {
            overlay[offset] = image
        }
    }

    /// Forgets every clean sector; false when there was none.
    @discardableResult
    func dropCache() -> Bool {
        let had = !clean.isEmpty
        clean.removeAll()
        return had
    }

    /// Whether the running transaction holds a copy of the sector at `offset`.
    func isInTransaction(_ offset: UInt64) -> Bool { dirty[offset] != nil }

    /// The sector was just written at home by compare-and-write: this is its image now.
    func installWritten(_ offset: UInt64, _ image: IOBuffer) { remember(offset, image) }

    func forget(_ offset: UInt64) { clean[offset] = nil }
}
