import LunarFS
import LunarIO

/// A virtual disk opened for a device that serves a guest: the one place the disk's rules live
/// (which ranges may go straight to the LUN, copy-on-write of shared blocks, the fence, what a
/// flush must commit), so a device only moves bytes and serves its queues.
///
/// The device asks `route` for each read or write. `.direct` hands it the LUN offsets of the
/// pieces to move itself (through its own queue from `makeQueue`: io_uring on a local LUN, a
/// libiscsi session of its own on an iSCSI one; else `storage`'s blocking calls: no volume lock
/// any way, no copy);
/// `.blocking` sends it to the blocking calls, which go through the file system: writes into
/// holes (allocation), writes into blocks a snapshot or clone shares (copied first, 64 KiB at
/// most), unaligned pieces. The channel keeps the disk's block map for `route` and re-reads
/// the part a blocking write or discard changed; a snapshot taken through `snapshot` marks the
/// whole map shared again.
///
/// Used by one thread at a time: the device's I/O thread, or whoever has paused the device
/// (a snapshot of the running VM). The pause is the hand-over, so nothing here is locked.
public final class DiskChannel: @unchecked Sendable {
    public let file: File
    public let capacity: UInt64
    public let isReadOnly: Bool
    /// The LUN the disk's bytes live on, local or over the network: `.direct` pieces are moved
    /// to and from it without the volume's lock.
    public let storage: any BlockStorage
    /// The same LUN when it is local (an image or block device). The device runs its own queue
    /// on it, or on an iSCSI `storage` (`makeQueue`).
    public let lun: BlockDevice?
    public let sectorSize: UInt64

    private var map: ExtentMap?
    /// The file has no map to give (stored inline in its inode) until a blocking write
    /// changes it.
    private var unmappable = false
    /// A blocking write or discard changed file system metadata since the last flush.
    private var metadataDirty = false

    /// What a device does with one read or write.
    public enum Route: Equatable {
        /// Every piece was handed to the visitor: move them between the buffers and the LUN.
        case direct
        /// Use `read`/`write` below (nothing was moved, whatever the visitor was handed).
        case blocking
        /// Fail the request: this host was fenced off the volume (the reason), so another
        /// host may own the disk now.
        case refused(String)
    }

    /// Opens the disk `file` (held exclusive for a writable disk, as a VM holds its disks).
    public init(file: File, readOnly: Bool = false) throws(FSError) {
        self.file = file
        capacity = try file.size
        isReadOnly = readOnly || file.volume.isReadOnly
        storage = file.volume.storage
        lun = file.volume.device
        sectorSize = UInt64(storage.sectorSize)
    }

    /// A queue on the LUN for the device's direct requests: io_uring (or the fallback engine)
    /// on a local LUN, a libiscsi session of the queue's own on an iSCSI LUN; nil when none can
    /// be made (the device then moves `.direct` pieces with `storage`'s blocking calls).
    public func makeQueue(depth: Int) -> IOQueue? {
        if let lun { return try? lun.makeQueue(depth: depth) }
        if let iscsi = storage.iscsiLUN { return try? iscsi.makeQueue(depth: depth) }
        return nil
    }

    // MARK: the direct path

    /// Where the read or write of `range` goes. For `.direct` the visitor has been called with
    /// consecutive pieces covering the range: a LUN offset, or nil for a hole (reads only; the
    /// device fills it with zeros). The visitor returning false (a buffer the device cannot
    /// move directly) makes the answer `.blocking`.
    public func route(reading: Bool, _ range: Range<UInt64>, _ visit: (Range<UInt64>, UInt64?) -> Bool) -> Route {
        guard range.lowerBound % sectorSize == 0, range.upperBound % sectorSize == 0 else { return .blocking }
        if map == nil && !unmappable {
            if let pieces = try? file.extents(0..<capacity) { map = ExtentMap(pieces) } else { unmappable = true }
        }
        guard let map else { return .blocking }
        if !reading {
            if isReadOnly { return .refused("the disk is read-only") }
            // Direct writes bypass the volume's own fence check: not one byte once fenced.
            if let why = file.volume.writeRefusal { return .refused(why) }
        }
        let sector = sectorSize
        let mapped = map.visit(range) { piece, device, shared in
            guard let device else { return reading && visit(piece, nil) }
            // A hole is allocated and a shared block copied by the blocking write alone.
            guard reading || !shared, device % sector == 0 else { return false }
            return visit(piece, device)
        }
        return mapped ? .direct : .blocking
    }

    /// Whether a flush must go through the file system (a blocking write or discard changed
    /// metadata since the last one); else flushing the LUN makes every completed write durable,
    /// and the device may do it through its queue.
    public var flushNeedsFileSystem: Bool { metadataDirty || (lun == nil && storage.iscsiLUN == nil) }

    // MARK: the blocking calls

    public func read(into region: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(FSError) {
        let n = try file.read(into: region, at: offset)
        // Past the file's end (it is as big as the disk) nothing is short; zero-fill anyway.
        if n < region.count { UnsafeMutableRawBufferPointer(rebasing: region[n...]).initializeMemory(as: UInt8.self, repeating: 0) }
    }

    public func write(from region: UnsafeRawBufferPointer, at offset: UInt64) throws(FSError) {
        guard !isReadOnly else { throw FSError(.readOnly) }
        defer { remap(offset..<(offset + UInt64(region.count))) }
        metadataDirty = true
        try file.write(region, at: offset)
    }

    public func discard(at offset: UInt64, length: UInt64) throws(FSError) {
        guard !isReadOnly else { throw FSError(.readOnly) }
        defer { remap(offset..<(offset + length)) }
        metadataDirty = true
        try file.discard(at: offset, length: length)
    }

    /// Makes every write that completed before the call durable: data the device wrote straight
    /// to the LUN and metadata alike (`File.flush` flushes the LUN, local or iSCSI, even with no
    /// metadata to commit).
    public func flush() throws(FSError) {
        guard !isReadOnly else { return }
        try file.flush()
        metadataDirty = false
    }

    /// Re-reads the map of a range a blocking call may have changed.
    private func remap(_ range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        if map != nil, let pieces = try? file.extents(range) {
            map?.replace(range, with: pieces)
        } else {
            map = nil
            unmappable = false
        }
    }

    // MARK: snapshots

    /// The disk as `VirtualDisk` sees it: its snapshots and clones.
    public var virtualDisk: VirtualDisk { VirtualDisk(file.volume, path: file.path) }

    /// Readies a paused disk for a snapshot (`VirtualDisk.captureSnapshot`): the caller has
    /// paused the device (no request in flight, none taken until it resumes), so the snapshot
    /// will hold every write the guest was told is done and none of a later one. Written data
    /// is flushed first, so the snapshot names no block whose content is only in the LUN's
    /// cache; the map is dropped, because every block is shared afterwards and the next direct
    /// write must find that out.
    public func prepareSnapshot() throws(DiskError) {
        forgetMap()
        try fs { () throws(FSError) -> Void in try flush() }
    }

    /// Drops the cached map: the next request reads it afresh.
    public func forgetMap() {
        map = nil
        unmappable = false
    }
}
