import LunarIO

/// One host slot's redo journal (layout in `JournalLayout`).
final class Journal {
    let storage: any BlockStorage
    let slot: UInt32
    let volume: VolumeID
    /// Byte offset of the journal header; the log follows it.
    let start: UInt64
    let logSize: UInt64
    private(set) var sequence: UInt64
    private(set) var position: UInt64
    /// Whether the header on disk says empty as of now (so marking it again writes nothing).
    private(set) var emptyOnDisk = false

    static let sector = UInt64(RecordHeader.sectorSize)

    var maxImagesPerTransaction: Int {
        let sectors = Int(logSize / Self.sector)
        // sectors(images) <= log sectors, with one descriptor per 504 images.
        return max(1, (sectors - 2) * JournalLayout.targetsPerDescriptor / (JournalLayout.targetsPerDescriptor + 1))
    }

    init(storage: any BlockStorage, header: VolumeHeader, slot: UInt32, sequence: UInt64) {
        self.storage = storage
        self.slot = slot
        self.volume = header.uuid
        self.start = header.journalStart(Int(slot))
        self.logSize = header.journalSize - Self.sector
        self.sequence = sequence
        self.position = 0
    }

    var logStart: UInt64 { start + Self.sector }

    /// A volume-specific tag in every descriptor, so that a journal left on the device by an
    /// earlier volume is never replayed into this one.
    static func volumeTag(_ v: VolumeID) -> UInt64 {
        var t: UInt64 = 0
        for i in 0..<8 { t |= UInt64(v.bytes[i]) << (8 * UInt64(i)) }
        return t
    }

    static func writeHeader(_ h: JournalHeader, at offset: UInt64, storage: any BlockStorage) throws(FSError) {
        let b = IOBuffer(count: RecordHeader.sectorSize)
        h.encode(into: b)
        b.seal(.journalHeader, at: offset, generation: h.startSequence)
        try io { () throws(IOError) in try storage.writeBlocking(from: b, at: offset) }
    }

    /// Records that replay should start at the next transaction: everything before it is in
    /// place and durable.
    func markEmpty() throws(FSError) {
        // Nothing appended since the last time: the header on disk says so already.
        guard position != 0 || !emptyOnDisk else { return }
        emptyOnDisk = true
        position = 0
        try Self.writeHeader(JournalHeader(slot: slot, startSequence: sequence, startPosition: 0, volume: volume),
                             at: start, storage: storage)
        try io { () throws(IOError) in try storage.flushBlocking() }
    }

    /// Writes one transaction and makes it durable. The caller has flushed the device first,
    /// so every earlier transaction's in-place writes are durable: wrapping to the start of
    /// the log may overwrite them.
    func append(_ images: [(UInt64, IOBuffer)]) throws(FSError) {
        guard images.count <= maxImagesPerTransaction else {
            throw FSError(.invalidArgument("a transaction of \(images.count) sectors exceeds the journal (\(maxImagesPerTransaction)); make the volume with a larger --journal-size"))
        }
        let descriptors = JournalLayout.descriptorCount(images: images.count)
        let sectors = JournalLayout.sectors(images: images.count)
        let bytes = UInt64(sectors) * Self.sector
        if position + bytes > logSize {
            try markEmpty()
        }
        let s = RecordHeader.sectorSize
        let run = IOBuffer(count: sectors * s)
        let tag = Self.volumeTag(volume)
        let runStart = logStart + position
        for d in 0..<descriptors {
            let b = IOBuffer(count: s)
            let first = d * JournalLayout.targetsPerDescriptor
            let listed = min(JournalLayout.targetsPerDescriptor, images.count - first)
            b.store(sequence, at: 32)
            b.store(UInt32(d), at: 40)
            b.store(UInt32(descriptors), at: 44)
            b.store(UInt32(images.count), at: 48)
            b.store(UInt32(listed), at: 52)
            b.store(tag, at: 56)
            for i in 0..<listed { b.store(images[first + i].0, at: 64 + i * 8) }
            let at = runStart + UInt64(d) * Self.sector
            b.seal(.journalDescriptor, at: at, generation: sequence)
            run.slice((d * s)..<((d + 1) * s)).copyMemory(from: UnsafeRawBufferPointer(b.bytes))
        }
        for (i, image) in images.enumerated() {
            let at = (descriptors + i) * s
            run.slice(at..<(at + s)).copyMemory(from: UnsafeRawBufferPointer(image.1.bytes))
        }
        let body = descriptors + images.count
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(run.slice(0..<(body * s))))
        let commit = IOBuffer(count: s)
        commit.store(sequence, at: 32)
        commit.store(UInt32(images.count), at: 40)
        commit.store(UInt32(descriptors), at: 44)
        commit.store(crc, at: 48)
        commit.seal(.journalCommit, at: runStart + UInt64(body) * Self.sector, generation: sequence)
        run.slice((body * s)..<((body + 1) * s)).copyMemory(from: UnsafeRawBufferPointer(commit.bytes))

        try io { () throws(IOError) in try storage.writeBlocking(from: run, at: runStart) }
        try io { () throws(IOError) in try storage.flushBlocking() }
        sequence += 1
        position += bytes
        emptyOnDisk = false
    }

    // MARK: replay

    struct ReplayResult {
        var transactions = 0
        var images = 0
        var nextSequence: UInt64 = 1
        /// Why replay stopped where it did when that was not a clean end (fsck reports it).
        var stoppedBecause: String?
    }

    /// The journal header of `slot`, every field checked; nil for a never-written (all-zero)
    /// sector, which means an empty journal.
    static func readHeader(storage: any BlockStorage, header: VolumeHeader, slot: UInt32) throws(FSError) -> JournalHeader? {
        let start = header.journalStart(Int(slot))
        let hb = IOBuffer(count: RecordHeader.sectorSize)
        try io { () throws(IOError) in try storage.readBlocking(into: hb, at: start) }
        if hb.isAllZero { return nil }
        try hb.verify(.journalHeader, at: start)
        let jh = JournalHeader.decode(hb)
        guard jh.volume == header.uuid else {
            throw .corrupt(RecordKind.journalHeader.name, at: start, "belongs to volume \(jh.volume), not \(header.uuid)")
        }
        guard jh.slot == slot else { throw .corrupt(RecordKind.journalHeader.name, at: start, "names slot \(jh.slot), stored as slot \(slot)") }
        guard jh.startPosition % sector == 0, jh.startPosition < header.journalSize - sector else {
            throw .corrupt(RecordKind.journalHeader.name, at: start, "start position \(jh.startPosition) outside the log")
        }
        return jh
    }

    /// Whether slot `slot`'s journal header can be read (sound, or never written).
    static func headerIsSound(storage: any BlockStorage, header: VolumeHeader, slot: UInt32) throws(FSError) -> Bool {
        do throws(FSError) {
            _ = try readHeader(storage: storage, header: header, slot: slot)
            return true
        } catch {
            guard case .corrupt = error.kind else { throw error }
            return false
        }
    }

    /// Writes slot `slot`'s journal header anew, empty (fsck, for a header that is damaged
    /// while no live host uses the journal): replay is to start past every transaction the
    /// log holds, so none of them, whether applied or not, is ever applied again. Returns the
    /// sequence it starts from.
    static func rebuildEmptyHeader(storage: any BlockStorage, header: VolumeHeader, slot: UInt32) throws(FSError) -> UInt64 {
        let start = header.journalStart(Int(slot))
        let logSize = header.journalSize - sector
        let log = IOBuffer(count: Int(logSize))
        try io { () throws(IOError) in try storage.readBlocking(into: log, at: start + sector) }
        var highest: UInt64 = 0
        let s = RecordHeader.sectorSize
        for i in 0..<Int(logSize / sector) {
            let at = start + sector + UInt64(i) * sector
            let record = IOBuffer(copying: UnsafeRawBufferPointer(log.slice((i * s)..<((i + 1) * s))))
            if record.problem(as: .journalDescriptor, at: at) == nil || record.problem(as: .journalCommit, at: at) == nil {
                highest = max(highest, record.load(32, as: UInt64.self))
            }
        }
        let next = highest == UInt64.max ? 1 : highest + 1
        try writeHeader(JournalHeader(slot: slot, startSequence: next, startPosition: 0, volume: header.uuid), at: start, storage: storage)
        try io { () throws(IOError) in try storage.flushBlocking() }
        return next
    }

    /// Walks the journal of `slot` and hands every image of every complete transaction, in
    /// order, to `apply`. A damaged header is an error; a torn last transaction is the normal
    /// end of a log cut by a crash.
    static func replay(storage: any BlockStorage, header: VolumeHeader, slot: UInt32,
                       apply: (UInt64, IOBuffer) throws(FSError) -> Void) throws(FSError) -> ReplayResult {
        let start = header.journalStart(Int(slot))
        guard let jh = try readHeader(storage: storage, header: header, slot: slot) else { return ReplayResult() }
        let logSize = header.journalSize - sector
        let logStart = start + sector
        let tag = volumeTag(header.uuid)
        let s = RecordHeader.sectorSize
        var result = ReplayResult(nextSequence: jh.startSequence)
        var position = jh.startPosition
        var expected = jh.startSequence
        func readRun(_ at: UInt64, _ count: Int) throws(FSError) -> IOBuffer {
            let b = IOBuffer(count: count * s)
            try io { () throws(IOError) in try storage.readBlocking(into: b, at: at) }
            return b
        }
        while position + 3 * sector <= logSize {
            let runStart = logStart + position
            let first = try readRun(runStart, 1)
            if first.problem(as: .journalDescriptor, at: runStart) != nil
                || first.load(32, as: UInt64.self) != expected || first.load(56, as: UInt64.self) != tag
                || first.load(40, as: UInt32.self) != 0 {
                break
            }
            let descriptors = Int(first.load(44, as: UInt32.self))
            let images = Int(first.load(48, as: UInt32.self))
            guard descriptors == JournalLayout.descriptorCount(images: images) else {
                result.stoppedBecause = "transaction \(expected) has an inconsistent descriptor count"
                break
            }
            let sectors = JournalLayout.sectors(images: images)
            guard position + UInt64(sectors) * sector <= logSize else {
                result.stoppedBecause = "transaction \(expected) runs past the end of the log"
                break
            }
            let run = try readRun(runStart, sectors)
            var targets: [UInt64] = []
            var sound = true
            for d in 0..<descriptors {
                let b = IOBuffer(count: s)
                b.bytes.copyMemory(from: UnsafeRawBufferPointer(run.slice((d * s)..<((d + 1) * s))))
                let at = runStart + UInt64(d) * sector
                guard b.problem(as: .journalDescriptor, at: at) == nil, b.load(32, as: UInt64.self) == expected,
                      b.load(40, as: UInt32.self) == UInt32(d) else { sound = false; break }
                let listed = Int(b.load(52, as: UInt32.self))
                guard listed <= JournalLayout.targetsPerDescriptor else { sound = false; break }
                for i in 0..<listed { targets.append(b.load(64 + i * 8)) }
            }
            let body = descriptors + images
            let commit = IOBuffer(count: s)
            commit.bytes.copyMemory(from: UnsafeRawBufferPointer(run.slice((body * s)..<((body + 1) * s))))
            let commitAt = runStart + UInt64(body) * sector
            if sound {
                sound = commit.problem(as: .journalCommit, at: commitAt) == nil
                    && commit.load(32, as: UInt64.self) == expected
                    && commit.load(48, as: UInt32.self) == CRC32C.checksum(UnsafeRawBufferPointer(run.slice(0..<(body * s))))
                    && targets.count == images
            }
            guard sound else {
                // A transaction whose descriptor made it but the rest did not: the crash point.
                result.stoppedBecause = "transaction \(expected) is incomplete (torn by a crash before its commit)"
                break
            }
            var decoded: [(UInt64, IOBuffer)] = []
            for (i, target) in targets.enumerated() {
                let image = IOBuffer(count: s)
                image.bytes.copyMemory(from: UnsafeRawBufferPointer(run.slice(((descriptors + i) * s)..<((descriptors + i + 1) * s))))
                guard target % sector == 0, target + sector <= header.volumeSize, target >= header.volumeLockOffset + sector,
                      image.load(RecordHeader.selfOffsetOffset, as: UInt64.self) == target,
                      let kind = RecordKind(rawValue: image.load(0)), image.problem(as: kind, at: target) == nil else {
                    throw .corrupt(RecordKind.journalCommit.name, at: commitAt,
                                   "committed transaction \(expected) carries a bad image for offset \(target)")
                }
                decoded.append((target, image))
            }
            for (target, image) in decoded { try apply(target, image) }
            result.transactions += 1
            result.images += images
            position += UInt64(sectors) * sector
            expected += 1
        }
        result.nextSequence = expected
        return result
    }
}
