import CLunar
import Dispatch
import Glibc
import Synchronization

/// A LUN: a regular image file or a block device, opened for direct I/O.
///
/// Offsets and lengths are multiples of `sectorSize`; buffers are `sectorSize`-aligned
/// (`IOBuffer` always is). The async methods batch through one reactor thread per device;
/// `makeQueue(depth:)` gives a hot path its own submit/complete queue.
public final class BlockDevice: Sendable {
    public struct Options: Sendable {
        /// nil picks io_uring, then libaio, then sync, by what the host allows.
        public var engine: IOEngineKind?
        /// For image files: 512 or 4096 (default 4096). Block devices report their own.
        public var sectorSize: Int?
        /// Refuse a device smaller than this.
        public var minimumSize: UInt64?
        public var readOnly: Bool
        /// Direct I/O (O_DIRECT); falls back to buffered, with one warning, where refused.
        public var direct: Bool
        /// Requests the async reactor keeps in flight at most.
        public var asyncQueueDepth: Int
        /// Where the one-time warnings go (buffered fallback). Standard error by default.
        public var warningHandler: @Sendable (String) -> Void
        /// How long a compare-and-write waits for another process's hold on the same sector,
        /// in seconds. A hold lasts a read and a write; only a process stopped in the middle of
        /// one (SIGSTOP, a debugger) holds it longer, and every other one would wait for good.
        public var sectorLockWait: Double

        public init(engine: IOEngineKind? = nil, sectorSize: Int? = nil, minimumSize: UInt64? = nil,
                    readOnly: Bool = false, direct: Bool = true, asyncQueueDepth: Int = 128,
                    sectorLockWait: Double = 10,
                    warningHandler: @escaping @Sendable (String) -> Void = BlockDevice.printWarning) {
            self.sectorLockWait = sectorLockWait
            self.engine = engine
            self.sectorSize = sectorSize
            self.minimumSize = minimumSize
            self.readOnly = readOnly
            self.direct = direct
            self.asyncQueueDepth = asyncQueueDepth
            self.warningHandler = warningHandler
        }
    }

    @Sendable public static func printWarning(_ message: String) {
        let line = Array("lunar: warning: \(message)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    public var path: String { file.path }
    /// Bytes the device holds.
    public var size: UInt64 { file.size }
    public var sectorSize: Int { file.sectorSize }
    public var isBlockDevice: Bool { file.isBlockDevice }
    /// False when the file system refused O_DIRECT and I/O goes through the page cache.
    public var isDirect: Bool { file.isDirect }
    public var isReadOnly: Bool { file.isReadOnly }
    public let engine: IOEngineKind
    public var compareAndWriteMethod: CompareAndWriteMethod { .ofdLockedReadCompareWrite }

    let file: DeviceFile
    let options: Options
    private let reactor = Mutex<IOReactor?>(nil)
    private let closed = Atomic<Bool>(false)
    /// OFD locks exclude other open file descriptions only; threads sharing this one are
    /// excluded by this mutex.
    let compareAndWriteLock = Mutex<Void>(())

    private init(file: DeviceFile, engine: IOEngineKind, options: Options) {
        self.file = file
        self.engine = engine
        self.options = options
    }

    deinit { reactor.withLock { $0 }?.stop() }

    /// Opens an existing image file or block device.
    /// Whether `lun` names a LUN: an existing image file or device on this host, or an iSCSI
    /// LUN (whose existence only a login can tell).
    public static func exists(_ lun: String) -> Bool {
        var st = stat()
        return ISCSILun.isLUNURL(lun) || stat(lun, &st) == 0
    }

    public static func open(_ path: String, options: Options = Options()) throws(IOError) -> BlockDevice {
        try validate(options, path: path)
        let engine = options.engine ?? IOEngineKind.automatic
        let access = options.readOnly ? O_RDONLY : O_RDWR
        var direct = options.direct
        var fd = lunar_open(path, access | (direct ? lunar_o_direct() : 0), 0)
        if fd == -EINVAL && direct {
            fd = lunar_open(path, access, 0)
            direct = false
        }
        guard fd >= 0 else { throw IOError(.system, .open, path: path, errno: -fd) }

        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw IOError(.system, .open, path: path, errno: e)
        }
        let isBlock = (st.st_mode & S_IFMT) == S_IFBLK
        let isRegular = (st.st_mode & S_IFMT) == S_IFREG
        var size = UInt64(st.st_size)
        var sector = options.sectorSize ?? 4096
        if isBlock {
            var bytes: UInt64 = 0
            var logical: Int32 = 0
            var r = lunar_blkdev_size(fd, &bytes)
            if r == 0 { r = lunar_blkdev_logical_sector_size(fd, &logical) }
            guard r == 0 else {
                Glibc.close(fd)
                throw IOError(.system, .open, path: path, errno: -r)
            }
            size = bytes
            sector = max(Int(logical), options.sectorSize ?? Int(logical))
            if let asked = options.sectorSize, asked < Int(logical) {
                Glibc.close(fd)
                throw IOError(.unsupported("device has \(logical)-byte logical sectors; \(asked) was asked"), .open, path: path)
            }
        } else if !isRegular {
            Glibc.close(fd)
            throw IOError(.unsupported("not a regular file or block device"), .open, path: path)
        }
        if options.direct && !direct {
            options.warningHandler("the file system holding \(path) refuses O_DIRECT; using buffered I/O (slower, and durability then rests on flush)")
        }
        let file = DeviceFile(fd: fd, path: path, size: size, sectorSize: sector, isBlockDevice: isBlock,
                              isDirect: direct, isReadOnly: options.readOnly)
        if let minimum = options.minimumSize, size < minimum {
            throw file.error(.deviceTooSmall(actual: size, required: minimum), .open)
        }
        // Fail at open, not at first I/O, when the chosen engine cannot start here.
        if options.engine != nil { _ = try IOQueue(file: file, engine: engine, depth: 1) }
        return BlockDevice(file: file, engine: engine, options: options)
    }

    private static func validate(_ options: Options, path: String) throws(IOError) {
        if let s = options.sectorSize, s != 512 && s != 4096 {
            throw IOError(.invalidArgument("sector size must be 512 or 4096, not \(s)"), .open, path: path)
        }
    }

    /// Creates a sparse image file of `size` bytes (it must not exist yet) and opens it. A
    /// dangling symbolic link at `path` is followed: the file it names is made.
    public static func createImage(_ path: String, size: UInt64, options: Options = Options()) throws(IOError) -> BlockDevice {
        try validate(options, path: path)
        guard let length = off_t(exactly: size) else {
            throw IOError(.system, .open, path: path, length: Int(clamping: size), errno: EFBIG)
        }
        var fd = lunar_open(path, O_RDWR | O_CREAT | O_EXCL, 0o644)
        var st = stat()
        if fd == -EEXIST, lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFLNK, stat(path, &st) != 0 {
            fd = lunar_open(path, O_RDWR | O_CREAT, 0o644)
        }
        guard fd >= 0 else { throw IOError(.system, .open, path: path, errno: -fd) }
        let r = ftruncate(fd, length)
        let e = errno
        Glibc.close(fd)
        guard r == 0 else {
            unlink(path)
            throw IOError(.system, .open, path: path, length: Int(clamping: size), errno: e)
        }
        do {
            return try open(path, options: options)
        } catch {
            unlink(path)
            throw error
        }
    }

    /// A submit/complete queue of its own for one thread's hot path.
    public func makeQueue(depth: Int = 64) throws(IOError) -> IOQueue {
        try checkOpen(.setup)
        return try IOQueue(file: file, engine: engine, depth: depth)
    }

    /// Stops the async reactor after what it holds completes; later calls fail `.closed`.
    /// The descriptor itself closes once every queue made from this device is gone.
    public func close() {
        closed.store(true, ordering: .releasing)
        reactor.withLock { r -> IOReactor? in defer { r = nil }; return r }?.stop()
    }

    private func checkOpen(_ op: IOOperationKind) throws(IOError) {
        if closed.load(ordering: .acquiring) { throw file.error(.closed, op) }
    }

    private func asyncReactor(_ op: IOOperationKind) throws(IOError) -> IOReactor {
        try checkOpen(op)
        let made: Result<IOReactor, IOError> = reactor.withLock { current in
            if let current { return .success(current) }
            do throws(IOError) {
                let r = try IOReactor(file: file, engine: engine, depth: options.asyncQueueDepth)
                current = r
                return .success(r)
            } catch {
                return .failure(error)
            }
        }
        return try made.get()
    }

    // MARK: async API

    /// Reads `length` bytes (all of `buffer` from `bufferOffset` by default) at `offset`.
    public func read(into buffer: IOBuffer, at offset: UInt64, bufferOffset: Int = 0, length: Int? = nil) async throws(IOError) {
        let region = try span(buffer, bufferOffset, length, .read, offset)
        try file.validateTransfer(.read, address: region.baseAddress, length: region.count, offset: offset)
        _ = try await asyncReactor(.read).perform(.read(region, offset)).get()
    }

    /// Writes `length` bytes (all of `buffer` from `bufferOffset` by default) at `offset`.
    public func write(from buffer: IOBuffer, at offset: UInt64, bufferOffset: Int = 0, length: Int? = nil) async throws(IOError) {
        let region = try span(buffer, bufferOffset, length, .write, offset)
        try file.validateTransfer(.write, address: region.baseAddress, length: region.count, offset: offset)
        _ = try await asyncReactor(.write).perform(.write(UnsafeRawBufferPointer(region), offset)).get()
    }

    /// Reads `region` (caller-owned, sector-aligned memory that stays valid until completion)
    /// at `offset` through the async reactor and calls `completion` on the reactor's thread
    /// with the bytes read: for servers on an event loop of their own (the NBD server), which
    /// read straight into the buffer they then send.
    public func read(into region: UnsafeMutableRawBufferPointer, at offset: UInt64,
                     completion: @escaping @Sendable (Result<Int, IOError>) -> Void) {
        do throws(IOError) {
            try file.validateTransfer(.read, address: region.baseAddress, length: region.count, offset: offset)
            try asyncReactor(.read).submit(.read(region, offset), completion: completion)
        } catch {
            completion(.failure(error))
        }
    }

    /// Makes every write that completed before this call durable.
    public func flush() async throws(IOError) {
        _ = try await asyncReactor(.flush).perform(.flush).get()
    }

    /// Deallocates a sector-aligned range; it reads back as zeros afterwards.
    public func discard(at offset: UInt64, length: UInt64) async throws(IOError) {
        _ = try await asyncReactor(.discard).perform(.discard(offset, length)).get()
    }

    private func span(_ buffer: IOBuffer, _ start: Int, _ length: Int?, _ op: IOOperationKind, _ offset: UInt64) throws(IOError) -> UnsafeMutableRawBufferPointer {
        let count = length ?? (buffer.count - start)
        guard start >= 0, count >= 0, start <= buffer.count, count <= buffer.count - start else {
            throw file.error(.invalidArgument("range \(start)..<\(start + count) lies outside the \(buffer.count)-byte buffer"),
                             op, offset: offset, length: count)
        }
        return buffer.slice(start..<(start + count))
    }
}
