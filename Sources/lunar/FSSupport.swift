import ArgumentParser
import Foundation
import LunarFS
import LunarIO

// Shared plumbing of the `lunar fs` commands: naming things inside a volume, opening and
// closing volumes, reporting errors, and formatting what LunarFS returns.

/// A failure the command line itself detects (bad arguments, host-side I/O), as opposed to one
/// LunarFS reports. Printed as `lunar: <message>`.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }

    /// A failed host system call on `path`, in the system's words.
    static func system(_ path: String, _ code: Int32 = errno) -> CLIError {
        CLIError("\(path): \(String(cString: strerror(code)))")
    }
}

/// Prints `lunar: <error>` and maps it to exit status 1; `ExitCode` passes through untouched
/// so that commands with their own codes (fsck) keep them.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let exit as ExitCode {
        throw exit
    } catch {
        printError(error)
        throw ExitCode.failure
    }
}

func printError(_ error: any Error) {
    print("lunar: \(error)", to: &standardError)
}

// MARK: naming things inside a volume

/// `LUN:/path`: a path inside the volume on an image file or block device.
struct VolumeRef {
    var lun: String
    /// Absolute, with `.` and `..` resolved (LunarFS has no symbolic links, so doing it by
    /// name is exact).
    var path: String
    /// Written with a trailing slash (or the root): the user means "into this directory".
    var namesDirectory: Bool

    var display: String { "\(lun):\(path)" }
    var isRoot: Bool { path == "/" }

    init(lun: String, path rawPath: String) {
        self.lun = hostPath(lun)
        self.path = VolumeRef.normalize(rawPath)
        self.namesDirectory = rawPath.hasSuffix("/") || self.path == "/"
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { _ = parts.popLast(); continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// Splits `LUN:/path` (or `LUN:` for the root), or nil when the argument has no such split.
    ///
    /// Device names may themselves hold colons (`/dev/disk/by-path/pci-0000:00:1f.2-ata-1`), so
    /// only a colon followed by `/` or ending the argument counts, and among several the first
    /// whose left side exists on this host wins.
    static func split(_ argument: String) -> VolumeRef? {
        var candidates: [VolumeRef] = []
        var index = argument.startIndex
        while let colon = argument[index...].firstIndex(of: ":") {
            let after = argument.index(after: colon)
            if colon != argument.startIndex, after == argument.endIndex || argument[after] == "/" {
                candidates.append(VolumeRef(lun: String(argument[..<colon]), path: String(argument[after...])))
            }
            index = after
        }
        return candidates.first { BlockDevice.exists($0.lun) } ?? candidates.first
    }

    /// A path that must be inside a volume (`mkdir`, `rm`, `cat`, ...).
    static func required(_ argument: String, command: String) throws(CLIError) -> VolumeRef {
        guard let ref = split(argument) else {
            let example = BlockDevice.exists(argument) ? "\(argument):/\(command == "mkdir" ? "vms" : "vms/disk.raw")" : "vol.img:/vms/disk.raw"
            throw CLIError("'\(argument)' is not a path inside a volume: write LUN:/path, e.g. \(example)")
        }
        return ref
    }

    /// `LUN` alone (its root) or `LUN:/path`.
    static func lunOrPath(_ argument: String) -> VolumeRef {
        if BlockDevice.exists(argument) { return VolumeRef(lun: argument, path: "/") }
        return split(argument) ?? VolumeRef(lun: argument, path: "/")
    }
}

/// Either side of `cp`.
enum Location {
    case host(String)
    case volume(VolumeRef)

    init(_ argument: String) {
        let host = hostPath(argument)
        if let ref = VolumeRef.split(argument), BlockDevice.exists(ref.lun) || !BlockDevice.exists(host) {
            self = .volume(ref)
        } else {
            self = .host(host)
        }
    }
}

/// The LUN argument of commands about a whole volume (`df`, `fsck`, `info`); `LUN:/` is
/// accepted too.
func lunArgument(_ argument: String) -> String {
    let host = hostPath(argument)
    if !BlockDevice.exists(host), let ref = VolumeRef.split(argument), ref.isRoot { return ref.lun }
    return host
}

func joinPath(_ directory: String, _ name: String) -> String {
    directory == "/" ? "/" + name : directory + "/" + name
}

func baseName(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? path
}

func hostIsDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

/// Whether two host paths name the same file (both must exist).
func sameHostFile(_ a: String, _ b: String) -> Bool {
    var sa = stat(), sb = stat()
    guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
}

// MARK: opening volumes


/// Opens the volume on `lun`, runs `body`, and closes it: closing is what commits the last
/// changes, so it happens on success and failure alike. Errors naming a path inside the volume
/// are rewritten to `LUN:/path`, the form the user typed.
/// `repair`: the open of `fsck --repair`, which rebuilds a damaged volume lock sector.
func withVolume<T>(_ lun: String, readOnly: Bool, repair: Bool = false, _ body: (Volume) throws -> T) throws -> T {
    guard BlockDevice.exists(lun) else {
        throw CLIError("\(lun): no such file or directory (make a volume with `lunar fs mkfs \(lun) --size 20G`)")
    }
    var options = OpenOptions(readOnly: readOnly, heartbeatInterval: OpenOptions.toolHeartbeatInterval)
    options.repair = repair
    return try Volume.withOpen(path: lun, options: options, body)
}

// MARK: formatting

extension FileType {
    var modeLetter: Character { self == .directory ? "d" : "-" }
}

/// `drwxr-xr-x`, as ls prints it.
func modeString(_ type: FileType, _ mode: UInt32) -> String {
    var text = String(type.modeLetter)
    let letters: [Character] = ["r", "w", "x"]
    for bit in 0..<9 {
        text.append(mode & (0o400 >> UInt32(bit)) != 0 ? letters[bit % 3] : "-")
    }
    return text
}

func octalMode(_ mode: UInt32) -> String {
    let digits = String(mode & 0o7777, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}

/// Nanoseconds since the epoch as ISO-8601 in UTC with milliseconds (what JSON consumers parse
/// without fuss).
func isoTime(_ nanoseconds: Int64) -> String {
    let (seconds, fraction) = splitNanoseconds(nanoseconds)
    return strftime(seconds, "%Y-%m-%dT%H:%M:%S", utc: true) + String(format: ".%03dZ", fraction / 1_000_000)
}

/// Local time to the minute, for `ls -l`.
func shortTime(_ nanoseconds: Int64) -> String {
    strftime(splitNanoseconds(nanoseconds).seconds, "%Y-%m-%d %H:%M", utc: false)
}

/// Local time to the nanosecond with the zone, for `stat`.
func longTime(_ nanoseconds: Int64) -> String {
    let (seconds, fraction) = splitNanoseconds(nanoseconds)
    return strftime(seconds, "%Y-%m-%d %H:%M:%S", utc: false) + String(format: ".%09d ", fraction)
        + strftime(seconds, "%z", utc: false)
}

private func splitNanoseconds(_ ns: Int64) -> (seconds: time_t, fraction: Int) {
    let seconds = ns >= 0 ? ns / 1_000_000_000 : (ns - 999_999_999) / 1_000_000_000
    return (time_t(seconds), Int(ns - seconds * 1_000_000_000))
}

private func strftime(_ seconds: time_t, _ format: String, utc: Bool) -> String {
    var t = seconds
    var parts = tm()
    if utc { gmtime_r(&t, &parts) } else { localtime_r(&t, &parts) }
    var buffer = [CChar](repeating: 0, count: 64)
    let count = Foundation.strftime(&buffer, buffer.count, format, &parts)
    return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension ByteSize {
    /// Parses a size option with a message that says what is accepted (the plain
    /// `ExpressibleByArgument` failure only says the value is invalid).
    static func parse(_ text: String) throws -> ByteSize {
        guard let size = ByteSize(argument: text) else {
            throw ValidationError("'\(text)' is not a size: \(text.hasPrefix("-") ? "a size cannot be negative; " : "")give \(ByteSize.accepted)")
        }
        return size
    }
}

/// Parses a count option (`--max-files`) with a message that says what is accepted.
func parseCount(_ text: String, what: String) throws -> UInt64 {
    guard let count = UInt64(text) else {
        throw ValidationError("'\(text)' is not \(what): \(text.hasPrefix("-") ? "it cannot be negative; " : "")give a whole number, e.g. 100000")
    }
    return count
}

extension ResourceKind {
    /// Short name for JSON.
    var key: String {
        switch self {
        case .inode: "inode"
        case .pointerBlock: "pointer_block"
        case .smallBlock: "small_block"
        case .fileBlock: "file_block"
        }
    }
}

/// Right-aligns `text` in `width` columns.
func rightAligned(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

/// Seconds since an arbitrary start, for rates.
