import ArgumentParser
import Foundation
import LunarDisk
import LunarFS
import LunarIO
import LunarVMM

struct DiskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Virtual disks: snapshots, revert, linked clones, changed blocks, resize, import and export.",
        discussion: """
            A disk is a file of a LunarFS volume, written LUN:/path. Its snapshots share its \
            blocks (a format 2 volume): taking one, reverting, deleting one and a linked clone \
            copy no data and cost the same whatever the disk holds; a write after a snapshot \
            copies 64 KiB at most. A snapshot is named LUN:/path@NAME where a disk is taken.

            Examples:
              lunar disk create vol.img:/vms/web01/disk0.raw --size 20G
              lunar disk import debian.raw vol.img:/vms/web01/disk0.raw
              lunar disk info vol.img:/vms/web01/disk0.raw
              lunar disk resize vol.img:/vms/web01/disk0.raw +10G
              lunar disk snapshot vol.img:/vms/web01/disk0.raw before-upgrade
              lunar disk snapshots vol.img:/vms/web01/disk0.raw
              lunar disk changes vol.img:/vms/web01/disk0.raw --from before-upgrade --json
              lunar disk revert vol.img:/vms/web01/disk0.raw before-upgrade
              lunar disk clone --linked vol.img:/templates/debian.raw@golden vol.img:/vms/web02/disk0.raw
              lunar disk export vol.img:/vms/web01/disk0.raw@before-upgrade backup.raw
            """,
        subcommands: [DiskCreateCommand.self, DiskInfoCommand.self, DiskSnapshotCommand.self, DiskSnapshotsCommand.self, DiskRevertCommand.self,
                      DiskDeleteSnapshotCommand.self, DiskCloneCommand.self, DiskResizeCommand.self, DiskChangesCommand.self,
                      DiskImportCommand.self, DiskExportCommand.self]
    )
}

/// `LUN:/path` or `LUN:/path@SNAPSHOT`.
struct DiskRef {
    var ref: VolumeRef
    var snapshot: String?

    static func parse(_ argument: String, command: String) throws(CLIError) -> DiskRef {
        var text = argument
        var snapshot: String?
        if let at = argument.lastIndex(of: "@"), !argument[argument.index(after: at)...].contains("/") {
            snapshot = String(argument[argument.index(after: at)...])
            text = String(argument[..<at])
        }
        return DiskRef(ref: try VolumeRef.required(text, command: command), snapshot: snapshot)
    }

    /// `LUN:/path` of a disk a command changes; `LUN:/path@NAME` is refused, saying `why`
    /// (of snapshot NAME) and what to do instead.
    static func changing(_ argument: String, command: String, _ why: (String) -> String) throws(CLIError) -> VolumeRef {
        let disk = try parse(argument, command: command)
        if let snapshot = disk.snapshot { throw CLIError("\(argument): \(why(snapshot))") }
        return disk.ref
    }
}

/// Opens the disk's volume for a change, runs `body` on the disk. A file system error comes
/// out as itself, so that it names the path as the user writes it, `LUN:/path`.
/// A disk another host holds open is refused with that host named; a VM's disk (in
/// `/vms/NAME/`) also names the VM and what to do instead.
func withDisk<T>(_ ref: VolumeRef, readOnly: Bool = false, _ body: (VirtualDisk) throws -> T) throws -> T {
    do {
        return try withVolume(ref.lun, readOnly: readOnly) { volume in
            do {
                return try body(VirtualDisk(volume, path: ref.path))
            } catch DiskError.fs(let error) {
                throw error // named LUN:/path by withVolume
            }
        }
    } catch let error as FSError where error.kind.isBusy {
        guard let vm = owningVM(ref.path) else { throw error }
        // The generic advice ("close it there") does not fit a VM; what does follows.
        var why = error.description
        if let advice = why.range(of: "; close it there") { why = String(why[..<advice.lowerBound]) }
        throw CLIError("\(why): it is VM \(vm)'s disk; "
                       + "stop the VM first (`lunar vm stop \(ref.lun) \(vm)` on the host running it), "
                       + "or snapshot it while it runs with `lunar vm snapshot \(ref.lun) \(vm) NAME`")
    }
}

/// The VM whose folder holds the disk at `path`, if it lies in one.
func owningVM(_ path: String) -> String? {
    let parts = path.split(separator: "/")
    guard parts.count >= 3, "/" + parts[0] == VMLibrary.root else { return nil }
    return String(parts[1])
}

func snapshotJSON(_ s: SnapshotInfo) -> [String: Any] {
    ["name": s.name, "created": isoTime(s.created), "parent": s.parent.map { $0 as Any } ?? NSNull(),
     "allocated": s.allocatedBytes, "unique": s.uniqueBytes, "shared": s.sharedBytes, "current": s.isCurrent]
}

struct DiskCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a new thin disk.")

    @Argument(help: "LUN:/path of the new disk (its folder must exist).") var path: String
    @Option(parsing: .unconditional, help: "Size, e.g. 20G.", transform: ByteSize.parse) var size: ByteSize

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk create")
            _ = try withVolume(ref.lun, readOnly: false) { try VirtualDisk.create($0, path: ref.path, size: size.bytes) }
            print("made \(ref.display), \(ByteSize.format(size.bytes)), thin")
        }
    }
}

struct DiskSnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshot", abstract: "Take a snapshot of a disk.")

    @Argument(help: "LUN:/path of the disk.") var path: String
    @Argument(help: "The snapshot's name: letters, digits, '.', '_', '-'.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk snapshot")
            let start = monotonicSeconds()
            let info = try withDisk(ref) { try $0.snapshot(name) }
            let ms = (monotonicSeconds() - start) * 1000
            if json {
                var object = snapshotJSON(info)
                object["disk"] = ref.display
                return printJSON(object)
            }
            print("snapshot \(ref.display)@\(name) taken (\(String(format: "%.1f", ms)) ms with opening the volume)")
        }
    }
}

struct DiskSnapshotsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshots",
                                                    abstract: "List a disk's snapshots: the tree, when, and the bytes each holds alone.")

    @Argument(help: "LUN:/path of the disk.") var path: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk snapshots")
            let list = try withDisk(ref, readOnly: true) { try $0.snapshots() }
            if json { return printJSON(list.map(snapshotJSON)) }
            if list.isEmpty { return print("\(ref.display) has no snapshots (take one with `lunar disk snapshot \(ref.display) NAME`)") }
            // The tree, children under their parent.
            func show(_ parent: String?, depth: Int) {
                for s in list where s.parent == parent {
                    let mark = s.isCurrent ? "  <- the disk now" : ""
                    print(String(repeating: "  ", count: depth) + "\(s.name)  \(shortTime(s.created))  "
                          + "unique \(ByteSize.format(s.uniqueBytes)), shared \(ByteSize.format(s.sharedBytes))\(mark)")
                    show(s.name, depth: depth + 1)
                }
            }
            show(nil, depth: 0)
        }
    }
}

struct DiskRevertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revert",
                                                    abstract: "Make a disk what a snapshot holds; what it held since is gone.")

    @Argument(help: "LUN:/path of the disk.") var path: String
    @Argument(help: "The snapshot.") var name: String

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk revert")
            try withDisk(ref) { try $0.revert(to: name) }
            print("\(ref.display) is \(name) again")
        }
    }
}

struct DiskDeleteSnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete-snapshot",
                                                    abstract: "Delete a snapshot; blocks nothing else holds are freed, nothing is copied.")

    @Argument(help: "LUN:/path of the disk.") var path: String
    @Argument(help: "The snapshot.") var name: String

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk delete-snapshot")
            try withDisk(ref) { try $0.deleteSnapshot(name) }
            print("deleted \(ref.display)@\(name)")
        }
    }
}

struct DiskCloneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clone",
                                                    abstract: "Make a new disk from a disk or snapshot: linked (shares every block, made at once) or full (copied).")

    @Argument(help: "LUN:/path or LUN:/path@SNAPSHOT to clone.") var source: String
    @Argument(help: "LUN:/path of the new disk, on the same volume.") var target: String
    @Flag(help: "Share the source's blocks instead of copying them.") var linked = false

    func run() async throws {
        try reportingErrors {
            let from = try DiskRef.parse(source, command: "disk clone")
            let to = try VolumeRef.required(target, command: "disk clone")
            guard sameHostFile(from.ref.lun, to.lun) || from.ref.lun == to.lun else {
                throw CLIError("a clone is made on the volume of its source (\(from.ref.lun)); copy across volumes with `lunar fs cp`")
            }
            _ = try withDisk(from.ref) { try $0.clone(to: to.path, snapshot: from.snapshot, linked: linked) }
            print("\(linked ? "linked" : "full") clone \(to.display) of \(source)")
        }
    }
}

struct DiskChangesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "changes",
                                                    abstract: "The byte ranges where a disk (or a later snapshot) differs from a snapshot, from metadata alone.")

    @Argument(help: "LUN:/path of the disk.") var path: String
    @Option(help: "The earlier snapshot.") var from: String
    @Option(help: "The later snapshot (default: the disk as it is now).") var to: String?
    @Flag(help: "Print JSON, as `qemu-img map --output=json` does.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "disk changes")
            let ranges = try withDisk(ref) { try $0.changes(from: from, to: to) }
            if json {
                return printJSON(ranges.map { ["start": $0.lowerBound, "length": UInt64($0.count), "data": true] as [String: Any] })
            }
            var total: UInt64 = 0
            for r in ranges {
                print("\(r.lowerBound)\t\(r.count)")
                total += UInt64(r.count)
            }
            print("\(ranges.count) ranges, \(ByteSize.format(total)) changed since \(from)", to: &standardError)
        }
    }
}
