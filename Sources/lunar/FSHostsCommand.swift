import ArgumentParser
import Foundation
import LunarFS
import LunarIO

struct FSHostsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hosts",
        abstract: "List the hosts that have a volume open, and whether each is alive.",
        discussion: """
            Reads the heartbeat region, watches it (by default long enough to see every holder \
            renew once, at most 10 s), and reads it again. A host is alive when its counter moved, \
            dead when it stood still for the whole lock-break timeout (5 heartbeat intervals; \
            pass --observe to watch that long), and unknown otherwise. "here" marks holders that \
            are processes on this machine.
            """
    )

    @Argument(help: "Image file or block device holding the volume.")
    var lun: String

    @Option(parsing: .unconditional, help: "Seconds to watch the heartbeats.")
    var observe: Double?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        if let observe, !(0...3600).contains(observe) { throw ValidationError("--observe must be from 0 to 3600 seconds") }
    }

    func run() async throws {
        try reportingErrors {
            let lun = lunArgument(self.lun)
            let hosts: [HostSlotInfo]
            let method: CompareAndWriteMethod?
            do throws(FSError) {
                hosts = try Volume.hosts(path: lun, observe: observe)
                method = try Volume.compareAndWriteMethod(path: lun)
            } catch { throw error.naming(lun) }
            if json {
                return printJSON(["compare_and_write": method?.rawValue ?? "unknown", "hosts": hosts.map { h in
                    [
                        "slot": h.slot, "state": h.state, "host": h.hostName, "pid": h.pid,
                        "claim_generation": h.claimGeneration, "counter": h.counter,
                        "heartbeat_interval_s": h.heartbeatInterval ?? 0, "liveness": h.liveness.rawValue,
                        "here": h.runningHere, "observed_s": h.observedSeconds,
                    ] as [String: Any]
                }] as [String: Any])
            }
            print("compare-and-write: \(method?.summary ?? "unknown for this kind of LUN")")
            guard !hosts.isEmpty else { return print("no host has \(lun) open") }
            let widths = [6, 11, 20, 9, 8, 10, 10, 8]
            print(zip(["slot", "state", "host", "pid", "claim", "counter", "interval", "alive"], widths).map { pad($0, $1) }.joined())
            for h in hosts {
                let interval = h.heartbeatInterval.map { String(format: "%.2gs", $0) } ?? "-"
                let cells = ["\(h.slot)", h.state, h.hostName, "\(h.pid)", "\(h.claimGeneration)", "\(h.counter)", interval,
                             h.liveness.rawValue + (h.runningHere ? " (here)" : "")]
                print(zip(cells, widths).map { pad($0, $1) }.joined())
            }
            if let watched = hosts.first?.observedSeconds { print(String(format: "watched for %.1f s", watched)) }
        }
    }
}
