import Glibc

/// The outcome of one request made through an `IOQueue`.
public struct IOCompletion {
    /// The caller's tag given at prepare time.
    public let tag: UInt64
    public let operation: IOOperationKind
    /// Bytes moved (reads and writes), 0 otherwise.
    public let bytesTransferred: Int
    /// Set when the request failed: errno, short transfer, ...
    public let error: IOError?

    public func get() throws(IOError) -> Int {
        if let error { throw error }
        return bytesTransferred
    }
}

/// The low-level, single-threaded submit/complete interface for hot paths (a VMM's I/O
/// thread, a benchmark, a bulk copier): prepare many requests, hand them to the kernel (or an
/// iSCSI LUN's session) in one batch, reap completions. Not thread-safe: one thread owns a queue; make one per thread.
///
/// Buffers stay untouched until their completion is reaped. Prepared requests reach the
/// kernel at the next `submit()` or `reap(minimum:_:)`.
public final class IOQueue {
    public let depth: Int
    public var engine: IOEngineKind { backend.kind }
    /// Requests prepared or in flight whose completion has not been reaped.
    public private(set) var outstanding = 0
    /// While `reap` hands out a burst of completions, requests its handler prepares go to the
    /// kernel as soon as this many have gathered, not after the whole burst. 1 (the default)
    /// keeps the device busiest: a device that completes a batch together and is refilled in
    /// one batch falls into lock-step and idles between batches (measured on virtio-blk:
    /// ~0.8x the IOPS at QD 32). Larger values trade that for fewer system calls.
    public var resubmitThreshold = 1
    private var unsubmitted = 0

    let file: DeviceFile
    private let backend: any IOEngine
    private var tags: [UInt64]
    private var operations: [IOOperationKind]
    private var offsets: [UInt64]
    private var lengths: [Int]
    private var freeSlots: [UInt32]
    /// One slot beyond `depth` is kept for the async reactor's doorbell.
    private let doorbellSlot: UInt32

    convenience init(file: DeviceFile, engine kind: IOEngineKind, depth: Int) throws(IOError) {
        try Self.check(depth: depth, file)
        switch makeEngine(kind, fd: file.fd, depth: depth + 1) {
        case .success(let engine): try self.init(file: file, engine: engine, depth: depth)
        case .failure(let code):
            throw file.error(.unsupported("cannot start the \(kind) engine"), .setup, errno: code.code)
        }
    }

    /// A queue on an engine made by the caller (an iSCSI LUN's session); `file` gives the
    /// geometry requests are checked against and the name errors carry.
    init(file: DeviceFile, engine: any IOEngine, depth: Int) throws(IOError) {
        try Self.check(depth: depth, file)
        backend = engine
        self.file = file
        self.depth = depth
        let slots = depth + 1
        tags = Array(repeating: 0, count: slots)
        operations = Array(repeating: .read, count: slots)
        offsets = Array(repeating: 0, count: slots)
        lengths = Array(repeating: 0, count: slots)
        freeSlots = (0..<UInt32(depth)).reversed().map { $0 }
        doorbellSlot = UInt32(depth)
    }

    private static func check(depth: Int, _ file: DeviceFile) throws(IOError) {
        guard depth >= 1 && depth <= 4096 else {
            throw file.error(.invalidArgument("queue depth must be 1...4096, not \(depth)"), .setup)
        }
    }

    /// Registers buffers with the kernel once so reads and writes inside them skip per-I/O
    /// page pinning (io_uring fixed buffers). Returns false where the engine has no such notion.
    @discardableResult
    public func registerBuffers(_ buffers: [IOBuffer]) -> Bool {
        backend.registerBuffers(buffers.map(\.bytes))
    }

    /// The same for memory the caller owns and keeps mapped for the queue's lifetime (a VM's
    /// guest RAM, which requests then move to and from without a copy).
    @discardableResult
    public func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) -> Bool {
        backend.registerBuffers(regions)
    }

    /// The most SCSI commands an iSCSI LUN's queue has had in flight at once; nil on other engines.
    @_spi(Testing) public var peakInFlight: Int? { (backend as? ISCSIEngine)?.peakInFlight }

    /// The device's sector size: reads and writes need offsets, lengths and buffer addresses
    /// that are multiples of it.
    public var sectorSize: Int { file.sectorSize }

    public func prepareRead(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, tag: UInt64) throws(IOError) {
        try file.validateTransfer(.read, address: buffer.baseAddress, length: buffer.count, offset: offset)
        let request = EngineRequest.read(buffer.baseAddress!, buffer.count, offset)
        try enqueue(request, .read, tag: tag, offset: offset, length: buffer.count)
    }

    public func prepareWrite(from buffer: UnsafeRawBufferPointer, at offset: UInt64, tag: UInt64) throws(IOError) {
        try file.validateTransfer(.write, address: buffer.baseAddress, length: buffer.count, offset: offset)
        let request = EngineRequest.write(buffer.baseAddress!, buffer.count, offset)
        try enqueue(request, .write, tag: tag, offset: offset, length: buffer.count)
    }

    /// Makes every write that completed before this flush was submitted durable.
    public func prepareFlush(tag: UInt64) throws(IOError) {
        try enqueue(.flush, .flush, tag: tag, offset: 0, length: 0)
    }

    /// Deallocates a sector-aligned range; it reads back as zeros afterwards.
    public func prepareDiscard(at offset: UInt64, length: UInt64, tag: UInt64) throws(IOError) {
        if file.isReadOnly { throw file.error(.system, .discard, offset: offset, length: Int(clamping: length), errno: EROFS) }
        let sector = UInt64(file.sectorSize)
        guard offset % sector == 0 else {
            throw file.error(.misalignedOffset(sectorSize: file.sectorSize), .discard, offset: offset, length: Int(clamping: length))
        }
        guard length > 0, length % sector == 0 else {
            throw file.error(.misalignedLength(sectorSize: file.sectorSize), .discard, offset: offset, length: Int(clamping: length))
        }
        try file.validateRange(.discard, offset: offset, length: length)
        try enqueue(.discard(offset, length), .discard, tag: tag, offset: offset, length: Int(clamping: length))
    }

    /// Arms a doorbell: a completion tagged `tag` arrives once `fd` (an eventfd, say) is
    /// readable, so one `reap` waits for I/O and for a wake-up alike. One doorbell may be
    /// armed at a time; it does not count against `depth`.
    public func preparePoll(fd: Int32, tag: UInt64) throws(IOError) {
        try prepareDoorbell(fd: fd, tag: tag)
    }

    /// Arms the reactor's doorbell: a completion tagged `tag` arrives once `fd` is readable.
    func prepareDoorbell(fd: Int32, tag: UInt64) throws(IOError) {
        try enqueue(.pollReadable(fd), .setup, tag: tag, offset: 0, length: 0, slot: doorbellSlot)
    }

    private func enqueue(_ request: EngineRequest, _ op: IOOperationKind, tag: UInt64, offset: UInt64, length: Int,
                         slot requested: UInt32? = nil) throws(IOError) {
        guard let slot = requested ?? freeSlots.popLast() else {
            throw file.error(.queueFull(depth: depth), op, offset: offset, length: length)
        }
        let r = backend.prepare(request, userData: UInt64(slot))
        guard r == 0 else {
            if requested == nil { freeSlots.append(slot) }
            throw file.error(.system, op, offset: offset, length: length, errno: -r)
        }
        let i = Int(slot)
        tags[i] = tag
        operations[i] = op
        offsets[i] = offset
        lengths[i] = length
        outstanding += 1
        unsubmitted += 1
    }

    /// Hands every prepared request to the kernel in one call. Returns how many went.
    @discardableResult
    public func submit() throws(IOError) -> Int {
        unsubmitted = 0
        let r = backend.submit()
        if r < 0 { throw file.error(.system, .setup, errno: -r) }
        return Int(r)
    }

    /// Submits what is prepared and waits until at least `minimum` completions (capped at
    /// what is outstanding) were passed to `handler`. The handler may prepare new requests.
    /// Returns how many completions were handled.
    @discardableResult
    public func reap(minimum: Int = 1, _ handler: (IOCompletion) -> Void) throws(IOError) -> Int {
        let want = min(max(minimum, 0), outstanding)
        unsubmitted = 0  // the engine's reap submits everything prepared so far
        var submitError: Int32 = 0
        let n = backend.reap(minimum: want) { userData, result in
            handler(complete(slot: Int(userData), result: result))
            if unsubmitted >= resubmitThreshold {
                unsubmitted = 0
                let r = backend.submit()
                if r < 0 && submitError == 0 { submitError = -r }
            }
        }
        if n < 0 { throw file.error(.system, .setup, errno: Int32(-n)) }
        if submitError != 0 { throw file.error(.system, .setup, errno: submitError) }
        return n
    }

    private func complete(slot: Int, result: Int64) -> IOCompletion {
        let op = operations[slot], tag = tags[slot], offset = offsets[slot], length = lengths[slot]
        if slot != Int(doorbellSlot) { freeSlots.append(UInt32(slot)) }
        outstanding -= 1
        if result < 0 {
            let err = backend.takeError(userData: UInt64(slot))
                ?? file.error(.system, op, offset: op == .flush ? nil : offset, length: op == .flush ? nil : length,
                              errno: Int32(-result))
            return IOCompletion(tag: tag, operation: op, bytesTransferred: 0, error: err)
        }
        if (op == .read || op == .write) && Int(result) != length {
            let err = file.error(.shortTransfer(transferred: Int(result)), op, offset: offset, length: length)
            return IOCompletion(tag: tag, operation: op, bytesTransferred: Int(result), error: err)
        }
        return IOCompletion(tag: tag, operation: op, bytesTransferred: op == .read || op == .write ? Int(result) : 0, error: nil)
    }
}
