import LunarFS
import LunarIO

/// What `info` says of a disk or one of its snapshots.
public struct DiskInfo: Sendable, Equatable {
    /// The image format a disk is seen as from outside (what `export` writes, `import` reads).
    public static let format = "raw"

    /// nil for the live disk.
    public var snapshot: String?
    public var size: UInt64
    /// Data bytes its map holds, and of them the bytes no other file (snapshot, clone) shares.
    public var allocatedBytes: UInt64
    public var uniqueBytes: UInt64
    public var sharedBytes: UInt64 { allocatedBytes - uniqueBytes }
    /// How many snapshots the disk has.
    public var snapshotCount: Int
    /// The snapshot it descends from: for the disk, the one last taken or reverted to; for a
    /// snapshot, the one the disk descended from when it was taken.
    public var parent: String?
    /// When a snapshot was taken (nanoseconds since the Unix epoch); nil for the disk.
    public var created: Int64?
}

/// A disk's new size, as `qemu-img resize` takes it: absolute, or grown or shrunk by an amount.
public enum DiskSize: Sendable, Equatable {
    case absolute(UInt64)
    case grow(by: UInt64)
    case shrink(by: UInt64)

    /// `20G`, `+1G` or `-512M` (binary multiples, `ByteSize`).
    public init?(argument: String) {
        var text = Substring(argument)
        let sign = text.first
        if sign == "+" || sign == "-" { text = text.dropFirst() }
        guard let size = ByteSize(argument: String(text)) else { return nil }
        switch sign {
        case "+": self = .grow(by: size.bytes)
        case "-": self = .shrink(by: size.bytes)
        default: self = .absolute(size.bytes)
        }
    }

    /// The size this makes of a disk of `current` bytes.
    func resolved(from current: UInt64) throws(DiskError) -> UInt64 {
        switch self {
        case .absolute(let size): return size
        case .grow(let by):
            let (sum, overflow) = current.addingReportingOverflow(by)
            guard !overflow else { throw DiskError.invalidArgument("growing \(ByteSize.format(current)) by \(ByteSize.format(by)) is past any size a disk can have") }
            return sum
        case .shrink(let by):
            guard by <= current else {
                throw DiskError.invalidArgument("cannot shrink a disk of \(ByteSize.format(current)) by \(ByteSize.format(by)): that is more than it holds")
            }
            return current - by
        }
    }
}

extension VirtualDisk {
    /// A disk's size is a whole number of 512-byte sectors, as virtio-blk and qemu-img count it.
    public static let sectorSize: UInt64 = 512

    /// The volume file holding the disk (nil) or snapshot `snapshot`; a snapshot the tree does
    /// not name is refused.
    public func dataPath(snapshot: String?) throws(DiskError) -> String {
        guard let snapshot else { return path }
        guard try tree().entry(snapshot) != nil else {
            throw DiskError.invalidArgument("\(path) has no snapshot '\(snapshot)' (list them with `lunar disk snapshots`)")
        }
        return snapshotPath(snapshot)
    }

    /// Size, data, sharing and place in the tree of the disk or of snapshot `snapshot`.
    public func info(snapshot: String? = nil) throws(DiskError) -> DiskInfo {
        let tree = try tree()
        let file = try dataPath(snapshot: snapshot)
        let (size, (allocated, unique)) = try fs { () throws(FSError) -> (UInt64, (UInt64, UInt64)) in
            (try volume.stat(file).size, try volume.sharing(of: file))
        }
        let entry = snapshot.flatMap { tree.entry($0) }
        return DiskInfo(snapshot: snapshot, size: size, allocatedBytes: allocated, uniqueBytes: unique, snapshotCount: tree.entries.count,
                        parent: snapshot == nil ? tree.current : entry?.parent, created: entry?.created)
    }

    /// Grows or shrinks the disk; a shrink (it drops the data past the new end) only with
    /// `allowShrink`. Its snapshots keep their sizes (each is a file of its own), and a revert
    /// brings back the snapshot's. Refused while another host holds the disk (a running VM),
    /// naming it. Returns the old and the new size.
    @discardableResult
    public func resize(to newSize: DiskSize, allowShrink: Bool = false) throws(DiskError) -> (old: UInt64, new: UInt64) {
        let file = try fs { () throws(FSError) -> File in try volume.openFile(path, lock: .exclusive) }
        defer { try? file.close() }
        let old = try fs { () throws(FSError) -> UInt64 in try file.size }
        let new = try newSize.resolved(from: old)
        guard new % Self.sectorSize == 0 else {
            let down = new / Self.sectorSize * Self.sectorSize
            throw DiskError.invalidArgument("\(new) bytes is not a whole number of 512-byte sectors: give \(down + Self.sectorSize)\(down > 0 ? " or \(down)" : "")")
        }
        if new < old && !allowShrink {
            throw DiskError.invalidArgument("\(path) would shrink from \(ByteSize.format(old)) to \(ByteSize.format(new)), dropping what it holds past that; "
                + "shrink the partitions and file systems inside first, then add --shrink")
        }
        guard new != old else { return (old, new) }
        try fs { () throws(FSError) -> Void in
            try file.truncate(to: new)
            try volume.sync()
        }
        return (old, new)
    }

    /// Opens a disk for an import of `length` bytes (nil: not known until the source ends) at
    /// `offset`, holding it exclusive. A disk that does not exist is made, `size` bytes (by
    /// default the end of the data, rounded up to a sector); an existing one is first grown to
    /// `size` when given (never shrunk), and refused when the data would end past it.
    public static func openForImport(_ volume: Volume, path: String, offset: UInt64, length: UInt64?,
                                     size: UInt64?) throws(DiskError) -> (file: File, created: Bool) {
        let (end, overflow) = offset.addingReportingOverflow(length ?? 0)
        guard !overflow else { throw DiskError.invalidArgument("offset \(offset) plus \(length ?? 0) bytes is past any size a disk can have") }
        if let size, size % Self.sectorSize != 0 {
            throw DiskError.invalidArgument("--size \(size) is not a whole number of 512-byte sectors: give \((size / Self.sectorSize + 1) * Self.sectorSize)")
        }
        let exists = try fs { () throws(FSError) -> Bool in try volume.exists(path) }
        guard exists else {
            let made = size ?? (length == nil ? 0 : (end + Self.sectorSize - 1) / Self.sectorSize * Self.sectorSize)
            if let size, let length, end > size {
                throw DiskError.invalidArgument("\(length) bytes at offset \(offset) do not fit in \(ByteSize.format(size)): give a larger --size")
            }
            let disk = try create(volume, path: path, size: made)
            return (try fs { () throws(FSError) -> File in try volume.openFile(disk.path, lock: .exclusive) }, true)
        }
        let disk = VirtualDisk(volume, path: path)
        if let size {
            let current = try fs { () throws(FSError) -> UInt64 in try volume.stat(path).size }
            if size < current {
                throw DiskError.invalidArgument("\(path) is \(ByteSize.format(current)), more than --size \(ByteSize.format(size)); an import never shrinks a disk (`lunar disk resize --shrink` does)")
            }
            try disk.resize(to: .absolute(size))
        }
        let file = try fs { () throws(FSError) -> File in try volume.openFile(path, lock: .exclusive) }
        let current = try fs { () throws(FSError) -> UInt64 in try file.size }
        if let length, end > current {
            try? file.close()
            throw DiskError.invalidArgument("\(length) bytes at offset \(offset) end \(ByteSize.format(end - current)) past the end of \(path) (\(ByteSize.format(current))): "
                + "give --size to grow it, or `lunar disk resize` it first")
        }
        return (file, false)
    }

    /// The image format whose header `bytes` (a source's first bytes) begins with, when it is
    /// one a raw import would copy as it is, header and all (qcow2, vmdk, vdi, vhd, vhdx); nil
    /// for anything else, which is taken as raw.
    public static func foreignFormat(_ bytes: UnsafeRawBufferPointer) -> String? {
        func starts(_ text: String, at offset: Int = 0) -> Bool {
            let magic = Array(text.utf8)
            return bytes.count >= offset + magic.count && zip(bytes[offset..<(offset + magic.count)], magic).allSatisfy { $0 == $1 }
        }
        if bytes.count >= 4 && Array(bytes[0..<4]) == [0x51, 0x46, 0x49, 0xfb] { return "qcow2" }
        if starts("KDMV") || starts("# Disk DescriptorFile") { return "vmdk" }
        if starts("vhdxfile") { return "vhdx" }
        if starts("conectix") { return "vhd" }
        if bytes.count >= 68 && Array(bytes[64..<68]) == [0x7f, 0x10, 0xda, 0xbe] { return "vdi" }
        return nil
    }

    /// Refuses a source that `foreignFormat` recognises, saying how to convert it. `source`:
    /// its path; nil for standard input.
    public static func checkRaw(_ bytes: UnsafeRawBufferPointer, source: String?) throws(DiskError) {
        guard let format = foreignFormat(bytes) else { return }
        throw DiskError.invalidArgument("\(source ?? "standard input") is a \(format) image, not raw: convert it first with "
            + "`qemu-img convert -O raw \(source ?? "IMAGE.\(format)") disk.raw`, then import disk.raw")
    }
}
