import Glibc
import LunarIO

/// Who is alive, as this host judges it.
///
/// A slot's host field holds the holder machine's boot ID. A holder on this very machine (same
/// boot ID) is alive exactly while its process holds the slot's presence token: the kernel drops
/// the token when the process exits or is killed, so no waiting is needed. A holder elsewhere
/// is dead only when its heartbeat counter stands still for the lock-break timeout (5 of its
/// intervals) on this host's monotonic clock; clocks of different hosts are never compared.
struct LivenessJudge {
    let storage: any BlockStorage
    let header: VolumeHeader
    let device: PresenceTokens
    /// This machine's boot ID.
    let machine: VolumeID
    /// Interval assumed for a holder that recorded none.
    let defaultInterval: Double

    /// The machine identity for slot records: the running kernel's boot ID, unless the
    /// environment names another (`LUNAR_MACHINE_ID`: any text). Processes with different
    /// identities judge each other as machines apart do, by heartbeats alone — how tests and
    /// containers sharing one kernel stand in for separate machines.
    static func thisMachine() -> VolumeID {
        if let name = getenv("LUNAR_MACHINE_ID").map({ String(cString: $0) }), !name.isEmpty {
            let text = Array(name.utf8)
            let low = SipHash24.hash(text, key: [UInt8](repeating: 0x4C, count: 16))
            let high = SipHash24.hash(text, key: [UInt8](repeating: 0x55, count: 16))
            return VolumeID(bytes: (0..<16).map { i in UInt8(truncatingIfNeeded: (i < 8 ? low : high) >> (8 * UInt64(i % 8))) })
        }
        let fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .random() }
        defer { close(fd) }
        var text = [UInt8](repeating: 0, count: 64)
        let n = text.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        let hex = text.prefix(max(0, n)).filter { $0 != 0x2D && $0 != 0x0A }
        guard hex.count == 32 else { return .random() }
        var bytes: [UInt8] = []
        var i = 0
        while i < 32 {
            guard let b = UInt8(String(decoding: hex[i..<(i + 2)], as: UTF8.self), radix: 16) else { return .random() }
            bytes.append(b)
            i += 2
        }
        return VolumeID(bytes: bytes)
    }

    /// Judges `s` without waiting, from what `watch` saw of it before: alive once its counter
    /// was seen moving, dead once it stood still for the lock-break timeout, unknown before.
    func verdict(_ s: HeartbeatSlot, watch: SlotWatch) throws(FSError) -> HostSlotInfo.Liveness {
        if s.host == machine, let held = try device.heldElsewhere(s.slot) { return held ? .alive : .dead }
        let now = monotonicSeconds()
        guard let previous = watch.seen[s.slot], previous.claim == s.claimGeneration, previous.state == s.state else {
            watch.seen[s.slot] = .init(claim: s.claimGeneration, state: s.state, counter: s.counter, since: now, moved: false)
            return .unknown
        }
        if previous.counter != s.counter {
            watch.seen[s.slot] = .init(claim: s.claimGeneration, state: s.state, counter: s.counter, since: now, moved: true)
            return .alive
        }
        if now - previous.since >= OpenOptions.lockBreakTimeout(interval: interval(of: s)) { return .dead }
        return previous.moved ? .alive : .unknown
    }

    func interval(of s: HeartbeatSlot) -> Double {
        s.intervalMillis > 0 ? Double(s.intervalMillis) / 1000 : defaultInterval
    }
}

/// What one observer has seen of each slot's counter, on its own monotonic clock.
final class SlotWatch {
    struct Sighting {
        var claim: UInt64
        var state: HeartbeatSlot.State
        var counter: UInt64
        /// When the counter was first seen at this value.
        var since: Double
        /// Whether it was ever seen to change.
        var moved: Bool
    }
    var seen: [UInt32: Sighting] = [:]
}

/// Presence tokens where the LUN is a local device; where it is not (a LUN reached over the
/// network), there are none, and every holder is judged by its heartbeat.
struct PresenceTokens {
    let device: BlockDevice?

    var canTell: Bool { device != nil }

    /// Takes slot `s`'s token; true when there are no tokens to take.
    func tryHold(_ s: UInt32) throws(FSError) -> Bool {
        guard let device else { return true }
        return try io { () throws(IOError) in try device.tryHoldPresence(s) }
    }

    func release(_ s: UInt32) { device?.releasePresence(s) }

    /// Whether another process of this machine holds slot `s`'s token; nil when there are none.
    func heldElsewhere(_ s: UInt32) throws(FSError) -> Bool? {
        guard let device else { return nil }
        return try io { () throws(IOError) in try device.isPresenceHeldElsewhere(s) }
    }
}
