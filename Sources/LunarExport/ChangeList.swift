/// The bytes of an export that differ from an earlier snapshot of its disk, as the context
/// `qemu:dirty-bitmap:SNAP` answers block status with them (`Spec/export.md` §5): sorted,
/// disjoint ranges inside the export, with no two touching, so that the descriptors made from
/// them alternate between dirty and clean.
struct ChangeList: Sendable, Equatable {
    let ranges: [Range<UInt64>]

    /// `changed` as LunarDisk gives it (whole grains, which may run past an export whose size is
    /// not a multiple of one), sorted, merged and cut at `size`.
    init(_ changed: [Range<UInt64>], size: UInt64) {
        var out: [Range<UInt64>] = []
        for r in changed.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let clipped = min(r.lowerBound, size)..<min(r.upperBound, size)
            guard !clipped.isEmpty else { continue }
            if let last = out.last, clipped.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, clipped.upperBound)
            } else {
                out.append(clipped)
            }
        }
        ranges = out
    }

    /// Bytes changed in all.
    var changedBytes: UInt64 { ranges.reduce(0) { $0 + UInt64($1.count) } }

    /// Block status descriptors covering `range` from its start: changed runs flagged
    /// `NBD_STATE_DIRTY`, the rest 0; at most `limit` of them, none past the range, none longer
    /// than a descriptor's 32 bits hold. Finding the first run is a binary search, so a
    /// client's many small queries each cost what they return, not what the list holds.
    func descriptors(_ range: Range<UInt64>, limit: Int) -> [(length: UInt32, flags: UInt32)] {
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].upperBound <= range.lowerBound { low = mid + 1 } else { high = mid }
        }
        var out: [(length: UInt32, flags: UInt32)] = []
        var at = range.lowerBound, i = low
        while at < range.upperBound, out.count < limit {
            let end: UInt64, flags: UInt32
            if i < ranges.count, ranges[i].lowerBound <= at {
                end = min(ranges[i].upperBound, range.upperBound)
                flags = NBD.stateDirty
                i += 1
            } else {
                end = min(i < ranges.count ? ranges[i].lowerBound : range.upperBound, range.upperBound)
                flags = 0
            }
            let length = min(end - at, UInt64(UInt32.max))
            out.append((UInt32(length), flags))
            at += length
            // A run cut at 4 GiB goes on in the next descriptor, with the same flags.
            if at < end, flags != 0 { i -= 1 }
        }
        return out
    }
}
