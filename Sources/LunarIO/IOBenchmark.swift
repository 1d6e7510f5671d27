import Glibc

/// One fio-style workload: pattern, direction, block size and queue depth.
public struct IOWorkload: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var random: Bool
    public var write: Bool
    public var blockSize: Int
    public var depth: Int

    public init(name: String, random: Bool, write: Bool, blockSize: Int, depth: Int) {
        self.name = name
        self.random = random
        self.write = write
        self.blockSize = blockSize
        self.depth = depth
    }

    public static let randomRead = IOWorkload(name: "randread", random: true, write: false, blockSize: 4096, depth: 32)
    public static let randomWrite = IOWorkload(name: "randwrite", random: true, write: true, blockSize: 4096, depth: 32)
    public static let sequentialRead = IOWorkload(name: "seqread", random: false, write: false, blockSize: 1 << 20, depth: 8)
    public static let sequentialWrite = IOWorkload(name: "seqwrite", random: false, write: true, blockSize: 1 << 20, depth: 8)
    public static let standard: [IOWorkload] = [.randomRead, .randomWrite, .sequentialRead, .sequentialWrite]

    public static func named(_ name: String) -> IOWorkload? { standard.first { $0.name == name } }

    public var description: String {
        let bs = blockSize >= 1 << 20 ? "\(blockSize >> 20) MiB" : "\(blockSize >> 10) KiB"
        return "\(name) (\(bs) \(random ? "random" : "sequential") \(write ? "write" : "read"), QD \(depth))"
    }
}

/// What one workload achieved.
public struct IOBenchmarkResult: Sendable {
    public var workload: IOWorkload
    public var engine: IOEngineKind
    public var operations: Int
    public var bytes: UInt64
    public var seconds: Double

    public init(workload: IOWorkload, engine: IOEngineKind, operations: Int, bytes: UInt64, seconds: Double) {
        self.workload = workload
        self.engine = engine
        self.operations = operations
        self.bytes = bytes
        self.seconds = seconds
    }

    public var iops: Double { Double(operations) / seconds }
    /// Decimal megabytes per second, as fio's "MB/s".
    public var megabytesPerSecond: Double { Double(bytes) / seconds / 1_000_000 }
}

/// Drives a workload through one `IOQueue` on the calling thread, the way fio drives its
/// io_uring engine: keep `depth` requests in flight, re-issue each slot as it completes.
public enum IOBenchmark {
    /// Runs `workload` over the first `span` bytes of `device` for `seconds`. With
    /// `deviceOffset`, offsets are those of a file whose blocks lie scattered on the device
    /// (each request stays inside one of its blocks), and the closure says where each lies.
    public static func run(_ workload: IOWorkload, on device: BlockDevice, span: UInt64? = nil,
                           seconds: Double, deviceOffset: ((UInt64) -> UInt64)? = nil) throws(IOError) -> IOBenchmarkResult {
        let bs = UInt64(workload.blockSize)
        let limit = (deviceOffset == nil ? min(span ?? device.size, device.size) : span ?? device.size) / bs * bs
        guard limit >= bs * UInt64(workload.depth) else {
            throw IOError(.deviceTooSmall(actual: limit, required: bs * UInt64(workload.depth)), .setup, path: device.path)
        }
        let queue = try device.makeQueue(depth: workload.depth)
        let arena = IOBuffer(count: workload.blockSize * workload.depth)
        var random = SplitMix64(seed: 0x4C55_4E41_52)
        if workload.write {
            let words = arena.baseAddress.bindMemory(to: UInt64.self, capacity: arena.count / 8)
            for i in 0..<(arena.count / 8) { words[i] = random.next() }
        }
        queue.registerBuffers([arena])

        let blocks = limit / bs
        var cursor: UInt64 = 0
        func nextOffset() -> UInt64 {
            let logical: UInt64
            if workload.random {
                logical = (random.next() % blocks) * bs
            } else {
                logical = cursor
                cursor = (cursor + bs) % limit
            }
            return deviceOffset?(logical) ?? logical
        }
        func issue(_ slot: Int) throws(IOError) {
            let region = arena.slice(slot * workload.blockSize..<(slot + 1) * workload.blockSize)
            if workload.write {
                try queue.prepareWrite(from: UnsafeRawBufferPointer(region), at: nextOffset(), tag: UInt64(slot))
            } else {
                try queue.prepareRead(into: region, at: nextOffset(), tag: UInt64(slot))
            }
        }

        for slot in 0..<workload.depth { try issue(slot) }
        var operations = 0
        var failure: IOError?
        let start = monotonicSeconds()
        let deadline = start + seconds
        var running = true
        while queue.outstanding > 0 {
            try queue.reap(minimum: 1) { completion in
                if let error = completion.error {
                    failure = failure ?? error
                    running = false
                    return
                }
                operations += 1
                if running {
                    do throws(IOError) { try issue(Int(completion.tag)) } catch { failure = failure ?? error; running = false }
                }
            }
            if running && monotonicSeconds() >= deadline { running = false }
        }
        let elapsed = monotonicSeconds() - start
        if let failure { throw failure }
        return IOBenchmarkResult(workload: workload, engine: queue.engine, operations: operations,
                                 bytes: UInt64(operations) * bs, seconds: elapsed)
    }

    /// Writes the first `span` bytes sequentially so reads measure the medium, not holes.
    public static func layOut(_ device: BlockDevice, span: UInt64, progress: (UInt64) -> Void = { _ in }) throws(IOError) {
        let chunk = 1 << 20
        let depth = 8
        let queue = try device.makeQueue(depth: depth)
        let arena = IOBuffer(count: chunk * depth)
        var random = SplitMix64(seed: 7)
        let words = arena.baseAddress.bindMemory(to: UInt64.self, capacity: arena.count / 8)
        for i in 0..<(arena.count / 8) { words[i] = random.next() }
        var next: UInt64 = 0
        var done: UInt64 = 0
        var failure: IOError?
        func issue(_ slot: Int) throws(IOError) {
            guard next < span else { return }
            let length = Int(min(UInt64(chunk), span - next))
            try queue.prepareWrite(from: UnsafeRawBufferPointer(arena.slice(slot * chunk..<slot * chunk + length)), at: next, tag: UInt64(slot))
            next += UInt64(length)
        }
        for slot in 0..<depth { try issue(slot) }
        while queue.outstanding > 0 {
            try queue.reap { completion in
                if let error = completion.error { failure = failure ?? error; return }
                done += UInt64(completion.bytesTransferred)
                progress(done)
                if failure == nil {
                    do throws(IOError) { try issue(Int(completion.tag)) } catch { failure = error }
                }
            }
        }
        if let failure { throw failure }
        try queue.prepareFlush(tag: 0)
        try queue.reap { completion in if let error = completion.error { failure = error } }
        if let failure { throw failure }
    }
}

/// Seconds on the monotonic clock: for intervals and timeouts, never compared across hosts.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A small, fast, seeded PRNG (SplitMix64) for offsets, fill patterns and reproducible test
/// workloads; not for anything secret.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
