import LunarIO

/// An on-disk lock, embedded in the object it guards (the volume lock sector, a resource
/// cluster header, a file descriptor). It changes only by compare-and-write of its sector.
///
/// 64 bytes at the record's lock offset:
/// ```
///  0  1 mode            0 free, 1 exclusive, 2 shared read-only, 3 multi-writer
///  1  3 reserved
///  4  4 owner slot      host slot of the holder; 0xFFFFFFFF when free
///  8  8 owner claim     the holder slot's claim generation when it took the lock
/// 16  8 lock generation bumped at every change of this lock
/// 24 16 owner host      the holder's host UUID
/// 40  8 acquired        nanoseconds since the Unix epoch (informational only)
/// 48 16 reserved
/// ```
public struct LockRecord: Sendable, Equatable {
    public enum Mode: UInt8, Sendable {
        case free = 0, exclusive = 1, sharedReadOnly = 2, multiWriter = 3
    }

    public static let noOwner: UInt32 = 0xFFFF_FFFF
    static let size = 64

    public var mode: Mode
    public var ownerSlot: UInt32
    public var ownerClaim: UInt64
    public var lockGeneration: UInt64
    public var ownerHost: VolumeID
    public var acquired: Int64

    public static let free = LockRecord(mode: .free, ownerSlot: noOwner, ownerClaim: 0, lockGeneration: 0, ownerHost: .zero, acquired: 0)

    func encode(into b: IOBuffer, at o: Int) {
        b.store(mode.rawValue, at: o)
        b.storeBytes([UInt8](), at: o + 1, padTo: 3)
        b.store(ownerSlot, at: o + 4)
        b.store(ownerClaim, at: o + 8)
        b.store(lockGeneration, at: o + 16)
        b.storeBytes(ownerHost.bytes, at: o + 24, padTo: 16)
        b.store(acquired, at: o + 40)
        b.storeBytes([UInt8](), at: o + 48, padTo: 16)
    }

    /// nil when the mode byte is not one this version knows.
    static func decode(_ b: IOBuffer, at o: Int) -> LockRecord? {
        guard let mode = Mode(rawValue: b.load(o, as: UInt8.self)) else { return nil }
        return LockRecord(mode: mode, ownerSlot: b.load(o + 4), ownerClaim: b.load(o + 8), lockGeneration: b.load(o + 16),
                          ownerHost: VolumeID(bytes: b.loadBytes(o + 24, count: 16)), acquired: b.load(o + 40))
    }
}

/// Who holds a lock: a host slot and that slot's claim generation when it took the lock (so a
/// lock outlives neither its holder's death nor a new claim of the slot).
struct LockOwner: Equatable, Hashable {
    var slot: UInt32
    var claim: UInt64
}
