import Glibc
import LunarIO

/// One directory entry, as stored in a leaf or inline in a small directory's inode:
/// ```
/// 0 4 inode number
/// 4 1 file type (1 regular file, 2 directory)
/// 5 1 name length (1 – 255)
/// 6 n name, UTF-8, no terminator
/// ```
/// "." and ".." are not stored: the inode records its parent.
struct DirectoryEntry: Equatable, Sendable {
    var name: [UInt8]
    var inode: UInt32
    var type: InodeRecord.FileType

    var encodedSize: Int { 6 + name.count }
    static let maxNameLength = 255

    /// Parses a packed run of entries; the reason on failure names what is wrong.
    static func decodeAll(_ region: UnsafeRawBufferPointer, count expected: Int?) -> Result<[DirectoryEntry], EntryDamage> {
        var entries: [DirectoryEntry] = []
        var at = 0
        while at < region.count {
            guard at + 6 <= region.count else { return .failure(EntryDamage("entry at \(at) is cut short", salvaged: entries)) }
            let inode = UInt32(littleEndian: region.loadUnaligned(fromByteOffset: at, as: UInt32.self))
            let rawType = region[at + 4]
            let length = Int(region[at + 5])
            guard inode != 0, let type = InodeRecord.FileType(rawValue: rawType), type != .free else {
                return .failure(EntryDamage("entry at \(at) has inode \(inode), type \(rawType)", salvaged: entries))
            }
            guard length > 0, at + 6 + length <= region.count else {
                return .failure(EntryDamage("entry at \(at) has a bad name length \(length)", salvaged: entries))
            }
            let name = Array(region[(at + 6)..<(at + 6 + length)])
            guard isValidName(name) else { return .failure(EntryDamage("entry at \(at) has an invalid name", salvaged: entries)) }
            entries.append(DirectoryEntry(name: name, inode: inode, type: type))
            at += 6 + length
        }
        if let expected, expected != entries.count {
            return .failure(EntryDamage("holds \(entries.count) entries but counts \(expected)", salvaged: entries))
        }
        return .success(entries)
    }

    /// Packs entries into `region`; returns the bytes used.
    static func encodeAll(_ entries: [DirectoryEntry], into region: UnsafeMutableRawBufferPointer) -> Int {
        var at = 0
        for e in entries {
            region.storeBytes(of: e.inode.littleEndian, toByteOffset: at, as: UInt32.self)
            region[at + 4] = e.type.rawValue
            region[at + 5] = UInt8(e.name.count)
            UnsafeMutableRawBufferPointer(rebasing: region[(at + 6)..<(at + 6 + e.name.count)]).copyBytes(from: e.name)
            at += e.encodedSize
        }
        if at < region.count {
            UnsafeMutableRawBufferPointer(rebasing: region[at...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        return at
    }

    static func isValidName(_ name: [UInt8]) -> Bool {
        guard !name.isEmpty, name.count <= maxNameLength, name != [0x2E], name != [0x2E, 0x2E] else { return false }
        return name.withUnsafeBufferPointer { b in
            for byte in b where byte == 0 || byte == 0x2F { return false }
            return true
        }
    }
}

/// Why a run of entries does not decode, and the entries before the damage.
struct EntryDamage: Error {
    let reason: String
    let salvaged: [DirectoryEntry]
    init(_ reason: String, salvaged: [DirectoryEntry]) {
        self.reason = reason
        self.salvaged = salvaged
    }
}

/// A hashed directory's content (once it outgrows its inode): extendible hashing over 4 KiB
/// records in the directory's own logical sectors.
///
/// Logical sector 0, the directory header:
/// ```
///  0 32 record header (magic "LDHD")
/// 32  4 directory inode
/// 36  1 global depth d   the table has 2^d slots, indexed by the top d bits of the name hash
/// 37  3 reserved
/// 40  4 table sectors in use
/// 44  4 next free logical sector (leaves are appended there)
/// 48  8 entry count
/// ```
/// Logical sectors 1 – 66, the table (as many as 2^d needs), each:
/// ```
///  0   32 record header (magic "LDTB")
/// 32    4 directory inode
/// 36    4 index of this table sector
/// 40   24 reserved
/// 64 4032 1 008 u32 slots: the logical sector of the leaf for that hash prefix
/// ```
/// Leaves, from logical sector 67 on:
/// ```
///  0 32 record header (magic "LDLF")
/// 32  4 directory inode
/// 36  1 local depth      the leaf holds every name whose top `local depth` hash bits match
/// 37  1 reserved
/// 38  2 entry count
/// 40  2 bytes of entries
/// 42 22 reserved
/// 64 .. packed entries (see `DirectoryEntry`)
/// ```
/// The name hash is SipHash-2-4 of the name bytes under the volume's directory hash key, so
/// a lookup reads the header, one table sector and one leaf, whatever the directory's size.
enum DirectoryLayout {
    static let headerSector: UInt32 = 0
    static let firstTableSector: UInt32 = 1
    static let slotsPerTableSector = (RecordHeader.sectorSize - 64) / 4
    static let maxDepth: UInt8 = 16
    static let maxTableSectors = UInt32(((1 << Int(maxDepth)) + slotsPerTableSector - 1) / slotsPerTableSector)
    static let firstLeafSector: UInt32 = firstTableSector + maxTableSectors
    static let leafEntriesOffset = 64
    static let leafCapacity = RecordHeader.sectorSize - leafEntriesOffset
    /// Every table slot names a leaf and leaves are never freed, so a directory has at most
    /// one leaf per slot of the deepest table.
    static let maxLeaves: UInt32 = 1 << UInt32(maxDepth)
    static let maxLogicalSectors: UInt32 = firstLeafSector + maxLeaves
    /// The smallest entry is 7 bytes (a 1-byte name).
    static let maxEntriesPerLeaf = leafCapacity / 7

    static func tableSectors(depth: UInt8) -> UInt32 {
        UInt32(((1 << Int(depth)) + slotsPerTableSector - 1) / slotsPerTableSector)
    }
}

struct DirectoryHeader {
    let buffer: IOBuffer
    var directory: UInt32 { buffer.load(32) }
    var depth: UInt8 { get { buffer.load(36) } nonmutating set { buffer.store(newValue, at: 36) } }
    var tableSectors: UInt32 { get { buffer.load(40) } nonmutating set { buffer.store(newValue, at: 40) } }
    var nextFreeSector: UInt32 { get { buffer.load(44) } nonmutating set { buffer.store(newValue, at: 44) } }
    var entryCount: UInt64 { get { buffer.load(48) } nonmutating set { buffer.store(newValue, at: 48) } }

    static func initialize(_ b: IOBuffer, directory: UInt32) {
        b.fill(0)
        b.store(directory, at: 32)
    }

    /// Why this verified header cannot describe a directory whose inode records `inodeSize`
    /// bytes (next free sector × 4 KiB), or nil: every field bounds a loop or an offset.
    func problem(inodeSize: UInt64) -> String? {
        guard depth <= DirectoryLayout.maxDepth, tableSectors == DirectoryLayout.tableSectors(depth: depth) else {
            return "depth \(depth) with \(tableSectors) table sectors"
        }
        guard nextFreeSector > DirectoryLayout.firstLeafSector, nextFreeSector <= DirectoryLayout.maxLogicalSectors else {
            return "next free sector \(nextFreeSector) outside \(DirectoryLayout.firstLeafSector + 1)–\(DirectoryLayout.maxLogicalSectors)"
        }
        guard UInt64(nextFreeSector) * UInt64(RecordHeader.sectorSize) == inodeSize else {
            return "next free sector \(nextFreeSector) disagrees with the directory's size \(inodeSize)"
        }
        let leaves = UInt64(nextFreeSector - DirectoryLayout.firstLeafSector)
        guard entryCount <= leaves * UInt64(DirectoryLayout.maxEntriesPerLeaf) else {
            return "counts \(entryCount) entries, more than its \(leaves) leaves can hold"
        }
        return nil
    }
}

struct DirectoryTableSector {
    let buffer: IOBuffer
    static func initialize(_ b: IOBuffer, directory: UInt32, index: UInt32) {
        b.fill(0)
        b.store(directory, at: 32)
        b.store(index, at: 36)
    }
    func slot(_ i: Int) -> UInt32 { buffer.load(64 + i * 4) }
    func setSlot(_ i: Int, _ v: UInt32) { buffer.store(v, at: 64 + i * 4) }
}

struct DirectoryLeaf {
    let buffer: IOBuffer
    var directory: UInt32 { buffer.load(32) }
    var localDepth: UInt8 { get { buffer.load(36) } nonmutating set { buffer.store(newValue, at: 36) } }
    var entryCount: UInt16 { buffer.load(38) }
    var bytesUsed: UInt16 { buffer.load(40) }

    static func initialize(_ b: IOBuffer, directory: UInt32, depth: UInt8) {
        b.fill(0)
        b.store(directory, at: 32)
        b.store(depth, at: 36)
    }

    /// The bytes of entries the leaf claims, at most its capacity.
    var usedEntries: UnsafeMutableRawBufferPointer {
        buffer.slice(DirectoryLayout.leafEntriesOffset..<(DirectoryLayout.leafEntriesOffset + min(Int(bytesUsed), DirectoryLayout.leafCapacity)))
    }

    func entries(at offset: UInt64) throws(FSError) -> [DirectoryEntry] {
        let used = Int(bytesUsed)
        guard used <= DirectoryLayout.leafCapacity else {
            throw .corrupt(RecordKind.directoryLeaf.name, at: offset, "claims \(used) bytes of entries")
        }
        let region = UnsafeRawBufferPointer(buffer.slice(DirectoryLayout.leafEntriesOffset..<(DirectoryLayout.leafEntriesOffset + used)))
        switch DirectoryEntry.decodeAll(region, count: Int(entryCount)) {
        case .success(let e): return e
        case .failure(let damage): throw .corrupt(RecordKind.directoryLeaf.name, at: offset, damage.reason)
        }
    }

    /// The entry named `name`, found by scanning the packed entries in place (no arrays are
    /// built: lookups and inserts run once per create); nil when the leaf holds no such name.
    /// Entries that do not parse are the full decode's to report, so a damaged leaf throws as
    /// `entries(at:)` would.
    func find(_ name: [UInt8], at offset: UInt64) throws(FSError) -> DirectoryEntry? {
        let used = Int(bytesUsed)
        guard used <= DirectoryLayout.leafCapacity else { return try entries(at: offset).first { $0.name == name } }
        let base = buffer.baseAddress + DirectoryLayout.leafEntriesOffset
        var at = 0
        var count = 0
        while at + 6 <= used {
            let length = Int(base.load(fromByteOffset: at + 5, as: UInt8.self))
            guard length > 0, at + 6 + length <= used else { break }
            if length == name.count, name.withUnsafeBytes({ wanted in
                wanted.elementsEqual(UnsafeRawBufferPointer(start: base + at + 6, count: length))
            }) {
                // The full checks of this one entry before it is returned.
                let region = UnsafeRawBufferPointer(start: base + at, count: 6 + length)
                guard case .success(let one) = DirectoryEntry.decodeAll(region, count: 1) else { break }
                return one[0]
            }
            at += 6 + length
            count += 1
        }
        guard at == used, count == Int(entryCount) else { return try entries(at: offset).first { $0.name == name } }
        return nil
    }

    /// Adds one entry after the others; false (and nothing changed) when it does not fit.
    func append(_ entry: DirectoryEntry) -> Bool {
        let used = Int(bytesUsed)
        guard used + entry.encodedSize <= DirectoryLayout.leafCapacity else { return false }
        let start = DirectoryLayout.leafEntriesOffset + used
        _ = DirectoryEntry.encodeAll([entry], into: buffer.slice(start..<(start + entry.encodedSize)))
        buffer.store(entryCount + 1, at: 38)
        buffer.store(UInt16(used + entry.encodedSize), at: 40)
        return true
    }

    /// Replaces the entries; false (and nothing changed) when they do not fit.
    func setEntries(_ entries: [DirectoryEntry]) -> Bool {
        let size = entries.reduce(0) { $0 + $1.encodedSize }
        guard size <= DirectoryLayout.leafCapacity else { return false }
        let used = DirectoryEntry.encodeAll(entries, into: buffer.slice(DirectoryLayout.leafEntriesOffset..<RecordHeader.sectorSize))
        buffer.store(UInt16(entries.count), at: 38)
        buffer.store(UInt16(used), at: 40)
        return true
    }
}
