import Glibc

/// What a layer above LunarIO needs of a LUN, in the blocking form that metadata code (a file
/// system's journal, fsck, a lock taker) is written in. `BlockDevice` is the real one;
/// wrappers (a write recorder for crash tests, a fault injector) stack on top of it.
///
/// The rules are `BlockDevice`'s: offsets, lengths and buffer addresses are multiples of
/// `sectorSize`, a write is durable only after a later `flush` returns, and `discard` makes a
/// range read back as zeros.
public protocol BlockStorage: AnyObject, Sendable {
    var path: String { get }
    var size: UInt64 { get }
    var sectorSize: Int { get }
    var isReadOnly: Bool { get }
    func readBlocking(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError)
    func writeBlocking(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError)
    func flushBlocking() throws(IOError)
    func discardBlocking(at offset: UInt64, length: UInt64) throws(IOError)
    func compareAndWriteBlocking(expected: IOBuffer, new: IOBuffer, at offset: UInt64) throws(IOError) -> CompareAndWriteOutcome
    /// The local image file or block device all I/O finally lands on, when there is one (not
    /// for a LUN reached over the network): hot paths make their own `IOQueue` from it, and
    /// presence tokens live on it.
    var localDevice: BlockDevice? { get }
    /// The iSCSI LUN all I/O finally lands on, when it is one: hot paths make their own
    /// `IOQueue` from it (a session of the queue's own). Wrappers pass their base's on.
    var iscsiLUN: ISCSILun? { get }
}

extension BlockStorage {
    public var iscsiLUN: ISCSILun? { nil }
}

extension BlockStorage {
    public func readBlocking(into buffer: IOBuffer, at offset: UInt64) throws(IOError) {
        try readBlocking(into: buffer.bytes, at: offset)
    }

    public func writeBlocking(from buffer: IOBuffer, at offset: UInt64) throws(IOError) {
        try writeBlocking(from: UnsafeRawBufferPointer(buffer.bytes), at: offset)
    }
}

extension BlockDevice: BlockStorage {
    public var localDevice: BlockDevice? { self }

    public func readBlocking(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try transferBlocking(.read, region, offset)
    }

    public func writeBlocking(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(IOError) {
        try transferBlocking(.write, UnsafeMutableRawBufferPointer(mutating: region), offset)
    }

    public func flushBlocking() throws(IOError) {
        guard !file.isReadOnly else { return }
        let r = performBlocking(.flush, fd: file.fd)
        if r < 0 { throw file.error(.system, .flush, errno: Int32(-r)) }
    }

    public func discardBlocking(at offset: UInt64, length: UInt64) throws(IOError) {
        if file.isReadOnly { throw file.error(.system, .discard, offset: offset, length: Int(clamping: length), errno: EROFS) }
        guard offset % UInt64(sectorSize) == 0, length % UInt64(sectorSize) == 0 else {
            throw file.error(.misalignedOffset(sectorSize: sectorSize), .discard, offset: offset, length: Int(clamping: length))
        }
        try file.validateRange(.discard, offset: offset, length: length)
        guard length > 0 else { return }
        let r = performBlocking(.discard(offset, length), fd: file.fd)
        if r < 0 { throw file.error(.system, .discard, offset: offset, length: Int(clamping: length), errno: Int32(-r)) }
    }

    private func transferBlocking(_ op: IOOperationKind, _ region: UnsafeMutableRawBufferPointer, _ offset: UInt64) throws(IOError) {
        try file.validateTransfer(op, address: region.baseAddress, length: region.count, offset: offset)
        guard let base = region.baseAddress else { return }
        let moved = transferFully(fd: file.fd, isWrite: op == .write, buffer: base, length: region.count, offset: offset)
        if moved < 0 { throw file.error(.system, op, offset: offset, length: region.count, errno: Int32(-moved)) }
        if moved != Int64(region.count) {
            throw file.error(.shortTransfer(transferred: Int(moved)), op, offset: offset, length: region.count)
        }
    }
}
