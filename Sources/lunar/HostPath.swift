import Foundation
import LunarIO
import Synchronization

// Host paths whose bytes are not valid UTF-8. Swift's CommandLine.arguments repairs such an
// argument (each bad sequence becomes U+FFFD), so the repaired text names another file, or
// none. Every host path the command line takes goes through `hostPath`, which finds the bytes
// the user typed in CommandLine.unsafeArgv and gives back a path that is valid UTF-8 and
// reaches them.

/// `argument` (or a part of an argument, such as the LUN of `LUN:/path`) as a path the host
/// can open: itself when it is valid UTF-8; otherwise, for a file that exists,
/// `/proc/self/fd/N` of an O_PATH descriptor on it (kept open, and across the exec of
/// lunar-vmm); for one to be made, its directory so and its name appended, or, when the name
/// itself is not UTF-8, a symbolic link to it in a private directory removed at exit.
func hostPath(_ argument: String) -> String {
    guard argument.unicodeScalars.contains("\u{FFFD}"), !ISCSILun.isURL(argument),
          let raw = RawArguments.bytes(of: argument) else { return argument }
    return HostPaths.shared.reach(raw, typed: argument) ?? argument
}

/// How a message names a path `hostPath` made up: as the user typed it (repaired).
func shownHostPaths(_ text: String) -> String {
    HostPaths.shared.shown(text)
}

/// The raw bytes of the command line's arguments.
enum RawArguments {
    /// The bytes that `text` was repaired from: a whole argument or a run inside one
    /// (`LUN:/path`, `--file=PATH`), found by decoding each argument as Swift does, scalar by
    /// scalar, and keeping the bytes each scalar came from.
    static func bytes(of text: String) -> [UInt8]? {
        let wanted = Array(text.unicodeScalars)
        for i in 1..<Int(CommandLine.argc) {
            guard let pointer = CommandLine.unsafeArgv[i] else { continue }
            let raw = Array(UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self),
                                                count: strlen(pointer)))
            let pieces = decode(raw)
            let scalars = pieces.map(\.scalar)
            guard scalars.count >= wanted.count else { continue }
            for start in 0...(scalars.count - wanted.count) where Array(scalars[start..<(start + wanted.count)]) == wanted {
                return pieces[start..<(start + wanted.count)].flatMap { Array(raw[$0.bytes]) }
            }
        }
        return nil
    }

    /// Each scalar of `raw` decoded with repair, as `String(decoding:as:)` decodes it, with the
    /// bytes it came from.
    static func decode(_ raw: [UInt8]) -> [(scalar: Unicode.Scalar, bytes: Range<Int>)] {
        var out: [(scalar: Unicode.Scalar, bytes: Range<Int>)] = []
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = raw.makeIterator()
        var at = 0
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let encoded):
                out.append((Unicode.UTF8.decode(encoded), at..<(at + encoded.count)))
                at += encoded.count
            case .error(let length):
                out.append(("\u{FFFD}", at..<(at + length)))
                at += length
            case .emptyInput:
                return out
            }
        }
    }
}

/// O_PATH, spelled out because Glibc's module map only exposes it under _GNU_SOURCE.
private let oPath: Int32 = 0o10000000

/// The descriptors and links `hostPath` made, and the names they stand for.
final class HostPaths: Sendable {
    static let shared = HostPaths()

    private struct State {
        var shown: [(made: String, typed: String)] = []
        var linkDirectory: String?
    }
    private let state = Mutex(State())

    func reach(_ raw: [UInt8], typed: String) -> String? {
        let trailingSlash = raw.count > 1 && raw.last == UInt8(ascii: "/")
        var path: String?
        if let fd = openPath(raw) {
            path = "/proc/self/fd/\(fd)" + (trailingSlash ? "/" : "")
        } else {
            let slash = raw.lastIndex(of: UInt8(ascii: "/"))
            let directory = slash.map { $0 == 0 ? [UInt8(ascii: "/")] : Array(raw[..<$0]) } ?? [UInt8(ascii: ".")]
            let name = slash.map { Array(raw[($0 + 1)...]) } ?? raw
            if let name = String(validating: name, as: UTF8.self), let fd = openPath(directory) {
                path = "/proc/self/fd/\(fd)/\(name)"
            } else {
                path = link(to: raw)
            }
        }
        if let path { state.withLock { $0.shown.append((path, typed)) } }
        return path
    }

    func shown(_ text: String) -> String {
        state.withLock { s in
            guard !s.shown.isEmpty else { return text }
            // Longest first: /proc/self/fd/12 before /proc/self/fd/1.
            return s.shown.sorted { $0.made.count > $1.made.count }.reduce(text) { $0.replacingOccurrences(of: $1.made, with: $1.typed) }
        }
    }

    /// An O_PATH descriptor on `raw`, left open (no O_CLOEXEC) for as long as the process and
    /// what it execs run.
    private func openPath(_ raw: [UInt8]) -> Int32? {
        let fd = (raw + [0]).withUnsafeBufferPointer { open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), oPath) }
        return fd >= 0 ? fd : nil
    }

    /// A symbolic link to `raw` (made absolute) in a private directory, removed at exit.
    private func link(to raw: [UInt8]) -> String? {
        var target = raw
        if raw.first != UInt8(ascii: "/") {
            var cwd = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard getcwd(&cwd, cwd.count) != nil else { return nil }
            target = cwd.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) } + [UInt8(ascii: "/")] + raw
        }
        return state.withLock { s -> String? in
            if s.linkDirectory == nil {
                let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
                var template = Array("\(base)/lunar-paths-XXXXXX".utf8CString)
                guard mkdtemp(&template) != nil else { return nil }
                s.linkDirectory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                atexit { HostPaths.shared.removeLinks() }
            }
            guard let directory = s.linkDirectory else { return nil }
            let path = "\(directory)/\(s.shown.count)"
            let made = (target + [0]).withUnsafeBufferPointer {
                symlink(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), path)
            }
            return made == 0 ? path : nil
        }
    }

    private func removeLinks() {
        guard let directory = state.withLock({ $0.linkDirectory }) else { return }
        for (made, _) in state.withLock({ $0.shown }) where made.hasPrefix(directory + "/") { unlink(made) }
        rmdir(directory)
    }
}
