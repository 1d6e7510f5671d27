import Foundation
import LunarIO

nonisolated(unsafe) var standardError = FileHandleOutputStream(.standardError)

// What lunar prints names host paths as the user typed them, never as the stand-ins `hostPath`
// made for names that are not UTF-8 (/proc/self/fd/N): within this module these two shadow the
// standard library's print.

func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    Swift.print(shownHostPaths(items.map { "\($0)" }.joined(separator: separator)), terminator: terminator)
}

func print<Target: TextOutputStream>(_ items: Any..., separator: String = " ", terminator: String = "\n", to output: inout Target) {
    Swift.print(shownHostPaths(items.map { "\($0)" }.joined(separator: separator)), terminator: terminator, to: &output)
}

struct FileHandleOutputStream: TextOutputStream {
    let handle: FileHandle
    init(_ handle: FileHandle) { self.handle = handle }
    mutating func write(_ string: String) { handle.write(Data(string.utf8)) }
}

func printJSON(_ object: Any) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) else {
        print("{}")
        return
    }
    print(String(decoding: data, as: UTF8.self))
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

/// A one-line progress bar on standard error, drawn when it is a terminal or when asked
/// (`force`, `--progress`); with no total known (a pipe), the bytes so far, a few times a second.
final class Progress {
    private let label: String
    private let total: UInt64?
    private let enabled: Bool
    private var lastPercent = -1
    private var lastDrawn = 0.0

    init(label: String, total: UInt64?, enabled: Bool, force: Bool = false) {
        self.label = label
        self.total = total.map { max($0, 1) }
        self.enabled = force || (enabled && isatty(STDERR_FILENO) == 1)
    }

    func update(_ done: UInt64) {
        guard enabled else { return }
        guard let total else {
            let now = monotonicSeconds()
            guard now - lastDrawn >= 0.25 else { return }
            lastDrawn = now
            lastPercent = 0
            print("\r\(label) \(ByteSize.format(done))", terminator: "", to: &standardError)
            return
        }
        let percent = Int(min(done, total) * 100 / total)
        guard percent != lastPercent else { return }
        lastPercent = percent
        let width = 30
        let filled = percent * width / 100
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        print("\r\(label) [\(bar)] \(percent)%", terminator: "", to: &standardError)
    }

    func finish() {
        if enabled && lastPercent >= 0 { print("", to: &standardError) }
        lastPercent = -1
    }
}
