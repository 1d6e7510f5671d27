import LunarIO

/// The LunarFS side of `Tools/bench/fs.sh`: the LunarIO workloads on a file inside a volume,
/// first-write (thin allocation) throughput, and file creation in one directory.
public enum FSBenchmark {
    /// Writes `size` bytes into a new thin file at `path` in 1 MiB pieces, then syncs.
    /// Returns MB/s of that first write: allocation, zeroing and journal commits included.
    public static func layOut(_ volume: Volume, path: String, size: UInt64,
                              progress: (UInt64) -> Void = { _ in }) throws(FSError) -> Double {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            try volume.mkdir(String(path[..<slash]), parents: true)
        }
        let file = try volume.create(path, exclusive: true)
        let chunk = IOBuffer(count: 1 << 20)
        var g = SystemRandomNumberGenerator()
        let words = chunk.baseAddress.bindMemory(to: UInt64.self, capacity: chunk.count / 8)
        for i in 0..<(chunk.count / 8) { words[i] = g.next() }
        let start = monotonicSeconds()
        var at: UInt64 = 0
        while at < size {
            let n = Int(min(UInt64(chunk.count), size - at))
            try file.write(chunk, at: at, count: n)
            at += UInt64(n)
            progress(at)
        }
        try volume.sync()
        return Double(size) / (monotonicSeconds() - start) / 1e6
    }

    /// Runs `workload` on the fully written file at `path`, straight to the device through
    /// the file's block map, the way a VM disk's hot path does.
    public static func run(_ workload: IOWorkload, volume: Volume, path: String, seconds: Double) throws(FSError) -> IOBenchmarkResult {
        let file = try volume.openFile(path)
        let size = try file.size
        let granule = UInt64(volume.header.blockSize)
        guard UInt64(workload.blockSize) <= granule, granule % UInt64(workload.blockSize) == 0 else {
            throw FSError(.invalidArgument("\(workload.blockSize)-byte requests do not fit the volume's \(granule)-byte blocks"))
        }
        var starts: [UInt64] = []
        for piece in try file.extents(0..<size) {
            guard let device = piece.deviceOffset else {
                throw FSError(.invalidArgument("\(path) has holes; lay it out first"), path: path)
            }
            var at = piece.range.lowerBound
            while at < piece.range.upperBound {
                starts.append(device + (at - piece.range.lowerBound))
                at += granule
            }
        }
        let map = starts
        guard let device = volume.device else {
            throw FSError(.invalidArgument("the volume's LUN is not a local device; the benchmark drives a local queue"))
        }
        do {
            return try IOBenchmark.run(workload, on: device, span: size, seconds: seconds) { logical in
                map[Int(logical / granule)] + logical % granule
            }
        } catch {
            throw FSError(.io(error), path: path)
        }
    }

    /// Creates `count` empty files in a new directory and syncs; returns files per second.
    public static func createFiles(_ volume: Volume, directory: String, count: Int,
                                   progress: (Int) -> Void = { _ in }) throws(FSError) -> Double {
        try volume.mkdir(directory, parents: true)
        let start = monotonicSeconds()
        for i in 0..<count {
            _ = try volume.create("\(directory)/file-\(i)", exclusive: true)
            if i % 1000 == 999 { progress(i + 1) }
        }
        try volume.sync()
        return Double(count) / (monotonicSeconds() - start)
    }
}

extension Volume {
    /// The local device under the volume (nil for a LUN reached over the network), for hot
    /// paths that drive their own `IOQueue` over `File.extents`.
    public var device: BlockDevice? { core.storage.localDevice }

    /// The LUN under the volume, local or over the network, for hot paths that move the bytes
    /// of mapped ranges themselves without the volume's lock (a VM's disk, `DiskChannel`).
    public var storage: any BlockStorage { core.storage }
}
