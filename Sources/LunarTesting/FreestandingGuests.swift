import Foundation
import Glibc

/// The freestanding test guests of Tools/guest/freestanding, compiled on demand with the host's
/// gcc and ld: for LunarVMM's tests, the `lunar vm` integration tests and the benchmarks.
public enum FreestandingGuests {
    /// The package root (this file is Sources/LunarTesting/FreestandingGuests.swift).
    public static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    public static var available: Bool {
        access("/dev/kvm", R_OK | W_OK) == 0 && access("/usr/bin/gcc", X_OK) == 0 && access("/usr/bin/ld", X_OK) == 0
    }

    public static var whyNot: String { "needs read-write /dev/kvm and gcc/ld to build the test guests" }

    /// Compiles Tools/guest/freestanding/NAME into a flat image linked at 1 MiB.
    /// `elf`: a static ELF executable (entry from its header) instead of a flat image.
    public static func build(_ name: String, defines: [String] = [], elf: Bool = false) throws -> [UInt8] {
        let scratch = Scratch()
        let image = try build(name, defines: defines, elf: elf, into: scratch.path("guest.bin"))
        return Array(try Data(contentsOf: URL(fileURLWithPath: image)))
    }

    /// As `build`, writing the image to the host file `output`; returns its path.
    @discardableResult
    public static func build(_ name: String, defines: [String] = [], elf: Bool = false, into output: String) throws -> String {
        try build([name], defines: defines, elf: elf, into: output)
    }

    /// Compiles several sources (C or assembly, `defines` for all) and links them in order.
    public static func build(_ names: [String], defines: [String] = [], elf: Bool = false) throws -> [UInt8] {
        let scratch = Scratch()
        let image = try build(names, defines: defines, elf: elf, into: scratch.path("guest.bin"))
        return Array(try Data(contentsOf: URL(fileURLWithPath: image)))
    }

    @discardableResult
    public static func build(_ names: [String], defines: [String] = [], elf: Bool = false, into output: String) throws -> String {
        let scratch = Scratch()
        var objects: [String] = []
        for (index, name) in names.enumerated() {
            let source = root.appendingPathComponent("Tools/guest/freestanding/\(name)").path
            let object = scratch.path("guest\(index).o")
            let compile = ["-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-mno-red-zone", "-m64", "-O2",
                           "-fno-asynchronous-unwind-tables"] + defines.map { "-D\($0)" } + ["-c", source, "-o", object]
            guard run("/usr/bin/gcc", compile) == 0 else { throw GuestBuildError("gcc failed on \(source)") }
            objects.append(object)
        }
        let format = elf ? ["-static"] : ["--oformat", "binary"]
        guard run("/usr/bin/ld", ["-Ttext=0x100000", "-e", "_start"] + format + ["-o", output] + objects) == 0 else {
            throw GuestBuildError("ld failed on \(objects.joined(separator: " "))")
        }
        return output
    }
}

public struct GuestBuildError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
