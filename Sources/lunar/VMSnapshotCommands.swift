import ArgumentParser
import Foundation
import LunarDisk
import LunarFS
import LunarIO
import LunarVMM

/// A stored VM as its snapshot commands need it: its config, its writable disks, and where its
/// control socket would be if it runs on this host.
struct VMDisks {
    var config: VMConfig
    var socket: String

    /// Reads the VM's config without joining the volume (a read-only open takes no lock a
    /// running VMM would have to wait for).
    init(lun: String, name: String) throws {
        (config, socket) = try withVolume(lun, readOnly: true) { volume in
            let config = try VMLibrary.load(name, on: volume)
            return (config, VMControl.socketPath(volume: volume.header.uuid, vm: config.name))
        }
    }

    func disks(on volume: Volume) -> [VirtualDisk] {
        // Read-only disks never change, and undo disks are as they were before every run.
        config.disks.filter { !$0.readOnly && !$0.undo }.map { VirtualDisk(volume, path: config.path($0.file)) }
    }

    /// The VMM's answer when the VM runs on this host, nil when it does not run here.
    func ask(_ request: JSONValue) throws -> JSONValue? {
        do throws(VMControlError) {
            return try VMControl.request(request, path: socket)
        } catch {
            throw CLIError("VM \(config.name): \(error)")
        }
    }
}

/// The VMM's answer, its error (if any) thrown.
func checked(_ answer: JSONValue, vm: String) throws -> JSONValue {
    guard answer["ok"]?.boolValue == true else {
        throw CLIError("VM \(vm): \(answer["error"]?.stringValue ?? "the VMM refused the request")")
    }
    return answer
}

struct VMSnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Take a snapshot of all of a VM's disks at one point, running or not.",
        discussion: """
            Every writable disk gets snapshot NAME (see `lunar disk snapshots`). A VM running on \
            this host is asked through its control socket: its disks stop taking requests, what \
            is in flight completes, the snapshots are taken, and the disks go on; the pause is \
            reported (stun_ms). The point is crash-consistent across the disks. A VM running on \
            another host is refused with that host's name: run the command there.

            Examples:
              lunar vm snapshot vol.img web01 before-upgrade
              lunar vm snapshot vol.img web01 nightly-2026-12-06 --json
            """)

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath) var lun: String
    @Argument(help: "VM name.") var name: String
    @Argument(help: "The snapshot's name: letters, digits, '.', '_', '-'.") var snapshot: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let vm = try VMDisks(lun: lun, name: name)
            let start = monotonicSeconds()
            var disks: [String]
            var stun: String?
            if let answer = try vm.ask(.object(["op": .string("snapshot"), "name": .string(snapshot)])) {
                let done = try checked(answer, vm: name)
                disks = done["disks"]?.arrayValue?.compactMap(\.stringValue) ?? []
                if case .number(let text) = done["stun_ms"] { stun = text }
            } else {
                disks = try withVolume(lun, readOnly: false) { volume in
                    let targets = vm.disks(on: volume)
                    guard !targets.isEmpty else { throw CLIError("VM \(name) has no persistent writable disk to snapshot") }
                    do {
                        _ = try VirtualDisk.snapshot(snapshot, of: targets)
                    } catch DiskError.fs(let e) where e.kind.isBusy {
                        throw CLIError("VM \(name) runs on another host (\(e)); run `lunar vm snapshot` there")
                    }
                    return targets.map(\.path)
                }
            }
            let ms = (monotonicSeconds() - start) * 1000
            if json {
                return printJSON(["vm": name, "snapshot": snapshot, "disks": disks, "running": stun != nil,
                                  "stun_ms": stun.flatMap(Double.init).map { $0 as Any } ?? NSNull(),
                                  "elapsed_ms": (ms * 1000).rounded() / 1000])
            }
            let pause = stun.map { ", the running VM's disks paused \($0) ms" } ?? ""
            print("snapshot \(snapshot) of VM \(name): \(disks.count) disk\(disks.count == 1 ? "" : "s")\(pause)")
        }
    }
}

struct VMSnapshotsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshots", abstract: "List the snapshots of a VM's disks.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath) var lun: String
    @Argument(help: "VM name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let vm = try VMDisks(lun: lun, name: name)
            let lists = try withVolume(lun, readOnly: true) { volume in
                try vm.disks(on: volume).map { disk in (disk.path, try disk.snapshots()) }
            }
            if json {
                return printJSON(lists.map { ["disk": $0.0, "snapshots": $0.1.map(snapshotJSON)] as [String: Any] })
            }
            for (path, list) in lists {
                print("\(path):" + (list.isEmpty ? " no snapshots" : ""))
                for s in list {
                    print("  \(s.name)  \(shortTime(s.created))  unique \(ByteSize.format(s.uniqueBytes)), shared \(ByteSize.format(s.sharedBytes))"
                          + (s.isCurrent ? "  <- the disk now" : ""))
                }
            }
        }
    }
}

struct VMRevertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revert", abstract: "Make every disk of a stopped VM what a snapshot holds.",
        discussion: "A running VM is refused, with where it runs: stop it first.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath) var lun: String
    @Argument(help: "VM name.") var name: String
    @Argument(help: "The snapshot.") var snapshot: String

    func run() async throws {
        try reportingErrors {
            let vm = try VMDisks(lun: lun, name: name)
            if try vm.ask(.object(["op": .string("status")])) != nil {
                throw CLIError("VM \(name) is running on this host: stop it first (`lunar vm stop \(lun) \(name)`), then revert")
            }
            try withVolume(lun, readOnly: false) { volume in
                let disks = vm.disks(on: volume)
                // Every disk has the snapshot before any is reverted.
                for disk in disks where try disk.tree().entry(snapshot) == nil {
                    throw CLIError("\(disk.path) has no snapshot '\(snapshot)' (list them with `lunar vm snapshots \(lun) \(name)`)")
                }
                for disk in disks {
                    do {
                        try disk.revert(to: snapshot)
                    } catch DiskError.fs(let e) where e.kind.isBusy {
                        throw CLIError("VM \(name) runs on another host (\(e)): stop it there first")
                    }
                }
            }
            print("VM \(name) is \(snapshot) again")
        }
    }
}

struct VMDeleteSnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete-snapshot", abstract: "Delete a snapshot of every disk of a VM; the VM may run.",
        discussion: "Blocks no other snapshot or clone holds are freed; nothing is copied and a running VM is not paused.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath) var lun: String
    @Argument(help: "VM name.") var name: String
    @Argument(help: "The snapshot.") var snapshot: String

    func run() async throws {
        try reportingErrors {
            let vm = try VMDisks(lun: lun, name: name)
            try withVolume(lun, readOnly: false) { volume in
                let disks = vm.disks(on: volume).filter { (try? $0.tree().entry(snapshot)) != nil }
                guard !disks.isEmpty else { throw CLIError("VM \(name) has no snapshot '\(snapshot)' (list them with `lunar vm snapshots \(lun) \(name)`)") }
                for disk in disks { try disk.deleteSnapshot(snapshot) }
            }
            print("deleted snapshot \(snapshot) of VM \(name)")
        }
    }
}

struct VMStopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a VM running on this host (as Ctrl-A x in its console does).")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath) var lun: String
    @Argument(help: "VM name.") var name: String

    func run() async throws {
        try reportingErrors {
            let vm = try VMDisks(lun: lun, name: name)
            guard let answer = try vm.ask(.object(["op": .string("stop")])) else {
                throw CLIError("VM \(name) does not run on this host")
            }
            _ = try checked(answer, vm: name)
            print("VM \(name) is stopping")
        }
    }
}

extension FSError.Kind {
    var isBusy: Bool { if case .busy = self { true } else { false } }
}
