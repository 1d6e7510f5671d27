import CLunar
import Foundation
import Glibc
import LunarFS
import LunarIO
import Synchronization

/// A `BlockStorage` that passes everything to the device below and keeps a log of every
/// write, flush and discard: the input of the crash-consistency harness.
public final class RecordingStorage: BlockStorage {
    public enum Event: Sendable {
        case write(offset: UInt64, bytes: [UInt8])
        case flush
        case discard(offset: UInt64, length: UInt64)
    }

    public let base: any BlockStorage
    private let log = Mutex<[Event]>([])

    public init(_ base: any BlockStorage) { self.base = base }

    public var path: String { base.path }
    public var size: UInt64 { base.size }
    public var sectorSize: Int { base.sectorSize }
    public var isReadOnly: Bool { base.isReadOnly }
    public var localDevice: BlockDevice? { base.localDevice }

    public var events: [Event] { log.withLock { $0 } }
    /// Where the log stands now: mark points of a workload with it.
    public var position: Int { log.withLock { $0.count } }

    public func readBlocking(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try base.readBlocking(into: region, at: offset)
    }

    public func writeBlocking(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError) {
        try base.writeBlocking(from: region, at: offset)
        let bytes = Array(region)
        log.withLock { $0.append(.write(offset: offset, bytes: bytes)) }
    }

    public func flushBlocking() throws(IOError) {
        try base.flushBlocking()
        log.withLock { $0.append(.flush) }
    }

    public func discardBlocking(at offset: UInt64, length: UInt64) throws(IOError) {
        try base.discardBlocking(at: offset, length: length)
        log.withLock { $0.append(.discard(offset: offset, length: length)) }
    }

    public func compareAndWriteBlocking(expected: IOBuffer, new: IOBuffer, at offset: UInt64) throws(IOError) -> CompareAndWriteOutcome {
        let outcome = try base.compareAndWriteBlocking(expected: expected, new: new, at: offset)
        if outcome.isWritten {
            let bytes = new.array
            log.withLock { $0.append(.write(offset: offset, bytes: bytes)) }
        }
        return outcome
    }
}

/// Builds the device image a crash would have left, from a prefix of a recorded log.
///
/// Everything before the last flush in the prefix is on disk. Of the writes and discards after
/// it (one flush epoch, which the device may complete in any order), a random subset lands,
/// in random order, and a multi-sector write may be torn at sector boundaries.
public struct CrashImage {
    public var events: [RecordingStorage.Event]
    public var size: UInt64
    public var sectorSize: Int

    public init(events: [RecordingStorage.Event], size: UInt64, sectorSize: Int = 4096) {
        self.events = events
        self.size = size
        self.sectorSize = sectorSize
    }

    /// Index just past the last flush at or before `cut`: everything before it is durable.
    public func durablePrefix(cut: Int) -> Int {
        var i = min(cut, events.count)
        while i > 0 {
            if case .flush = events[i - 1] { return i }
            i -= 1
        }
        return 0
    }

    /// Writes the crash state for `cut` into a new sparse image at `path`.
    public func build(at path: String, cut: Int, using generator: inout some RandomNumberGenerator) throws {
        let fd = try emptyImage(at: path)
        defer { close(fd) }
        let durable = durablePrefix(cut: cut)
        for event in events[0..<durable] { apply(event, fd: fd, sectorsOnly: nil) }
        var epoch = Array(events[durable..<min(cut, events.count)])
        epoch.shuffle(using: &generator)
        for event in epoch where Bool.random(using: &generator) {
            if case .write(_, let bytes) = event, bytes.count > sectorSize, Bool.random(using: &generator) {
                let sectors = bytes.count / sectorSize
                apply(event, fd: fd, sectorsOnly: (0..<sectors).filter { _ in Bool.random(using: &generator) })
            } else {
                apply(event, fd: fd, sectorsOnly: nil)
            }
        }
    }

    /// Writes into a new sparse image at `path` the crash state where every write and discard
    /// before `cut` landed, in order, and nothing after it: the device did all it was told,
    /// then the power went. One exact state, for tests that need a given write to have landed.
    public func buildLanded(at path: String, cut: Int) throws {
        let fd = try emptyImage(at: path)
        defer { close(fd) }
        for event in events[0..<min(cut, events.count)] { apply(event, fd: fd, sectorsOnly: nil) }
    }

    /// A new sparse image of the volume's size at `path`, open for writing.
    private func emptyImage(at path: String) throws -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            close(fd)
            throw POSIXError(.EIO)
        }
        return fd
    }

    private func apply(_ event: RecordingStorage.Event, fd: Int32, sectorsOnly: [Int]?) {
        switch event {
        case .write(let offset, let bytes):
            bytes.withUnsafeBytes { b in
                if let sectorsOnly {
                    for s in sectorsOnly {
                        _ = pwrite(fd, b.baseAddress! + s * sectorSize, sectorSize, off_t(offset) + off_t(s * sectorSize))
                    }
                } else {
                    _ = pwrite(fd, b.baseAddress, b.count, off_t(offset))
                }
            }
        case .discard(let offset, let length):
            _ = lunar_punch_hole(fd, offset, length)
        case .flush:
            break
        }
    }
}

/// The crash harness's start: a volume formatted with `options` on a new sparse image of `size`
/// bytes (`recorded.img` in `scratch`), every write to it recorded, opened. Close the device
/// after the volume.
public func recordedVolume(in scratch: Scratch, size: UInt64 = 1 << 30, options: FormatOptions) throws -> (device: BlockDevice, recorder: RecordingStorage, volume: Volume) {
    let device = try BlockDevice.createImage(scratch.path("recorded.img"), size: size)
    do {
        let recorder = RecordingStorage(device)
        try Volume.format(recorder, options: options)
        return (device, recorder, try Volume.open(recorder))
    } catch {
        device.close()
        throw error
    }
}

extension Scratch {
    /// Scratch space for crash images, which are rebuilt many times: on tmpfs where there is
    /// one (it takes O_DIRECT on current kernels, and its flushes cost nothing).
    public static func forCrashImages() -> Scratch {
        Scratch(under: access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory())
    }
}
