import LunarIO

/// A LunarFS failure: what went wrong and where, in words an operator can act on.
public struct FSError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The device holds no LunarFS volume header (nor a readable backup).
        case notLunarFS
        /// Written by a newer LunarFS: refuse rather than misread it.
        case newerFormat(found: UInt16, supported: UInt16)
        /// A metadata record failed verification. `record` names its type, `offset` where it is.
        case corrupt(record: String, offset: UInt64, reason: String)
        case notFound
        case exists
        case notDirectory
        case isDirectory
        case directoryNotEmpty
        case nameTooLong
        case invalidName
        case invalidArgument(String)
        /// The volume has no free resource of this kind (file blocks, inodes, ...).
        case noSpace(resource: String)
        case fileTooLarge
        case readOnly
        /// Another process holds the volume and did not let go in time.
        case busy(String)
        /// A call working under the shared metadata lock met a finer lock it cannot take
        /// without waiting. The volume retries such a call under the exclusive metadata lock;
        /// callers never see it.
        case lockConflict(String)
        /// The underlying device failed; the LunarIO error says how.
        case io(IOError)
    }

    public var kind: Kind
    /// The path inside the volume (or the LUN) the operation was about, when there is one.
    public var path: String?

    public init(_ kind: Kind, path: String? = nil) {
        self.kind = kind
        self.path = path
    }

    /// The error with its path as a user names it: `LUN:/path` for a path inside the volume,
    /// the LUN itself when the error names no path.
    public func naming(_ lun: String) -> FSError {
        var copy = self
        if let path, path != lun { copy.path = "\(lun):\(path)" }
        if copy.path == nil { copy.path = lun }
        return copy
    }

    static func corrupt(_ record: String, at offset: UInt64, _ reason: String) -> FSError {
        FSError(.corrupt(record: record, offset: offset, reason: reason))
    }

    /// The description without the advice to run fsck: for fsck's own report.
    public var withoutAdvice: String {
        guard case .corrupt(let record, let offset, let reason) = kind else { return description }
        return "\(path.map { "\($0): " } ?? "")corrupt \(record) at byte offset \(offset): \(reason)"
    }

    public var description: String {
        let subject = path.map { "\($0): " } ?? ""
        switch kind {
        case .notLunarFS: return "\(subject)not a LunarFS volume (no valid volume header); create one with `lunar fs mkfs`"
        case .newerFormat(let found, let supported):
            return "\(subject)volume format version \(found) is newer than this lunar understands (\(supported)); upgrade lunar"
        case .corrupt(let record, let offset, let reason):
            return "\(subject)corrupt \(record) at byte offset \(offset): \(reason); run `lunar fs fsck`"
        case .notFound: return "\(subject)no such file or directory"
        case .exists: return "\(subject)already exists"
        case .notDirectory: return "\(subject)not a directory"
        case .isDirectory: return "\(subject)is a directory"
        case .directoryNotEmpty: return "\(subject)directory not empty"
        case .nameTooLong: return "\(subject)name longer than 255 bytes"
        case .invalidName: return "\(subject)invalid name (empty, '.', '..', or containing '/' or NUL)"
        case .invalidArgument(let why): return "\(subject)\(why)"
        case .noSpace(let resource): return "\(subject)volume full: no free \(resource) (free space with `lunar fs rm`, or make a bigger volume)"
        case .fileTooLarge: return "\(subject)file would exceed the largest size this volume can map"
        case .readOnly: return "\(subject)volume opened read-only"
        case .busy(let why): return "\(subject)\(why)"
        case .lockConflict(let why): return "\(subject)\(why)"
        case .io(let error): return error.path == path || path == nil ? "\(error)" : "\(subject)\(error)"
        }
    }
}

extension FSError {
    init(_ error: IOError) { self.init(.io(error)) }

    func at(_ path: String) -> FSError {
        var copy = self
        if copy.path == nil { copy.path = path }
        return copy
    }
}

/// `Array.withUnsafeBytes` with the typed error kept.
func withBytes<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(FSError) -> T) throws(FSError) -> T {
    let result: Result<T, FSError> = bytes.withUnsafeBytes { b in
        do throws(FSError) { return .success(try body(b)) } catch { return .failure(error) }
    }
    return try result.get()
}

/// Runs a LunarIO call, turning its error into an `FSError`.
@inline(__always)
func io<T>(_ body: () throws(IOError) -> T) throws(FSError) -> T {
    do { return try body() } catch { throw FSError(error) }
}

/// `body`'s result, or nil when it met a damaged record (which the caller then skips, leaving
/// it for fsck): damage in one record must not stop work on the rest of the volume.
func skippingDamage<T>(_ body: () throws(FSError) -> T) throws(FSError) -> T? {
    do throws(FSError) {
        return try body()
    } catch {
        guard case .corrupt = error.kind else { throw error }
        return nil
    }
}
