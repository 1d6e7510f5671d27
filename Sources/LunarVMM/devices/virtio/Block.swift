import LunarFS
import LunarIO
import Synchronization

/// Where a virtio-blk device's bytes live. Offsets and lengths are bytes, any alignment.
public protocol VirtioBlockBackend: AnyObject {
    var capacity: UInt64 { get }
    var isReadOnly: Bool { get }
    func read(into: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(from: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Makes every write that completed before the call durable.
    func flush() throws
    func discard(at offset: UInt64, length: UInt64) throws
    /// The local LUN holding the disk's bytes, for the I/O thread's direct path (io_uring
    /// between guest memory and the LUN, no copy); nil sends every request through the
    /// blocking calls above.
    var lun: BlockDevice? { get }
    /// Where `range` of the disk lies on `lun`: pieces covering it in order, each with its
    /// device offset, or nil for a hole (reads as zeros; written only through `write`, which
    /// allocates), and whether the piece is shared with another disk (read in place, written
    /// only through `write`, which copies it). May throw when the disk has no such map (then
    /// the blocking calls serve).
    func extents(_ range: Range<UInt64>) throws -> [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)]
    /// Why writes on the direct path must be refused now (the host was fenced off the volume),
    /// or nil. Asked before every direct write: they bypass the volume's own fence.
    var writeRefusal: String? { get }
}

extension VirtioBlockBackend {
    public var lun: BlockDevice? { nil }
    public var writeRefusal: String? { nil }
    public func extents(_ range: Range<UInt64>) throws -> [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)] { [] }
}

/// A disk that is a file on a LunarFS volume.
public final class LunarFSDisk: VirtioBlockBackend {
    public let file: File
    public let capacity: UInt64
    public let isReadOnly: Bool

    public init(file: File, readOnly: Bool = false) throws(FSError) {
        self.file = file
        capacity = try file.size
        isReadOnly = readOnly || file.volume.isReadOnly
    }

    public func read(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let n = try file.read(into: region, at: offset)
        // Past the file's end (it is as big as the disk) nothing is short; zero-fill anyway.
        if n < region.count { UnsafeMutableRawBufferPointer(rebasing: region[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
    }

    public func write(from region: UnsafeRawBufferPointer, at offset: UInt64) throws { try file.write(region, at: offset) }

    /// Data the I/O thread wrote straight to the LUN and metadata alike: `File.flush` flushes
    /// the LUN (local or iSCSI) even when there is no metadata to commit.
    public func flush() throws { try file.flush() }

    public func discard(at offset: UInt64, length: UInt64) throws { try file.discard(at: offset, length: length) }

    public var lun: BlockDevice? { file.volume.device }
    public var writeRefusal: String? { file.volume.writeRefusal }

    public func extents(_ range: Range<UInt64>) throws -> [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)] {
        try file.extents(range)
    }
}

/// The virtio-blk device model (virtio 1.x §5.2): a request's layout checked and turned into
/// what to do, and the blocking way of doing it. The I/O thread decides which requests go
/// the direct way instead.
final class VirtioBlock {
    enum RequestType: UInt32 { case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13 }
    static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2
    static let sectorSize: UInt64 = 512
    /// Discard segments one request may carry (offered as max_discard_seg).
    static let maxDiscardSegments = 32

    enum Plan {
        /// Answered already: the status, and bytes written into the guest's buffers.
        case done(UInt8, UInt32)
        /// Move `total` bytes at byte `offset` between the disk and the buffers after the header.
        case transfer(reading: Bool, offset: UInt64, total: UInt64)
        case flush
        /// Byte ranges, checked against the capacity.
        case discard([Range<UInt64>])
    }

    let backend: VirtioBlockBackend
    let serial: String
    /// Requests the guest got wrong (bad layout): answered with an I/O error.
    let malformedRequests = Atomic<Int>(0)

    init(backend: VirtioBlockBackend, serial: String) {
        self.backend = backend
        self.serial = serial
    }

    func noteMalformed() { malformedRequests.add(1, ordering: .relaxed) }

    /// What the request made of `parts` (its descriptors but the status one) asks for.
    func plan(_ parts: ArraySlice<Virtqueue.Descriptor>) -> Plan {
        guard let header = parts.first, !header.deviceWrites, header.region.count >= 16 else {
            noteMalformed()
            return .done(Self.statusIOError, 0)
        }
        let raw = UnsafeRawBufferPointer(header.region)
        let typeValue = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let sector = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let data = parts.dropFirst()
        guard let type = RequestType(rawValue: typeValue) else { return .done(Self.statusUnsupported, 0) }
        switch type {
        case .read, .write:
            let reading = type == .read
            // Every data buffer must go the right way: the device writes into reads only.
            guard data.allSatisfy({ $0.deviceWrites == reading }) else {
                noteMalformed()
                return .done(Self.statusIOError, 0)
            }
            let total = data.reduce(UInt64(0)) { $0 + UInt64($1.region.count) }
            guard total % Self.sectorSize == 0, fits(sector: sector, bytes: total) else { return .done(Self.statusIOError, 0) }
            if !reading && backend.isReadOnly { return .done(Self.statusIOError, 0) }
            return .transfer(reading: reading, offset: sector * Self.sectorSize, total: total)
        case .flush:
            return .flush
        case .getID:
            guard let out = data.first, out.deviceWrites else { return .done(Self.statusIOError, 0) }
            let id = Array(serial.utf8.prefix(20))
            let n = min(out.region.count, 20)
            out.region.initializeMemory(as: UInt8.self, repeating: 0)
            UnsafeMutableRawBufferPointer(rebasing: out.region[0..<min(n, id.count)]).copyBytes(from: id.prefix(n))
            return .done(Self.statusOK, UInt32(n))
        case .discard, .writeZeroes:
            if backend.isReadOnly { return .done(Self.statusIOError, 0) }
            // Segments of 16 bytes: sector u64, sector count u32, flags u32.
            var ranges: [Range<UInt64>] = []
            for piece in data {
                guard !piece.deviceWrites, piece.region.count % 16 == 0 else { return .done(Self.statusIOError, 0) }
                let segments = UnsafeRawBufferPointer(piece.region)
                for s in stride(from: 0, to: segments.count, by: 16) {
                    let start = UInt64(littleEndian: segments.loadUnaligned(fromByteOffset: s, as: UInt64.self))
                    let count = UInt64(UInt32(littleEndian: segments.loadUnaligned(fromByteOffset: s + 8, as: UInt32.self)))
                    guard ranges.count < Self.maxDiscardSegments, fits(sector: start, bytes: count * Self.sectorSize) else {
                        return .done(Self.statusIOError, 0)
                    }
                    ranges.append(start * Self.sectorSize..<(start + count) * Self.sectorSize)
                }
            }
            return .discard(ranges)
        }
    }

    /// A read or write through the backend's blocking calls; returns the status.
    func transferBlocking(reading: Bool, offset: UInt64, buffers: ArraySlice<Virtqueue.Descriptor>) -> UInt8 {
        var at = offset
        do {
            for piece in buffers {
                if reading {
                    try backend.read(into: piece.region, at: at)
                } else {
                    try backend.write(from: UnsafeRawBufferPointer(piece.region), at: at)
                }
                at += UInt64(piece.region.count)
            }
            return Self.statusOK
        } catch {
            return Self.statusIOError
        }
    }

    func discardBlocking(_ ranges: [Range<UInt64>]) -> UInt8 {
        do {
            for r in ranges where !r.isEmpty { try backend.discard(at: r.lowerBound, length: UInt64(r.count)) }
            return Self.statusOK
        } catch {
            return Self.statusIOError
        }
    }

    func flushBlocking() -> UInt8 {
        if backend.isReadOnly { return Self.statusOK }
        do { try backend.flush() } catch { return Self.statusIOError }
        return Self.statusOK
    }

    private func fits(sector: UInt64, bytes: UInt64) -> Bool {
        let (start, o1) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        let (end, o2) = start.addingReportingOverflow(bytes)
        return !o1 && !o2 && end <= backend.capacity
    }
}
