import CLunar
import Dispatch
import Glibc

/// How a device makes compare-and-write atomic.
public enum CompareAndWriteMethod: String, Sendable {
    /// An OFD write lock on the sector's byte range held around read, compare and write.
    /// Atomic among all processes of one host that use LunarIO on the same file or device,
    /// not across machines: a LUN shared between machines needs SCSI COMPARE AND WRITE.
    case ofdLockedReadCompareWrite = "ofd-lock"
    /// The SCSI COMPARE AND WRITE command (opcode 0x89): the target compares and writes
    /// atomically for every initiator of the LUN, on any machine.
    case scsiCompareAndWrite = "scsi-compare-and-write"
    /// For targets without COMPARE AND WRITE: an SPC-2 RESERVE(6) of the LUN held only around
    /// read, compare and write of the sector, as VMFS 3 did on arrays without ATS. Atomic among
    /// all initiators of the LUN; everyone else's commands wait out the (short) reservation.
    case scsiReservation = "scsi-reservation"

    public var summary: String {
        switch self {
        case .ofdLockedReadCompareWrite:
            "OFD byte-range lock around read-compare-write (atomic among processes of this host)"
        case .scsiCompareAndWrite:
            "SCSI COMPARE AND WRITE (atomic on the target, among all hosts)"
        case .scsiReservation:
            "SCSI-2 RESERVE/RELEASE around read-compare-write (target lacks COMPARE AND WRITE; atomic among all hosts)"
        }
    }
}

/// What compare-and-write found.
public enum CompareAndWriteOutcome: Sendable {
    /// The sector held `expected`; it now holds `new`.
    case written
    /// The sector held something else, returned here; nothing was written.
    case mismatch(current: IOBuffer)

    public var isWritten: Bool { if case .written = self { true } else { false } }
}

extension BlockDevice {
    /// The ATS primitive: writes `new` to the sector at `offset` only if that sector equals
    /// `expected`, atomically with respect to every other process using this device on this
    /// host; otherwise returns the sector's current bytes. `expected` and `new` are exactly one
    /// sector each. The write is visible to all at once and durable after the next flush.
    public func compareAndWrite(expected: IOBuffer, new: IOBuffer, at offset: UInt64) async throws(IOError) -> CompareAndWriteOutcome {
        let result: Result<CompareAndWriteOutcome, IOError> = await withCheckedContinuation { continuation in
            // The OFD lock may wait on another process: keep that off the cooperative pool.
            DispatchQueue.global().async {
                do throws(IOError) {
                    continuation.resume(returning: .success(try self.compareAndWriteBlocking(expected: expected, new: new, at: offset)))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    /// `compareAndWrite` for threads that may block (a heartbeat thread, a test helper).
    public func compareAndWriteBlocking(expected: IOBuffer, new: IOBuffer, at offset: UInt64) throws(IOError) -> CompareAndWriteOutcome {
        let op = IOOperationKind.compareAndWrite
        let sector = file.sectorSize
        guard expected.count == sector, new.count == sector else {
            throw file.error(.invalidArgument("expected and new must be exactly one \(sector)-byte sector each"), op,
                             offset: offset, length: new.count)
        }
        try file.validateTransfer(.write, address: new.baseAddress, length: sector, offset: offset)
        let current = IOBuffer(count: sector)
        return try compareAndWriteLock.withLock { _ throws(IOError) -> CompareAndWriteOutcome in
            try lockSector(offset, sector)
            defer { _ = lunar_ofd_lock(file.fd, 0, offset, UInt64(sector), 0) }

            let got = transferFully(fd: file.fd, isWrite: false, buffer: current.baseAddress, length: sector, offset: offset)
            try check(got, sector, offset)
            guard current.contentEquals(expected) else { return .mismatch(current: current) }
            let put = transferFully(fd: file.fd, isWrite: true, buffer: new.baseAddress, length: sector, offset: offset)
            try check(put, sector, offset)
            return .written
        }
    }

    /// Takes the OFD lock of the sector at `offset`, polling rather than blocking, so that the
    /// wait is bounded by `Options.sectorLockWait`.
    private func lockSector(_ offset: UInt64, _ sector: Int) throws(IOError) {
        var r = lunar_ofd_lock(file.fd, 1, offset, UInt64(sector), 0)
        guard r == -EAGAIN || r == -EACCES else {
            if r != 0 { throw file.error(.system, .compareAndWrite, offset: offset, length: sector, errno: -r) }
            return
        }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let deadline = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 + options.sectorLockWait
        var pause: UInt32 = 50
        while true {
            usleep(pause)
            pause = min(pause * 2, 5_000)
            r = lunar_ofd_lock(file.fd, 1, offset, UInt64(sector), 0)
            if r == 0 { return }
            guard r == -EAGAIN || r == -EACCES else {
                throw file.error(.system, .compareAndWrite, offset: offset, length: sector, errno: -r)
            }
            clock_gettime(CLOCK_MONOTONIC, &ts)
            if Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 >= deadline {
                throw file.error(.timedOut("another process of this machine has held this sector's compare-and-write lock for over \(options.sectorLockWait) s (stopped in the middle of one?); resume or kill it"),
                                 .compareAndWrite, offset: offset, length: sector)
            }
        }
    }

    private func check(_ result: Int64, _ sector: Int, _ offset: UInt64) throws(IOError) {
        if result < 0 {
            throw file.error(.system, .compareAndWrite, offset: offset, length: sector, errno: Int32(-result))
        }
        if result != Int64(sector) {
            throw file.error(.shortTransfer(transferred: Int(result)), .compareAndWrite, offset: offset, length: sector)
        }
    }
}
