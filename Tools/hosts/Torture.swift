import Foundation
import Glibc
import LunarFS
import LunarIO
import LunarTesting

/// One host of the torture test: a random mix of operations in its own directory `/hK` of a
/// shared volume, plus increments of one shared counter file under its exclusive lock. Every
/// operation is logged before it starts (`B`) and once it is durable (`D`), so that a host
/// killed at any instant leaves at most one operation in doubt; a restarted host settles that
/// one against the volume (`D` it happened, `X` it did not, `U` cannot tell: a counter
/// increment) and fails (`F`) when the volume matches neither outcome.
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

    var line: String {
        switch self {
        case .create(let n): "create \(n)"
        case .write(let n, let o, let l, let s): "write \(n) \(o) \(l) \(s)"
        case .truncate(let n, let size): "truncate \(n) \(size)"
        case .rename(let a, let b): "rename \(a) \(b)"
        case .remove(let n): "remove \(n)"
        case .increment: "increment"
        case .exact(let n, let content): "exact \(n) \(content.isEmpty ? "-" : Data(content).base64EncodedString())"
        }
    }

    init?(_ words: [Substring]) {
        func int(_ i: Int) -> Int? { i < words.count ? Int(words[i]) : nil }
        guard let verb = words.first else { return nil }
        switch verb {
        case "create" where words.count == 2: self = .create(String(words[1]))
        case "write" where words.count == 5:
            guard let o = int(2), let l = int(3), let s = UInt64(words[4]) else { return nil }
            self = .write(String(words[1]), offset: o, length: l, seed: s)
        case "truncate" where words.count == 3:
            guard let size = int(2) else { return nil }
            self = .truncate(String(words[1]), size: size)
        case "rename" where words.count == 3: self = .rename(String(words[1]), to: String(words[2]))
        case "remove" where words.count == 2: self = .remove(String(words[1]))
        case "increment" where words.count == 1: self = .increment
        case "exact" where words.count == 3:
            if words[2] == "-" { self = .exact(String(words[1]), []); return }
            guard let data = Data(base64Encoded: String(words[2])) else { return nil }
            self = .exact(String(words[1]), [UInt8](data))
        default: return nil
        }
    }

    /// The names whose state the operation changes.
    var names: [String] {
        switch self {
        case .create(let n), .write(let n, _, _, _), .truncate(let n, _), .remove(let n), .exact(let n, _): [n]
        case .rename(let a, let b): [a, b]
        case .increment: []
        }
    }
}

/// What one host's directory must hold: name → content.
struct TortureOracle: Equatable {
    var files: [String: [UInt8]] = [:]
    var increments = 0

    mutating func apply(_ op: TortureOp) {
        switch op {
        case .create(let n): files[n] = []
        case .write(let n, let offset, let length, let seed):
            var content = files[n] ?? []
            if content.count < offset + length { content += [UInt8](repeating: 0, count: offset + length - content.count) }
            content.replaceSubrange(offset..<(offset + length), with: pattern(length, seed: seed).array)
            files[n] = content
        case .truncate(let n, let size):
            var content = files[n] ?? []
            if size < content.count { content.removeSubrange(size...) } else { content += [UInt8](repeating: 0, count: size - content.count) }
            files[n] = content
        case .rename(let a, let b):
            files[b] = files[a]
            files[a] = nil
        case .remove(let n): files[n] = nil
        case .increment: increments += 1
        case .exact(let n, let content): files[n] = content
        }
    }

    func applying(_ op: TortureOp) -> TortureOracle {
        var copy = self
        copy.apply(op)
        return copy
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

    init(path: String) throws {
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
                for n in op.names { if let k = Int(n.dropFirst()) { nextName = max(nextName, k + 1) } }
            case "D":
                if let op = begun.removeValue(forKey: id) { oracle.apply(op) }
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

    /// The current content of the host's directory, as the volume has it.
    static func observe(_ volume: Volume, directory: String) throws -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        for item in try volume.list(directory) {
            let file = try volume.openFile("\(directory)/\(item.name)", lock: nil)
            let size = try file.size
            files[item.name] = size == 0 ? [] : try file.read(at: 0, count: Int(size))
        }
        return files
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
            if op == .increment {
                record("U \(id)")
                log.unknownIncrements += 1
            } else {
                let seen = try observe(volume, directory: directory)
                if seen == log.oracle.applying(op).files {
                    record("D \(id)")
                    log.oracle.apply(op)
                } else if seen == log.oracle.files {
                    record("X \(id)")
                } else if let torn = tornOutcome(seen, op, log.oracle) {
                    // A data write or truncation cut short: carry on from what is there.
                    record("B \(id + 1) \(torn.line)")
                    record("D \(id + 1)")
                    record("X \(id)")
                    log.oracle.apply(torn)
                    log.nextID = id + 2
                } else {
                    let names = op.names.map { "\($0)=\(seen[$0]?.count ?? -1)B" }.joined(separator: ",")
                    record("F \(id) after \(op.line): the volume matches neither outcome (\(names))")
                    throw TortureError("host \(host): after \(op.line) the volume matches neither outcome")
                }
            }
            log.pending = nil
        }
        // Every settled state must match the volume exactly (catches lost acknowledged work).
        let seen = try observe(volume, directory: directory)
        if seen != log.oracle.files {
            record("F \(log.nextID) restart: directory differs from the acknowledged operations")
            throw TortureError("host \(host): \(directory) differs from the acknowledged operations")
        }

        var random = SplitMix64(seed: seed &+ UInt64(log.nextID) &* 7919)
        var id = log.nextID
        let deadline = monotonicSeconds() + duration
        var oracle = log.oracle
        while monotonicSeconds() < deadline {
            let names = oracle.files.keys.sorted()
            let pick = random.next() % 100
            let op: TortureOp
            if names.isEmpty || (pick < 20 && names.count < 24) {
                op = .create("f\(log.nextName)")
                log.nextName += 1
            } else {
                let name = names[Int(random.next() % UInt64(names.count))]
                switch pick {
                case 0..<50:
                    op = .write(name, offset: Int(random.next() % (192 << 10)), length: Int(1 + random.next() % (64 << 10)), seed: random.next())
                case 50..<60:
                    op = .truncate(name, size: Int(random.next() % (256 << 10)))
                case 60..<70:
                    op = .rename(name, to: "f\(log.nextName)")
                    log.nextName += 1
                case 70..<80:
                    op = .remove(name)
                default:
                    op = .increment
                }
            }
            record("B \(id) \(op.line)")
            try perform(op, volume: volume, directory: directory)
            try volume.sync()
            record("D \(id)")
            if case .increment = op, let trace = ProcessInfo.processInfo.environment["LUNAR_TORTURE_TRACE"] {
                let line = "A \(getpid()) \(monotonicSeconds())\n"
                if let h = FileHandle(forWritingAtPath: trace) { h.seekToEndOfFile(); h.write(Data(line.utf8)); try? h.close() }
            }
            oracle.apply(op)
            id += 1
        }
        try volume.close()
    }

    static func perform(_ op: TortureOp, volume: Volume, directory: String) throws {
        let path = { (n: String) in "\(directory)/\(n)" }
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
    static func tornOutcome(_ seen: [String: [UInt8]], _ op: TortureOp, _ before: TortureOracle) -> TortureOp? {
        let name: String, zeroAllowed: Bool
        switch op {
        case .write(let n, _, _, _): (name, zeroAllowed) = (n, false)
        case .truncate(let n, _): (name, zeroAllowed) = (n, true)
        default: return nil
        }
        let after = before.applying(op)
        var others = seen
        guard let got = others.removeValue(forKey: name),
              let old = before.files[name], let new = after.files[name] else { return nil }
        var rest = before.files
        rest[name] = nil
        guard others == rest, got.count == old.count || got.count == new.count else { return nil }
        for (i, byte) in got.enumerated() {
            let o: UInt8 = i < old.count ? old[i] : 0, w: UInt8 = i < new.count ? new[i] : 0
            guard byte == o || byte == w || (zeroAllowed && byte == 0) else { return nil }
        }
        return .exact(name, got)
    }

    /// Checks the volume against every host's log. Returns the problems found.
    static func verify(lun: String, logs: [String]) throws -> [String] {
        let volume = try Volume.open(path: lun, options: OpenOptions(lockTimeout: 120))
        defer { try? volume.close() }
        var problems: [String] = []
        let report = try volume.check()
        if !report.isClean { problems.append("fsck: \(report.problems.prefix(5).map(\.message))") }
        var done = 0, unknown = 0
        for path in logs {
            let log = try TortureLog(path: path)
            problems += log.failures.map { "\(path): \($0)" }
            guard let host = Int(URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent.dropFirst(5)) else {
                problems.append("\(path): log name is not host-N.log")
                continue
            }
            let seen = try volume.exists("/h\(host)") ? try observe(volume, directory: "/h\(host)") : [:]
            var accepted = seen == log.oracle.files
            if let pending = log.pending {
                if pending.op == .increment { unknown += 1 }
                accepted = accepted || seen == log.oracle.applying(pending.op).files || tornOutcome(seen, pending.op, log.oracle) != nil
            }
            if !accepted {
                let expected = log.oracle.files.mapValues(\.count), got = seen.mapValues(\.count)
                problems.append("host \(host): directory differs from its acknowledged operations (expected sizes \(expected.sorted { $0.key < $1.key }), found \(got.sorted { $0.key < $1.key }))")
            }
            done += log.oracle.increments
            unknown += log.unknownIncrements
        }
        let counter = try volume.exists(counterPath) ? Int(try readCounter(try volume.openFile(counterPath, lock: nil))) : 0
        if counter < done || counter > done + unknown {
            problems.append("shared counter is \(counter); \(done) increments were acknowledged and \(unknown) are in doubt")
        }
        print("verified \(logs.count) hosts: counter \(counter) (\(done) acknowledged, \(unknown) in doubt), fsck \(report.isClean ? "clean" : "NOT clean")")
        return problems
    }
}
