/// What an export is called, by a client or on the command line (`Spec/export.md` §3): the
/// absolute path of a file on the volume (`/vms/web01/disk0.raw`; the leading slash may be left
/// out, as NBD URIs leave it out), or a snapshot of one (`/vms/web01/disk0.raw@nightly`).
public enum ExportName: Equatable, Hashable, Sendable, CustomStringConvertible {
    case file(path: String)
    case snapshot(path: String, snapshot: String)

    /// NBD strings are at most 4096 bytes.
    public static let maxLength = 4096

    /// Parses a name as sent or typed. The last `@` separates a snapshot name: LunarFS names
    /// may hold `@`, but an exported file whose name does cannot be told from a snapshot.
    public init(parsing text: String) throws(ExportError) {
        guard text.utf8.count <= Self.maxLength else { throw ExportError(.invalidName("export name longer than \(Self.maxLength) bytes")) }
        guard !text.utf8.contains(0) else { throw ExportError(.invalidName("export name holds a NUL byte")) }
        var pathPart = Substring(text)
        var snapshotPart: Substring?
        if let at = text.lastIndex(of: "@") {
            pathPart = text[..<at]
            snapshotPart = text[text.index(after: at)...]
        }
        var components: [Substring] = []
        for part in pathPart.split(separator: "/", omittingEmptySubsequences: true) {
            guard part != ".", part != ".." else {
                throw ExportError(.invalidName("'\(text)': export names are absolute paths without '.' or '..'"))
            }
            components.append(part)
        }
        guard !components.isEmpty else { throw ExportError(.invalidName("'\(text)' names no file (give a path such as /vms/web01/disk0.raw)")) }
        let path = "/" + components.joined(separator: "/")
        if let snapshotPart {
            guard !snapshotPart.isEmpty, !snapshotPart.contains("/") else {
                throw ExportError(.invalidName("'\(text)': a snapshot is named after '@', without '/'"))
            }
            self = .snapshot(path: path, snapshot: String(snapshotPart))
        } else {
            self = .file(path: path)
        }
    }

    public var path: String {
        switch self {
        case .file(let path), .snapshot(let path, _): path
        }
    }

    /// The name as the server lists it (`NBD_REP_SERVER`, `NBD_INFO_NAME`).
    public var description: String {
        switch self {
        case .file(let path): path
        case .snapshot(let path, let snapshot): "\(path)@\(snapshot)"
        }
    }
}

/// The metadata contexts a client may ask for (`Spec/export.md` §5): `base:allocation`, and
/// `qemu:dirty-bitmap:SNAP`, the changes since snapshot SNAP, as QEMU names a dirty bitmap.
enum MetaContext: Equatable, Sendable {
    static let allocationName = "base:allocation"
    static let dirtyBitmapPrefix = "qemu:dirty-bitmap:"

    case allocation
    case dirtyBitmap(snapshot: String)

    /// Whether answering `query` needs the disk's snapshots (read from the volume, off the
    /// event loop): any query in QEMU's namespace.
    static func needsSnapshots(_ query: String) -> Bool { query.hasPrefix("qemu:") }

    /// The contexts an export offers that a query selects, `snapshots` being the ones its
    /// changes can be counted from. Empty leaves (`base:`, `qemu:`, `qemu:dirty-bitmap:`) are
    /// wildcards for listing only, as QEMU has them; unknown namespaces, leaves and snapshots
    /// select nothing: they are ignored, not refused (`Spec/export.md` §2).
    static func matching(_ query: String, listing: Bool, snapshots: [String]) -> [MetaContext] {
        if query == allocationName { return [.allocation] }
        if query.hasPrefix(dirtyBitmapPrefix) {
            let leaf = String(query.dropFirst(dirtyBitmapPrefix.count))
            if leaf.isEmpty { return listing ? snapshots.map { .dirtyBitmap(snapshot: $0) } : [] }
            return snapshots.contains(leaf) ? [.dirtyBitmap(snapshot: leaf)] : []
        }
        guard listing else { return [] }
        if query == "base:" { return [.allocation] }
        if query == "qemu:" { return snapshots.map { .dirtyBitmap(snapshot: $0) } }
        return []
    }

    var name: String {
        switch self {
        case .allocation: Self.allocationName
        case .dirtyBitmap(let snapshot): Self.dirtyBitmapPrefix + snapshot
        }
    }
}
