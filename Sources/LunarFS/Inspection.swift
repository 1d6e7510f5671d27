import LunarIO

/// Where a metadata record lives: for `lunar fs` debugging output and for tests that damage
/// one record on purpose.
public struct MetadataRecordLocation: Sendable, Equatable {
    /// The record type's name, as errors and fsck print it.
    public var record: String
    public var offset: UInt64
}

extension Volume {
    /// The volume-wide records: both headers, the volume lock, slot 0's heartbeat and journal
    /// header, and cluster 0 of every resource area.
    public func fixedRecords() -> [MetadataRecordLocation] {
        let h = header
        var out = [
            MetadataRecordLocation(record: RecordKind.volumeHeader.name, offset: VolumeHeader.primaryOffset),
            MetadataRecordLocation(record: RecordKind.volumeHeader.name, offset: h.backupOffset),
            MetadataRecordLocation(record: RecordKind.volumeLock.name, offset: h.volumeLockOffset),
            MetadataRecordLocation(record: RecordKind.heartbeat.name, offset: h.heartbeatSlotOffset(0)),
            MetadataRecordLocation(record: RecordKind.journalHeader.name, offset: h.journalStart(0)),
        ]
        for kind in ResourceKind.allCases {
            out.append(MetadataRecordLocation(record: RecordKind.cluster.name, offset: h.area(kind).clusterOffset(0)))
        }
        return out
    }

    /// Host slot `s`'s heartbeat record and journal header.
    public func slotRecords(_ s: Int) -> [MetadataRecordLocation] {
        [MetadataRecordLocation(record: RecordKind.heartbeat.name, offset: header.heartbeatSlotOffset(s)),
         MetadataRecordLocation(record: RecordKind.journalHeader.name, offset: header.journalStart(s))]
    }

    /// The cluster headers whose bitmaps account for a file: its inode's, and those of the
    /// pointer blocks and data units its map references.
    public func clusters(of path: String) throws(FSError) -> [MetadataRecordLocation] {
        try locked(path) { (core) throws(FSError) -> [MetadataRecordLocation] in
            let n = try core.resolve(path)
            let ino = try core.inode(n)
            var offsets: Set<UInt64> = []
            func add(_ kind: ResourceKind, _ index: UInt64) {
                let area = core.header.area(kind)
                offsets.insert(area.clusterOffset(area.cluster(of: index)))
            }
            add(.inode, UInt64(n))
            let units = core.unitKind(ino.storage ?? .blocks)
            // A grain map names grains: their file block's cluster holds the bit (and the counts).
            let perUnit = ino.storage == .grains ? core.grainsPerBlock : 1
            try core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in add(.pointerBlock, UInt64(p)) }) { (_, unit) throws(FSError) -> Bool in
                add(units, UInt64(unit) / perUnit)
                return true
            }
            return offsets.sorted().map { MetadataRecordLocation(record: RecordKind.cluster.name, offset: $0) }
        }
    }

    /// The records a file or directory is made of: its inode, its pointer blocks, and for a
    /// hashed directory its header, table and leaf sectors.
    public func records(of path: String) throws(FSError) -> [MetadataRecordLocation] {
        try locked(path) { (core) throws(FSError) -> [MetadataRecordLocation] in
            let n = try core.resolve(path)
            let ino = try core.inode(n)
            var out = [MetadataRecordLocation(record: RecordKind.inode.name, offset: core.inodeOffset(n))]
            try core.walkMap(ino, pointerBlock: { (p, _) throws(FSError) in
                out.append(MetadataRecordLocation(record: RecordKind.pointerBlock.name,
                                                  offset: core.header.pointerBlocks.offset(of: UInt64(p))))
            }) { (_, _) throws(FSError) -> Bool in true }
            guard ino.type == .directory, ino.storage != .inline else { return out }
            for r in try core.directoryRecords(n) { out.append(MetadataRecordLocation(record: r.kind.name, offset: r.offset)) }
            return out
        }
    }
}

extension VolumeHeader {
    /// What lies at byte `offset` of the volume, in words: "the volume header", "the journal
    /// region", "the file blocks area", ...; nil past the volume's end.
    public func region(at offset: UInt64) -> String? {
        let s = UInt64(RecordHeader.sectorSize)
        guard offset < volumeSize else { return nil }
        if offset < s || offset >= backupOffset { return "the volume header" }
        if (volumeLockOffset..<volumeLockOffset + s).contains(offset) { return "the volume lock record" }
        if (heartbeatOffset..<heartbeatOffset + UInt64(hostSlots) * s).contains(offset) { return "the heartbeat region" }
        if (journalOffset..<journalOffset + UInt64(hostSlots) * journalSize).contains(offset) { return "the journal region" }
        for kind in ResourceKind.allCases {
            let a = area(kind)
            if (a.mapOffset..<a.mapEnd).contains(offset) { return "the cluster map of the \(kind)" }
            if (a.dataOffset..<a.dataEnd).contains(offset) { return "the \(kind) area" }
        }
        return "unused space between the volume's regions"
    }
}
