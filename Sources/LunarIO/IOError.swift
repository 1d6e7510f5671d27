import Glibc

/// What a block-device operation was doing when it failed.
public enum IOOperationKind: String, Sendable, Equatable {
    case open, setup, read, write, flush, discard, compareAndWrite = "compare-and-write"
}

/// A typed LunarIO failure: what went wrong, on which device, where, and the system's own words.
public struct IOError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Offset not a multiple of the sector size.
        case misalignedOffset(sectorSize: Int)
        /// Length not a multiple of the sector size (or zero).
        case misalignedLength(sectorSize: Int)
        /// Buffer address not aligned to the sector size, as O_DIRECT requires.
        case misalignedBuffer(alignment: Int)
        /// The range ends beyond the device.
        case beyondEnd(deviceSize: UInt64)
        /// The kernel transferred fewer bytes than asked.
        case shortTransfer(transferred: Int)
        /// The device is smaller than the caller requires.
        case deviceTooSmall(actual: UInt64, required: UInt64)
        /// The queue already holds as many requests as its depth allows.
        case queueFull(depth: Int)
        /// The device, file system or engine does not offer the operation.
        case unsupported(String)
        /// The device was closed, or its owner stopped it.
        case closed
        /// The buffers given to compare-and-write are not exactly one sector each.
        case invalidArgument(String)
        /// A system call failed; `errno` says why (ENOSPC, EIO, ...).
        case system
        /// A SCSI target (an iSCSI LUN) refused or failed the command; the text gives the
        /// command, status, sense key and ASC/ASCQ. `errno` gives the nearest system meaning.
        case scsi(String)
        /// Waited longer than allowed for something another process holds.
        case timedOut(String)
    }

    public var kind: Kind
    public var operation: IOOperationKind
    public var path: String
    public var offset: UInt64?
    public var length: Int?
    public var errno: Int32?

    public init(_ kind: Kind, _ operation: IOOperationKind, path: String,
                offset: UInt64? = nil, length: Int? = nil, errno: Int32? = nil) {
        self.kind = kind
        self.operation = operation
        self.path = path
        self.offset = offset
        self.length = length
        self.errno = errno
    }

    /// True when the failure is the device running out of space.
    public var isNoSpace: Bool { errno == ENOSPC }
    /// True when the device reported a media or transport error.
    public var isMediaError: Bool { errno == EIO }

    public var description: String {
        var what = "\(operation.rawValue)"
        if let length { what += " of \(length) bytes" }
        if let offset { what += " at offset \(offset)" }
        what += " on \(path)"
        let reason: String
        switch kind {
        case .misalignedOffset(let s): reason = "offset is not a multiple of the \(s)-byte sector size"
        case .misalignedLength(let s): reason = "length is not a positive multiple of the \(s)-byte sector size"
        case .misalignedBuffer(let a): reason = "buffer address is not \(a)-byte aligned (direct I/O needs aligned memory; use IOBuffer)"
        case .beyondEnd(let size): reason = "range ends beyond the device's \(size) bytes"
        case .shortTransfer(let n): reason = "short transfer: only \(n) bytes moved"
        case .deviceTooSmall(let actual, let required):
            reason = "device holds \(actual) bytes but \(required) are required"
        case .queueFull(let depth): reason = "queue is full (\(depth) requests in flight); reap completions first"
        case .unsupported(let why): reason = "not supported: \(why)"
        case .closed: reason = "device is closed"
        case .invalidArgument(let why): reason = why
        case .system: reason = "system error"
        case .scsi(let what): reason = what
        case .timedOut(let what): reason = what
        }
        if let errno {
            let system = "\(String(cString: strerror(errno))) (\(IOError.errnoName(errno)))"
            return kind == .system ? "\(what): \(system)" : "\(what): \(reason): \(system)"
        }
        return "\(what): \(reason)"
    }

    static func errnoName(_ code: Int32) -> String {
        switch code {
        case ENOSPC: "ENOSPC"
        case EIO: "EIO"
        case EINVAL: "EINVAL"
        case ENOENT: "ENOENT"
        case EACCES: "EACCES"
        case EPERM: "EPERM"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case ENOSYS: "ENOSYS"
        case EROFS: "EROFS"
        case ENXIO: "ENXIO"
        case EBUSY: "EBUSY"
        case ENOMEM: "ENOMEM"
        case EFBIG: "EFBIG"
        case EISDIR: "EISDIR"
        case EEXIST: "EEXIST"
        default: "errno \(code)"
        }
    }
}
