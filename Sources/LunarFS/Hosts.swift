import Glibc
import LunarIO

/// One host slot as an observer sees it.
public struct HostSlotInfo: Sendable, Equatable {
    public enum Liveness: String, Sendable {
        /// Its counter moved while we watched.
        case alive
        /// Its counter stood still for the whole lock-break timeout.
        case dead
        /// Watched for less than the timeout without seeing a renewal.
        case unknown
    }

    public var slot: UInt32
    public var state: String
    public var hostName: String
    public var pid: UInt32
    public var claimGeneration: UInt64
    public var counter: UInt64
    /// The holder's heartbeat interval; nil when it runs none.
    public var heartbeatInterval: Double?
    public var liveness: Liveness
    /// Whether a process on this machine holds the slot's presence token right now.
    public var runningHere: Bool
    public var observedSeconds: Double
}

extension Volume {
    /// How compare-and-write is made atomic on the LUN at `path` (nil: not known for this
    /// kind of storage). On an iSCSI LUN this asks the target once (a COMPARE AND WRITE that
    /// cannot match, so nothing is written).
    public static func compareAndWriteMethod(path: String) throws(FSError) -> CompareAndWriteMethod? {
        let device: any BlockStorage
        do { device = try openStorage(path, options: .init(readOnly: true)) } catch { throw FSError(.io(error), path: path) }
        defer { device.closeStorage() }
        return device.compareAndWriteMethodIfKnown
    }

    /// The volume's host slots in use, watched for `observe` seconds (by default long enough to
    /// see one renewal of the slowest holder, at most 10 s) on this process's monotonic clock.
    public static func hosts(path: String, observe: Double? = nil) throws(FSError) -> [HostSlotInfo] {
        let device: any BlockStorage
        do { device = try openStorage(path, options: .init(readOnly: true)) } catch { throw FSError(.io(error), path: path) }
        defer { device.closeStorage() }
        let (header, _, _) = try Formatter.readHeader(device)
        func snapshot() throws(FSError) -> [HeartbeatSlot] { try VolumeCore.readAllSlots(device, header) }
        let before = try snapshot()
        let busy = before.filter { $0.state != .free }
        let slowest = busy.map { Double($0.intervalMillis) / 1000 }.max() ?? 0
        let watch = observe ?? min(10, max(0.2, slowest * 1.5))
        let start = monotonicSeconds()
        if !busy.isEmpty && watch > 0 { usleep(UInt32(watch * 1_000_000)) }
        let after = try snapshot()
        let watched = monotonicSeconds() - start
        return busy.map { b in
            let a = after[Int(b.slot)]
            let interval = b.intervalMillis > 0 ? Double(b.intervalMillis) / 1000 : nil
            let liveness: HostSlotInfo.Liveness
            if a.counter != b.counter || a.claimGeneration != b.claimGeneration {
                liveness = .alive
            } else if let interval, watched >= OpenOptions.lockBreakTimeout(interval: interval) {
                liveness = .dead
            } else {
                liveness = .unknown
            }
            // Presence tokens live on a local device; a LUN over the network has none.
            let here = device.localDevice.flatMap { try? $0.isPresenceHeldElsewhere(b.slot) } ?? false
            return HostSlotInfo(slot: b.slot, state: "\(a.state)", hostName: a.hostName, pid: a.pid,
                                claimGeneration: a.claimGeneration, counter: a.counter, heartbeatInterval: interval,
                                liveness: liveness, runningHere: here, observedSeconds: watched)
        }
    }

    /// The hosts alive on the volume at `path`, judged as a host opening it judges them
    /// (`LivenessJudge`): a holder on this machine at once, by its presence token; any other by
    /// watching its heartbeat until the counter moves (alive) or stands still for the lock-break
    /// timeout (dead). Returns as soon as some host is judged alive (with every host alive by
    /// then), or an empty list once every slot in use is judged dead; slots still unjudged after
    /// 10 minutes (a damaged interval) are returned as unknown, the safe answer. `waiting` is
    /// called once, with the slots still being judged and the most seconds that can take,
    /// before waiting. A damaged slot is left out, as `readAllSlots` leaves it: its holder can
    /// no longer renew it and fences itself.
    public static func liveHosts(path: String, waiting: ([HostSlotInfo], Double) -> Void = { _, _ in }) throws(FSError) -> [HostSlotInfo] {
        let device: any BlockStorage
        do { device = try openStorage(path, options: .init(readOnly: true)) } catch { throw FSError(.io(error), path: path) }
        defer { device.closeStorage() }
        do throws(FSError) {
            let (header, _, _) = try Formatter.readHeader(device)
            let judge = LivenessJudge(storage: device, header: header, device: PresenceTokens(device: device.localDevice),
                                      machine: LivenessJudge.thisMachine(), defaultInterval: OpenOptions.toolHeartbeatInterval)
            let watch = SlotWatch()
            let start = monotonicSeconds()
            var announced = false
            while true {
                var alive: [HeartbeatSlot] = []
                var pending: [HeartbeatSlot] = []
                for slot in try VolumeCore.readAllSlots(device, header) where slot.state != .free {
                    switch try judge.verdict(slot, watch: watch) {
                    case .alive: alive.append(slot)
                    case .unknown: pending.append(slot)
                    case .dead: break
                    }
                }
                let watched = monotonicSeconds() - start
                func info(_ slot: HeartbeatSlot, _ liveness: HostSlotInfo.Liveness) -> HostSlotInfo {
                    let here = slot.host == judge.machine && ((try? judge.device.heldElsewhere(slot.slot)) ?? nil) == true
                    return HostSlotInfo(slot: slot.slot, state: "\(slot.state)", hostName: slot.hostName, pid: slot.pid,
                                        claimGeneration: slot.claimGeneration, counter: slot.counter,
                                        heartbeatInterval: slot.intervalMillis > 0 ? Double(slot.intervalMillis) / 1000 : nil,
                                        liveness: liveness, runningHere: here, observedSeconds: watched)
                }
                if !alive.isEmpty || pending.isEmpty { return alive.map { info($0, .alive) } }
                let longest = pending.map { OpenOptions.lockBreakTimeout(interval: judge.interval(of: $0)) }.max() ?? 0
                guard watched < 600 else { return pending.map { info($0, .unknown) } }
                if !announced {
                    announced = true
                    waiting(pending.map { info($0, .unknown) }, min(longest, 600))
                }
                let shortest = pending.map { judge.interval(of: $0) }.min() ?? 1
                usleep(UInt32(min(max(shortest / 4, 0.02), 0.25) * 1_000_000))
            }
        } catch {
            throw error.at(path)
        }
    }
}
