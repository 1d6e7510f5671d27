import LunarFS

/// What a disk's snapshots are to each other, kept beside them on the volume (`Spec/disk.md`):
/// which snapshot each was taken from, when, and which one the live disk descends from. The
/// snapshots' data are files that share blocks with the disk (`Volume.clone`); this record only
/// orders them.
///
/// On the volume, a text file of lines separated by `\n`:
/// ```
/// lunar-snapshots 1
/// current NAME                        (absent while the disk descends from no snapshot)
/// snapshot NAME CREATED_NS PARENT     (PARENT is "-" for a root of the tree)
/// ```
public struct SnapshotTree: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        /// Nanoseconds since the Unix epoch.
        public var created: Int64
        /// The snapshot the disk descended from when this one was taken.
        public var parent: String?
    }

    public private(set) var entries: [Entry] = []
    /// The snapshot the live disk descends from: the last taken, or the one reverted to.
    public var current: String?

    static let magic = "lunar-snapshots 1"

    public init() {}

    public func entry(_ name: String) -> Entry? { entries.first { $0.name == name } }
    public func children(of name: String) -> [Entry] { entries.filter { $0.parent == name } }

    mutating func add(_ name: String, created: Int64) {
        entries.append(Entry(name: name, created: created, parent: current))
        current = name
    }

    /// Takes `name` out of the tree: its children hang from its parent, and the live disk, if
    /// it descended from it, from its parent too.
    mutating func remove(_ name: String) {
        guard let gone = entry(name) else { return }
        entries.removeAll { $0.name == name }
        for i in entries.indices where entries[i].parent == name { entries[i].parent = gone.parent }
        if current == name { current = gone.parent }
    }

    /// A snapshot name: 1 to 64 bytes of letters, digits, `.`, `_`, `-`, not starting with `.`
    /// (so it is a file name everywhere, and `disk@name` parses one way).
    public static func checkName(_ name: String) throws(DiskError) {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count), bytes.first != UInt8(ascii: "."),
              bytes.allSatisfy({ isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }),
              bytes.allSatisfy({ $0 < 0x80 }) else {
            throw DiskError.invalidArgument("snapshot name '\(name)': use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")
        }
    }

    func encoded() -> [UInt8] {
        var text = Self.magic + "\n"
        if let current { text += "current \(current)\n" }
        for e in entries { text += "snapshot \(e.name) \(e.created) \(e.parent ?? "-")\n" }
        return Array(text.utf8)
    }

    /// Parses the record; a line that does not parse, a name that is not valid, a parent or
    /// current snapshot not in the tree, or a parent loop is damage, reported with the line.
    static func decode(_ bytes: [UInt8]) throws(DiskError) -> SnapshotTree {
        guard bytes.count <= 1 << 20 else { throw DiskError.damaged("snapshot record larger than 1 MiB") }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        guard lines.first.map(String.init) == magic else { throw DiskError.damaged("snapshot record does not start with '\(magic)'") }
        var tree = SnapshotTree()
        for (number, line) in lines.enumerated().dropFirst() {
            let words = line.split(separator: " ").map(String.init)
            switch (words.first, words.count) {
            case ("current", 2):
                tree.current = words[1]
            case ("snapshot", 4):
                guard let created = Int64(words[2]) else { throw DiskError.damaged("snapshot record line \(number + 1): bad time") }
                do throws(DiskError) { try checkName(words[1]) } catch { throw DiskError.damaged("snapshot record line \(number + 1): bad name") }
                guard tree.entry(words[1]) == nil else { throw DiskError.damaged("snapshot record line \(number + 1): '\(words[1])' twice") }
                tree.entries.append(Entry(name: words[1], created: created, parent: words[3] == "-" ? nil : words[3]))
            default:
                throw DiskError.damaged("snapshot record line \(number + 1) does not parse")
            }
        }
        let names = Set(tree.entries.map(\.name))
        if let current = tree.current, !names.contains(current) { throw DiskError.damaged("snapshot record: current '\(current)' is not a snapshot") }
        for e in tree.entries {
            guard e.parent.map(names.contains) ?? true else { throw DiskError.damaged("snapshot record: '\(e.name)' names a missing parent") }
            // Every chain of parents ends at a root within as many steps as there are snapshots.
            var at = e.parent, steps = 0
            while let p = at {
                steps += 1
                guard steps <= tree.entries.count else { throw DiskError.damaged("snapshot record: a loop of parents through '\(e.name)'") }
                at = tree.entry(p)?.parent
            }
        }
        return tree
    }
}

#if canImport(Glibc)
import Glibc
#endif
