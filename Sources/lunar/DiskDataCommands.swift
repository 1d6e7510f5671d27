#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import LunarDisk
import LunarFS
import LunarIO

// `lunar disk info|resize|import|export`: a disk's size and data, and raw images in and out.
// The copies are `lunar fs cp`'s (FSCopy.swift): holes stay holes both ways.

func diskInfoJSON(_ disk: String, _ i: DiskInfo) -> [String: Any] {
    ["disk": disk, "snapshot": i.snapshot.map { $0 as Any } ?? NSNull(), "format": DiskInfo.format, "size": i.size,
     "allocated": i.allocatedBytes, "unique": i.uniqueBytes, "shared": i.sharedBytes, "snapshots": i.snapshotCount,
     "parent": i.parent.map { $0 as Any } ?? NSNull(), "created": i.created.map { isoTime($0) as Any } ?? NSNull()]
}

/// `20 GiB (21474836480 bytes)`.
private func sizeWithBytes(_ bytes: UInt64) -> String { "\(ByteSize.format(bytes)) (\(bytes) bytes)" }

struct DiskInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a disk's (or snapshot's) size, data, sharing and place in its snapshot tree.",
        discussion: """
            allocated: the data bytes its map holds; of them, shared: bytes a snapshot or clone \
            holds too, unique: bytes only it holds. --json prints one object with disk, \
            snapshot, format, size, allocated, unique, shared, snapshots (how many the disk \
            has), parent (the snapshot the disk, or this snapshot, descends from) and created.

            Examples:
              lunar disk info vol.img:/vms/web01/disk0.raw
              lunar disk info vol.img:/vms/web01/disk0.raw@before-upgrade --json
            """)

    @Argument(help: "LUN:/path or LUN:/path@SNAPSHOT.") var path: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try DiskRef.parse(path, command: "disk info")
            let info = try withDisk(ref.ref, readOnly: true) { try $0.info(snapshot: ref.snapshot) }
            if json { return printJSON(diskInfoJSON(ref.ref.display, info)) }
            var rows: [(String, String)] = []
            if let snapshot = ref.snapshot {
                rows.append(("snapshot", "\(ref.ref.display)@\(snapshot)"))
            } else {
                rows.append(("disk", ref.ref.display))
            }
            rows.append(("format", "\(DiskInfo.format), thin"))
            rows.append(("size", sizeWithBytes(info.size)))
            let own = ByteSize.format(info.uniqueBytes), shared = ByteSize.format(info.sharedBytes)
            rows.append(("allocated", "\(sizeWithBytes(info.allocatedBytes)): \(own) its own, \(shared) shared with snapshots or clones"))
            if let created = info.created { rows.append(("taken", shortTime(created))) }
            rows.append(("snapshots", "\(info.snapshotCount)"))
            let root = ref.snapshot == nil ? "none (no snapshot taken)" : "none (a root of the tree)"
            rows.append(("parent", info.parent ?? root))
            for (label, value) in rows { print(pad(label + ":", 12) + value) }
        }
    }
}

struct DiskResizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Grow or shrink a disk, as qemu-img resize does.",
        discussion: """
            SIZE is the new size (20G), or an amount to grow by (+10G) or shrink by (-1G). \
            Sizes are whole 512-byte \
            sectors. A shrink drops the data past the new end and needs --shrink; shrink what \
            the guest has on the disk first. Snapshots keep their own sizes, and a revert brings \
            back the snapshot's. A disk another host holds open (a running VM) is refused, \
            naming that host.

            Examples:
              lunar disk resize vol.img:/vms/web01/disk0.raw 40G
              lunar disk resize vol.img:/vms/web01/disk0.raw +10G
              lunar disk resize --shrink vol.img:/vms/web01/disk0.raw -512M
            """)

    @Argument(help: "LUN:/path of the disk.") var path: String
    // All unrecognized: a size to shrink by (-1G) would otherwise read as an option.
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("The new size (20G), +N to grow by N, -N to shrink by N.", valueName: "size"))
    var sizeWords: [String] = []
    @Flag(help: "Allow a size smaller than the disk's (its data past the new end are dropped).") var shrink = false
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try DiskRef.changing(path, command: "disk resize") {
                "a snapshot keeps the size it was taken with; resize the disk, or make a disk of \($0) with `lunar disk clone --linked` and resize that"
            }
            let words = sizeWords.filter { $0 != "--" }
            if let option = words.first(where: { $0.hasPrefix("--") }) { throw CLIError("unknown option '\(option)' (see `lunar disk resize --help`)") }
            guard words.count == 1, let size = words.first else {
                throw CLIError(sizeWords.isEmpty ? "give the new size, e.g. `lunar disk resize \(path) +10G`" : "give one size, not \(words.joined(separator: " "))")
            }
            guard let newSize = DiskSize(argument: size) else {
                throw CLIError("'\(size)' is not a size: give \(ByteSize.accepted), with + to grow by it or - to shrink by it")
            }
            let (old, new) = try withDisk(ref) { try $0.resize(to: newSize, allowShrink: shrink) }
            if json { return printJSON(["disk": ref.display, "old_size": old, "size": new]) }
            print(old == new ? "\(ref.display) is \(sizeWithBytes(new)) already"
                  : "resized \(ref.display) from \(ByteSize.format(old)) to \(sizeWithBytes(new))")
        }
    }
}

struct DiskImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Write a raw image (a file, a block device, or standard input) into a disk, keeping it thin.",
        discussion: """
            Only SRC's data are written: holes of a file (SEEK_DATA/SEEK_HOLE) and 64 KiB \
            pieces of zeros are skipped, so the disk takes the space of the data alone. A disk \
            that does not exist is made, as large as SRC (rounded up to 512 bytes) or --size; \
            into an existing one SRC is written at --offset and must fit (--size grows it \
            first), and what SRC leaves empty reads as zeros afterwards. A qcow2, vmdk, vdi, vhd \
            or vhdx SRC is refused: convert it with `qemu-img convert -O raw` first.

            Examples:
              lunar disk import debian-12.raw vol.img:/vms/web01/disk0.raw
              lunar disk import /dev/sdb vol.img:/vms/web01/disk1.raw --progress
              xzcat debian.raw.xz | lunar disk import - vol.img:/vms/web01/disk0.raw --size 20G
              lunar disk import boot.img vol.img:/vms/web01/disk0.raw --offset 1M
            """)

    @Argument(help: "The raw image: a file, a block device, or - for standard input.") var source: String
    @Argument(help: "LUN:/path of the disk (made when it does not exist).") var path: String
    @Option(help: "Where in the disk SRC's first byte goes, e.g. 1M (default 0).", transform: ByteSize.parse) var offset: ByteSize?
    @Option(help: "The disk's size: of a new disk (default: SRC's end), or what an existing one grows to.",
            transform: ByteSize.parse) var size: ByteSize?
    @Flag(help: "Show progress on standard error even when it is not a terminal.") var progress = false
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try DiskRef.changing(path, command: "disk import") {
                "snapshot \($0) is never written; import into the disk, then take a snapshot"
            }
            let input: HostFile
            let shown = source == "-" ? "standard input" : source
            if source == "-" {
                input = try HostFile(duplicating: STDIN_FILENO, path: shown)
            } else {
                input = try HostFile(path: hostPath(source), flags: O_RDONLY)
                if sameHostFile(input.path, ref.lun) { throw CLIError("\(source) is the LUN \(ref.lun) itself; a volume cannot be imported into itself") }
            }
            let st = try input.status()
            // A file's or device's length is known; a pipe's (or a procfs file's) only at its end.
            var length: UInt64?
            switch st.st_mode & S_IFMT {
            case S_IFDIR: throw CLIError("\(source): is a directory; give a raw image file or a block device")
            case S_IFREG where st.st_size > 0: length = UInt64(st.st_size)
            case S_IFBLK:
                let end = lseek(input.fd, 0, SEEK_END)
                guard end >= 0 else { throw CLIError.system(source) }
                length = UInt64(end)
            default: length = nil
            }
            let at = offset?.bytes ?? 0
            let started = monotonicSeconds()
            var read: UInt64 = 0, written: UInt64 = 0, diskSize: UInt64 = 0, created = false
            try withDisk(ref) { disk in
                let target = try VirtualDisk.openForImport(disk.volume, path: disk.path, offset: at, length: length, size: size?.bytes)
                created = target.created
                let file = target.file
                do {
                    // A new disk from a pipe, no --size: as large as what comes.
                    let open = created && length == nil && size == nil
                    let sink = SparseSink(file: file, base: at, granule: 64 << 10, end: open ? nil : try file.size,
                                          held: created ? [] : try file.allocatedRanges(),
                                          inspect: { (first) throws in try VirtualDisk.checkRaw(first, source: source == "-" ? nil : source) })
                    let bar = Progress(label: "importing \(baseName(shown))", total: length,
                                       enabled: (length ?? .max) >= progressThreshold, force: progress)
                    if let length {
                        written = try copyData(from: input, size: length, to: sink, progress: bar)
                        read = length
                    } else {
                        (read, written) = try copyStream(from: input, to: sink, progress: bar)
                    }
                    if open {
                        guard read > 0 else { throw CLIError("\(shown) held no bytes: nothing to import (`lunar disk create` makes an empty disk)") }
                        try file.truncate(to: (at + read + VirtualDisk.sectorSize - 1) / VirtualDisk.sectorSize * VirtualDisk.sectorSize)
                    }
                    diskSize = try file.size
                    try file.close()
                } catch {
                    try? file.close()
                    if created { try? disk.volume.remove(disk.path) }
                    throw error
                }
            }
            let seconds = monotonicSeconds() - started
            if json {
                return printJSON(["disk": ref.display, "source": shown, "offset": at, "bytes": read, "written": written,
                                  "size": diskSize, "created": created, "seconds": seconds] as [String: Any])
            }
            print(CopyResult(source: shown, destination: ref.display + (at > 0 ? " at offset \(at)" : ""), size: read,
                             dataBytes: written, seconds: seconds, verb: "imported").summary
                  + (created ? "; made the disk, \(ByteSize.format(diskSize))" : ""))
        }
    }
}

struct DiskExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a disk or snapshot out as a raw image: a sparse file, a device, or standard output.",
        discussion: """
            Into a file only the disk's data are written and its holes stay holes (the file \
            takes the space of the data alone); to a device or standard output (-) every byte \
            goes, holes as zeros. An existing DST is refused unless --force. Export a snapshot \
            of a disk a VM is writing: a snapshot never changes.

            Examples:
              lunar disk export vol.img:/vms/web01/disk0.raw@before-upgrade backup.raw
              lunar disk export vol.img:/vms/web01/disk0.raw@nightly - | zstd > web01.raw.zst
              lunar disk export --force vol.img:/templates/debian.raw /dev/sdc
            """)

    @Argument(help: "LUN:/path or LUN:/path@SNAPSHOT.") var path: String
    @Argument(help: "The raw image to write: a file, a block device, or - for standard output.") var destination: String
    @Flag(help: "Overwrite an existing DST.") var force = false
    @Flag(help: "Show progress on standard error even when it is not a terminal.") var progress = false
    @Flag(help: "Print JSON (not with - as DST).") var json = false

    func run() async throws {
        try reportingErrors {
            let ref = try DiskRef.parse(path, command: "disk export")
            let toStdout = destination == "-"
            if toStdout && json { throw CLIError("--json and - (standard output) both want standard output: give a file as DST, or leave out --json") }
            let target = toStdout ? "standard output" : hostPath(destination)
            if !toStdout {
                if hostIsDirectory(target) { throw CLIError("\(destination): is a directory; name the image file to write, e.g. \(joinPath(destination, "disk.raw"))") }
                if sameHostFile(target, ref.ref.lun) { throw CLIError("\(destination) is the LUN \(ref.ref.lun) itself; refusing to overwrite the volume") }
                if !force, access(target, F_OK) == 0 { throw CLIError("\(destination) already exists: add --force to overwrite it") }
            }
            let shown = ref.ref.display + (ref.snapshot.map { "@\($0)" } ?? "")
            let started = monotonicSeconds()
            var size: UInt64 = 0, written: UInt64 = 0
            try withDisk(ref.ref, readOnly: true) { disk in
                let file = try disk.volume.openFile(try disk.dataPath(snapshot: ref.snapshot), lock: nil)
                size = try file.size
                let output = toStdout ? try HostFile(duplicating: STDOUT_FILENO, path: target)
                    : try HostFile(path: target, flags: O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL), mode: 0o644)
                let made = !toStdout && !force
                do {
                    written = try copyOut(file, size: size, to: output, sequential: toStdout || output.status().st_mode & S_IFMT != S_IFREG,
                                          progress: Progress(label: "exporting \(baseName(shown))", total: size,
                                                             enabled: size >= progressThreshold, force: progress))
                    guard toStdout || fsync(output.fd) == 0 else { throw CLIError.system(target) }
                } catch {
                    if made { unlink(target) }
                    throw error
                }
            }
            if toStdout { return }
            let seconds = monotonicSeconds() - started
            if json {
                return printJSON(["disk": shown, "destination": destination, "size": size, "written": written, "seconds": seconds] as [String: Any])
            }
            print(CopyResult(source: shown, destination: destination, size: size, dataBytes: written, seconds: seconds, verb: "exported").summary)
        }
    }
}
