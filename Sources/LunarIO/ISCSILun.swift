import CLunar
import Glibc
import Synchronization

/// Sense data a SCSI target returned with CHECK CONDITION: the sense key and the additional
/// sense code and qualifier (ASC/ASCQ).
public struct SCSISense: Sendable, Equatable, CustomStringConvertible {
    public var key: UInt8
    public var asc: UInt8
    public var ascq: UInt8

    public init(key: UInt8, asc: UInt8, ascq: UInt8) {
        self.key = key
        self.asc = asc
        self.ascq = ascq
    }

    /// Parses raw sense data in fixed (response code 0x70/0x71) or descriptor (0x72/0x73)
    /// format; nil for anything else or too short to hold a sense key.
    public init?(bytes: some Collection<UInt8>) {
        let b = Array(bytes)
        guard let first = b.first else { return nil }
        switch first & 0x7F {
        case 0x70, 0x71:
            guard b.count >= 3 else { return nil }
            self.init(key: b[2] & 0x0F, asc: b.count > 12 ? b[12] : 0, ascq: b.count > 13 ? b[13] : 0)
        case 0x72, 0x73:
            guard b.count >= 2 else { return nil }
            self.init(key: b[1] & 0x0F, asc: b.count > 2 ? b[2] : 0, ascq: b.count > 3 ? b[3] : 0)
        default:
            return nil
        }
    }

    public static let illegalRequest: UInt8 = 0x05
    public static let unitAttention: UInt8 = 0x06
    public static let miscompare: UInt8 = 0x0E

    public var keyName: String {
        switch key {
        case 0x00: "NO SENSE"
        case 0x01: "RECOVERED ERROR"
        case 0x02: "NOT READY"
        case 0x03: "MEDIUM ERROR"
        case 0x04: "HARDWARE ERROR"
        case 0x05: "ILLEGAL REQUEST"
        case 0x06: "UNIT ATTENTION"
        case 0x07: "DATA PROTECT"
        case 0x08: "BLANK CHECK"
        case 0x0A: "COPY ABORTED"
        case 0x0B: "ABORTED COMMAND"
        case 0x0D: "VOLUME OVERFLOW"
        case 0x0E: "MISCOMPARE"
        default: "sense key \(hex(key))"
        }
    }

    /// The few ASC/ASCQ pairs LunarIO meets, in SPC's words.
    public var codeName: String? {
        switch (asc, ascq) {
        case (0x1D, 0x00): "miscompare during verify operation"
        case (0x20, 0x00): "invalid command operation code"
        case (0x21, 0x00): "logical block address out of range"
        case (0x24, 0x00): "invalid field in CDB"
        case (0x25, 0x00): "logical unit not supported"
        case (0x26, 0x00): "invalid field in parameter list"
        case (0x27, 0x00): "write protected"
        case (0x29, _): "power on, reset, or bus device reset occurred"
        case (0x2A, 0x03): "reservations preempted"
        case (0x2A, 0x04): "reservations released"
        case (0x04, _): "logical unit not ready"
        case (0x11, _): "unrecovered read error"
        case (0x0C, _): "write error"
        default: nil
        }
    }

    public var description: String {
        "\(keyName), ASC/ASCQ \(hex(asc))/\(hex(ascq))" + (codeName.map { " (\($0))" } ?? "")
    }
}

private func hex(_ v: UInt8) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return "0x" + (s.count < 2 ? "0" + s : s)
}

/// What LunarIO makes of a SCSI command's status and sense data.
public enum SCSICommandOutcome: Sendable, Equatable {
    case good
    /// COMPARE AND WRITE found different data (MISCOMPARE): nothing was written.
    case miscompare
    /// The target does not offer the command (ILLEGAL REQUEST: invalid command operation code,
    /// or invalid field in CDB, as targets answer an unsupported length or option).
    case unsupported
    /// Another initiator holds a reservation of the LUN; retry after it lets go.
    case reservationConflict
    /// Worth retrying at once or shortly: UNIT ATTENTION, NOT READY (becoming ready), BUSY,
    /// TASK SET FULL, ABORTED COMMAND.
    case retry
    /// ILLEGAL REQUEST: logical block address out of range.
    case beyondEnd
    /// DATA PROTECT: the LUN is write-protected.
    case writeProtected
    /// Any other failure, including no status at all (the session failed).
    case failed

    /// Classifies a SCSI status byte (or -1 for "no status came back") and its sense data.
    public static func classify(status: Int32, sense: SCSISense?) -> SCSICommandOutcome {
        switch status {
        case 0x00: return .good
        case 0x18: return .reservationConflict
        case 0x08, 0x28: return .retry  // BUSY, TASK SET FULL
        case 0x02: break  // CHECK CONDITION: the sense decides
        default: return .failed
        }
        guard let sense else { return .failed }
        switch (sense.key, sense.asc, sense.ascq) {
        case (0x0E, _, _): return .miscompare
        case (0x05, 0x20, 0x00), (0x05, 0x24, 0x00): return .unsupported
        case (0x05, 0x21, _): return .beyondEnd
        case (0x07, _, _): return .writeProtected
        case (0x06, _, _), (0x0B, _, _): return .retry
        case (0x02, 0x04, let q) where q == 0x01 || q == 0x07 || q == 0x08: return .retry  // becoming ready, in progress
        default: return .failed
        }
    }
}

/// A LUN on an iSCSI target, reached through libiscsi (`iscsi://HOST[:PORT]/IQN/LUN`): the
/// shared SAN LUN that hosts on different machines put one LunarFS volume on.
///
/// One iSCSI session per instance; a mutex serializes the commands on it, so any thread may
/// call in. Geometry comes from READ CAPACITY(16). `sectorSize` is what LunarIO presents
/// (4096 by default, a whole number of the LUN's logical blocks); compare-and-write covers one
/// such sector.
///
/// Compare-and-write uses SCSI COMPARE AND WRITE where the target offers it. Where it does not
/// (Debian's tgt answers ILLEGAL REQUEST, invalid command operation code), it falls back, as
/// VMFS 3 did on arrays without ATS, to a SCSI reservation held only around read, compare and
/// write of that sector. The reservation is SPC-2 RESERVE(6)/RELEASE(6), not an SPC-3
/// persistent reservation, because:
///  - an SPC-2 reservation belongs to the I_T nexus (this session). A host that dies — process
///    killed, machine gone — loses its session and with it the reservation, with nothing left
///    for a survivor to clean up. A persistent reservation outlives the session: survivors
///    would have to know which registered key belongs to a dead host and PREEMPT it, a second
///    liveness protocol beside LunarFS's heartbeats, and every session that ever ran would
///    leave its registration behind on the target;
///  - it is two commands and no state (no key to register per session, no registrations to
///    read back), which keeps every failure path short: RELEASE is sent whatever happens.
/// The cost: while one host holds it, every other initiator's commands get RESERVATION
/// CONFLICT and are retried here (for up to `reservationWait`); and a host that hangs with its
/// session alive holds everyone up until the target drops the session (or an operator resets
/// the LUN).
public final class ISCSILun: BlockStorage {
    /// The URL, without a password.
    public let path: String
    public let size: UInt64
    public let sectorSize: Int
    /// The LUN's logical block size (READ CAPACITY(16)).
    public let blockSize: Int
    public let isReadOnly: Bool
    /// READ CAPACITY(16) LBPME: the LUN is thin-provisioned and offers UNMAP.
    public let isThinProvisioned: Bool
    /// READ CAPACITY(16) LBPRZ: unmapped blocks read back as zeros.
    public let unmappedReadsZero: Bool
    public var localDevice: BlockDevice? { nil }
    public var iscsiLUN: ISCSILun? { self }
    /// How long a command keeps retrying RESERVATION CONFLICT (another host's reservation).
    public let reservationWait: Double = 30

    /// Bytes per READ(16)/WRITE(16) command.
    static let maxTransfer = 1 << 20
    /// Blocks per UNMAP descriptor or WRITE SAME command.
    static let maxUnmapBlocks: UInt64 = 1 << 20

    /// Only ever touched under `session`'s lock (libiscsi contexts are not thread-safe).
    private struct Session: @unchecked Sendable {
        var context: OpaquePointer?
        var lun: Int32
        /// Decided on first use: probed with a COMPARE AND WRITE that cannot change the data.
        var method: CompareAndWriteMethod?
    }
    private let session: Mutex<Session>
    /// The URL as given (with any password): what a queue's own session logs in with.
    private let url: String

    private init(url: String, path: String, context: OpaquePointer, lun: Int32, size: UInt64, sectorSize: Int, blockSize: Int,
                 readOnly: Bool, thin: Bool, zeroes: Bool) {
        self.url = url
        self.path = path
        self.size = size
        self.sectorSize = sectorSize
        self.blockSize = blockSize
        self.isReadOnly = readOnly
        self.isThinProvisioned = thin
        self.unmappedReadsZero = zeroes
        self.session = Mutex(Session(context: context, lun: lun, method: nil))
    }

    deinit { close() }

    /// Whether `path` names an iSCSI LUN rather than a local file or device.
    public static func isURL(_ path: String) -> Bool {
        path.lowercased().hasPrefix("iscsi://")
    }

    /// Whether `argument` is exactly an iSCSI LUN, `iscsi://HOST[:PORT]/IQN/LUN` (the LUN number
    /// last). `iscsi://HOST/IQN/1:/dir` is not one: it is a path on that LUN's volume.
    public static func isLUNURL(_ argument: String) -> Bool {
        let parts = argument.split(separator: "/")
        guard isURL(argument), parts.count >= 4, let last = parts.last else { return false }
        return !last.isEmpty && last.allSatisfy(\.isNumber)
    }

    /// The initiator name this process logs in with: `LUNAR_ISCSI_INITIATOR`, or one made from
    /// the host name (stable per machine, so target ACLs by initiator name work). Sessions of
    /// one machine differ by their ISID.
    public static var initiatorName: String {
        if let name = getenv("LUNAR_ISCSI_INITIATOR").map({ String(cString: $0) }), !name.isEmpty { return name }
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count - 1)
        let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let clean = host.lowercased().map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "-" }
        return "iqn.2024-01.org.lunar:" + (clean.isEmpty ? "host" : String(clean))
    }

    /// Logs in to the LUN at `url` (`iscsi://[USER%PASSWORD@]HOST[:PORT]/IQN/LUN`). Of
    /// `options`, `readOnly`, `sectorSize` (a multiple of the LUN's block size; default 4096 or
    /// the block size if larger) and `minimumSize` apply.
    public static func open(url: String, options: BlockDevice.Options = BlockDevice.Options()) throws(IOError) -> ISCSILun {
        let shown = redacted(url)
        if let s = options.sectorSize, s != 512 && s != 4096 {
            throw IOError(.invalidArgument("sector size must be 512 or 4096, not \(s)"), .open, path: shown)
        }
        var lun: Int32 = 0
        var message = [CChar](repeating: 0, count: 512)
        let isid = UInt32.random(in: 1...0x00FF_FFFF)
        guard let context = lunar_iscsi_connect(url, initiatorName, isid, &lun, &message, message.count) else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw IOError(.scsi("cannot log in: \(text)"), .open, path: shown, errno: EIO)
        }
        var lastLBA: UInt64 = 0
        var blockLength: UInt32 = 0
        var lbpme: Int32 = 0, lbprz: Int32 = 0
        var r = lunar_scsi_result()
        var attempts = 0
        while lunar_iscsi_read_capacity16(context, lun, &lastLBA, &blockLength, &lbpme, &lbprz, &r) != 0 {
            attempts += 1
            if classify(r) == .retry && attempts < 10 { continue }
            let error = failure(r, "READ CAPACITY(16)", .open, path: shown, offset: nil, length: nil)
            lunar_iscsi_disconnect(context)
            throw error
        }
        let block = Int(blockLength)
        guard block >= 512, block & (block - 1) == 0 else {
            lunar_iscsi_disconnect(context)
            throw IOError(.unsupported("LUN reports \(block)-byte logical blocks"), .open, path: shown)
        }
        let sector = max(block, options.sectorSize ?? 4096)
        if let asked = options.sectorSize, asked < block {
            lunar_iscsi_disconnect(context)
            throw IOError(.unsupported("LUN has \(block)-byte logical blocks; \(asked) was asked"), .open, path: shown)
        }
        let size = (lastLBA + 1) * UInt64(block) / UInt64(sector) * UInt64(sector)
        if let minimum = options.minimumSize, size < minimum {
            lunar_iscsi_disconnect(context)
            throw IOError(.deviceTooSmall(actual: size, required: minimum), .open, path: shown)
        }
        return ISCSILun(url: url, path: shown, context: context, lun: lun, size: size, sectorSize: sector, blockSize: block,
                        readOnly: options.readOnly, thin: lbpme != 0, zeroes: lbprz != 0)
    }

    /// `url` with any password replaced, for messages.
    static func redacted(_ url: String) -> String {
        let chars = Array(url)
        guard let colon = chars.firstIndex(of: ":"), chars.count > colon + 2, chars[colon + 1] == "/", chars[colon + 2] == "/" else {
            return url
        }
        let start = colon + 3
        let end = chars[start...].firstIndex(of: "/") ?? chars.count
        guard let at = chars[start..<end].lastIndex(of: "@") else { return url }
        let userEnd = chars[start..<at].firstIndex(of: "%") ?? at
        guard userEnd < at else { return url }
        return String(chars[..<userEnd]) + "%***" + String(chars[at...])
    }

    /// Logs out. Later calls fail `.closed`.
    public func close() {
        let context = session.withLock { s -> OpaquePointer? in defer { s.context = nil }; return s.context }
        if let context { lunar_iscsi_disconnect(context) }
    }

    /// How compare-and-write is made atomic on this LUN (probed once, on first use).
    public var compareAndWriteMethod: CompareAndWriteMethod {
        (try? session.withLock { (s: inout Session) throws(IOError) -> CompareAndWriteMethod in
            try method(&s)
        }) ?? .scsiReservation
    }

    // MARK: BlockStorage

    public func readBlocking(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try validate(.read, address: region.baseAddress, length: region.count, offset: offset)
        guard let base = region.baseAddress else { return }
        try session.withLock { (s: inout Session) throws(IOError) in
            try transfer(&s, isWrite: false, base, region.count, offset, .read)
        }
    }

    public func writeBlocking(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError) {
        try validate(.write, address: region.baseAddress, length: region.count, offset: offset)
        guard let base = region.baseAddress else { return }
        try session.withLock { (s: inout Session) throws(IOError) in
            try transfer(&s, isWrite: true, UnsafeMutableRawPointer(mutating: base), region.count, offset, .write)
        }
    }

    public func flushBlocking() throws(IOError) {
        guard !isReadOnly else { return }
        try session.withLock { (s: inout Session) throws(IOError) in
            try command(&s, "SYNCHRONIZE CACHE(16)", .flush, offset: nil, length: nil) { c, lun, r in
                lunar_iscsi_synchronize_cache16(c, lun, r)
            }
        }
    }

    /// UNMAP when the LUN is thin-provisioned and unmapped blocks read back as zeros (LBPRZ);
    /// WRITE SAME(16) of zeros with the UNMAP bit when they may not; `.unsupported` on a LUN
    /// that is not thin-provisioned (it could only be zeroed by writing every block).
    public func discardBlocking(at offset: UInt64, length: UInt64) throws(IOError) {
        let op = IOOperationKind.discard
        if isReadOnly { throw IOError(.system, op, path: path, offset: offset, length: Int(clamping: length), errno: EROFS) }
        guard offset % UInt64(sectorSize) == 0, length % UInt64(sectorSize) == 0 else {
            throw IOError(.misalignedOffset(sectorSize: sectorSize), op, path: path, offset: offset, length: Int(clamping: length))
        }
        try validateRange(op, offset: offset, length: length)
        guard length > 0 else { return }
        guard isThinProvisioned else {
            throw IOError(.unsupported("the LUN is not thin-provisioned (READ CAPACITY(16) LBPME=0): it offers no UNMAP"),
                          op, path: path, offset: offset, length: Int(clamping: length), errno: EOPNOTSUPP)
        }
        let zero = IOBuffer(count: blockSize)
        var lba = offset / UInt64(blockSize)
        var left = length / UInt64(blockSize)
        try session.withLock { (s: inout Session) throws(IOError) in
            while left > 0 {
                let n = min(left, Self.maxUnmapBlocks)
                let at = lba * UInt64(blockSize)
                if unmappedReadsZero {
                    try command(&s, "UNMAP", op, offset: at, length: Int(n) * blockSize) { c, lun, r in
                        lunar_iscsi_unmap(c, lun, lba, UInt32(n), r)
                    }
                } else {
                    try command(&s, "WRITE SAME(16) with UNMAP", op, offset: at, length: Int(n) * blockSize) { c, lun, r in
                        lunar_iscsi_write_same16_unmap(c, lun, lba, UInt32(n), zero.baseAddress, Int32(blockSize), r)
                    }
                }
                lba += n
                left -= n
            }
        }
    }

    public func compareAndWriteBlocking(expected: IOBuffer, new: IOBuffer, at offset: UInt64) throws(IOError) -> CompareAndWriteOutcome {
        let op = IOOperationKind.compareAndWrite
        guard expected.count == sectorSize, new.count == sectorSize else {
            throw IOError(.invalidArgument("expected and new must be exactly one \(sectorSize)-byte sector each"), op,
                          path: path, offset: offset, length: new.count)
        }
        try validate(.write, address: new.baseAddress, length: sectorSize, offset: offset)
        return try session.withLock { (s: inout Session) throws(IOError) -> CompareAndWriteOutcome in
            if try method(&s) == .scsiCompareAndWrite {
                if let outcome = try scsiCompareAndWrite(&s, expected, new, offset) { return outcome }
                // The target stopped offering the command (nil): use the reservation from now on.
                s.method = .scsiReservation
            }
            return try reservedCompareAndWrite(&s, expected, new, offset)
        }
    }

    /// Reserves the LUN (SPC-2) and keeps the reservation until the session ends: what a
    /// host that dies between RESERVE and RELEASE leaves behind. For tests.
    @_spi(Testing) public func holdReservation() throws(IOError) {
        try session.withLock { (s: inout Session) throws(IOError) in
            try command(&s, "RESERVE(6)", .compareAndWrite, offset: nil, length: nil) { c, lun, r in
                lunar_iscsi_reserve6(c, lun, r)
            }
        }
    }

    // MARK: compare-and-write

    /// The method, probing on first use: a COMPARE AND WRITE of LBA 0 whose expected and new
    /// data are both the current block with its first byte flipped. If the block holds those
    /// bytes (it cannot, unless someone wrote them since we read), the target rewrites the
    /// same bytes; otherwise it answers MISCOMPARE. Either way nothing changes, and the answer
    /// says whether the command is offered.
    private func method(_ s: inout Session) throws(IOError) -> CompareAndWriteMethod {
        if let m = s.method { return m }
        let block = IOBuffer(count: blockSize)
        try transfer(&s, isWrite: false, block.baseAddress, blockSize, 0, .compareAndWrite)
        let both = IOBuffer(count: 2 * blockSize)
        block.baseAddress.storeBytes(of: ~block.baseAddress.load(as: UInt8.self), as: UInt8.self)
        both.slice(0..<blockSize).copyMemory(from: UnsafeRawBufferPointer(block.bytes))
        both.slice(blockSize..<(2 * blockSize)).copyMemory(from: UnsafeRawBufferPointer(block.bytes))
        let r = try run(&s, "COMPARE AND WRITE", .compareAndWrite, offset: 0, length: blockSize) { c, lun, r in
            lunar_iscsi_compare_and_write(c, lun, 0, both.baseAddress, UInt32(2 * blockSize), Int32(blockSize), r)
        }
        let m: CompareAndWriteMethod
        switch Self.classify(r) {
        case .good, .miscompare: m = .scsiCompareAndWrite
        case .unsupported: m = .scsiReservation
        default: throw Self.failure(r, "COMPARE AND WRITE", .compareAndWrite, path: path, offset: 0, length: blockSize)
        }
        s.method = m
        return m
    }

    /// One COMPARE AND WRITE; nil when the target rejects the command.
    private func scsiCompareAndWrite(_ s: inout Session, _ expected: IOBuffer, _ new: IOBuffer, _ offset: UInt64) throws(IOError) -> CompareAndWriteOutcome? {
        let both = IOBuffer(count: 2 * sectorSize)
        both.slice(0..<sectorSize).copyMemory(from: UnsafeRawBufferPointer(expected.bytes))
        both.slice(sectorSize..<(2 * sectorSize)).copyMemory(from: UnsafeRawBufferPointer(new.bytes))
        let lba = offset / UInt64(blockSize)
        for _ in 0..<100 {
            let r = try run(&s, "COMPARE AND WRITE", .compareAndWrite, offset: offset, length: sectorSize) { c, lun, r in
                lunar_iscsi_compare_and_write(c, lun, lba, both.baseAddress, UInt32(2 * sectorSize), Int32(blockSize), r)
            }
            switch Self.classify(r) {
            case .good:
                return .written
            case .unsupported:
                return nil
            case .miscompare:
                let current = IOBuffer(count: sectorSize)
                try transfer(&s, isWrite: false, current.baseAddress, sectorSize, offset, .compareAndWrite)
                // Changed back to `expected` since the miscompare: compare again.
                if current.contentEquals(expected) { continue }
                return .mismatch(current: current)
            default:
                throw Self.failure(r, "COMPARE AND WRITE", .compareAndWrite, path: path, offset: offset, length: sectorSize)
            }
        }
        throw IOError(.scsi("COMPARE AND WRITE kept miscomparing while the sector read back as expected"),
                      .compareAndWrite, path: path, offset: offset, length: sectorSize, errno: EIO)
    }

    /// RESERVE(6), read, compare, write, RELEASE(6). The session mutex is held throughout, so
    /// no other thread of this process slips a command in under our reservation.
    private func reservedCompareAndWrite(_ s: inout Session, _ expected: IOBuffer, _ new: IOBuffer, _ offset: UInt64) throws(IOError) -> CompareAndWriteOutcome {
        try command(&s, "RESERVE(6)", .compareAndWrite, offset: offset, length: sectorSize) { c, lun, r in
            lunar_iscsi_reserve6(c, lun, r)
        }
        var outcome: Result<CompareAndWriteOutcome, IOError>
        do throws(IOError) {
            let current = IOBuffer(count: sectorSize)
            try transfer(&s, isWrite: false, current.baseAddress, sectorSize, offset, .compareAndWrite)
            if current.contentEquals(expected) {
                try transfer(&s, isWrite: true, new.baseAddress, sectorSize, offset, .compareAndWrite)
                outcome = .success(.written)
            } else {
                outcome = .success(.mismatch(current: current))
            }
        } catch {
            outcome = .failure(error)
        }
        do throws(IOError) {
            try command(&s, "RELEASE(6)", .compareAndWrite, offset: offset, length: sectorSize) { c, lun, r in
                lunar_iscsi_release6(c, lun, r)
            }
        } catch {
            // A failed release after a failed transfer: report the transfer.
            if case .success = outcome { outcome = .failure(error) }
        }
        return try outcome.get()
    }

    // MARK: commands

    private func validateRange(_ op: IOOperationKind, offset: UInt64, length: UInt64) throws(IOError) {
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= size else {
            throw IOError(.beyondEnd(deviceSize: size), op, path: path, offset: offset, length: Int(clamping: length))
        }
    }

    private func validate(_ op: IOOperationKind, address: UnsafeRawPointer?, length: Int, offset: UInt64) throws(IOError) {
        if op == .write && isReadOnly { throw IOError(.system, op, path: path, offset: offset, length: length, errno: EROFS) }
        guard offset % UInt64(sectorSize) == 0 else {
            throw IOError(.misalignedOffset(sectorSize: sectorSize), op, path: path, offset: offset, length: length)
        }
        guard length > 0, length % sectorSize == 0 else {
            throw IOError(.misalignedLength(sectorSize: sectorSize), op, path: path, offset: offset, length: length)
        }
        guard address != nil else {
            throw IOError(.misalignedBuffer(alignment: sectorSize), op, path: path, offset: offset, length: length)
        }
        try validateRange(op, offset: offset, length: UInt64(length))
    }

    /// READ(16)s or WRITE(16)s of at most `maxTransfer` bytes each.
    private func transfer(_ s: inout Session, isWrite: Bool, _ base: UnsafeMutableRawPointer, _ count: Int,
                          _ offset: UInt64, _ op: IOOperationKind) throws(IOError) {
        var done = 0
        while done < count {
            let n = min(count - done, Self.maxTransfer)
            let at = offset + UInt64(done)
            let lba = at / UInt64(blockSize)
            let p = base + done
            if isWrite {
                try command(&s, "WRITE(16)", op, offset: at, length: n) { c, lun, r in
                    lunar_iscsi_write16(c, lun, lba, p, UInt32(n), Int32(blockSize), r)
                }
            } else {
                try command(&s, "READ(16)", op, offset: at, length: n) { c, lun, r in
                    lunar_iscsi_read16(c, lun, lba, p, UInt32(n), Int32(blockSize), r)
                }
            }
            done += n
        }
    }

    private typealias Issue = (OpaquePointer, Int32, UnsafeMutablePointer<lunar_scsi_result>) -> Int32

    /// Runs a command until it succeeds; any other outcome is thrown.
    private func command(_ s: inout Session, _ name: String, _ op: IOOperationKind, offset: UInt64?, length: Int?,
                         _ issue: Issue) throws(IOError) {
        let r = try run(&s, name, op, offset: offset, length: length, issue)
        guard Self.classify(r) == .good else {
            throw Self.failure(r, name, op, path: path, offset: offset, length: length)
        }
    }

    /// Issues a command, retrying what is worth retrying: UNIT ATTENTION and the like a few
    /// times, RESERVATION CONFLICT (another host's compare-and-write) with a growing, jittered
    /// pause for up to `reservationWait` seconds. Returns the last result, whatever it was.
    private func run(_ s: inout Session, _ name: String, _ op: IOOperationKind, offset: UInt64?, length: Int?,
                     _ issue: Issue) throws(IOError) -> lunar_scsi_result {
        guard let context = s.context else { throw IOError(.closed, op, path: path, offset: offset, length: length) }
        var r = lunar_scsi_result()
        var retry = SCSIRetry(reservationWait: reservationWait)
        while true {
            _ = issue(context, s.lun, &r)
            guard let pause = retry.pause(after: Self.classify(r)) else { return r }
            usleep(UInt32(pause * 1e6))
        }
    }

    /// A second session of this process to the same LUN (its own ISID, so its own I_T nexus)
    /// driven by libiscsi's asynchronous API: the `IOQueue` a hot path (a VM disk's I/O
    /// thread) keeps many reads, writes and flushes in flight on, as the io_uring queue does
    /// on a local LUN. Its session is its own because libiscsi contexts are not thread-safe
    /// and this one's serves other threads. No discard (the blocking calls have it) and no
    /// registered buffers; requests move straight between the caller's buffers and the socket.
    public func makeQueue(depth: Int = 64) throws(IOError) -> IOQueue {
        guard session.withLock({ $0.context != nil }) else { throw IOError(.closed, .setup, path: path) }
        var message = [CChar](repeating: 0, count: 512)
        let isid = UInt32.random(in: 1...0x00FF_FFFF)
        guard let q = lunar_iscsi_queue_open(url, Self.initiatorName, isid, &message, message.count) else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw IOError(.scsi("cannot log in a queue's session: \(text)"), .setup, path: path, errno: EIO)
        }
        let engine = ISCSIEngine(queue: q, path: path, blockSize: blockSize, reservationWait: reservationWait)
        let file = DeviceFile(remote: path, size: size, sectorSize: sectorSize, isReadOnly: isReadOnly)
        return try IOQueue(file: file, engine: engine, depth: depth)
    }

    static func classify(_ r: lunar_scsi_result) -> SCSICommandOutcome {
        SCSICommandOutcome.classify(status: r.status, sense: sense(r))
    }

    static func sense(_ r: lunar_scsi_result) -> SCSISense? {
        guard r.status == 0x02 else { return nil }
        var raw = r.sense
        let bytes = withUnsafeBytes(of: &raw) { Array($0.prefix(Int(max(0, min(r.sense_length, 64))))) }
        return SCSISense(bytes: bytes)
            ?? SCSISense(key: UInt8(truncatingIfNeeded: r.sense_key), asc: UInt8(truncatingIfNeeded: r.asc),
                         ascq: UInt8(truncatingIfNeeded: r.ascq))
    }

    static func message(_ r: lunar_scsi_result) -> String {
        var raw = r.message
        return withUnsafeBytes(of: &raw) { b in String(decoding: b.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// The typed error for a failed command, with the status and sense data in its words.
    static func failure(_ r: lunar_scsi_result, _ name: String, _ op: IOOperationKind, path: String,
                        offset: UInt64?, length: Int?) -> IOError {
        let sense = sense(r)
        let status: String
        switch r.status {
        case -1: status = "no response (\(message(r)))"
        case 0x02: status = "CHECK CONDITION, " + (sense.map { "\($0)" } ?? "no sense data")
        case 0x08: status = "BUSY"
        case 0x18: status = "RESERVATION CONFLICT (another initiator kept the LUN reserved)"
        case 0x28: status = "TASK SET FULL"
        default: status = "status 0x\(String(r.status, radix: 16))" + (message(r).isEmpty ? "" : " (\(message(r)))")
        }
        let what = "target answered \(name) with \(status)"
        switch SCSICommandOutcome.classify(status: r.status, sense: sense) {
        case .beyondEnd:
            return IOError(.scsi(what), op, path: path, offset: offset, length: length, errno: EINVAL)
        case .unsupported:
            return IOError(.unsupported(what), op, path: path, offset: offset, length: length, errno: EOPNOTSUPP)
        case .writeProtected:
            return IOError(.scsi(what), op, path: path, offset: offset, length: length, errno: EROFS)
        case .reservationConflict:
            return IOError(.scsi(what), op, path: path, offset: offset, length: length, errno: EBUSY)
        default:
            return IOError(.scsi(what), op, path: path, offset: offset, length: length, errno: EIO)
        }
    }
}

/// How a SCSI command is retried, by the blocking calls and the queue alike: UNIT ATTENTION
/// and the like (`.retry`) up to 20 times after 1, 2, 3, ... ms; RESERVATION CONFLICT (another
/// host's compare-and-write holds the LUN) after a growing, jittered pause, for up to
/// `reservationWait` seconds of pauses in all.
struct SCSIRetry {
    let reservationWait: Double
    private var retries = 0
    private var backoff = 50.0e-6
    private var waited = 0.0

    init(reservationWait: Double) { self.reservationWait = reservationWait }

    /// The pause (seconds) before issuing the command again after `outcome`, or nil: report it.
    mutating func pause(after outcome: SCSICommandOutcome) -> Double? {
        switch outcome {
        case .retry where retries < 20:
            retries += 1
            return 0.001 * Double(retries)
        case .reservationConflict where waited < reservationWait:
            let pause = backoff * Double.random(in: 0.5...1.5)
            waited += pause
            backoff = min(backoff * 2, 0.01)
            return pause
        default:
            return nil
        }
    }
}

/// Opens the LUN `path` names, whichever backend it needs: an `iscsi://` URL through libiscsi,
/// anything else as an image file or block device.
public func openStorage(_ path: String, options: BlockDevice.Options = BlockDevice.Options()) throws(IOError) -> any BlockStorage {
    if ISCSILun.isURL(path) { return try ISCSILun.open(url: path, options: options) }
    return try BlockDevice.open(path, options: options)
}

extension BlockStorage {
    /// Lets go of the LUN: a `BlockDevice` stops its reactor, an `ISCSILun` logs out. Wrappers
    /// and other storages are left alone.
    public func closeStorage() {
        if let device = self as? BlockDevice { device.close() } else if let lun = self as? ISCSILun { lun.close() }
    }

    /// How compare-and-write is made atomic, for the storages that say.
    public var compareAndWriteMethodIfKnown: CompareAndWriteMethod? {
        if let device = self as? BlockDevice { return device.compareAndWriteMethod }
        if let lun = self as? ISCSILun { return lun.compareAndWriteMethod }
        return nil
    }
}
