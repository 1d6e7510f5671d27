import LunarFS
import LunarIO

/// Where a virtio-blk device's bytes live. Offsets and lengths are bytes, any alignment.
public protocol VirtioBlockBackend: AnyObject {
    var capacity: UInt64 { get }
    var isReadOnly: Bool { get }
    func read(into: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(from: UnsafeRawBufferPointer, at offset: UInt64) throws
    func flush() throws
    func discard(at offset: UInt64, length: UInt64) throws
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
    public func flush() throws { try file.flush() }
    public func discard(at offset: UInt64, length: UInt64) throws { try file.discard(at: offset, length: length) }
}

/// The virtio-blk device model (virtio 1.x §5.2): requests taken off a virtqueue, checked,
/// executed on the backend, completed with a status byte.
final class VirtioBlock {
    enum RequestType: UInt32 { case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13 }
    static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2
    static let sectorSize: UInt64 = 512

    let backend: VirtioBlockBackend
    let serial: String
    /// Requests the guest got wrong (bad layout): answered with an I/O error.
    private(set) var malformedRequests = 0

    init(backend: VirtioBlockBackend, serial: String) {
        self.backend = backend
        self.serial = serial
    }

    /// Serves one chain; returns the bytes written into guest memory (status byte included),
    /// or nil when the chain has nowhere to put a status (the guest gets nothing back for it).
    func serve(_ chain: Virtqueue.Chain) -> UInt32? {
        guard let status = chain.descriptors.last, status.deviceWrites, status.region.count >= 1 else {
            malformedRequests += 1
            return nil
        }
        let (code, written) = execute(Array(chain.descriptors.dropLast()))
        status.region[status.region.count - 1] = code
        return written + 1
    }

    private func execute(_ parts: [Virtqueue.Descriptor]) -> (UInt8, UInt32) {
        guard let header = parts.first, !header.deviceWrites, header.region.count >= 16 else {
            malformedRequests += 1
            return (Self.statusIOError, 0)
        }
        let raw = UnsafeRawBufferPointer(header.region)
        let typeValue = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let sector = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let data = Array(parts.dropFirst())
        guard let type = RequestType(rawValue: typeValue) else { return (Self.statusUnsupported, 0) }
        do {
            switch type {
            case .read, .write:
                let reading = type == .read
                // Every data buffer must go the right way: the device writes into reads only.
                guard data.allSatisfy({ $0.deviceWrites == reading }) else {
                    malformedRequests += 1
                    return (Self.statusIOError, 0)
                }
                let total = data.reduce(UInt64(0)) { $0 + UInt64($1.region.count) }
                guard total % Self.sectorSize == 0, fits(sector: sector, bytes: total) else { return (Self.statusIOError, 0) }
                if !reading && backend.isReadOnly { return (Self.statusIOError, 0) }
                var offset = sector * Self.sectorSize
                for piece in data {
                    if reading {
                        try backend.read(into: piece.region, at: offset)
                    } else {
                        try backend.write(from: UnsafeRawBufferPointer(piece.region), at: offset)
                    }
                    offset += UInt64(piece.region.count)
                }
                return (Self.statusOK, reading ? UInt32(clamping: total) : 0)
            case .flush:
                try backend.flush()
                return (Self.statusOK, 0)
            case .getID:
                guard let out = data.first, out.deviceWrites else { return (Self.statusIOError, 0) }
                let id = Array(serial.utf8.prefix(20))
                let n = min(out.region.count, 20)
                out.region.initializeMemory(as: UInt8.self, repeating: 0)
                UnsafeMutableRawBufferPointer(rebasing: out.region[0..<min(n, id.count)]).copyBytes(from: id.prefix(n))
                return (Self.statusOK, UInt32(n))
            case .discard, .writeZeroes:
                if backend.isReadOnly { return (Self.statusIOError, 0) }
                // Segments of 16 bytes: sector u64, sector count u32, flags u32.
                for piece in data {
                    guard !piece.deviceWrites, piece.region.count % 16 == 0 else { return (Self.statusIOError, 0) }
                    let segments = UnsafeRawBufferPointer(piece.region)
                    for s in stride(from: 0, to: segments.count, by: 16) {
                        let start = UInt64(littleEndian: segments.loadUnaligned(fromByteOffset: s, as: UInt64.self))
                        let count = UInt64(UInt32(littleEndian: segments.loadUnaligned(fromByteOffset: s + 8, as: UInt32.self)))
                        guard fits(sector: start, bytes: count * Self.sectorSize) else { return (Self.statusIOError, 0) }
                        try backend.discard(at: start * Self.sectorSize, length: count * Self.sectorSize)
                    }
                }
                return (Self.statusOK, 0)
            }
        } catch {
            return (Self.statusIOError, 0)
        }
    }

    private func fits(sector: UInt64, bytes: UInt64) -> Bool {
        let (start, o1) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        let (end, o2) = start.addingReportingOverflow(bytes)
        return !o1 && !o2 && end <= backend.capacity
    }
}

/// A virtio-blk device with its one request queue: what the MMIO transport drives on each
/// notification, and what host-side tests drive directly.
public final class VirtioBlockDevice {
    public let memory: GuestMemory
    let model: VirtioBlock
    private var queue: Virtqueue?
    /// Why the device stopped serving (the guest broke the virtqueue rules); nil while healthy.
    /// Only a device reset clears it.
    public private(set) var broken: String?

    public init(memory: GuestMemory, backend: VirtioBlockBackend, serial: String) {
        self.memory = memory
        model = VirtioBlock(backend: backend, serial: serial)
    }

    public var malformedRequests: Int { model.malformedRequests }

    /// Sets up the request queue; false when its areas do not fit guest memory or the size is
    /// not a power of two up to 32 768.
    @discardableResult
    public func setQueue(size: UInt16, descriptors: UInt64, available: UInt64, used: UInt64) -> Bool {
        queue = Virtqueue(memory: memory, size: size, descriptorTable: descriptors, availableRing: available, usedRing: used)
        return queue != nil
    }

    public func reset() {
        queue = nil
        broken = nil
    }

    /// Serves every request the guest has made available; returns how many were completed.
    @discardableResult
    public func serviceQueue() -> Int {
        guard broken == nil, let queue else { return 0 }
        var done = 0
        while true {
            let chain: Virtqueue.Chain?
            do throws(Virtqueue.Fault) { chain = try queue.pop() } catch {
                broken = "bad descriptor chain: \(error)"
                return done
            }
            guard let chain else { return done }
            queue.push(head: chain.head, written: model.serve(chain) ?? 0)
            done += 1
        }
    }
}
