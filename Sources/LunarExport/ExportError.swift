import LunarFS

/// A failure of the export server to set up or serve, in words an operator can act on.
public struct ExportError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case invalidName(String)
        /// `disk@SNAP` names a snapshot the disk does not have.
        case unknownSnapshot(disk: String, snapshot: String)
        /// `disk@SNAP` with `--writable`: a snapshot is never written.
        case snapshotWritable(String)
        /// The disk's snapshot record cannot be used (LunarDisk's words).
        case disk(String)
        case notRegularFile(String)
        case duplicate(String)
        case noExports
        /// A listening address that is not loopback, without TLS or `--insecure`.
        case insecureListen(String)
        case invalidAddress(String)
        case bind(String)
        /// The certificate or key cannot be used.
        case tls(String)
        case fileSystem(FSError)
    }

    public var kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .invalidName(let why): why
        case .unknownSnapshot(let disk, let snapshot):
            "\(disk) has no snapshot '\(snapshot)' (list them with `lunar disk snapshots LUN:\(disk)`)"
        case .snapshotWritable(let name):
            "\(name): a snapshot is never written; serve it without --writable (to restore, serve the disk itself writable, or `lunar disk revert` it to the snapshot)"
        case .disk(let why): why
        case .notRegularFile(let path): "\(path): not a regular file (an export is a file on the volume)"
        case .duplicate(let name): "\(name) is named twice"
        case .noExports: "name the files to export, e.g. /vms/web01/disk0.raw (`lunar export list LUN` shows them)"
        case .insecureListen(let address):
            "\(address) is not a loopback address: without TLS anyone who reaches it reads (or, --writable, changes) the disks in the clear; give --tls-cert and --tls-key, listen on 127.0.0.1 or a Unix socket, or give --insecure to do it anyway"
        case .invalidAddress(let why): why
        case .bind(let why): why
        case .tls(let why): why
        case .fileSystem(let error): "\(error)"
        }
    }
}
