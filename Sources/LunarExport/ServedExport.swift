import Dispatch
import LunarFS
import LunarIO

/// One file the server offers, opened for the server's whole life (`Spec/export.md` §3).
///
/// Read-only exports hold the file shared read-only: no host may write it meanwhile, so the
/// block map read once at open stays true, and reads go from it straight to the LUN through
/// LunarIO's reactor with no volume lock per request. Writable exports hold the file exclusive
/// and serve every request through the file API on one serial queue, so that a trim never frees
/// a block a read in flight still reads.
public final class ServedExport: Sendable {
    public let name: ExportName
    public let file: File
    public let size: UInt64
    public let writable: Bool
    /// The LUN and its sector size, for the direct read path.
    let device: BlockDevice?
    let sector: UInt64
    /// The file's map, for read-only exports of files with one (not stored inline).
    let map: ExtentMap?
    /// Where blocking file calls run, off the event loops.
    let worker: DispatchQueue

    /// Opens `name` on `volume`: shared read-only, or exclusive when `writable`. A file another
    /// host holds in a conflicting mode is refused with that host named.
    public static func open(_ name: ExportName, on volume: Volume, writable: Bool) throws(ExportError) -> ServedExport {
        guard case .file(let path) = name else { throw ExportError(.snapshotsNeedLunarDisk(name.description)) }
        let isFile: Bool
        do throws(FSError) { isFile = try volume.stat(path).type == .file } catch { throw ExportError(.fileSystem(error)) }
        guard isFile else { throw ExportError(.notRegularFile(path)) }
        let file: File
        do throws(FSError) {
            file = try volume.openFile(path, lock: writable ? .exclusive : .sharedReadOnly)
        } catch {
            throw ExportError(.fileSystem(error))
        }
        do throws(FSError) {
            let size = try file.size
            var map: ExtentMap?
            let device = volume.device
            if !writable, device != nil {
                // A file stored inline in its inode has no map; it is read through the file API.
                map = (try? file.extents(0..<size)).map { ExtentMap($0) }
            }
            return ServedExport(name: name, file: file, size: size, writable: writable, device: device, map: map)
        } catch {
            try? file.close()
            throw ExportError(.fileSystem(error))
        }
    }

    private init(name: ExportName, file: File, size: UInt64, writable: Bool, device: BlockDevice?, map: ExtentMap?) {
        self.name = name
        self.file = file
        self.size = size
        self.writable = writable
        self.device = device
        self.sector = UInt64(device?.sectorSize ?? 4096)
        self.map = map
        worker = DispatchQueue(label: "lunar.export.\(name)")
    }

    /// Releases the file's lock (after every request in flight on the worker finished).
    public func close() throws(FSError) {
        let result: Result<Void, FSError> = worker.sync {
            do throws(FSError) { try file.close(); return .success(()) } catch { return .failure(error) }
        }
        try result.get()
    }

    /// Bytes of data the export holds (the rest are holes).
    public func allocatedBytes() throws(FSError) -> UInt64 {
        if let map { return map.extents.reduce(0) { $0 + ($1.device == nil ? 0 : $1.upper - $1.lower) } }
        return try file.allocatedRanges().reduce(0) { $0 + UInt64($1.count) }
    }

    /// Why the map read at open can no longer be trusted, or nil: it is true only while this
    /// host's shared lock holds, and a host whose heartbeat stalled (or that was fenced) may
    /// have lost the lock to one that then wrote the file (`Spec/export.md` §4).
    var mapRefusal: String? {
        guard map != nil, let why = file.volume.writeRefusal else { return nil }
        return "this host lost its hold on the volume (\(why)); restart the server"
    }

    /// The pieces of `range`: data (true) or hole (false), from the map or, without one, from
    /// the file (blocking: on the worker).
    func pieces(_ range: Range<UInt64>) throws(FSError) -> [(range: Range<UInt64>, data: Bool)] {
        var out: [(range: Range<UInt64>, data: Bool)] = []
        if let map {
            _ = map.visit(range) { piece, device, _ in
                out.append((piece, device != nil))
                return true
            }
            return out
        }
        do {
            return try file.extents(range).map { ($0.range, $0.deviceOffset != nil) }
        } catch {
            // Stored inline in its inode: all of it is data.
            if case .invalidArgument = error.kind { return [(range, true)] }
            throw error
        }
    }

    /// The transmission flags this export is offered with (`Spec/export.md` §4).
    func transmissionFlags(structured: Bool) -> NBD.TransmissionFlags {
        var flags: NBD.TransmissionFlags = [.hasFlags, .sendFlush, .sendCache]
        if writable {
            flags.formUnion([.sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero])
        } else {
            // Nothing is cached and nothing changes: every connection sees the same bytes.
            flags.formUnion([.readOnly, .canMultiConn])
        }
        if structured { flags.insert(.sendDF) }
        return flags
    }
}
