import Foundation
import Glibc
import LunarDisk
import LunarFS
import LunarIO
import LunarTesting

/// One host of the torture test: a random mix of operations in its own directory `/hK` of a
/// shared volume, plus increments of one shared counter file under its exclusive lock. The
/// host's files are also virtual disks (LunarDisk, Spec/disk.md): it takes snapshots of them,
/// reverts them, deletes snapshots, and makes linked clones of its files, of its snapshots and
/// of other hosts' snapshots (so that its maps share blocks counted in clusters other hosts
/// hold). Every operation is logged before it starts (`B`) and once it is durable (`D`), so
/// that a host killed at any instant leaves at most one operation in doubt; a restarted host
/// settles that one against the volume (`D` it happened, `X` it did not, `U` cannot tell: a
/// counter increment) and fails (`F`) when the volume matches neither outcome. An operation
/// the volume refuses (the file held by another host, a snapshot name taken, another host's
/// snapshot deleted meanwhile) is settled the same way at once, the refusal after its `D`/`X`.
///
/// A host publishes each snapshot's content, before taking it, as the file
/// `snap-hK-NAME@SNAP` in the logs' directory: the oracle of another host's clone of it.
///
/// With `LUNAR_TORTURE_TRACE=FILE`, every host also appends to FILE the counter value it is
/// about to write (`R pid value time`) and each acknowledged increment (`A pid time`): a
/// value read below one acknowledged earlier pins down when a lost update happened.
enum TortureOp: Equatable {
    case create(String)
    case write(String, offset: Int, length: Int, seed: UInt64)
    case truncate(String, size: Int)
    case rename(String, to: String)
    case remove(String)
    case increment
    /// A file's content set outright: what a torn write or truncation left (base64 in the log).
    case exact(String, [UInt8])
    /// Snapshot SNAP of disk NAME (`snapshot NAME SNAP`).
    case snapshot(String, String)
    /// Disk NAME reverted to its snapshot SNAP (`revert NAME SNAP`).
    case revert(String, String)
    /// Snapshot SNAP of disk NAME deleted (`deletesnap NAME SNAP`).
    case deleteSnapshot(String, String)
    /// A linked clone at TARGET (`clone SOURCE TARGET`) of a file of the host (`NAME`), of a
    /// snapshot of one (`NAME@SNAP`), or of another host's snapshot (`hK/NAME@SNAP`).
    case clone(String, to: String)

    var line: String {
        switch self {
        case .create(let n): "create \(n)"
        case .write(let n, let o, let l, let s): "write \(n) \(o) \(l) \(s)"
        case .truncate(let n, let size): "truncate \(n) \(size)"
        case .rename(let a, let b): "rename \(a) \(b)"
        case .remove(let n): "remove \(n)"
        case .increment: "increment"
        case .exact(let n, let content): "exact \(n) \(content.isEmpty ? "-" : Data(content).base64EncodedString())"
        case .snapshot(let n, let s): "snapshot \(n) \(s)"
        case .revert(let n, let s): "revert \(n) \(s)"
        case .deleteSnapshot(let n, let s): "deletesnap \(n) \(s)"
        case .clone(let source, let target): "clone \(source) \(target)"
        }
    }

    init?(_ words: [Substring]) {
        func int(_ i: Int) -> Int? { i < words.count ? Int(words[i]) : nil }
        guard let verb = words.first else { return nil }
        let args = words.dropFirst().map(String.init)
        switch verb {
        case "create" where words.count == 2: self = .create(args[0])
        case "write" where words.count == 5:
            guard let o = int(2), let l = int(3), let s = UInt64(words[4]) else { return nil }
            self = .write(args[0], offset: o, length: l, seed: s)
        case "truncate" where words.count == 3:
            guard let size = int(2) else { return nil }
            self = .truncate(args[0], size: size)
        case "rename" where words.count == 3: self = .rename(args[0], to: args[1])
        case "remove" where words.count == 2: self = .remove(args[0])
        case "increment" where words.count == 1: self = .increment
        case "exact" where words.count == 3:
            if words[2] == "-" { self = .exact(args[0], []); return }
            guard let data = Data(base64Encoded: args[1]) else { return nil }
            self = .exact(args[0], [UInt8](data))
        case "snapshot" where words.count == 3: self = .snapshot(args[0], args[1])
        case "revert" where words.count == 3: self = .revert(args[0], args[1])
        case "deletesnap" where words.count == 3: self = .deleteSnapshot(args[0], args[1])
        case "clone" where words.count == 3: self = .clone(args[0], to: args[1])
        default: return nil
        }
    }

    /// The names whose state the operation changes: files, and disks whose snapshots change.
    var names: [String] {
        switch self {
        case .create(let n), .write(let n, _, _, _), .truncate(let n, _), .remove(let n), .exact(let n, _),
             .snapshot(let n, _), .revert(let n, _), .deleteSnapshot(let n, _): [n]
        case .rename(let a, let b): [a, b]
        case .clone(_, let target): [target]
        case .increment: []
        }
    }

    /// Every name of this host the operation uses, snapshots' too: a restarted host names its
    /// new files and snapshots past them.
    var ownNames: [String] {
        switch self {
        case .snapshot(let n, let s), .revert(let n, let s), .deleteSnapshot(let n, let s): [n, s]
        case .clone(let source, let target) where !source.contains("/"):
            source.split(separator: "@").map(String.init) + [target]
        default: names
        }
    }

    /// Whether it is a clone of another host's snapshot.
    var isForeignClone: Bool {
        if case .clone(let source, _) = self { source.contains("/") } else { false }
    }
}

/// What one host's directory holds: its files by name, and the snapshots of its disks by disk
/// name (a disk's snapshot folder keeps its name when the file is renamed or removed).
struct TortureState: Equatable {
    var files: [String: [UInt8]] = [:]
    var disks: [String: SnapshotModel] = [:]
}

/// What one host's directory must hold.
struct TortureOracle {
    var state = TortureState()
    var increments = 0
    /// The logs' directory, where hosts publish their snapshots' content.
    var library = ""

    mutating func apply(_ op: TortureOp) {
        switch op {
        case .create(let n): state.files[n] = []
        case .write(let n, let offset, let length, let seed):
            var content = state.files[n] ?? []
            if content.count < offset + length { content += [UInt8](repeating: 0, count: offset + length - content.count) }
            content.replaceSubrange(offset..<(offset + length), with: pattern(length, seed: seed).array)
            state.files[n] = content
        case .truncate(let n, let size):
            var content = state.files[n] ?? []
            if size < content.count { content.removeSubrange(size...) } else { content += [UInt8](repeating: 0, count: size - content.count) }
            state.files[n] = content
        case .rename(let a, let b):
            state.files[b] = state.files[a]
            state.files[a] = nil
        case .remove(let n): state.files[n] = nil
        case .increment: increments += 1
        case .exact(let n, let content): state.files[n] = content
        case .snapshot(let n, let s):
            // Refused (nothing changes) for a missing disk or a name the disk has already.
            guard let content = state.files[n] else { return }
            var disk = state.disks[n] ?? SnapshotModel()
            if disk.snapshot(s, of: content) { state.disks[n] = disk }
        case .revert(let n, let s):
            // A disk whose file is gone is made again, from the snapshot.
            guard var disk = state.disks[n], let content = disk.revert(to: s) else { return }
            state.disks[n] = disk
            state.files[n] = content
        case .deleteSnapshot(let n, let s):
            guard var disk = state.disks[n], disk.delete(s) else { return }
            state.disks[n] = disk.isEmpty ? nil : disk
        case .clone(let source, let target):
            // Independent once made: later changes to either side are their own.
            guard state.files[target] == nil, let content = content(of: source) else { return }
            state.files[target] = content
        }
    }

    func applying(_ op: TortureOp) -> TortureOracle {
        var copy = self
        copy.apply(op)
        return copy
    }

    /// What a clone of `source` (as `TortureOp.clone` names it) gets, nil when there is no such
    /// file or snapshot.
    func content(of source: String) -> [UInt8]? {
        if source.contains("/") { return Torture.published(source, in: library) }
        let parts = source.split(separator: "@").map(String.init)
        return parts.count == 2 ? state.disks[parts[0]]?.contents[parts[1]] : state.files[source]
    }
}

/// A host's log, read back.
struct TortureLog {
    var oracle = TortureOracle()
    /// The operation begun but neither finished nor settled: in doubt.
    var pending: (id: Int, op: TortureOp)?
    /// Increments begun whose outcome nobody could tell.
    var unknownIncrements = 0
    var failures: [String] = []
    var nextID = 0
    var nextName = 0
    /// Operations that took effect, by verb (`clone-foreign`: of another host's snapshot).
    var applied: [String: Int] = [:]

    init(path: String) throws {
        oracle.library = (path as NSString).deletingLastPathComponent
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        var begun: [Int: TortureOp] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count >= 2, let id = Int(words[1]) else { continue }
            nextID = max(nextID, id + 1)
            switch words[0] {
            case "B":
                guard let op = TortureOp(Array(words.dropFirst(2))) else { throw TortureError("bad log line: \(line)") }
                begun[id] = op
                for n in op.ownNames { if let k = Int(n.dropFirst()) { nextName = max(nextName, k + 1) } }
            case "D":
                if let op = begun.removeValue(forKey: id) {
                    oracle.apply(op)
                    let verb = String(op.line.prefix { $0 != " " })
                    applied[op.isForeignClone ? "clone-foreign" : verb, default: 0] += 1
                }
            case "X":
                begun[id] = nil
            case "U":
                if begun.removeValue(forKey: id) != nil { unknownIncrements += 1 }
            case "F":
                failures.append(String(line))
            default:
                throw TortureError("bad log line: \(line)")
            }
        }
        guard begun.count <= 1 else { throw TortureError("\(begun.count) operations in doubt in \(path): a host runs one at a time") }
        pending = begun.first.map { ($0.key, $0.value) }
    }
}

struct TortureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

enum Torture {
    static let counterPath = "/shared/counter"

    /// The current content of the host's directory, as the volume has it, and the snapshot
    /// files no record names (by disk, then snapshot name).
    static func observe(_ volume: Volume, directory: String) throws -> (state: TortureState, leftovers: [String: [String: [UInt8]]]) {
        var state = TortureState()
        var leftovers: [String: [String: [UInt8]]] = [:]
        for item in try volume.list(directory) {
            if item.type == .directory {
                // The only directories are the disks' snapshot folders, `.NAME.snapshots`.
                let disk = String(item.name.dropFirst().dropLast(".snapshots".count))
                let (model, left) = try SnapshotModel.observe(VirtualDisk(volume, path: "\(directory)/\(disk)"))
                if !model.isEmpty { state.disks[disk] = model }
                if !left.isEmpty { leftovers[disk] = left }
            } else {
                state.files[item.name] = try volume.contents(of: "\(directory)/\(item.name)") ?? []
            }
        }
        return (state, leftovers)
    }

    /// Where the content of snapshot `source` (`hK/NAME@SNAP`) is published.
    static func publishedPath(_ source: String, in library: String) -> String {
        "\(library)/snap-" + source.replacingOccurrences(of: "/", with: "-")
    }

    static func published(_ source: String, in library: String) -> [UInt8]? {
        FileManager.default.contents(atPath: publishedPath(source, in: library)).map { [UInt8]($0) }
    }

    static func readCounter(_ file: File) throws -> UInt64 {
        let b = try file.read(at: 0, count: 8)
        guard b.count == 8 else { return 0 }
        return b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    /// Runs host `host` until `deadline`, appending to its log.
    static func run(lun: String, host: Int, seed: UInt64, logPath: String, duration: Double, heartbeat: Double) throws {
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 120, heartbeatInterval: heartbeat))
        let directory = "/h\(host)"
        var log = try TortureLog(path: logPath)
        guard log.failures.isEmpty else { throw TortureError("host \(host) failed before: \(log.failures[0])") }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        out.seekToEndOfFile()
        func record(_ line: String) { out.write(Data((line + "\n").utf8)) }

        try volume.mkdir(directory, parents: true)
        try volume.mkdir("/shared", parents: true)
        if try !volume.exists(counterPath) { _ = try? volume.create(counterPath, exclusive: true, lock: nil) }
        try volume.sync()

        // Settle the operation the last incarnation left in doubt.
        if let (id, op) = log.pending {
            try settle(id, op, log: &log, volume: volume, directory: directory, record: record)
            log.pending = nil
        }
        // Every settled state must match the volume exactly (catches lost acknowledged work).
        if try observe(volume, directory: directory).state != log.oracle.state {
            record("F \(log.nextID) restart: directory differs from the acknowledged operations")
            throw TortureError("host \(host): \(directory) differs from the acknowledged operations")
        }

        var random = SplitMix64(seed: seed &+ UInt64(log.nextID) &* 7919)
        let deadline = monotonicSeconds() + duration
        while monotonicSeconds() < deadline {
            let op = pick(&random, log: &log, volume: volume, host: host)
            let id = log.nextID
            log.nextID += 1
            if case .snapshot(let n, let s) = op, log.oracle.applying(op).state != log.oracle.state, let content = log.oracle.state.files[n] {
                // Before it is taken: a clone of it elsewhere, or its leftover file, is checked against this.
                try Data(content).write(to: URL(fileURLWithPath: publishedPath("h\(host)/\(n)@\(s)", in: log.oracle.library)), options: .atomic)
            }
            record("B \(id) \(op.line)")
            do {
                try perform(op, volume: volume, directory: directory)
            } catch where isRefusal(error, of: op, log.oracle) {
                let why = "\(error)".replacingOccurrences(of: "\n", with: " ")
                try settle(id, op, log: &log, volume: volume, directory: directory, record: record, why: " refused: \(why)")
                continue
            }
            try volume.sync()
            record("D \(id)")
            if case .increment = op, let trace = ProcessInfo.processInfo.environment["LUNAR_TORTURE_TRACE"] {
                let line = "A \(getpid()) \(monotonicSeconds())\n"
                if let h = FileHandle(forWritingAtPath: trace) { h.seekToEndOfFile(); h.write(Data(line.utf8)); try? h.close() }
            }
            log.oracle.apply(op)
        }
        try volume.close()
    }

    /// Whether the volume may refuse `op` with `error`: the file is held by another host (one
    /// not yet known to be dead: a killed incarnation of this one, say), the oracle expects the
    /// refusal (a snapshot name taken), or another host's snapshot went away before its clone.
    /// Any other refusal is a bug: the host stops, and its `B` stays in doubt for the verifier.
    static func isRefusal(_ error: any Error, of op: TortureOp, _ oracle: TortureOracle) -> Bool {
        var kind: FSError.Kind?
        switch error {
        case let e as FSError: kind = e.kind
        case DiskError.fs(let e): kind = e.kind
        case DiskError.invalidArgument: kind = nil
        default: return false
        }
        if case .busy? = kind { return true }
        let expected = oracle.applying(op).state == oracle.state
        switch kind {
        case nil, .notFound?, .exists?: return expected || op.isForeignClone
        default: return false
        }
    }

    /// Settles operation `id`, begun but cut short (the host killed, or the volume refused it),
    /// against the volume: `D` it happened, `X` it did not (`why` after either), `U` for an
    /// increment, nobody can tell; a torn outcome is logged as the operation that leads to
    /// it. A volume that matches no outcome is logged `F` and thrown.
    static func settle(_ id: Int, _ op: TortureOp, log: inout TortureLog, volume: Volume, directory: String,
                       record: (String) -> Void, why: String = "") throws {
        if op == .increment {
            record("U \(id)\(why)")
            log.unknownIncrements += 1
            return
        }
        let seen = try observe(volume, directory: directory).state
        if seen == log.oracle.state {
            record("X \(id)\(why)")
        } else if seen == log.oracle.applying(op).state {
            record("D \(id)\(why)")
            log.oracle.apply(op)
        } else if let torn = tornOutcome(seen, op, log.oracle) {
            // A data write or truncation cut short, or a revert cut before its record: carry on
            // from what is there.
            let next = log.nextID
            record("B \(next) \(torn.line)")
            record("D \(next)")
            record("X \(id)\(why)")
            log.oracle.apply(torn)
            log.nextID = next + 1
        } else {
            record("F \(id) after \(op.line): the volume matches neither outcome (against before: \(difference(seen, log.oracle.state)))\(why)")
            throw TortureError("host \(directory): after \(op.line) the volume matches neither outcome\(why)")
        }
    }

    /// The next operation: mostly file operations, a fifth disk operations, the rest counter
    /// increments.
    static func pick(_ random: inout SplitMix64, log: inout TortureLog, volume: Volume, host: Int) -> TortureOp {
        let state = log.oracle.state
        let names = state.files.keys.sorted()
        func fresh(_ prefix: String) -> String {
            defer { log.nextName += 1 }
            return "\(prefix)\(log.nextName)"
        }
        func any<T>(_ items: [T]) -> T? { items.isEmpty ? nil : items[Int(random.next() % UInt64(items.count))] }
        let pick = random.next() % 100
        if names.isEmpty || (pick < 18 && names.count < 24) { return .create(fresh("f")) }
        let name = any(names)!
        // Any disk's snapshots, its file there or not (a revert makes it again).
        let snapshot = any(state.disks.keys.sorted().flatMap { d in state.disks[d]!.contents.keys.sorted().map { (d, $0) } })
        let write = TortureOp.write(name, offset: Int(random.next() % (192 << 10)), length: Int(1 + random.next() % (64 << 10)), seed: random.next())
        switch pick {
        case 0..<45:
            return write
        case 45..<52:
            return .truncate(name, size: Int(random.next() % (256 << 10)))
        case 52..<58:
            return .rename(name, to: fresh("f"))
        case 58..<64:
            return .remove(name)
        case 64..<72:
            let taken = state.disks[name]?.contents.keys.sorted() ?? []
            if taken.count >= 6 { return .deleteSnapshot(name, any(taken)!) }
            // Now and then a name the disk has already: refused.
            if !taken.isEmpty, random.next() % 8 == 0 { return .snapshot(name, any(taken)!) }
            return .snapshot(name, fresh("s"))
        case 72..<77:
            return snapshot.map { .revert($0.0, $0.1) } ?? write
        case 77..<82:
            return snapshot.map { .deleteSnapshot($0.0, $0.1) } ?? write
        case 82..<88 where names.count < 24:
            let source = switch random.next() % 4 {
            case 0: name
            case 1: snapshot.map { "\($0.0)@\($0.1)" } ?? name
            default: foreignSnapshot(volume, host: host, &random) ?? name
            }
            return .clone(source, to: fresh("f"))
        case 82..<88:
            return write
        default:
            return .increment
        }
    }

    /// A snapshot file of another host, as `hK/NAME@SNAP`, if one is found.
    static func foreignSnapshot(_ volume: Volume, host: Int, _ random: inout SplitMix64) -> String? {
        func any(_ items: [DirectoryItem]?) -> String? {
            guard let items, !items.isEmpty else { return nil }
            return items[Int(random.next() % UInt64(items.count))].name
        }
        guard let other = any(try? volume.list("/").filter { $0.type == .directory && $0.name.hasPrefix("h") && $0.name != "h\(host)" }),
              let folder = any(try? volume.list("/\(other)").filter { $0.type == .directory }),
              let snapshot = any(try? volume.list("/\(other)/\(folder)").filter { !$0.name.hasPrefix(".") }) else { return nil }
        return "\(other)/\(folder.dropFirst().dropLast(".snapshots".count))@\(snapshot)"
    }

    static func perform(_ op: TortureOp, volume: Volume, directory: String) throws {
        let path = { (n: String) in "\(directory)/\(n)" }
        let disk = { (n: String) in VirtualDisk(volume, path: path(n)) }
        switch op {
        case .create(let n):
            try volume.create(path(n), exclusive: true).close()
        case .write(let n, let offset, let length, let seed):
            let file = try volume.openFile(path(n))
            try file.write(pattern(length, seed: seed).array, at: UInt64(offset))
            try file.close()
        case .truncate(let n, let size):
            let file = try volume.openFile(path(n))
            try file.truncate(to: UInt64(size))
            try file.close()
        case .rename(let a, let b):
            try volume.rename(path(a), to: path(b))
        case .remove(let n):
            try volume.remove(path(n))
        case .exact:
            break // only ever settled from what a torn operation left, never issued
        case .snapshot(let n, let s):
            try disk(n).snapshot(s)
        case .revert(let n, let s):
            try disk(n).revert(to: s)
        case .deleteSnapshot(let n, let s):
            try disk(n).deleteSnapshot(s)
        case .clone(let source, let target):
            let parts = source.split(separator: "@").map(String.init)
            let from = parts[0].contains("/") ? VirtualDisk(volume, path: "/" + parts[0]) : disk(parts[0])
            _ = try from.clone(to: path(target), snapshot: parts.count == 2 ? parts[1] : nil, linked: true)
        case .increment:
            // Mutual exclusion across hosts: a lost update shows as a counter short of the
            // increments acknowledged.
            let file = try volume.openFile(counterPath, wait: 120)
            let value = try readCounter(file) + 1
            if let trace = ProcessInfo.processInfo.environment["LUNAR_TORTURE_TRACE"] {
                let line = "R \(getpid()) \(value) \(monotonicSeconds())\n"
                if let h = FileHandle(forWritingAtPath: trace) { h.seekToEndOfFile(); h.write(Data(line.utf8)); try? h.close() }
            }
            try file.write((0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }, at: 0)
            try file.close()
        }
    }

    /// A data write or a truncation killed half-way is not atomic (as a POSIX write is not
    /// against a crash): each byte it touches may hold its old or its new value, and a
    /// truncation may have zeroed the tail of its last block before the new size was
    /// committed. When `seen` is such a state, returns an operation that brings the oracle to
    /// it: a write of exactly what is there.
    static func tornOutcome(_ seen: TortureState, _ op: TortureOp, _ before: TortureOracle) -> TortureOp? {
        let name: String, zeroAllowed: Bool
        switch op {
        case .write(let n, _, _, _): (name, zeroAllowed) = (n, false)
        case .truncate(let n, _): (name, zeroAllowed) = (n, true)
        default: return nil
        }
        let after = before.applying(op)
        var others = seen.files
        guard seen.disks == before.state.disks, let got = others.removeValue(forKey: name),
              let old = before.state.files[name], let new = after.state.files[name] else { return nil }
        var rest = before.state.files
        rest[name] = nil
        guard others == rest, got.count == old.count || got.count == new.count else { return nil }
        for (i, byte) in got.enumerated() {
            let o: UInt8 = i < old.count ? old[i] : 0, w: UInt8 = i < new.count ? new[i] : 0
            guard byte == o || byte == w || (zeroAllowed && byte == 0) else { return nil }
        }
        return .exact(name, got)
    }

    /// Where `seen` differs from `expected`: each file and disk that does, with sizes and
    /// snapshot names (-1: none).
    static func difference(_ seen: TortureState, _ expected: TortureState) -> String {
        let files = Set(seen.files.keys).union(expected.files.keys).sorted().filter { seen.files[$0] != expected.files[$0] }
            .map { "\($0): \(seen.files[$0]?.count ?? -1) bytes, expected \(expected.files[$0]?.count ?? -1)" }
        let disks = Set(seen.disks.keys).union(expected.disks.keys).sorted().filter { seen.disks[$0] != expected.disks[$0] }
            .map { (d: String) -> String in
                let s = seen.disks[d], e = expected.disks[d]
                return "\(d)'s snapshots \(s?.contents.keys.sorted() ?? []) (current \(s?.current ?? "-")), expected \(e?.contents.keys.sorted() ?? []) (current \(e?.current ?? "-"))"
            }
        return (files + disks).joined(separator: "; ")
    }

    /// Checks the volume against every host's log. Returns the problems found.
    static func verify(lun: String, logs: [String]) throws -> [String] {
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 120))
        defer { try? volume.close() }
        var problems: [String] = []
        let report = try volume.check()
        if !report.isClean { problems.append("fsck: \(report.problems.prefix(5).map(\.message))") }
        var done = 0, unknown = 0
        var applied: [String: Int] = [:]
        for path in logs {
            let log = try TortureLog(path: path)
            problems += log.failures.map { "\(path): \($0)" }
            guard let host = Int(URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent.dropFirst(5)) else {
                problems.append("\(path): log name is not host-N.log")
                continue
            }
            let (seen, leftovers) = try volume.exists("/h\(host)") ? try observe(volume, directory: "/h\(host)") : (TortureState(), [:])
            var accepted = seen == log.oracle.state
            if let pending = log.pending {
                if pending.op == .increment { unknown += 1 }
                accepted = accepted || seen == log.oracle.applying(pending.op).state || tornOutcome(seen, pending.op, log.oracle) != nil
            }
            if !accepted {
                problems.append("host \(host): directory differs from its acknowledged operations: \(difference(seen, log.oracle.state))")
            }
            // What a cut-short snapshot or deletion leaves: a whole clone of the disk as it was.
            for (disk, files) in leftovers {
                for (snapshot, content) in files where content != published("h\(host)/\(disk)@\(snapshot)", in: log.oracle.library) {
                    problems.append("host \(host): snapshot file \(disk)@\(snapshot), which no record names, is not the disk as it was taken (\(content.count) bytes)")
                }
            }
            done += log.oracle.increments
            unknown += log.unknownIncrements
            applied.merge(log.applied, uniquingKeysWith: +)
        }
        let counter = try volume.exists(counterPath) ? Int(try readCounter(try volume.openFile(counterPath, lock: nil))) : 0
        if counter < done || counter > done + unknown {
            problems.append("shared counter is \(counter); \(done) increments were acknowledged and \(unknown) are in doubt")
        }
        let disks = ["snapshot", "revert", "deletesnap", "clone", "clone-foreign"].map { "\($0) \(applied[$0] ?? 0)" }.joined(separator: ", ")
        print("verified \(logs.count) hosts: counter \(counter) (\(done) acknowledged, \(unknown) in doubt), disk operations applied: \(disks), fsck \(report.isClean ? "clean" : "NOT clean")")
        return problems
    }
}
