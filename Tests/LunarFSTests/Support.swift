import Glibc
import LunarFS
import LunarIO
import LunarTesting

/// A formatted sparse image in a scratch directory.
final class TestVolume {
    let scratch = Scratch()
    let path: String
    let size: UInt64

    init(size: UInt64 = 2 << 30, options: FormatOptions = FormatOptions()) throws {
        self.size = size
        path = scratch.path("lun.img")
        try Volume.format(path: path, size: size, options: options)
    }

    func open(readOnly: Bool = false) throws -> Volume {
        try Volume.open(path: path, options: OpenOptions(readOnly: readOnly, lockTimeout: 5))
    }
}

/// Runs `body` and returns the FSError it threw, or nil.
func fsError(_ body: () throws -> Void) -> FSError? {
    do {
        try body()
        return nil
    } catch let error as FSError {
        return error
    } catch {
        return nil
    }
}

extension FSError.Kind {
    var isCorrupt: Bool { if case .corrupt = self { true } else { false } }
    var isNoSpace: Bool { if case .noSpace = self { true } else { false } }
    var isBusy: Bool { if case .busy = self { true } else { false } }
}

func bytes(_ count: Int, seed: UInt64) -> [UInt8] { pattern(count, seed: seed).array }

/// The 4 KiB sector at `offset` of the image file at `path`.
func readSector(_ path: String, at offset: UInt64) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var sector = [UInt8](repeating: 0, count: 4096)
    _ = sector.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, off_t(offset)) }
    return sector
}

/// Writes `sector` as the 4 KiB at `offset` of the image file at `path`, as it is.
func writeSector(_ path: String, at offset: UInt64, _ sector: [UInt8]) {
    let fd = open(path, O_RDWR)
    defer { close(fd) }
    _ = sector.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(offset)) }
}

/// Reads one sector of an image, changes it, writes it back: damage made on purpose.
func changeSector(_ path: String, at offset: UInt64, _ change: (inout [UInt8]) -> Void) {
    var sector = readSector(path, at: offset)
    change(&sector)
    writeSector(path, at: offset, sector)
}
