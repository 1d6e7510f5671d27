import Foundation
import Testing

/// Spec/locking.pml, the Promela model of the lock protocol in Spec/locking.md, checked
/// exhaustively by spin: the protocol must verify with no errors, and each deliberately broken
/// variant must fail, which shows that the assertions can fail at all. Needs `spin` and `gcc`
/// (Debian: `apt-get install -y spin gcc`).
@Suite("lock protocol model checked by spin")
struct LockModelTests {
    struct Configuration: Sendable, CustomTestStringConvertible {
        var name: String
        var defines: [String]
        /// Statements of the Host process that must be reached (pan lists those it never
        /// reached), so that the runs the properties talk about really happen in the model.
        var mustReach: [String] = []
        /// Statements pan must list as unreached: keeps the parsing of that list honest.
        var mustNotReach: [String] = []
        var testDescription: String { name }
    }

    /// Reached in every configuration: a committed transaction replayed by a breaker, a slot
    /// broken, a lock taken over in recovery, a host fencing itself.
    static let reachedEverywhere = ["obj = jval[x]", "broken[y] = 1", "took = 1", "fenced[me] = 1",
                                    "committed = (obj+1)"]

    static let safe: [Configuration] = [
        Configuration(name: "3 hosts, 1 update each: breakers die and are recovered in turn", defines: [],
                      mustReach: reachedEverywhere + ["x = y"]),
        Configuration(name: "2 hosts, 2 updates each: fenced hosts rejoin", defines: ["-DNH=2", "-DROUNDS=2"],
                      mustReach: reachedEverywhere + ["rejoined = (rejoined+1)"],
                      mustNotReach: ["x = y"]),  // a chained takeover needs a third host
    ]

    /// Each breaks one rule of Spec/locking.md; checked in the small configuration.
    static let broken: [Configuration] = [
        "NO_WAIT", "NO_REPLAY", "NO_MARGIN", "NO_FENCE", "NO_CHECKPOINT", "KEEP_JOURNAL",
    ].map { Configuration(name: "BROKEN_\($0)", defines: ["-DNH=2", "-DROUNDS=2", "-DBROKEN_\($0)"]) }

    @Test("the protocol keeps its safety properties", arguments: LockModelTests.safe)
    func protocolIsSafe(_ configuration: Configuration) throws {
        let result = try Spin.verify(configuration.defines)
        #expect(result.errors == 0, "spin found a violation of the lock protocol:\n\(result.output)")
        #expect(result.states > 100_000, "suspiciously few states, is the model still exploring anything?\n\(result.output)")
        for statement in configuration.mustReach + configuration.mustNotReach {
            #expect(result.statements.contains("\"\(statement)\""), "the model has no statement \(statement) any more")
        }
        for statement in configuration.mustReach {
            #expect(!result.unreached.contains(statement), "never reached: \(statement)\n\(result.output)")
        }
        for statement in configuration.mustNotReach {
            #expect(result.unreached.contains(statement), "expected unreachable: \(statement)\n\(result.output)")
        }
    }

    @Test("a deliberately broken variant of the protocol is caught", arguments: LockModelTests.broken)
    func brokenVariantFails(_ configuration: Configuration) throws {
        let result = try Spin.verify(configuration.defines)
        #expect(result.errors > 0, "spin accepted \(configuration.name): the model's assertions are too weak\n\(result.output)")
        #expect(result.output.contains("assertion violated"), "\(result.output)")
    }
}

/// Runs spin's verifier on Spec/locking.pml in a temporary directory.
private enum Spin {
    struct Verdict {
        var errors: Int
        var states: Int
        var depth: Int
        var seconds: Double
        var unreached: Set<String>
        /// pan.t, where spin lists every statement of the model as pan prints it.
        var statements: String
        var output: String
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let model = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Spec/locking.pml")

    static func verify(_ defines: [String]) throws -> Verdict {
        guard let spin = executable("spin") else {
            throw Failure(description: "spin is not installed: the lock protocol model cannot be checked. Install it with `apt-get install -y spin` (Debian package spin; gcc is needed too)")
        }
        guard let gcc = executable("gcc") ?? executable("cc") else {
            throw Failure(description: "no C compiler for spin's verifier: install it with `apt-get install -y gcc`")
        }
        guard FileManager.default.fileExists(atPath: model.path) else {
            throw Failure(description: "the model is missing: \(model.path)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lunar-spin-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let generate = try run(spin, defines + ["-a", model.path], in: directory)
        guard generate.status == 0 else { throw Failure(description: "spin -a \(defines) failed:\n\(generate.output)") }
        // Safety properties only (assertions); COLLAPSE compresses the state vector.
        let compile = try run(gcc, ["-O2", "-DSAFETY", "-DCOLLAPSE", "-DMEMLIM=4096", "-w", "-o", "pan", "pan.c"], in: directory)
        guard compile.status == 0 else { throw Failure(description: "compiling pan.c failed:\n\(compile.output)") }
        let check = try run(directory.appendingPathComponent("pan").path, ["-m100000"], in: directory, timeout: 300)
        let output = check.output
        guard let errors = number(in: output, after: "errors: ") else {
            throw Failure(description: "pan ended without a verdict (status \(check.status)):\n\(output)")
        }
        if output.contains("max search depth too small") {
            throw Failure(description: "pan's search depth (-m) is too small: the search was not exhaustive\n\(output)")
        }
        if errors == 0, output.contains("MEMLIM") || output.contains("out of memory") || output.contains("Search not completed") {
            throw Failure(description: "pan ran out of memory: the search was not exhaustive\n\(output)")
        }
        let verdict = Verdict(errors: errors,
                              states: number(in: output, before: " states, stored") ?? 0,
                              depth: number(in: output, after: "depth reached ") ?? 0,
                              seconds: Double(word(in: output, after: "elapsed time ") ?? "") ?? 0,
                              unreached: unreachedInHost(output),
                              statements: (try? String(contentsOf: directory.appendingPathComponent("pan.t"), encoding: .utf8)) ?? "",
                              output: output)
        print("spin \(defines.joined(separator: " ")): errors \(verdict.errors), \(verdict.states) states, depth \(verdict.depth), \(verdict.seconds) s")
        return verdict
    }

    /// The statements pan lists under "unreached in proctype Host", as printed between quotes.
    static func unreachedInHost(_ output: String) -> Set<String> {
        var inHost = false
        var statements = Set<String>()
        for line in output.split(separator: "\n") {
            if line.hasPrefix("unreached in") {
                inHost = line.hasPrefix("unreached in proctype Host")
            } else if inHost, let open = line.firstIndex(of: "\""), let close = line.lastIndex(of: "\""), open < close {
                statements.insert(String(line[line.index(after: open)..<close]))
            }
        }
        return statements
    }

    static func number(in text: String, after marker: String) -> Int? {
        word(in: text, after: marker).flatMap { Int($0) }
    }

    static func number(in text: String, before marker: String) -> Int? {
        guard let range = text.range(of: marker) else { return nil }
        let head = text[..<range.lowerBound]
        let digits = head.reversed().prefix { $0.isNumber }
        return Int(String(digits.reversed()))
    }

    static func word(in text: String, after marker: String) -> String? {
        guard let range = text.range(of: marker) else { return nil }
        let word = text[range.upperBound...].prefix { !$0.isWhitespace && $0 != "," }
        return word.isEmpty ? nil : String(word)
    }

    static func executable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a command, stdout and stderr together; kills it after `timeout` seconds.
    static func run(_ executable: String, _ arguments: [String], in directory: URL,
                    timeout: Double = 120) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = directory
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        var output = String(decoding: data, as: UTF8.self)
        if process.terminationReason == .uncaughtSignal {
            output += "\n(\(executable) was killed after \(Int(timeout)) s or by a signal)"
        }
        return (process.terminationStatus, output)
    }
}
