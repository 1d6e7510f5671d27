import LunarIO

/// The 32-byte header every LunarFS metadata record begins with.
///
/// ```
/// offset size field
///      0    4 magic         record type, four ASCII letters read as a little-endian u32
///      4    2 version       format version that wrote it (1)
///      6    2 reserved      0
///      8    8 generation    bumped each time a transaction rewrites the record (a record made
///                           afresh over a sector not in memory starts again from 1)
///     16    8 self offset   byte offset of this record on the volume (catches misplaced writes)
///     24    4 crc32c        CRC32C (Castagnoli) of the whole record with this field zero
///     28    4 reserved      0
/// ```
/// A record is one 4 KiB sector (`RecordHeader.size`), 4 KiB aligned.
enum RecordHeader {
    static let sectorSize = 4096
    static let size = 32
    static let formatVersion: UInt16 = 1

    static let magicOffset = 0
    static let versionOffset = 4
    static let generationOffset = 8
    static let selfOffsetOffset = 16
    static let crcOffset = 24
}

/// Every record type, with its magic and the name errors use.
enum RecordKind: UInt32, CaseIterable, Sendable {
    case volumeHeader = 0x4448_564C      // "LVHD"
    case volumeLock = 0x4B4C_564C        // "LVLK"
    case heartbeat = 0x5442_484C         // "LHBT"
    case journalHeader = 0x4448_4A4C     // "LJHD"
    case journalDescriptor = 0x5854_4A4C // "LJTX"
    case journalCommit = 0x4D43_4A4C     // "LJCM"
    case cluster = 0x4C43_524C           // "LRCL"
    case inode = 0x4F4E_494C             // "LINO"
    case pointerBlock = 0x5254_504C      // "LPTR"
    case directoryHeader = 0x4448_444C   // "LDHD"
    case directoryTable = 0x4254_444C    // "LDTB"
    case directoryLeaf = 0x464C_444C     // "LDLF"
    case referenceCounts = 0x4346_524C   // "LRFC"

    var name: String {
        switch self {
        case .volumeHeader: "volume header"
        case .volumeLock: "volume lock record"
        case .heartbeat: "heartbeat slot"
        case .journalHeader: "journal header"
        case .journalDescriptor: "journal descriptor"
        case .journalCommit: "journal commit record"
        case .cluster: "resource cluster header"
        case .inode: "file descriptor (inode)"
        case .pointerBlock: "pointer block"
        case .directoryHeader: "directory header"
        case .directoryTable: "directory hash table"
        case .directoryLeaf: "directory leaf"
        case .referenceCounts: "reference count sector"
        }
    }
}

extension IOBuffer {
    var recordGeneration: UInt64 { load(RecordHeader.generationOffset) }

    /// Stamps the header of a record about to be written at `offset` and checksums it.
    func seal(_ kind: RecordKind, at offset: UInt64, generation: UInt64) {
        store(kind.rawValue, at: RecordHeader.magicOffset)
        store(RecordHeader.formatVersion, at: RecordHeader.versionOffset)
        store(UInt16(0), at: 6)
        store(generation, at: RecordHeader.generationOffset)
        store(offset, at: RecordHeader.selfOffsetOffset)
        store(UInt32(0), at: 28)
        store(UInt32(0), at: RecordHeader.crcOffset)
        store(CRC32C.checksum(UnsafeRawBufferPointer(slice(0..<RecordHeader.sectorSize))), at: RecordHeader.crcOffset)
    }

    /// Checks that this sector is a sound `kind` record written for `offset`.
    func verify(_ kind: RecordKind, at offset: UInt64) throws(FSError) {
        if let problem = problem(as: kind, at: offset) { throw .corrupt(kind.name, at: offset, problem) }
    }

    /// Why this sector is not a sound `kind` record for `offset`, or nil when it is.
    func problem(as kind: RecordKind, at offset: UInt64) -> String? {
        let magic: UInt32 = load(RecordHeader.magicOffset)
        if magic != kind.rawValue {
            if magic == 0 && isAllZero { return "sector is all zeros (never written, or wiped)" }
            if let other = RecordKind(rawValue: magic) { return "found a \(other.name) instead" }
            return "bad magic 0x\(String(magic, radix: 16))"
        }
        let stored: UInt32 = load(RecordHeader.crcOffset)
        store(UInt32(0), at: RecordHeader.crcOffset)
        let computed = CRC32C.checksum(UnsafeRawBufferPointer(slice(0..<RecordHeader.sectorSize)))
        store(stored, at: RecordHeader.crcOffset)
        if stored != computed {
            return "checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))"
        }
        let version: UInt16 = load(RecordHeader.versionOffset)
        if version > RecordHeader.formatVersion {
            return "written by format version \(version), newer than \(RecordHeader.formatVersion)"
        }
        let written: UInt64 = load(RecordHeader.selfOffsetOffset)
        if written != offset { return "record belongs at offset \(written) (misdirected or stale write)" }
        return nil
    }

    var isAllZero: Bool {
        let words = UnsafeRawBufferPointer(bytes).bindMemory(to: UInt64.self)
        for w in words where w != 0 { return false }
        return true
    }
}
