import LunarDisk
import LunarFS
import LunarIO
import Synchronization

/// The virtio-blk device model (virtio 1.x §5.2): a request's layout checked and turned into
/// what to do, and the blocking way of doing it. The I/O thread decides which requests go
/// the direct way instead, as the disk channel routes them.
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

    let disk: DiskChannel
    let serial: String
    /// Requests the guest got wrong (bad layout): answered with an I/O error.
    let malformedRequests = Atomic<Int>(0)

    init(disk: DiskChannel, serial: String) {
        self.disk = disk
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
            if !reading && disk.isReadOnly { return .done(Self.statusIOError, 0) }
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
            if disk.isReadOnly { return .done(Self.statusIOError, 0) }
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

    /// A read or write through the disk channel's blocking calls; returns the status.
    func transferBlocking(reading: Bool, offset: UInt64, buffers: ArraySlice<Virtqueue.Descriptor>) -> UInt8 {
        var at = offset
        do {
            for piece in buffers {
                if reading {
                    try disk.read(into: piece.region, at: at)
                } else {
                    try disk.write(from: UnsafeRawBufferPointer(piece.region), at: at)
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
            for r in ranges where !r.isEmpty { try disk.discard(at: r.lowerBound, length: UInt64(r.count)) }
            return Self.statusOK
        } catch {
            return Self.statusIOError
        }
    }

    func flushBlocking() -> UInt8 {
        if disk.isReadOnly { return Self.statusOK }
        do { try disk.flush() } catch { return Self.statusIOError }
        return Self.statusOK
    }

    private func fits(sector: UInt64, bytes: UInt64) -> Bool {
        let (start, o1) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        let (end, o2) = start.addingReportingOverflow(bytes)
        return !o1 && !o2 && end <= disk.capacity
    }
}
