import LunarTesting
import Foundation

/// Runs the real `lunar` binary built beside this test bundle.
struct LunarProcess {
    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
        var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any]
        }
    }

    static var executable: URL { built("lunar") }

    /// An executable of this package, built beside the test bundle.
    static func built(_ program: String) -> URL {
        let here = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        return here.deletingLastPathComponent().appendingPathComponent(program)
    }

    /// Starts `lunar` (or another of the package's programs) with `arguments`; call `finish`
    /// on the result to wait for it.
    static func start(_ arguments: [String], program: String = "lunar") throws -> Running {
        let process = Process()
        process.executableURL = built(program)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        return Running(process: process, out: out, err: err)
    }

    static func run(_ arguments: [String], program: String = "lunar") throws -> Output {
        try start(arguments, program: program).finish()
    }

    struct Running {
        let process: Process
        let out: Pipe
        let err: Pipe

        func finish() -> Output {
            let stdout = out.fileHandleForReading.readDataToEndOfFile()
            let stderr = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return Output(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                          stderr: String(decoding: stderr, as: UTF8.self))
        }
    }
}

/// A scratch directory on the disk-backed temporary area, removed afterwards.
@discardableResult
func system(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}
