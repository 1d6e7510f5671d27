import LunarIO

/// One host slot of the heartbeat region (slot `i` at heartbeat offset + i × 4 KiB). A host
/// claims a free (or dead) slot by compare-and-write, owns the journal of the same index, and
/// keeps `counter` moving while alive.
///
/// ```
///   0 32 record header (magic "LHBT")
///  32  4 slot index
///  36  4 state           0 free, 1 live, 2 being recovered by another host
///  40  8 claim generation bumped at every claim (kept when the slot is freed); lock
///                        records name it
///  48  8 counter         heartbeat counter: v1 bumps it at each claim; the multi-host
///                        heartbeat bumps it every interval
///  56 16 machine         the holder machine's boot ID (/proc/sys/kernel/random/boot_id): a
///                        holder on the observer's own machine is judged by its presence
///                        token at once, any other by heartbeat silence
///  72 64 host name       UTF-8, NUL-padded
/// 136  4 process id      of the holder, informational
/// 140  4 recovered by    slot recovering this one (state 2), else 0xFFFFFFFF
/// 144  4 interval        the holder's heartbeat interval in milliseconds (0: none running),
///                        so an observer knows how long silence must last to mean death
/// ```
struct HeartbeatSlot: Sendable, Equatable {
    enum State: UInt32, Sendable { case free = 0, live = 1, recovering = 2 }

    var slot: UInt32
    var state: State
    var claimGeneration: UInt64
    var counter: UInt64
    var host: VolumeID
    var hostName: String
    var pid: UInt32
    var recoveredBy: UInt32
    var intervalMillis: UInt32 = 0

    static func empty(_ slot: UInt32) -> HeartbeatSlot {
        HeartbeatSlot(slot: slot, state: .free, claimGeneration: 0, counter: 0, host: .zero, hostName: "", pid: 0,
                      recoveredBy: LockRecord.noOwner)
    }

    /// Back to free, keeping the claim generation moving so that lock records naming an
    /// earlier claim of this slot stay recognizably stale.
    mutating func release() {
        self = HeartbeatSlot(slot: slot, state: .free, claimGeneration: claimGeneration, counter: counter, host: .zero,
                             hostName: "", pid: 0, recoveredBy: LockRecord.noOwner)
    }

    func encode(into b: IOBuffer) {
        b.store(slot, at: 32)
        b.store(state.rawValue, at: 36)
        b.store(claimGeneration, at: 40)
        b.store(counter, at: 48)
        b.storeBytes(host.bytes, at: 56, padTo: 16)
        b.storeBytes(Array(hostName.utf8.prefix(64)), at: 72, padTo: 64)
        b.store(pid, at: 136)
        b.store(recoveredBy, at: 140)
        b.store(intervalMillis, at: 144)
    }

    /// Slot `index`'s record, its fields range-checked: a record naming another slot, a state
    /// no host writes or a recovering slot that names no recoverer is damage.
    static func decode(_ b: IOBuffer, index: Int, at offset: UInt64) throws(FSError) -> HeartbeatSlot {
        guard let state = State(rawValue: b.load(36)) else {
            throw .corrupt(RecordKind.heartbeat.name, at: offset, "unknown state \(b.load(36, as: UInt32.self))")
        }
        let named: UInt32 = b.load(32)
        guard named == UInt32(index) else {
            throw .corrupt(RecordKind.heartbeat.name, at: offset, "names itself slot \(named), stored as slot \(index)")
        }
        let recoverer: UInt32 = b.load(140)
        if state == .recovering && recoverer == LockRecord.noOwner {
            throw .corrupt(RecordKind.heartbeat.name, at: offset, "being recovered, by no slot")
        }
        return HeartbeatSlot(slot: b.load(32), state: state, claimGeneration: b.load(40), counter: b.load(48),
                             host: VolumeID(bytes: b.loadBytes(56, count: 16)), hostName: b.loadString(72, width: 64),
                             pid: b.load(136), recoveredBy: b.load(140), intervalMillis: b.load(144))
    }
}
