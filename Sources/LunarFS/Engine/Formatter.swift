import LunarIO

/// mkfs: lays out an empty volume on `storage`.
enum Formatter {
    static func format(_ storage: any BlockStorage, options: FormatOptions) throws(FSError) -> VolumeHeader {
        guard !storage.isReadOnly else { throw FSError(.readOnly, path: storage.path) }
        guard storage.sectorSize <= RecordHeader.sectorSize else {
            throw FSError(.invalidArgument("device sectors of \(storage.sectorSize) bytes are larger than LunarFS's 4 KiB records"), path: storage.path)
        }
        let header = try Geometry.layout(volumeSize: storage.size, options: options)
        let s = UInt64(RecordHeader.sectorSize)

        // Start from zeros: an image file becomes sparse again, and no earlier volume's
        // records survive to be mistaken for ours. Devices without discard keep their bytes,
        // which only costs the writes below.
        _ = try? storage.discardBlocking(at: 0, length: header.volumeSize)

        // Everything but the header first, the header last: a volume with a header is complete.
        let lock = IOBuffer(count: Int(s))
        VolumeLockState(record: .free, epoch: 0, waiter: nil, holders: []).encode(into: lock)
        lock.seal(.volumeLock, at: header.volumeLockOffset, generation: 1)
        try write(storage, lock, at: header.volumeLockOffset)

        let slots = IOBuffer(count: Int(s) * Int(header.hostSlots))
        for i in 0..<Int(header.hostSlots) {
            let b = IOBuffer(count: Int(s))
            HeartbeatSlot.empty(UInt32(i)).encode(into: b)
            b.seal(.heartbeat, at: header.heartbeatSlotOffset(i), generation: 1)
            slots.slice((i * Int(s))..<((i + 1) * Int(s))).copyMemory(from: UnsafeRawBufferPointer(b.bytes))
        }
        try write(storage, slots, at: header.heartbeatOffset)

        for i in 0..<Int(header.hostSlots) {
            try Journal.writeHeader(JournalHeader(slot: UInt32(i), startSequence: 1, startPosition: 0, volume: header.uuid),
                                    at: header.journalStart(i), storage: storage)
        }

        for kind in ResourceKind.allCases {
            try writeClusters(storage, header: header, kind: kind)
        }

        let root = IOBuffer(count: Int(s))
        let ino = InodeRecord(buffer: root)
        ino.initialize(number: header.rootInode, type: .directory, mode: 0o755, parent: header.rootInode, now: wallClockNanoseconds())
        root.seal(.inode, at: header.inodes.offset(of: UInt64(header.rootInode)), generation: 1)
        try write(storage, root, at: header.inodes.offset(of: UInt64(header.rootInode)))

        let hb = IOBuffer(count: Int(s))
        header.encode(into: hb)
        hb.seal(.volumeHeader, at: header.backupOffset, generation: 1)
        try write(storage, hb, at: header.backupOffset)
        try io { () throws(IOError) in try storage.flushBlocking() }
        hb.seal(.volumeHeader, at: VolumeHeader.primaryOffset, generation: 1)
        try write(storage, hb, at: VolumeHeader.primaryOffset)
        try io { () throws(IOError) in try storage.flushBlocking() }
        return header
    }

    private static func write(_ storage: any BlockStorage, _ b: IOBuffer, at offset: UInt64) throws(FSError) {
        try io { () throws(IOError) in try storage.writeBlocking(from: b, at: offset) }
    }

    /// Every cluster header of an area, written in runs of up to 1 024 sectors.
    private static func writeClusters(_ storage: any BlockStorage, header: VolumeHeader, kind: ResourceKind) throws(FSError) {
        let area = header.area(kind)
        let s = RecordHeader.sectorSize
        let run = 1024
        var c = 0
        while c < area.clusterCount {
            let n = min(run, area.clusterCount - c)
            let batch = IOBuffer(count: n * s)
            let one = IOBuffer(count: s)
            for i in 0..<n {
                ClusterHeader.initialize(one, area: area, cluster: c + i)
                let cluster = ClusterHeader(buffer: one)
                if c + i == 0 {
                    // Resource 0 is reserved everywhere; inode 1 is the root directory.
                    cluster.setUsed(0, true)
                    cluster.freeCount -= 1
                    if kind == .inode {
                        cluster.setUsed(Int(header.rootInode), true)
                        cluster.freeCount -= 1
                    }
                }
                one.seal(.cluster, at: area.clusterOffset(c + i), generation: 1)
                batch.slice((i * s)..<((i + 1) * s)).copyMemory(from: UnsafeRawBufferPointer(one.bytes))
            }
            if area.countSectors == 0 {
                try write(storage, batch, at: area.clusterOffset(c))
            } else {
                // Each header is followed by its count sectors, every count zero.
                let run = IOBuffer(count: Int(area.countSectors + 1) * s)
                for i in 0..<n {
                    run.slice(0..<s).copyMemory(from: UnsafeRawBufferPointer(batch.slice((i * s)..<((i + 1) * s))))
                    for k in 0..<Int(area.countSectors) {
                        ReferenceCountSector.initialize(one, kind: kind, cluster: c + i, sector: k)
                        one.seal(.referenceCounts, at: area.countSectorOffset(c + i, k), generation: 1)
                        run.slice(((k + 1) * s)..<((k + 2) * s)).copyMemory(from: UnsafeRawBufferPointer(one.bytes))
                    }
                    try write(storage, run, at: area.clusterOffset(c + i))
                }
            }
            c += n
        }
    }

    /// Reads the volume header, falling back to the backup copy in the last sector.
    static func readHeader(_ storage: any BlockStorage) throws(FSError) -> (header: VolumeHeader, usedBackup: Bool, primaryProblem: String?) {
        let s = UInt64(RecordHeader.sectorSize)
        let b = IOBuffer(count: Int(s))
        guard storage.size >= 16 * s else { throw FSError(.notLunarFS, path: storage.path) }
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: 0) }
        try refuseNewer(b, storage: storage)
        var primaryProblem = b.problem(as: .volumeHeader, at: 0)
        if primaryProblem == nil {
            do throws(FSError) {
                return (try VolumeHeader.decode(b, at: 0), false, nil)
            } catch {
                primaryProblem = error.description
            }
        }
        let backupAt = storage.size / s * s - s
        try io { () throws(IOError) in try storage.readBlocking(into: b, at: backupAt) }
        if b.problem(as: .volumeHeader, at: backupAt) == nil, let h = try? VolumeHeader.decode(b, at: backupAt), h.volumeSize == backupAt + s {
            return (h, true, primaryProblem)
        }
        let magic: UInt32 = b.load(0)
        if magic != RecordKind.volumeHeader.rawValue {
            let first = IOBuffer(count: Int(s))
            try io { () throws(IOError) in try storage.readBlocking(into: first, at: 0) }
            if first.load(0, as: UInt32.self) != RecordKind.volumeHeader.rawValue { throw FSError(.notLunarFS, path: storage.path) }
        }
        throw FSError(.corrupt(record: RecordKind.volumeHeader.name, offset: 0,
                               reason: "\(primaryProblem ?? "unreadable"), and no sound backup copy in the last sector"), path: storage.path)
    }

    private static func refuseNewer(_ b: IOBuffer, storage: any BlockStorage) throws(FSError) {
        guard b.load(0, as: UInt32.self) == RecordKind.volumeHeader.rawValue else { return }
        let version: UInt16 = b.load(RecordHeader.versionOffset)
        if version > RecordHeader.formatVersion {
            throw FSError(.newerFormat(found: version, supported: RecordHeader.formatVersion), path: storage.path)
        }
    }
}
