import LunarIO

/// Paths, names and the operations that change the tree.
extension VolumeCore {
    var root: UInt32 { header.rootInode }

    static func components(_ path: String) -> [[UInt8]] {
        path.split(separator: "/", omittingEmptySubsequences: true).map { Array($0.utf8) }.filter { $0 != [0x2E] }
    }

    static func checkName(_ name: [UInt8]) throws(FSError) {
        if name.count > DirectoryEntry.maxNameLength { throw FSError(.nameTooLong) }
        if !DirectoryEntry.isValidName(name) { throw FSError(.invalidName) }
    }

    /// The inode a path names.
    func resolve(_ path: String) throws(FSError) -> UInt32 {
        var current = root
        for name in Self.components(path) {
            if holdsShared, let known = knownNames.inode(of: name, in: current) {
                current = known
                continue
            }
            try lockDirectory(current, forWriting: false)
            if name == [0x2E, 0x2E] {
                current = try inode(current).parent
                continue
            }
            let ino = try inode(current)
            guard ino.type == .directory else { throw FSError(.notDirectory) }
            guard let entry = try lookup(current, name) else { throw FSError(.notFound) }
            try checkInodeNumber(entry.inode, referencedFrom: RecordKind.directoryLeaf.name, at: inodeOffset(current))
            if holdsShared { knownNames.learn(name, in: current, is: entry.inode) }
            current = entry.inode
        }
        return current
    }

    /// The directory that holds the last component of `path`, and that component. Under a
    /// shared hold the directory is locked, for changing it when `forWriting`.
    func resolveParent(_ path: String, forWriting: Bool = false) throws(FSError) -> (UInt32, [UInt8]) {
        var parts = Self.components(path)
        guard let name = parts.popLast() else { throw FSError(.invalidArgument("the root directory has no name")) }
        try Self.checkName(name)
        let dir = try resolve(parts.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/"))
        try lockDirectory(dir, forWriting: forWriting)
        guard try inode(dir).type == .directory else { throw FSError(.notDirectory) }
        return (dir, name)
    }

    func createNode(in dir: UInt32, name: [UInt8], type: InodeRecord.FileType, mode: UInt32) throws(FSError) -> UInt32 {
        if try lookup(dir, name) != nil { throw FSError(.exists) }
        let ino = try allocateInode(type: type, mode: mode, parent: dir)
        try insert(dir, DirectoryEntry(name: name, inode: ino.number, type: type))
        return ino.number
    }

    /// Frees a node's content and its inode. Large files free their blocks over several
    /// transactions, flagged orphan in the first so that fsck can finish a cut-short removal.
    func destroyNode(_ n: UInt32) throws(FSError) {
        if let holder = try otherHolder(of: n) {
            throw FSError(.busy("it is open on \(holder.description); close it there first"))
        }
        let m = try modifyInode(n)
        m.isOrphan = true
        m.linkCount = 0
        try freeUnits(n, from: 0)
        let ino = try inode(n)
        if ino.height > 0 || ino.allocatedUnits != 0 {
            // freeUnits leaves only empty top-level trees behind; make sure none remain.
            try freeUnits(n, from: 0)
        }
        try releaseInode(n)
    }

    func removeNode(_ path: String) throws(FSError) {
        let (dir, name) = try resolveParent(path)
        guard let entry = try lookup(dir, name) else { throw FSError(.notFound) }
        if entry.type == .directory, try !isEmptyDirectory(entry.inode) { throw FSError(.directoryNotEmpty) }
        try removeEntry(dir, name)
        try destroyNode(entry.inode)
    }

    func rename(_ from: String, _ to: String) throws(FSError) {
        let (sourceDir, sourceName) = try resolveParent(from)
        guard let entry = try lookup(sourceDir, sourceName) else { throw FSError(.notFound, path: from) }
        let (targetDir, targetName) = try resolveParent(to)
        if sourceDir == targetDir && sourceName == targetName { return }
        if entry.type == .directory {
            // A directory may not move into its own subtree.
            var d = targetDir
            while true {
                if d == entry.inode { throw FSError(.invalidArgument("cannot move a directory into itself"), path: to) }
                if d == root { break }
                d = try inode(d).parent
            }
        }
        if let existing = try lookup(targetDir, targetName) {
            switch (entry.type, existing.type) {
            case (.directory, .regular): throw FSError(.notDirectory, path: to)
            case (.regular, .directory): throw FSError(.isDirectory, path: to)
            case (.directory, .directory):
                if try !isEmptyDirectory(existing.inode) { throw FSError(.directoryNotEmpty, path: to) }
            default: break
            }
            try removeEntry(targetDir, targetName)
            try destroyNode(existing.inode)
        }
        try removeEntry(sourceDir, sourceName)
        try insert(targetDir, DirectoryEntry(name: targetName, inode: entry.inode, type: entry.type))
        let m = try modifyInode(entry.inode)
        m.parent = targetDir
        m.ctime = wallClockNanoseconds()
    }
}

/// Names this host found in directories it walked through under shared holds, so that a
/// path's directories need not be read (and checked again at the end of the call) each time.
///
/// A name found once stays true while the cache does: under shared holds other hosts only
/// add entries (a remove or a rename takes the metadata lock exclusive), and whenever
/// another host may have held it exclusive since, the cache is dropped (`dropCache`). What
/// can still make a known name wrong is on this host, and forgets them all: removing an
/// entry or rewriting a directory, and a call that fails (its changes were rolled back,
/// entries it made included).
struct KnownNames {
    private var names: [UInt32: [[UInt8]: UInt32]] = [:]
    private var count = 0
    /// Enough for every directory on the paths of a busy host; past it, start again.
    static let capacity = 16_384

    func inode(of name: [UInt8], in dir: UInt32) -> UInt32? { names[dir]?[name] }

    mutating func learn(_ name: [UInt8], in dir: UInt32, is inode: UInt32) {
        if count >= Self.capacity { forgetAll() }
        if names[dir, default: [:]].updateValue(inode, forKey: name) == nil { count += 1 }
    }

    mutating func forgetAll() {
        names.removeAll()
        count = 0
    }
}
