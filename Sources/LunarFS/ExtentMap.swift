/// Where a file's byte ranges live on its LUN, as a hot path consults it without the volume's
/// lock (a VMM's I/O thread, the NBD server): sorted, non-overlapping pieces, each at a device
/// offset or a hole (nil). A copy of the file's block map (`File.extents`), kept by whoever
/// alone changes the file (writes into holes and discards re-read the pieces they touched), or
/// fixed while the file is held shared read-only.
public struct ExtentMap: Equatable, Sendable {
    public struct Extent: Equatable, Sendable {
        public var lower: UInt64
        public var upper: UInt64
        public var device: UInt64?
        /// Shared with another disk: read in place, written only through the blocking path.
        public var shared: Bool

        public init(lower: UInt64, upper: UInt64, device: UInt64?, shared: Bool = false) {
            self.lower = lower
            self.upper = upper
            self.device = device
            self.shared = shared
        }
    }

    public private(set) var extents: [Extent] = []

    public init(_ pieces: [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)]) {
        extents.reserveCapacity(pieces.count)
        for p in pieces where !p.range.isEmpty {
            extents.append(Extent(lower: p.range.lowerBound, upper: p.range.upperBound, device: p.deviceOffset, shared: p.shared))
        }
    }

    /// The first extent whose upper bound lies above `offset`.
    private func firstIndex(above offset: UInt64) -> Int {
        var lo = 0, hi = extents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if extents[mid].upper <= offset { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Calls `body` with consecutive pieces covering `range` (device offset or nil for a hole,
    /// whether shared) and returns true; false as soon as the body does, or when part of the
    /// range is not in the map at all (then nothing is known about it).
    public func visit(_ range: Range<UInt64>, _ body: (Range<UInt64>, UInt64?, Bool) -> Bool) -> Bool {
        var at = range.lowerBound
        var i = firstIndex(above: at)
        while at < range.upperBound {
            guard i < extents.count, extents[i].lower <= at else { return false }
            let e = extents[i]
            let end = min(e.upper, range.upperBound)
            if !body(at..<end, e.device.map { $0 + (at - e.lower) }, e.shared) { return false }
            at = end
            i += 1
        }
        return true
    }

    /// Replaces what the map says about `range` with `pieces`, which must cover exactly it.
    public mutating func replace(_ range: Range<UInt64>, with pieces: [(range: Range<UInt64>, deviceOffset: UInt64?, shared: Bool)]) {
        guard !range.isEmpty else { return }
        let first = firstIndex(above: range.lowerBound)
        var last = first
        while last < extents.count && extents[last].lower < range.upperBound { last += 1 }
        var replacement: [Extent] = []
        if first < extents.count, extents[first].lower < range.lowerBound {
            var left = extents[first]
            left.upper = range.lowerBound
            replacement.append(left)
        }
        for p in pieces where !p.range.isEmpty {
            replacement.append(Extent(lower: p.range.lowerBound, upper: p.range.upperBound, device: p.deviceOffset, shared: p.shared))
        }
        if last > first, extents[last - 1].upper > range.upperBound {
            let e = extents[last - 1]
            replacement.append(Extent(lower: range.upperBound, upper: e.upper,
                                      device: e.device.map { $0 + (range.upperBound - e.lower) }, shared: e.shared))
        }
        extents.replaceSubrange(first..<last, with: replacement)
    }
}
