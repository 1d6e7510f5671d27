import CLunar
import Glibc

/// The opened LUN: its descriptor (none for a network LUN) and geometry. Shared by the device, its queues and its
/// reactor; the descriptor closes when the last of them lets go, never under an in-flight I/O.
final class DeviceFile: Sendable {
    let fd: Int32
    let path: String
    let size: UInt64
    let sectorSize: Int
    let isBlockDevice: Bool
    let isDirect: Bool
    let isReadOnly: Bool

    init(fd: Int32, path: String, size: UInt64, sectorSize: Int, isBlockDevice: Bool, isDirect: Bool, isReadOnly: Bool) {
        self.fd = fd
        self.path = path
        self.size = size
        self.sectorSize = sectorSize
        self.isBlockDevice = isBlockDevice
        self.isDirect = isDirect
        self.isReadOnly = isReadOnly
    }

    /// The geometry of a LUN reached over the network (an iSCSI LUN's queue): what requests
    /// are checked against and errors are named by. No descriptor (`fd` is -1).
    convenience init(remote path: String, size: UInt64, sectorSize: Int, isReadOnly: Bool) {
        self.init(fd: -1, path: path, size: size, sectorSize: sectorSize, isBlockDevice: false, isDirect: true,
                  isReadOnly: isReadOnly)
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    func error(_ kind: IOError.Kind, _ op: IOOperationKind, offset: UInt64? = nil, length: Int? = nil, errno: Int32? = nil) -> IOError {
        IOError(kind, op, path: path, offset: offset, length: length, errno: errno)
    }

    /// The checks every data transfer passes before it reaches an engine.
    func validateTransfer(_ op: IOOperationKind, address: UnsafeRawPointer?, length: Int, offset: UInt64) throws(IOError) {
        if op == .write && isReadOnly { throw error(.system, op, offset: offset, length: length, errno: EROFS) }
        guard offset % UInt64(sectorSize) == 0 else {
            throw error(.misalignedOffset(sectorSize: sectorSize), op, offset: offset, length: length)
        }
        guard length > 0, length % sectorSize == 0 else {
            throw error(.misalignedLength(sectorSize: sectorSize), op, offset: offset, length: length)
        }
        guard let address, UInt(bitPattern: address) % UInt(sectorSize) == 0 else {
            throw error(.misalignedBuffer(alignment: sectorSize), op, offset: offset, length: length)
        }
        try validateRange(op, offset: offset, length: UInt64(length))
    }

    func validateRange(_ op: IOOperationKind, offset: UInt64, length: UInt64) throws(IOError) {
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= size else {
            throw error(.beyondEnd(deviceSize: size), op, offset: offset, length: Int(clamping: length))
        }
    }
}
