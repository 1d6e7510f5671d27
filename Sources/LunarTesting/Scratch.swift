// Test helpers shared by every test target and by Tools: scratch space, test patterns,
// and the crash-consistency harness.
import Foundation
import Glibc
import LunarIO

/// A scratch directory removed when the value goes away.
public final class Scratch {
    public let directory: String

    public init(under base: String = NSTemporaryDirectory()) {
        let template = (base as NSString).appendingPathComponent("lunar-test-XXXXXX")
        var chars = Array(template.utf8CString)
        let made = chars.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        directory = made.map { String(cString: $0) } ?? template
    }

    public func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// A fresh sparse image file of `size` bytes.
    public func image(_ name: String = "lun.img", size: UInt64 = 64 << 20, engine: IOEngineKind? = nil,
               options: BlockDevice.Options = .init()) throws -> BlockDevice {
        var options = options
        options.engine = engine ?? options.engine
        return try BlockDevice.createImage(path(name), size: size, options: options)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// A small file system mounted for one test (root only): ramfs refuses O_DIRECT, a tiny
/// tmpfs runs out of space. nil where mounting is not allowed.
public final class ScratchMount {
    public let scratch = Scratch()
    public let point: String

    public init?(type: String, options: String = "") {
        guard getuid() == 0 else { return nil }
        point = scratch.path("mnt")
        guard mkdir(point, 0o755) == 0 else { return nil }
        var arguments = ["-t", type]
        if !options.isEmpty { arguments += ["-o", options] }
        guard run("/usr/bin/mount", arguments + [type, point]) == 0 else { return nil }
    }

    public func path(_ name: String) -> String { (point as NSString).appendingPathComponent(name) }

    deinit { _ = run("/usr/bin/umount", ["-l", point]) }
}

@discardableResult
public func run(_ executable: String, _ arguments: [String]) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return -1 }
    process.waitUntilExit()
    return process.terminationStatus
}

/// Deterministic test bytes.
public func pattern(_ count: Int, seed: UInt64) -> IOBuffer {
    let buffer = IOBuffer(count: count)
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        buffer.bytes[i] = UInt8(truncatingIfNeeded: state)
    }
    return buffer
}


/// Copies a (sparse) image file, keeping its holes: only data extents are read and written.
public func copySparse(from source: String, to target: String) throws {
    let input = open(source, O_RDONLY | O_CLOEXEC)
    guard input >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    defer { close(input) }
    let output = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard output >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    defer { close(output) }
    var st = stat()
    guard fstat(input, &st) == 0, ftruncate(output, st.st_size) == 0 else { throw POSIXError(.EIO) }
    // Linux's lseek whence values; Glibc's module does not export them.
    let seekData: Int32 = 3, seekHole: Int32 = 4
    let chunk = 1 << 20
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    var at = lseek(input, 0, seekData)
    while at >= 0 && at < st.st_size {
        let end = lseek(input, at, seekHole)
        guard end > at else { break }
        var position = at
        while position < end {
            let n = pread(input, buffer, min(chunk, Int(end - position)), position)
            guard n > 0, pwrite(output, buffer, n, position) == n else { throw POSIXError(.EIO) }
            position += off_t(n)
        }
        at = lseek(input, end, seekData)
    }
}
