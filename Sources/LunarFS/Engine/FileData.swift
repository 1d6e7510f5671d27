import Glibc
import LunarIO

/// Regular-file content. Small files live in the inode (up to 3 840 bytes), then in one 64 KiB
/// small block (unless file blocks are 64 KiB themselves, or no small block is free), then in
/// file blocks. Data never goes through the journal: a new unit is zeroed
/// (or fully written) before the transaction that maps it commits, and commit flushes data
/// first, so a crash never exposes stale bytes.
extension VolumeCore {
    static let smallFileLimit = UInt64(Geometry.smallBlockSize)

    private var sector: Int { RecordHeader.sectorSize }

    // MARK: reading

    /// Reads up to `into.count` bytes at `offset`; returns how many (fewer at end of file).
    func read(_ n: UInt32, at offset: UInt64, into: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        guard offset < ino.size, into.count > 0 else { return 0 }
        let length = Int(min(UInt64(into.count), ino.size - offset))
        let target = UnsafeMutableRawBufferPointer(rebasing: into[0..<length])
        if ino.storage == .inline {
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: ino.inlineBytes[Int(offset)..<(Int(offset) + length)]))
            return length
        }
        let unit = unitSize(ino)
        let storageKind = ino.storage ?? .blocks
        var done = 0
        while done < length {
            let at = offset + UInt64(done)
            let u = at / unit
            let within = at % unit
            var count = Int(min(UInt64(length - done), unit - within))
            let mapped = try lookupUnit(ino, u)
            if mapped == 0 {
                UnsafeMutableRawBufferPointer(rebasing: target[done..<(done + count)]).initializeMemory(as: UInt8.self, repeating: 0)
            } else {
                // Units that lie one after the other on the device are read in one request.
                let physical = unitOffset(storageKind, mapped)
                var k: UInt64 = 1
                while done + count < length {
                    let next = try lookupUnit(ino, u + k)
                    guard next != 0, unitOffset(storageKind, next) == physical + k * unit else { break }
                    count += Int(min(UInt64(length - done - count), unit))
                    k += 1
                }
                try readData(at: physical + within, into: UnsafeMutableRawBufferPointer(rebasing: target[done..<(done + count)]))
            }
            done += count
        }
        return length
    }

    /// Whether a transfer can go to the device as it is: offset, length and memory all on
    /// sector boundaries, as O_DIRECT wants.
    private func isDirect(_ physical: UInt64, _ count: Int, _ address: UnsafeRawPointer?) -> Bool {
        guard let address else { return false }
        return physical % UInt64(sector) == 0 && count % sector == 0 && UInt(bitPattern: address) % UInt(sector) == 0
    }

    /// The whole sectors around `count` bytes at `physical`: where they start, where the bytes
    /// begin inside them, and an aligned buffer that holds them.
    private func bounce(covering physical: UInt64, count: Int) -> (start: UInt64, skip: Int, buffer: IOBuffer) {
        let s = UInt64(sector)
        let start = physical / s * s
        let end = (physical + UInt64(count) + s - 1) / s * s
        return (start, Int(physical - start), IOBuffer(count: Int(end - start)))
    }

    /// A device read that goes straight into `piece` when it is sector-aligned, and through
    /// one bounce buffer when not.
    private func readData(at physical: UInt64, into piece: UnsafeMutableRawBufferPointer) throws(FSError) {
        if isDirect(physical, piece.count, piece.baseAddress) {
            try io { () throws(IOError) in try storage.readBlocking(into: piece, at: physical) }
            return
        }
        let (start, skip, bounce) = bounce(covering: physical, count: piece.count)
        try io { () throws(IOError) in try storage.readBlocking(into: bounce, at: start) }
        piece.copyMemory(from: UnsafeRawBufferPointer(bounce.slice(skip..<(skip + piece.count))))
    }

    /// A device write from `data`, direct when aligned, else read-modify-write of the sectors
    /// it touches.
    private func writeData(at physical: UInt64, from data: UnsafeRawBufferPointer) throws(FSError) {
        if isDirect(physical, data.count, data.baseAddress) {
            try io { () throws(IOError) in try storage.writeBlocking(from: data, at: physical) }
            return
        }
        let (start, skip, bounce) = bounce(covering: physical, count: data.count)
        // Only the first and last sectors can hold bytes outside `data`.
        if skip != 0 || (physical + UInt64(data.count)) % UInt64(sector) != 0 {
            try io { () throws(IOError) in try storage.readBlocking(into: bounce, at: start) }
        }
        bounce.slice(skip..<(skip + data.count)).copyMemory(from: data)
        try io { () throws(IOError) in try storage.writeBlocking(from: bounce, at: start) }
    }

    // MARK: writing

    func write(_ n: UInt32, at offset: UInt64, from data: UnsafeRawBufferPointer) throws(FSError) {
        guard !data.isEmpty else { return }
        var ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(data.count))
        guard !overflow else { throw FSError(.fileTooLarge) }
        try prepareStorage(n, forSize: end)
        ino = try inode(n)
        if ino.storage == .inline {
            let m = try modifyInode(n)
            UnsafeMutableRawBufferPointer(rebasing: m.inlineBytes[Int(offset)..<Int(end)]).copyMemory(from: data)
            if end > m.size { m.size = end }
            m.mtime = wallClockNanoseconds()
            return
        }
        let unit = unitSize(ino)
        let storageKind = ino.storage ?? .blocks
        let kind = unitKind(storageKind)
        guard (end - 1) / unit < Self.capacity(height: InodeRecord.maxHeight) else { throw FSError(.fileTooLarge) }
        var done = 0
        var grew = false
        while done < data.count {
            let at = offset + UInt64(done)
            let u = at / unit
            let within = at % unit
            let count = Int(min(UInt64(data.count - done), unit - within))
            let piece = UnsafeRawBufferPointer(rebasing: data[done..<(done + count)])
            if storageKind == .grains {
                let (written, allocated) = try writeGrains(n, at: at, from: UnsafeRawBufferPointer(rebasing: data[done...]))
                done += written
                grew = grew || allocated
                continue
            }
            var mapped = try lookupUnit(try inode(n), u)
            if mapped == 0 {
                guard let fresh = try newUnit(kind) else {
                    // No small block is free: the small file, all hole so far, moves to file
                    // blocks and the write starts again there.
                    guard try inode(n).allocatedUnits == 0 else { throw FSError(.noSpace(resource: kind.description)) }
                    try resetStorage(n, to: largeStorage)
                    return try write(n, at: offset, from: data)
                }
                mapped = fresh
                let physical = unitOffset(storageKind, mapped)
                if UInt64(count) < unit {
                    // The rest of the unit must read as zeros, whatever it held before.
                    try io { () throws(IOError) in try storage.discardBlocking(at: physical, length: unit) }
                }
                try writeData(at: physical + within, from: piece)
                try setUnit(n, u, mapped)
                grew = true
            } else {
                try writeData(at: unitOffset(storageKind, mapped) + within, from: piece)
            }
            done += count
        }
        if end > ino.size || grew {
            let m = try modifyInode(n)
            if end > m.size { m.size = end }
            m.mtime = wallClockNanoseconds()
        }
    }

    /// Writes into grain map `n` at `at`, up to the end of the grain there, or, at the start
    /// of a run of holes as long as a file block, a whole new file block's worth of grains (so
    /// that data written in order lies in order). A grain another map shares is copied first:
    /// 64 KiB at most, the bytes the write does not cover. Returns the bytes written and
    /// whether grains were mapped.
    func writeGrains(_ n: UInt32, at: UInt64, from data: UnsafeRawBufferPointer) throws(FSError) -> (written: Int, mapped: Bool) {
        let grain = Self.grainSize
        let u = at / grain
        let within = at % grain
        let ino = try inode(n)
        let count = Int(min(UInt64(data.count), grain - within))
        let piece = UnsafeRawBufferPointer(rebasing: data[0..<count])
        let mapped = try lookupUnit(ino, u)
        if mapped == 0 {
            let run = grainsPerBlock
            if within == 0, u % run == 0, UInt64(data.count) >= run * grain, try holes(ino, u + 1, count: run - 1) {
                let first = try allocateGrainBlock(grains: Int(run))
                try writeData(at: grainOffset(first), from: UnsafeRawBufferPointer(rebasing: data[0..<Int(run * grain)]))
                for k in 0..<run { try setUnit(n, u + k, first + UInt32(k)) }
                return (Int(run * grain), true)
            }
            let fresh = try allocateGrain()
            let physical = grainOffset(fresh)
            if UInt64(count) < grain {
                // The rest of the grain must read as zeros, whatever it held before.
                try io { () throws(IOError) in try storage.discardBlocking(at: physical, length: grain) }
            }
            try writeData(at: physical + within, from: piece)
            try setUnit(n, u, fresh)
            return (count, true)
        }
        // A shared path is copied first; the grain is then named by this map's copy too.
        if try pathIsShared(ino, u) { try setUnit(n, u, mapped) }
        guard try !isOwnGrain(try inode(n), u, mapped) else {
            // In place, with the grains after it that are this map's own and lie right after
            // it on the device: one request.
            var length = count
            let physical = grainOffset(mapped)
            var k: UInt64 = 1
            while length < data.count, within + UInt64(length) == k * grain, try ownGrain(n, u + k, at: physical + k * grain) {
                length += Int(min(UInt64(data.count - length), grain))
                k += 1
            }
            try writeData(at: physical + within, from: UnsafeRawBufferPointer(rebasing: data[0..<length]))
            return (length, false)
        }
        let fresh = try allocateGrain()
        let copy = IOBuffer(count: Int(grain))
        if UInt64(count) < grain {
            try io { () throws(IOError) in try storage.readBlocking(into: copy, at: grainOffset(mapped)) }
        }
        copy.slice(Int(within)..<(Int(within) + count)).copyMemory(from: piece)
        try io { () throws(IOError) in try storage.writeBlocking(from: copy, at: grainOffset(fresh)) }
        try setUnit(n, u, fresh)
        try dropReference(mapped, level: 0, owner: mapOwner(ino))
        return (count, false)
    }

    /// Whether grain index `u` of map `n` is mapped at device offset `physical`, to this map
    /// alone (written in place).
    private func ownGrain(_ n: UInt32, _ u: UInt64, at physical: UInt64) throws(FSError) -> Bool {
        let ino = try inode(n)
        let g = try lookupUnit(ino, u)
        guard g != 0, grainOffset(g) == physical else { return false }
        return try isOwnGrain(ino, u, g)
    }

    /// Whether the `count` grain indices from `u` are all holes in `ino`'s map.
    private func holes(_ ino: InodeRecord, _ u: UInt64, count: UInt64) throws(FSError) -> Bool {
        for k in 0..<count where try lookupUnit(ino, u + k) != 0 { return false }
        return true
    }

    /// A new data unit of `kind`; nil when it is a small block and none is free, the failed
    /// try undone, so that the file can go to file blocks instead.
    private func newUnit(_ kind: ResourceKind) throws(FSError) -> UInt32? {
        guard kind == .smallBlock else { return UInt32(try allocateDataUnit(kind)) }
        do {
            return UInt32(try store.attempt { () throws(FSError) -> UInt64 in try allocateDataUnit(kind) })
        } catch {
            guard case .noSpace = error.kind else { throw error }
            return nil
        }
    }

    /// What a regular file past one small block is stored as: grains where blocks can be
    /// shared (format 2), so that it can be cloned and snapshotted; else file blocks.
    var largeStorage: InodeRecord.Storage { header.sharedBlocks ? .grains : .blocks }

    /// Moves a file to the storage its new size needs: inline → small block → file blocks.
    private func prepareStorage(_ n: UInt32, forSize size: UInt64) throws(FSError) {
        let ino = try inode(n)
        switch ino.storage {
        case .inline where size > UInt64(InodeRecord.inlineCapacity):
            let old = Array(ino.inlineBytes[0..<Int(ino.size)])
            // Small only as far as a small block is free: the first write into it falls back.
            let target: InodeRecord.Storage = size <= Self.smallFileLimit && header.blockSize > header.smallBlockSize ? .small : largeStorage
            try resetStorage(n, to: target)
            if !old.isEmpty { try withBytes(old) { (b) throws(FSError) in try write(n, at: 0, from: b) } }
        case .small where size > Self.smallFileLimit:
            let unit = try lookupUnit(ino, 0)
            var old = [UInt8](repeating: 0, count: Int(min(ino.size, Self.smallFileLimit)))
            if unit != 0, !old.isEmpty {
                let bounce = IOBuffer(count: Int(Self.smallFileLimit))
                try io { () throws(IOError) in try storage.readBlocking(into: bounce, at: header.smallBlocks.offset(of: UInt64(unit))) }
                old = Array(bounce.bytes[0..<old.count])
                try freeAtCommit(.smallBlock, UInt64(unit))
            } else if unit != 0 {
                try freeAtCommit(.smallBlock, UInt64(unit))
            }
            try resetStorage(n, to: largeStorage)
            if !old.isEmpty { try withBytes(old) { (b) throws(FSError) in try write(n, at: 0, from: b) } }
        default:
            return
        }
    }

    // MARK: size and space

    func truncate(_ n: UInt32, to size: UInt64) throws(FSError) {
        let ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        let old = ino.size
        if size > old {
            // Beyond it no map could reach the end, and every reader would refuse the inode.
            guard size <= InodeRecord.maxSize(type: .regular, storage: .blocks, on: header) else { throw FSError(.fileTooLarge) }
            try prepareStorage(n, forSize: size)
            let m = try modifyInode(n)
            m.size = size
            m.mtime = wallClockNanoseconds()
            return
        }
        if ino.storage == .inline {
            let m = try modifyInode(n)
            UnsafeMutableRawBufferPointer(rebasing: m.inlineBytes[Int(size)...]).initializeMemory(as: UInt8.self, repeating: 0)
            m.size = size
            m.mtime = wallClockNanoseconds()
            return
        }
        let unit = unitSize(ino)
        // Drop whole units past the new end first, then the size: a crash in between leaves the
        // old size with zeros at its end, never blocks past the end.
        try freeUnits(n, from: (size + unit - 1) / unit)
        try zeroTail(n, from: size)
        let m = try modifyInode(n)
        m.size = size
        m.mtime = wallClockNanoseconds()
        if size == 0 && m.allocatedUnits == 0 {
            // Emptied: start over inline, so that rewriting it small does not take a block.
            try resetStorage(n, to: .inline)
        }
    }

    /// Zeros from `from` to the end of its unit, so that growing the file later reads zeros.
    private func zeroTail(_ n: UInt32, from: UInt64) throws(FSError) {
        let ino = try inode(n)
        let unit = unitSize(ino)
        guard from % unit != 0 else { return }
        let mapped = try lookupUnit(ino, from / unit)
        guard mapped != 0 else { return }
        if ino.storage == .grains {
            // A grain other maps share is copied before it changes: through the write path.
            let zeros = [UInt8](repeating: 0, count: Int(unit - from % unit))
            try withBytes(zeros) { (b) throws(FSError) in try write(n, at: from, from: b) }
            return
        }
        let physical = unitOffset(ino.storage ?? .blocks, mapped) + from % unit
        try zeroBytes(at: physical, count: unit - from % unit)
    }

    private func zeroBytes(at physical: UInt64, count: UInt64) throws(FSError) {
        let s = UInt64(sector)
        var at = physical
        var left = count
        // The unaligned head through a bounce, whole sectors by discard.
        if at % s != 0 {
            let head = min(left, s - at % s)
            let zeros = [UInt8](repeating: 0, count: Int(head))
            try withBytes(zeros) { (b) throws(FSError) in try writeData(at: at, from: b) }
            at += head; left -= head
        }
        let whole = left / s * s
        if whole > 0 {
            try io { () throws(IOError) in try storage.discardBlocking(at: at, length: whole) }
            at += whole; left -= whole
        }
        if left > 0 {
            let zeros = [UInt8](repeating: 0, count: Int(left))
            try withBytes(zeros) { (b) throws(FSError) in try writeData(at: at, from: b) }
        }
    }

    /// Makes `[offset, offset + length)` read as zeros; whole units inside it are freed.
    func discard(_ n: UInt32, at offset: UInt64, length: UInt64) throws(FSError) {
        let ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        let end = min(offset.addingReportingOverflow(length).overflow ? UInt64.max : offset + length, ino.size)
        guard offset < end else { return }
        if ino.storage == .inline {
            let m = try modifyInode(n)
            UnsafeMutableRawBufferPointer(rebasing: m.inlineBytes[Int(offset)..<Int(end)]).initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let unit = unitSize(ino)
        let storageKind = ino.storage ?? .blocks
        let kind = unitKind(storageKind)
        var at = offset
        while at < end {
            let u = at / unit
            let within = at % unit
            let count = min(end - at, unit - within)
            let mapped = try lookupUnit(try inode(n), u)
            if mapped != 0 {
                if count == unit {
                    try setUnit(n, u, 0)
                    if storageKind == .grains {
                        try dropReference(mapped, level: 0, owner: mapOwner(try inode(n)))
                    } else {
                        try freeAtCommit(kind, UInt64(mapped))
                    }
                    try store.commitIfLarge()
                } else if storageKind == .grains {
                    let zeros = [UInt8](repeating: 0, count: Int(count))
                    try withBytes(zeros) { (b) throws(FSError) in try write(n, at: at, from: b) }
                } else {
                    try zeroBytes(at: unitOffset(storageKind, mapped) + within, count: count)
                }
            }
            at += count
        }
    }

    /// Byte ranges that hold data (everything else reads as zeros without costing space).
    func allocatedRanges(_ n: UInt32) throws(FSError) -> [Range<UInt64>] {
        let ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        if ino.storage == .inline { return ino.size > 0 ? [0..<ino.size] : [] }
        let unit = unitSize(ino)
        var ranges: [Range<UInt64>] = []
        try walkMap(ino) { (u, _) throws(FSError) -> Bool in
            let lo = u * unit
            guard lo < ino.size else { return false }
            let hi = min(lo + unit, ino.size)
            if let last = ranges.last, last.upperBound == lo {
                ranges[ranges.count - 1] = last.lowerBound..<hi
            } else {
                ranges.append(lo..<hi)
            }
            return true
        }
        return ranges
    }

    /// Where the bytes of `range` live on the device: (file range, device offset or nil for
    /// a hole, whether other maps share it). For hot paths that drive their own I/O queue: a
    /// shared piece may be read there but not written (a write must copy it first).
    func extents(_ n: UInt32, _ range: Range<UInt64>) throws(FSError) -> [(Range<UInt64>, UInt64?, Bool)] {
        let ino = try inode(n)
        guard ino.type == .regular else { throw FSError(.isDirectory) }
        guard ino.storage != .inline else {
            throw FSError(.invalidArgument("file is stored inline in its inode; read it through the file API"))
        }
        let unit = unitSize(ino)
        let storageKind = ino.storage ?? .blocks
        var out: [(Range<UInt64>, UInt64?, Bool)] = []
        var at = range.lowerBound
        while at < range.upperBound {
            let within = at % unit
            let end = min(range.upperBound, at - within + unit)
            let mapped = try lookupUnit(ino, at / unit)
            let physical: UInt64? = mapped == 0 ? nil : unitOffset(storageKind, mapped) + within
            var shared = false
            if mapped != 0 && storageKind == .grains {
                shared = try !isOwnGrain(ino, at / unit, mapped)
            }
            if let last = out.last, last.0.upperBound == at, last.2 == shared,
               (last.1 == nil && physical == nil) || (last.1.map { $0 + UInt64(last.0.count) } == physical && physical != nil) {
                out[out.count - 1] = (last.0.lowerBound..<end, last.1, shared)
            } else {
                out.append((at..<end, physical, shared))
            }
            at = end
        }
        return out
    }
}
