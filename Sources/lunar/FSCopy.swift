import Foundation
import LunarFS
import LunarIO

// `lunar fs cp`: the data paths between host files and volume files. Both directions keep
// holes: VM disks are mostly empty, and copying their zeros would fill a thin volume.

/// What a copy moved, for the closing line.
struct CopyResult {
    var source: String
    var destination: String
    /// Logical size of the file.
    var size: UInt64
    /// Bytes actually read and written (the rest were holes or zeros).
    var dataBytes: UInt64
    var seconds: Double
    var verb = "copied"

    var summary: String {
        let rate = seconds > 0 && size > 0 ? ByteSize.format(UInt64(Double(size) / seconds)) + "/s" : "-"
        let skipped = size > dataBytes ? ", \(ByteSize.format(size - dataBytes)) of holes skipped" : ""
        return "\(verb) \(source) to \(destination): \(ByteSize.format(size)) (\(size) bytes\(skipped)) in "
            + String(format: "%.2f s", seconds) + ", \(rate)"
    }
}

/// Files from this size on show a progress bar (when standard error is a terminal).
let progressThreshold: UInt64 = 64 << 20

/// Linux values, spelled out because Glibc's module map only exposes them under _GNU_SOURCE.
private let seekData: Int32 = 3
private let seekHole: Int32 = 4

/// Whether every byte is zero. Comparing the region with itself shifted by one byte lets
/// memcmp's vectorized loop do the work.
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let base = bytes.baseAddress, !bytes.isEmpty else { return true }
    return base.load(as: UInt8.self) == 0 && memcmp(base, base + 1, bytes.count - 1) == 0
}

/// An open host file descriptor that closes itself.
final class HostFile {
    let fd: Int32
    let path: String

    init(path: String, flags: Int32, mode: mode_t = 0) throws(CLIError) {
        let fd = open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw CLIError.system(path) }
        self.fd = fd
        self.path = path
    }

    /// Standard input or output (`-`): a duplicate of descriptor `fd`, named `path` in messages.
    init(duplicating fd: Int32, path: String) throws(CLIError) {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw CLIError.system(path) }
        self.fd = copy
        self.path = path
    }

    deinit { close(fd) }

    func status() throws(CLIError) -> stat {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CLIError.system(path) }
        return st
    }

    /// Reads until `buffer` is full or the file ends; returns the count. With `offset` nil it
    /// reads on from the file position (pipes, character devices).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64?) throws(CLIError) -> Int {
        var done = 0
        while done < buffer.count, let base = buffer.baseAddress {
            let n = offset.map { pread(fd, base + done, buffer.count - done, off_t($0) + off_t(done)) }
                ?? Glibc.read(fd, base + done, buffer.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw CLIError.system(path)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `bytes` at `offset`, or sequentially when `offset` is nil (pipes,
    /// character devices).
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64?) throws(CLIError) {
        var done = 0
        while done < bytes.count, let base = bytes.baseAddress {
            let n = offset.map { pwrite(fd, base + done, bytes.count - done, off_t($0) + off_t(done)) }
                ?? Glibc.write(fd, base + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw CLIError.system(path)
            }
            done += n
        }
    }
}

/// Writes everything to standard output.
func writeStandardOutput(_ bytes: UnsafeRawBufferPointer) throws(CLIError) {
    var done = 0
    while done < bytes.count, let base = bytes.baseAddress {
        let n = Glibc.write(STDOUT_FILENO, base + done, bytes.count - done)
        if n < 0 {
            if errno == EINTR { continue }
            throw CLIError.system("standard output")
        }
        done += n
    }
}

// MARK: host to volume

/// Copies host file `hostPath` to `ref` (into it, under the host file's name, when `ref` is a
/// directory). An existing volume file is replaced; a file this copy created is removed again
/// if the copy fails, so a failed copy never leaves a truncated file under a new name.
func copyIn(from hostPath: String, to ref: VolumeRef, quiet: Bool, wait: Double = 0) throws -> CopyResult {
    let source = try HostFile(path: hostPath, flags: O_RDONLY)
    let st = try source.status()
    if st.st_mode & S_IFMT == S_IFDIR { throw CLIError("\(hostPath): is a directory (cp copies one file at a time)") }
    // A pipe, a device or a procfs file says nothing true about its length: read it to the end.
    let streamed = st.st_mode & S_IFMT != S_IFREG || st.st_size == 0
    // Its own image as the source would be read while being written: nothing good comes of it.
    if sameHostFile(hostPath, ref.lun) {
        throw CLIError("\(hostPath) is the LUN \(ref.lun) itself; a volume cannot be copied into itself")
    }
    var size = UInt64(st.st_size)
    let started = monotonicSeconds()
    var data: UInt64 = 0
    var destination = ref
    try withVolume(ref.lun, readOnly: false) { volume in
        // The name as typed: hostPath may have made up one that reaches a name that is not UTF-8.
        destination.path = try copyTarget(volume, ref, name: baseName(shownHostPaths(hostPath)))
        let existed = try volume.exists(destination.path)
        let file = try volume.create(destination.path, mode: UInt32(st.st_mode) & 0o777, wait: wait)
        do {
            if existed, try file.size > 0 { try file.truncate(to: 0) }
            let sink = SparseSink(file: file, granule: Int(volume.header.blockSize))
            if streamed {
                (size, data) = try copyStream(from: source, to: sink, progress: Progress(label: "copying", total: nil, enabled: false))
            } else {
                data = try copyData(from: source, size: size, to: sink,
                                    progress: Progress(label: "copying \(baseName(hostPath))", total: size,
                                                       enabled: !quiet && size >= progressThreshold))
            }
            // Trailing holes were never written: the size says where the file ends.
            if try file.size != size { try file.truncate(to: size) }
        } catch {
            if !existed { try? volume.remove(destination.path) }
            throw error
        }
    }
    return CopyResult(source: hostPath, destination: destination.display, size: size, dataBytes: data,
                      seconds: monotonicSeconds() - started)
}

/// Where a copy into the volume lands: `ref` itself, or `ref/name` when `ref` is a directory.
private func copyTarget(_ volume: Volume, _ ref: VolumeRef, name: String) throws(FSError) -> String {
    guard try volume.exists(ref.path) else {
        if ref.namesDirectory { throw FSError(.notFound, path: ref.path) }
        return ref.path
    }
    if try volume.stat(ref.path).type == .directory { return joinPath(ref.path, name) }
    if ref.namesDirectory { throw FSError(.notDirectory, path: ref.path) }
    return ref.path
}

/// Where a copy into a volume file puts what it reads (`fs cp`, `disk import`): of each region
/// of the source, the runs of `granule`-sized pieces that are not all zeros are written at
/// `base` plus their source offset; the rest (the source's holes, pieces of zeros) is skipped,
/// and made to read as zeros where the file held data before the copy (`held`).
final class SparseSink {
    let file: File
    let base: UInt64
    let granule: Int
    /// Where the file's data may end; a source that goes on past it is refused.
    let end: UInt64?
    /// Checks the source's first bytes before any is written (`disk import`: not a qcow2).
    let inspect: ((UnsafeRawBufferPointer) throws -> Void)?
    private var held: [Range<UInt64>]
    /// Bytes written (the rest were holes or zeros).
    private(set) var written: UInt64 = 0

    init(file: File, base: UInt64 = 0, granule: Int, end: UInt64? = nil, held: [Range<UInt64>] = [],
         inspect: ((UnsafeRawBufferPointer) throws -> Void)? = nil) {
        self.file = file
        self.base = base
        self.granule = granule
        self.end = end
        self.held = held
        self.inspect = inspect
    }

    /// Bytes `offset..<offset + region.count` of the source.
    func put(_ region: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if offset == 0, let inspect { try inspect(region) }
        var region = region
        if let end {
            // Zeros past the end are as good as nothing; data is not.
            let fits = Int(min(UInt64(region.count), end > base + offset ? end - (base + offset) : 0))
            guard isAllZero(UnsafeRawBufferPointer(rebasing: region[fits...])) else {
                throw CLIError("the source goes on past the end of \(file.path) (\(ByteSize.format(end))): give a larger --size, or `lunar disk resize` it first")
            }
            region = UnsafeRawBufferPointer(rebasing: region[..<fits])
        }
        var next = offset
        written += try writeNonZeroRuns(region, granule: granule, at: offset) { (piece, at) throws in
            try skip(next..<at)
            try file.write(piece, at: base + at)
            next = at + UInt64(piece.count)
        }
        try skip(next..<(offset + UInt64(region.count)))
    }

    /// Source bytes `range` hold nothing (a hole, zeros).
    func skip(_ range: Range<UInt64>) throws(FSError) {
        guard !range.isEmpty, !held.isEmpty else { return }
        let target = (base + range.lowerBound)..<(base + range.upperBound)
        for h in held where h.overlaps(target) {
            let cut = h.clamped(to: target)
            try file.discard(at: cut.lowerBound, length: UInt64(cut.count))
        }
        // The held ranges come in order, as the copy goes: those behind it are done.
        held.removeAll { $0.upperBound <= target.upperBound }
    }
}

/// Moves the data extents of `source` into `sink` in aligned chunks of at least 1 MiB,
/// skipping host holes (SEEK_DATA/SEEK_HOLE) and the sink's pieces of zeros; returns the bytes
/// written.
///
/// Chunks start at multiples of the chunk size and pieces at multiples of the sink's granule
/// (`fs cp`: the volume's block size), in page-aligned memory: LunarFS then writes each piece
/// straight to the device, whole blocks at a time, with no read-modify-write and no zeroing of
/// freshly mapped blocks.
func copyData(from source: HostFile, size: UInt64, to sink: SparseSink, progress: Progress) throws -> UInt64 {
    let chunk = max(UInt64(1 << 20), UInt64(sink.granule))
    let buffer = IOBuffer(count: Int(chunk))
    var canSeekData = true
    var position: UInt64 = 0
    defer { progress.finish() }
    while position < size {
        var dataStart = position
        var dataEnd = size
        if canSeekData {
            let start = lseek(source.fd, off_t(position), seekData)
            if start < 0 {
                if errno == ENXIO { break } // only a hole from here on
                canSeekData = false // the file system cannot tell: read it all
            } else {
                dataStart = UInt64(start)
                let end = lseek(source.fd, start, seekHole)
                dataEnd = end < 0 ? size : min(UInt64(end), size)
            }
        }
        var at = max(position, dataStart / chunk * chunk)
        try sink.skip(position..<at)
        while at < dataEnd && at < size {
            let count = Int(min(chunk, size - at))
            let region = buffer.slice(0..<count)
            let got = try source.read(into: region, at: at)
            // A file that shrank under us reads as zeros past its new end.
            if got < count { buffer.slice(got..<count).initializeMemory(as: UInt8.self, repeating: 0) }
            try sink.put(UnsafeRawBufferPointer(region), at: at)
            at += UInt64(count)
            progress.update(at)
        }
        position = max(at, position)
    }
    try sink.skip(min(position, size)..<size)
    progress.update(size)
    return sink.written
}

/// Reads `source` sequentially to its end (a pipe, a device, a file whose size says 0) into
/// `sink` in chunks as `copyData` writes them; returns the bytes read and the bytes written.
func copyStream(from source: HostFile, to sink: SparseSink, progress: Progress) throws -> (size: UInt64, written: UInt64) {
    let chunk = max(1 << 20, sink.granule)
    let buffer = IOBuffer(count: chunk)
    var size: UInt64 = 0
    defer { progress.finish() }
    while true {
        let got = try source.read(into: buffer.slice(0..<chunk), at: nil)
        try sink.put(UnsafeRawBufferPointer(buffer.slice(0..<got)), at: size)
        size += UInt64(got)
        progress.update(size)
        if got < chunk { return (size, sink.written) }
    }
}

/// Splits `region` (file bytes from `offset`) into `granule`-sized pieces, skips the all-zero
/// ones, and hands each run of the others to `write` as one request; returns the bytes handed.
func writeNonZeroRuns<E: Error>(_ region: UnsafeRawBufferPointer, granule: Int, at offset: UInt64,
                                _ write: (UnsafeRawBufferPointer, UInt64) throws(E) -> Void) throws(E) -> UInt64 {
    var written: UInt64 = 0
    var runStart: Int?
    var piece = 0
    while piece <= region.count {
        let end = min(piece + granule, region.count)
        let zero = piece == region.count || isAllZero(UnsafeRawBufferPointer(rebasing: region[piece..<end]))
        if zero, let start = runStart {
            try write(UnsafeRawBufferPointer(rebasing: region[start..<piece]), offset + UInt64(start))
            written += UInt64(piece - start)
            runStart = nil
        } else if !zero && runStart == nil {
            runStart = piece
        }
        if piece == region.count { break }
        piece = end
    }
    return written
}

// MARK: volume to host

/// Copies volume file `ref` to `hostPath` (into it, under the file's name, when `hostPath` is
/// a directory). A regular host file gets only the volume file's allocated ranges, less any
/// zero pages, and its size from ftruncate: holes stay holes. Devices and pipes get every byte.
func copyOut(from ref: VolumeRef, to hostPath: String, quiet: Bool) throws -> CopyResult {
    if ref.isRoot { throw CLIError("\(ref.display): is a directory (cp copies one file at a time)") }
    let started = monotonicSeconds()
    var target = hostPath
    if hostIsDirectory(hostPath) {
        target = (hostPath as NSString).appendingPathComponent(baseName(ref.path))
    } else if hostPath.hasSuffix("/") {
        throw CLIError("\(hostPath): not a directory")
    }
    // Truncating the LUN itself would destroy the volume being read.
    if sameHostFile(target, ref.lun) {
        throw CLIError("\(target) is the LUN \(ref.lun) itself; refusing to overwrite the volume")
    }
    var size: UInt64 = 0
    var data: UInt64 = 0
    try withVolume(ref.lun, readOnly: true) { volume in
        let file = try volume.openFile(ref.path)
        let info = try file.stat()
        size = info.size
        let output = try HostFile(path: target, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: mode_t(info.mode & 0o777))
        data = try copyOut(file, size: size, to: output, sequential: try output.status().st_mode & S_IFMT != S_IFREG,
                           progress: Progress(label: "copying \(baseName(ref.path))", total: size,
                                              enabled: !quiet && size >= progressThreshold))
    }
    return CopyResult(source: ref.display, destination: target, size: size, dataBytes: data,
                      seconds: monotonicSeconds() - started)
}

/// Copies the first `size` bytes of volume file `file` to `output`: to a regular file (not
/// `sequential`) only the file's allocated ranges, less any zero pages, and its size from
/// ftruncate, so holes stay holes; `sequential` (a device, a pipe, standard output) every byte
/// in order. Returns the bytes written.
func copyOut(_ file: File, size: UInt64, to output: HostFile, sequential: Bool, progress: Progress) throws -> UInt64 {
    defer { progress.finish() }
    let chunk = UInt64(1 << 20)
    let buffer = IOBuffer(count: Int(chunk))
    var data: UInt64 = 0
    if !sequential {
        for range in try file.allocatedRanges() where range.lowerBound < size {
            var at = range.lowerBound
            let end = min(range.upperBound, size)
            while at < end {
                let count = Int(min(chunk, end - at))
                let got = try file.read(into: buffer.slice(0..<count), at: at)
                // 4 KiB: the block size of the host file systems holes are made of.
                data += try writeNonZeroRuns(UnsafeRawBufferPointer(buffer.slice(0..<got)), granule: 4096, at: at) {
                    (piece, offset) throws(CLIError) in try output.write(piece, at: offset)
                }
                at += UInt64(count)
                progress.update(at)
            }
        }
        guard ftruncate(output.fd, off_t(size)) == 0 else { throw CLIError.system(output.path) }
    } else {
        var at: UInt64 = 0
        while at < size {
            let got = try file.read(into: buffer.slice(0..<Int(min(chunk, size - at))), at: at)
            guard got > 0 else { break }
            try output.write(UnsafeRawBufferPointer(buffer.slice(0..<got)), at: nil)
            at += UInt64(got)
            data += UInt64(got)
            progress.update(at)
        }
    }
    progress.update(size)
    return data
}
