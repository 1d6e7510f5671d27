import LunarIO

/// The volume lock sector, one sector after the volume header. Its lock record is the
/// metadata lock (`MetadataLock`), taken in one of two modes:
///
/// - **exclusive**: one host works on any metadata (removes, renames, writes, frees, fsck,
///   recovery at open);
/// - **shared** (mode byte 3, multi-writer): the hosts in the holder list work at once, each
///   only on what it holds a finer lock on: directories (their inode's lock record), resource
///   clusters (their header's lock record) and files it has open (locking.md §4).
///
/// A host that wants the lock exclusive while it is shared names itself the waiter; nobody
/// joins the shared holders while a live waiter is named, so the holders drain within their
/// longest hold. Every exclusive acquisition bumps the exclusive epoch: a host joining the
/// shared holders keeps its cached metadata only when the epoch is the one it last saw.
///
/// ```
///   0  32 record header (magic "LVLK")
///  32  64 lock record (free, exclusive, or multi-writer = shared)
///  96   8 exclusive epoch
/// 104   4 waiter slot (0xFFFFFFFF: none)
/// 108   4 reserved
/// 112   8 waiter claim
/// 120   4 shared holder count (0 unless shared)
/// 124 384 shared holders: 32 x (slot u32, claim u64)
/// 508   4 knocks: + 1 by a host that waits to join while the lock is held exclusive, so that
///         the exclusive holder lets go as soon as its current call is done
/// ```
/// Volumes made before the shared mode hold zeros from byte 96 on: epoch 0, no waiter, no
/// holders — the same state.
struct VolumeLockState: Equatable {
    static let lockOffset = 32
    static let epochOffset = 96
    static let waiterSlotOffset = 104
    static let waiterClaimOffset = 112
    static let countOffset = 120
    static let holdersOffset = 124
    static let maxSharedHolders = 32
    static let knocksOffset = 508

    var record: LockRecord
    var epoch: UInt64
    var waiter: LockOwner?
    /// The shared holders; for an exclusive lock, its one holder.
    var holders: [LockOwner]
    var knocks: UInt32 = 0

    var isShared: Bool { record.mode == .multiWriter }

    static func decode(_ b: IOBuffer, at offset: UInt64) throws(FSError) -> VolumeLockState {
        guard let record = LockRecord.decode(b, at: lockOffset), record.mode != .sharedReadOnly else {
            throw .corrupt(RecordKind.volumeLock.name, at: offset, "unknown lock mode \(b.load(lockOffset, as: UInt8.self))")
        }
        let waiterSlot: UInt32 = b.load(waiterSlotOffset)
        let waiterClaim: UInt64 = b.load(waiterClaimOffset)
        let waiter = waiterSlot == LockRecord.noOwner || (waiterSlot == 0 && waiterClaim == 0)
            ? nil : LockOwner(slot: waiterSlot, claim: waiterClaim)
        var holders: [LockOwner] = []
        switch record.mode {
        case .free:
            break
        case .exclusive:
            holders = [LockOwner(slot: record.ownerSlot, claim: record.ownerClaim)]
        case .multiWriter:
            let count = Int(b.load(countOffset, as: UInt32.self))
            guard (1...maxSharedHolders).contains(count) else {
                throw .corrupt(RecordKind.volumeLock.name, at: offset, "shared metadata lock with \(count) holders (1 to \(maxSharedHolders))")
            }
            holders = (0..<count).map { i in
                LockOwner(slot: b.load(holdersOffset + 12 * i), claim: b.load(holdersOffset + 12 * i + 4))
            }
        case .sharedReadOnly:
            break
        }
        return VolumeLockState(record: record, epoch: b.load(epochOffset), waiter: waiter, holders: holders,
                               knocks: b.load(knocksOffset))
    }

    func encode(into b: IOBuffer) {
        record.encode(into: b, at: Self.lockOffset)
        b.store(epoch, at: Self.epochOffset)
        b.store(waiter?.slot ?? LockRecord.noOwner, at: Self.waiterSlotOffset)
        b.store(UInt32(0), at: Self.waiterSlotOffset + 4)
        b.store(waiter?.claim ?? 0, at: Self.waiterClaimOffset)
        let shared = isShared ? holders : []
        b.store(UInt32(shared.count), at: Self.countOffset)
        for i in 0..<Self.maxSharedHolders {
            let h = i < shared.count ? shared[i] : LockOwner(slot: 0, claim: 0)
            b.store(h.slot, at: Self.holdersOffset + 12 * i)
            b.store(h.claim, at: Self.holdersOffset + 12 * i + 4)
        }
        b.store(knocks, at: Self.knocksOffset)
    }
}
