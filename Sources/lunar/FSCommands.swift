import ArgumentParser
import Foundation
import LunarFS
import LunarIO

struct FSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fs",
        abstract: "Make, browse and change LunarFS volumes; copy files in and out.",
        discussion: """
            A LUN is an image file or a block device. A path inside its volume is written \
            LUN:/path, e.g. vol.img:/vms/web01/disk.vmdk; where a command takes a LUN alone, \
            that means the root directory.

            Each process that changes a volume holds a host slot and renews its heartbeat every \
            3 s (LUNAR_HEARTBEAT_INTERVAL sets another interval, in seconds); `lunar fs hosts` \
            shows them. Many processes may change a volume at once: they take turns on its \
            metadata (a command waits up to 30 s for its turn), and a file another host holds \
            open is refused (cp --wait gives it time to let go). ls, cat, stat, df, info, fsck without \
            --repair, and cp out of a volume open it read-only and never wait.

            Examples:
              lunar fs mkfs vol.img --size 20G --label lab
              lunar fs mkdir -p vol.img:/vms/web01
              lunar fs cp disk.raw vol.img:/vms/web01/
              lunar fs ls -l vol.img:/vms/web01
              lunar fs cp vol.img:/vms/web01/disk.raw /var/tmp/backup.raw
            """,
        subcommands: [
            FSMkfsCommand.self, FSLsCommand.self, FSMkdirCommand.self, FSCpCommand.self, FSCatCommand.self,
            FSRmCommand.self, FSMvCommand.self, FSStatCommand.self, FSDfCommand.self, FSFsckCommand.self,
            FSInfoCommand.self, FSHostsCommand.self, FSBenchCommand.self,
        ]
    )
}

// MARK: mkfs

struct FSMkfsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkfs",
        abstract: "Make a LunarFS volume on an image file or block device.",
        discussion: """
            A LUN that does not exist is created as a sparse image file of --size bytes \
            (20G when --size is not given). An existing image file is resized to --size when it \
            is given, else used whole; a block device is always used whole. Everything on the \
            LUN is lost; a LUN that already holds a LunarFS volume needs --force, and one that \
            a live host has open (its heartbeat moving, as `lunar fs hosts` judges it) is refused \
            even then, naming the host.
            """
    )

    static let defaultSize = ByteSize(bytes: 20 << 30)

    @Argument(help: "Image file or block device.", transform: hostPath)
    var lun: String

    @Option(parsing: .unconditional, help: "Volume size, for a new or resized image file (e.g. 20G). Default for a new file: 20G.",
            transform: ByteSize.parse)
    var size: ByteSize?

    @Option(help: "Volume label, up to 64 bytes.")
    var label = ""

    @Option(parsing: .unconditional, help: "File block size: the allocation unit of large files, a power of two from 64K to 8M (default 1M).",
            transform: ByteSize.parse)
    var blockSize = ByteSize(bytes: 1 << 20)

    @Option(parsing: .unconditional, help: "Files and directories the volume can hold (default: one per MiB, 4096 to 4194304).",
            transform: { text in try parseCount(text, what: "a number of files") })
    var maxFiles: UInt64?

    @Option(parsing: .unconditional, help: "Journal size per host slot, a multiple of 4K from 1M to 1G (default 1M; 4M from 64G, 16M from 1T).",
            transform: ByteSize.parse)
    var journalSize: ByteSize?

    @Option(help: "On-disk format: 2 (default) keeps reference counts, so files can share blocks (snapshots, clones); 1 is readable by releases before shared blocks.")
    var format = 2

    @Flag(help: "Overwrite a LUN that already holds a LunarFS volume.")
    var force = false

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            guard let block = UInt32(exactly: blockSize.bytes) else {
                throw CLIError("block size must be a power of two from 64K to 8M, not \(blockSize.bytes)")
            }
            guard format == 1 || format == 2 else { throw CLIError("--format must be 1 or 2, not \(format)") }
            let options = FormatOptions(label: label, blockSize: block, maxFiles: maxFiles, journalSize: journalSize?.bytes,
                                        sharedBlocks: format == 2)
            let existed = BlockDevice.exists(lun)
            if existed {
                // A size no volume can have is refused before the image is resized.
                if let size {
                    do throws(FSError) { _ = try Volume.plan(size: size.bytes, options: options) } catch { throw error.naming(lun) }
                }
                try refuseLiveVolume()
                if let size { try resize(to: size.bytes) }
            }
            let header: VolumeHeader
            do throws(FSError) {
                header = try Volume.format(path: lun, size: existed ? nil : (size ?? Self.defaultSize).bytes, options: options)
            } catch {
                // Volume.format leaves the image it created behind when laying out fails.
                if !existed && !Self.failedToCreate(error) { unlink(lun) }
                if existed, size == nil, case .invalidArgument = error.kind, let bytes = Self.imageFileSize(lun) {
                    throw CLIError("\(error.naming(lun)) (\(lun) is an image file of \(bytes) bytes: --size resizes it)")
                }
                throw error.naming(lun)
            }
            if json {
                var object = headerJSON(header)
                object["path"] = lun
                return printJSON(object)
            }
            print("made a LunarFS volume on \(lun)")
            print("  uuid:          \(header.uuid)")
            if !header.label.isEmpty { print("  label:         \(header.label)") }
            print("  size:          \(ByteSize.format(header.volumeSize)) (\(header.volumeSize) bytes)")
            print("  format:        \(header.formatGeneration)\(header.sharedBlocks ? " (shared blocks)" : "")")
            print("  block size:    \(ByteSize.format(UInt64(header.blockSize)))")
            print("  file capacity: \(fileCapacity(header)) files and directories")
            print("  data capacity: \(ByteSize.format(dataCapacity(header)))")
            print("  journals:      \(header.hostSlots) host slots of \(ByteSize.format(header.journalSize))")
        }
    }

    /// The size of `path` when it is a regular file.
    private static func imageFileSize(_ path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return UInt64(st.st_size)
    }

    private static func failedToCreate(_ error: FSError) -> Bool {
        if case .io(let e) = error.kind, e.operation == .open { return true }
        return false
    }

    /// mkfs destroys everything: make sure that is what the user meant, and that no host is
    /// working on the volume (its heartbeat alive) this very moment.
    private func refuseLiveVolume() throws {
        let found: String
        do throws(FSError) {
            guard let summary = try Volume.probe(path: lun).summary else { return }
            found = summary
        } catch {
            return
        }
        guard force else {
            throw CLIError("\(lun) already holds a \(found); pass --force to destroy it and make a new one")
        }
        let live: [HostSlotInfo]
        do throws(FSError) {
            live = try Volume.liveHosts(path: lun) { pending, seconds in
                let names = pending.map { "\($0.hostName) (pid \($0.pid), slot \($0.slot))" }.joined(separator: ", ")
                print("lunar: watching the heartbeat of \(names) for up to \(Int(seconds.rounded(.up))) s to tell whether \(pending.count == 1 ? "it is" : "they are") alive",
                      to: &standardError)
            }
        } catch {
            // A volume whose heartbeat region cannot be read has no host to ask: --force means go on.
            if case .io = error.kind { throw error.naming(lun) }
            return
        }
        guard live.isEmpty else {
            let hosts = live.map { "host \($0.hostName) (pid \($0.pid), slot \($0.slot))" }.joined(separator: ", ")
            throw CLIError("\(lun) holds a \(found) that \(hosts) \(live.count == 1 ? "has" : "have") open and \(live.count == 1 ? "is" : "are") alive; "
                + "stop \(live.count == 1 ? "that host" : "those hosts") (close what has the volume open, e.g. `lunar vm run`), "
                + "or wait until `lunar fs hosts \(lun)` judges \(live.count == 1 ? "it" : "them") dead, then run mkfs again")
        }
    }

    private func resize(to bytes: UInt64) throws {
        if ISCSILun.isLUNURL(lun) {
            let storage: any BlockStorage
            do { storage = try openStorage(lun, options: .init(readOnly: true)) } catch { throw CLIError("\(error)") }
            let actual = storage.size
            storage.closeStorage()
            guard actual == bytes else {
                throw CLIError("\(lun) is an iSCSI LUN of \(ByteSize.format(actual)); mkfs uses all of it, so leave out --size")
            }
            return
        }
        var st = stat()
        guard stat(lun, &st) == 0 else { throw CLIError.system(lun) }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            guard UInt64(st.st_size) != bytes else { return }
            guard truncate(lun, off_t(bytes)) == 0 else { throw CLIError.system(lun) }
        case S_IFBLK:
            let device: BlockDevice
            do { device = try BlockDevice.open(lun, options: .init(readOnly: true)) } catch { throw CLIError("\(error)") }
            let actual = device.size
            device.close()
            guard actual == bytes else {
                throw CLIError("\(lun) is a block device of \(ByteSize.format(actual)); mkfs uses all of it, so leave out --size")
            }
        default:
            throw CLIError("\(lun): not a regular file or block device")
        }
    }
}

/// Files and directories a volume can hold, the root included.
func fileCapacity(_ h: VolumeHeader) -> UInt64 { h.inodes.count - 1 }

/// Bytes of data blocks (resource 0 of each area is reserved), as `df` counts them.
func dataCapacity(_ h: VolumeHeader) -> UInt64 {
    (h.fileBlocks.count - 1) * UInt64(h.fileBlocks.resourceSize) + (h.smallBlocks.count - 1) * UInt64(h.smallBlocks.resourceSize)
}

func headerJSON(_ h: VolumeHeader) -> [String: Any] {
    var areas: [String: Any] = [:]
    for kind in ResourceKind.allCases {
        let a = h.area(kind)
        areas[kind.key] = [
            "map_offset": a.mapOffset, "data_offset": a.dataOffset, "resource_size": a.resourceSize,
            "per_cluster": a.perCluster, "count": a.count, "clusters": a.clusterCount,
        ] as [String: Any]
    }
    return [
        "uuid": h.uuid.description, "label": h.label, "format": h.formatGeneration, "shared_blocks": h.sharedBlocks,
        "size_bytes": h.volumeSize, "block_size": h.blockSize,
        "small_block_size": h.smallBlockSize, "host_slots": h.hostSlots, "root_inode": h.rootInode,
        "heartbeat_offset": h.heartbeatOffset, "volume_lock_offset": h.volumeLockOffset,
        "journal_offset": h.journalOffset, "journal_size": h.journalSize, "created": isoTime(h.created),
        "file_capacity": fileCapacity(h), "data_capacity_bytes": dataCapacity(h), "areas": areas,
    ]
}

// MARK: info

struct FSInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a volume's header: UUID, label, size, block size, journals, and where each area lies."
    )

    @Argument(help: "Image file or block device holding the volume.")
    var lun: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let lun = lunArgument(self.lun)
            let (h, report) = try withVolume(lun, readOnly: true) { ($0.header, $0.mountReport) }
            if json {
                var object = headerJSON(h)
                object["path"] = lun
                object["used_backup_header"] = report.usedBackupHeader
                return printJSON(object)
            }
            print("path:            \(lun)")
            print("uuid:            \(h.uuid)")
            print("label:           \(h.label.isEmpty ? "(none)" : h.label)")
            print("size:            \(ByteSize.format(h.volumeSize)) (\(h.volumeSize) bytes)")
            print("format:          \(h.formatGeneration)\(h.sharedBlocks ? " (shared blocks: snapshots and clones)" : " (no shared blocks)")")
            print("block size:      \(ByteSize.format(UInt64(h.blockSize))) (small blocks \(ByteSize.format(UInt64(h.smallBlockSize))))")
            print("file capacity:   \(fileCapacity(h)) files and directories")
            print("data capacity:   \(ByteSize.format(dataCapacity(h)))")
            print("host slots:      \(h.hostSlots), journal \(ByteSize.format(h.journalSize)) each")
            print("created:         \(longTime(h.created))")
            print("volume lock at:  \(h.volumeLockOffset)")
            print("heartbeats at:   \(h.heartbeatOffset)")
            print("journals at:     \(h.journalOffset)")
            print("root inode:      \(h.rootInode)")
            if report.usedBackupHeader {
                print("warning:         primary header unusable (\(report.primaryHeaderProblem ?? "?")); read the backup; run `lunar fs fsck --repair \(lun)`")
            }
            print("")
            let widths = [27, 14, 14, 10, 12, 9]
            print(zip(["area", "map offset", "data offset", "unit", "count", "clusters"], widths).map { pad($0, $1) }.joined())
            for kind in ResourceKind.allCases {
                let a = h.area(kind)
                let cells = [kind.description, "\(a.mapOffset)", "\(a.dataOffset)", ByteSize.format(UInt64(a.resourceSize)),
                             "\(a.count)", "\(a.clusterCount)"]
                print(zip(cells, widths).map { pad($0, $1) }.joined())
            }
        }
    }
}

// MARK: ls

struct FSLsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory of a volume (or show one file).",
        discussion: """
            Names are sorted. -l shows mode, size, allocated bytes (less than the size for thin \
            files) and modification time. --json prints an array of objects with name, path, \
            type, size, allocated, mode, permissions, inode and modified (ISO-8601, UTC). An \
            entry whose inode cannot be read is still listed (with an error), and ls exits 1.
            """
    )

    @Flag(name: .customShort("l"), help: "Long format: mode, size, allocated bytes, modified time.")
    var long = false

    @Flag(name: .customShort("R"), help: "List subdirectories too, recursively.")
    var recursive = false

    @Flag(help: "Print JSON.")
    var json = false

    @Argument(help: "LUN:/path, or a LUN alone for its root directory.")
    var target: String

    private struct Entry {
        var name: String
        var path: String
        var type: FileType
        var inode: UInt32
        /// nil when not needed (plain names) or when the inode could not be read.
        var info: FileInfo?
        var problem: FSError?
    }

    func run() async throws {
        try reportingErrors {
            let ref = VolumeRef.lunOrPath(target)
            let damaged = try withVolume(ref.lun, readOnly: true) { volume in
                let top = try volume.stat(ref.path)
                if top.type == .file {
                    let entry = Entry(name: baseName(ref.path), path: ref.path, type: .file, inode: top.inode, info: top)
                    emit([entry], heading: nil, showPath: true)
                    return false
                }
                var damaged = false
                var all: [Entry] = []
                // A damaged volume could name a directory twice; never loop on it.
                var seen: Set<UInt32> = [top.inode]
                var pending = [ref.path]
                var first = true
                while !pending.isEmpty {
                    let directory = pending.removeFirst()
                    var entries: [Entry] = []
                    for item in try volume.list(directory) {
                        var entry = Entry(name: item.name, path: joinPath(directory, item.name), type: item.type, inode: item.inode)
                        if long || json {
                            // One unreadable inode should not hide the rest of the directory.
                            do throws(FSError) {
                                entry.info = try volume.stat(entry.path)
                            } catch {
                                printError(error.naming(ref.lun))
                                entry.problem = error
                                damaged = true
                            }
                        }
                        entries.append(entry)
                    }
                    if json {
                        all += entries
                    } else {
                        if recursive && !first { print("") }
                        emit(entries, heading: recursive ? directory : nil, showPath: false)
                    }
                    first = false
                    guard recursive else { break }
                    let subdirectories = entries.filter { $0.type == .directory && seen.insert($0.inode).inserted }
                    // Depth first, in name order, as ls -R walks.
                    pending.insert(contentsOf: subdirectories.map(\.path), at: 0)
                }
                if json { printJSON(all.map(jsonObject)) }
                return damaged
            }
            if damaged { throw ExitCode.failure }
        }
    }

    private func emit(_ entries: [Entry], heading: String?, showPath: Bool) {
        if json { return printJSON(entries.map(jsonObject)) }
        if let heading { print("\(heading):") }
        let names = entries.map { showPath ? $0.path : $0.name }
        guard long else {
            for name in names { print(name) }
            return
        }
        let sizes = entries.map { $0.info.map { String($0.size) } ?? "?" }
        let allocated = entries.map { $0.info.map { String($0.allocatedBytes) } ?? "?" }
        let sizeWidth = sizes.map(\.count).max() ?? 0
        let allocatedWidth = allocated.map(\.count).max() ?? 0
        for (i, e) in entries.enumerated() {
            let mode = e.info.map { modeString($0.type, $0.mode) } ?? String(e.type.modeLetter) + "?????????"
            let time = e.info.map { shortTime($0.modified) } ?? pad("?", 16)
            print("\(mode)  \(rightAligned(sizes[i], sizeWidth))  \(rightAligned(allocated[i], allocatedWidth))  \(time)  \(names[i])")
        }
    }

    private func jsonObject(_ e: Entry) -> [String: Any] {
        var object: [String: Any] = ["name": e.name, "path": e.path, "type": e.type.rawValue, "inode": e.inode]
        if let info = e.info {
            object["size"] = info.size
            object["allocated"] = info.allocatedBytes
            object["mode"] = modeString(info.type, info.mode)
            object["permissions"] = octalMode(info.mode)
            object["modified"] = isoTime(info.modified)
        }
        if let problem = e.problem { object["error"] = problem.description }
        return object
    }
}

// MARK: mkdir, rm

/// Runs `body` on each path, opening each LUN once, and carries on past a failing path the
/// way mkdir(1) and rm(1) do; exits 1 at the end if any failed.
func forEachPath(_ refs: [VolumeRef], readOnly: Bool, _ body: (Volume, VolumeRef) throws -> Void) throws {
    var order: [String] = []
    var groups: [String: [VolumeRef]] = [:]
    for ref in refs {
        if groups[ref.lun] == nil { order.append(ref.lun) }
        groups[ref.lun, default: []].append(ref)
    }
    var failed = false
    for lun in order {
        do {
            try withVolume(lun, readOnly: readOnly) { volume in
                for ref in groups[lun] ?? [] {
                    do {
                        try body(volume, ref)
                    } catch let error as FSError {
                        printError(error.naming(lun))
                        failed = true
                    } catch {
                        printError(error)
                        failed = true
                    }
                }
            }
        } catch {
            printError(error)
            failed = true
        }
    }
    if failed { throw ExitCode.failure }
}

struct FSMkdirCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkdir",
        abstract: "Make directories in a volume."
    )

    @Flag(name: .short, help: "Make missing parent directories too; an existing directory is no error.")
    var parents = false

    @Argument(help: "Directories to make, each LUN:/path.")
    var paths: [String]

    func validate() throws {
        guard !paths.isEmpty else { throw ValidationError("give at least one LUN:/path") }
    }

    func run() async throws {
        try reportingErrors {
            let refs = try paths.map { (text) throws(CLIError) in try VolumeRef.required(text, command: "mkdir") }
            try forEachPath(refs, readOnly: false) { volume, ref in
                if ref.isRoot {
                    if parents { return }
                    throw FSError(.exists, path: ref.path)
                }
                try volume.mkdir(ref.path, parents: parents)
            }
        }
    }
}

struct FSRmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove files and empty directories from a volume (-r: directories with their content).",
        discussion: "A recursive removal commits one entry at a time: if it is interrupted, what was removed stays removed."
    )

    @Flag(name: [.customShort("r"), .customShort("R")], help: "Remove directories together with everything in them.")
    var recursive = false

    @Argument(help: "Files or directories to remove, each LUN:/path.")
    var paths: [String]

    func validate() throws {
        guard !paths.isEmpty else { throw ValidationError("give at least one LUN:/path") }
    }

    func run() async throws {
        try reportingErrors {
            let refs = try paths.map { (text) throws(CLIError) in try VolumeRef.required(text, command: "rm") }
            try forEachPath(refs, readOnly: false) { volume, ref in
                if ref.isRoot {
                    throw CLIError("\(ref.display): refusing to remove the root directory (remove what is in it instead)")
                }
                do {
                    try volume.remove(ref.path, recursive: recursive)
                } catch let error as FSError where error.kind == .directoryNotEmpty {
                    throw CLIError("\(error.naming(ref.lun)) (use -r to remove it with its contents)")
                }
            }
        }
    }
}

// MARK: cp, cat, mv

struct FSCpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy a file between the host and a volume, keeping holes.",
        discussion: """
            Exactly one of SOURCE and DESTINATION is LUN:/path. When the destination is an \
            existing directory (or ends in /), the file is copied into it under its own name; an \
            existing file is replaced. Holes stay holes both ways: host holes and whole blocks of \
            zeros are not written into the volume, and a copy out writes only the volume file's \
            allocated data, then sets the size. A copy into a volume that fails removes the file \
            if the copy created it. A host source that is a pipe or a device (/dev/stdin), or a \
            file whose size reads 0 (procfs), is read to its end. Files from 64 MiB show a \
            progress bar when standard error is a terminal; the closing "copied ..." line goes to \
            standard error too, so that standard output can be the copy. A copy into a volume \
            holds the file's exclusive lock while it writes: a file another host holds open (a \
            running VM's disk) is refused, naming that host, unless --wait gives it time to let go.
            """
    )

    @Argument(help: "Host file or LUN:/path to copy from.")
    var source: String

    @Argument(help: "Host path or LUN:/path to copy to.")
    var destination: String

    @Option(parsing: .unconditional, help: "Seconds to wait for another host to close the destination file.")
    var wait: Double = 0

    @Flag(name: .shortAndLong, help: "Print nothing on success.")
    var quiet = false

    func validate() throws {
        guard (0...86_400).contains(wait) else { throw ValidationError("--wait must be from 0 to 86400 seconds") }
    }

    func run() async throws {
        try reportingErrors {
            let result: CopyResult
            switch (Location(source), Location(destination)) {
            case (.host(let from), .volume(let to)):
                result = try copyIn(from: from, to: to, quiet: quiet, wait: wait)
            case (.volume(let from), .host(let to)):
                result = try copyOut(from: from, to: to, quiet: quiet)
            case (.host, .host):
                throw CLIError("cp copies between the host and a volume, so one side must be LUN:/path; '\(source)' and '\(destination)' are both host paths")
            case (.volume, .volume):
                throw CLIError("cp copies between the host and a volume; '\(source)' and '\(destination)' are both volume paths (copy out to the host and back in)")
            }
            // Standard output may be the copy itself (`cp vol.img:/f /dev/stdout`): status goes to standard error.
            if !quiet { print(result.summary, to: &standardError) }
        }
    }
}

struct FSCatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cat",
        abstract: "Write a volume file to standard output."
    )

    @Argument(help: "LUN:/path of the file.")
    var path: String

    func run() async throws {
        try reportingErrors {
            let ref = try VolumeRef.required(path, command: "cat")
            try withVolume(ref.lun, readOnly: true) { volume in
                let file = try volume.openFile(ref.path)
                let size = try file.size
                let buffer = IOBuffer(count: 1 << 20)
                var at: UInt64 = 0
                while at < size {
                    let got = try file.read(into: buffer.slice(0..<Int(min(UInt64(buffer.count), size - at))), at: at)
                    guard got > 0 else { break }
                    try writeStandardOutput(UnsafeRawBufferPointer(buffer.slice(0..<got)))
                    at += UInt64(got)
                }
            }
        }
    }
}

struct FSMvCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mv",
        abstract: "Rename or move a file or directory inside one volume (atomically).",
        discussion: """
            The target is LUN:/path on the same LUN, or just /path. When it is an existing \
            directory, the source moves into it under its own name; an existing file there is \
            replaced.
            """
    )

    @Argument(help: "LUN:/path to move.")
    var source: String

    @Argument(help: "LUN:/path or /path (in the same volume) to move it to.")
    var destination: String

    func run() async throws {
        try reportingErrors {
            let from = try VolumeRef.required(source, command: "mv")
            let to: VolumeRef
            if var ref = VolumeRef.split(destination) {
                guard ref.lun == from.lun || sameHostFile(ref.lun, from.lun) else {
                    throw CLIError("mv moves inside one volume, and '\(ref.lun)' is not '\(from.lun)'; use cp to copy through the host")
                }
                ref.lun = from.lun
                to = ref
            } else if destination.hasPrefix("/") {
                to = VolumeRef(lun: from.lun, path: destination)
            } else {
                throw CLIError("'\(destination)' is not a path in the volume: write LUN:/path or an absolute /path")
            }
            if from.isRoot { throw CLIError("\(from.display): cannot move the root directory") }
            try withVolume(from.lun, readOnly: false) { volume in
                let target = try moveTarget(volume, from: from, to: to)
                do {
                    try volume.rename(from.path, to: target)
                } catch let error as FSError where error.kind == .directoryNotEmpty {
                    throw CLIError("\(from.lun):\(target): destination directory is not empty; mv replaces only an empty directory "
                        + "(move or remove what is in it first, or choose another destination)")
                }
            }
        }
    }
}

/// Where `mv` puts `from`: into `to` when that is an existing directory, else at `to`.
private func moveTarget(_ volume: Volume, from: VolumeRef, to: VolumeRef) throws(FSError) -> String {
    guard try volume.exists(to.path) else {
        if to.namesDirectory { throw FSError(.notFound, path: to.path) }
        return to.path
    }
    if try volume.stat(to.path).type == .directory && to.path != from.path {
        return joinPath(to.path, baseName(from.path))
    }
    if to.namesDirectory { throw FSError(.notDirectory, path: to.path) }
    return to.path
}

// MARK: stat, df

struct FSStatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show a file's or directory's inode: size, allocated bytes, storage, mode, times."
    )

    @Argument(help: "LUN:/path (a LUN alone: its root directory).")
    var path: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let ref = VolumeRef.lunOrPath(path)
            let info = try withVolume(ref.lun, readOnly: true) { try $0.stat(ref.path) }
            if json {
                return printJSON([
                    "path": ref.path, "lun": ref.lun, "inode": info.inode, "type": info.type.rawValue,
                    "size": info.size, "allocated": info.allocatedBytes, "storage": info.storage,
                    "unit_size": info.unitSize, "mode": modeString(info.type, info.mode),
                    "permissions": octalMode(info.mode), "links": info.linkCount,
                    "created": isoTime(info.created), "modified": isoTime(info.modified),
                    "changed": isoTime(info.changed), "accessed": isoTime(info.accessed),
                ] as [String: Any])
            }
            print("path:       \(ref.display)")
            print("type:       \(info.type == .directory ? "directory" : "file")")
            print("inode:      \(info.inode)")
            print("size:       \(info.size) (\(ByteSize.format(info.size)))")
            print("allocated:  \(info.allocatedBytes) (\(ByteSize.format(info.allocatedBytes)))")
            print("storage:    \(info.storage)" + (info.unitSize > 0 ? ", \(ByteSize.format(info.unitSize)) units" : ""))
            print("mode:       \(modeString(info.type, info.mode)) (\(octalMode(info.mode)))")
            print("links:      \(info.linkCount)")
            print("created:    \(longTime(info.created))")
            print("modified:   \(longTime(info.modified))")
            print("changed:    \(longTime(info.changed))")
            print("accessed:   \(longTime(info.accessed))")
        }
    }
}

struct FSDfCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "df",
        abstract: "Show a volume's space: capacity, allocated, free, and what thin files have promised.",
        discussion: """
            Provisioned is the sum of file sizes: what thin files could grow to hold. An \
            overcommit ratio (provisioned / capacity) above 1 means the files cannot all be \
            filled at once.
            """
    )

    @Argument(help: "Image file or block device holding the volume.")
    var lun: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let lun = lunArgument(self.lun)
            let usage = try withVolume(lun, readOnly: true) { try $0.usage() }
            let free = usage.capacityBytes - min(usage.allocatedBytes, usage.capacityBytes)
            let ratio = usage.capacityBytes > 0 ? Double(usage.provisionedBytes) / Double(usage.capacityBytes) : 0
            if json {
                return printJSON([
                    "path": lun, "capacity_bytes": usage.capacityBytes, "allocated_bytes": usage.allocatedBytes,
                    "free_bytes": free, "provisioned_bytes": usage.provisionedBytes, "overcommit_ratio": ratio,
                    "files": usage.files, "directories": usage.directories,
                    "resources": usage.resources.map { r in
                        [
                            "kind": r.kind.key, "unit_size": r.unitSize, "total": r.total,
                            "used": r.total - min(r.free, r.total), "free": r.free,
                        ] as [String: Any]
                    },
                ] as [String: Any])
            }
            func line(_ label: String, _ bytes: UInt64) -> String {
                pad(label, 14) + pad(ByteSize.format(bytes), 12) + "(\(bytes) bytes)"
            }
            print(line("capacity:", usage.capacityBytes))
            print(line("allocated:", usage.allocatedBytes))
            print(line("free:", free))
            print(line("provisioned:", usage.provisionedBytes))
            print(pad("overcommit:", 14) + String(format: "%.2fx", ratio))
            print(pad("files:", 14) + "\(usage.files)")
            print(pad("directories:", 14) + "\(usage.directories)")
            print("")
            print(pad("resource", 28) + pad("unit", 10) + rightAligned("total", 12) + rightAligned("used", 12) + rightAligned("free", 12))
            for r in usage.resources {
                print(pad(r.kind.description, 28) + pad(ByteSize.format(r.unitSize), 10) + rightAligned("\(r.total)", 12)
                      + rightAligned("\(r.total - min(r.free, r.total))", 12) + rightAligned("\(r.free)", 12))
            }
        }
    }
}

// MARK: fsck

struct FSFsckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Check a volume's metadata, and with --repair fix what is safe to fix.",
        discussion: """
            Checks every record's checksum, the cluster bitmaps against what the tree uses, the \
            directory tree, sizes against block maps, and the journals. Without --repair the \
            volume is opened read-only and nothing is written.

            Exit status (as e2fsck): 0 clean, 1 problems found and all repaired, 4 problems \
            left, 8 the check could not run (not a volume, unreadable, in use).
            """
    )

    @Argument(help: "Image file or block device holding the volume.")
    var lun: String

    @Flag(help: "Repair what can be repaired (opens the volume read-write).")
    var repair = false

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let lun = lunArgument(self.lun)
        let report: FsckReport
        do {
            report = try withVolume(lun, readOnly: !repair, repair: repair) { try $0.check(repair: repair) }
        } catch {
            printError(error)
            throw ExitCode(8)
        }
        if json {
            printJSON([
                "path": lun, "exit_code": report.exitCode, "clean": report.isClean,
                "problems": report.problems.map { ["message": $0.message, "repaired": $0.repaired] as [String: Any] },
                "notes": report.notes, "inodes_checked": report.inodesChecked,
                "directories_checked": report.directoriesChecked, "blocks_referenced": report.unitsReferenced,
            ] as [String: Any])
        } else {
            print("checked \(lun): \(report.inodesChecked) inodes, \(report.directoriesChecked) directories, \(report.unitsReferenced) data units")
            for p in report.problems { print("\(p.repaired ? "repaired" : "problem"): \(p.message)") }
            for n in report.notes { print("note: \(n)") }
            let left = report.unrepaired.count
            if report.isClean {
                print("clean")
            } else if left == 0 {
                print("\(report.problems.count) problems found, all repaired")
            } else {
                print("\(report.problems.count) problems found, \(left) left" + (repair ? "" : "; run `lunar fs fsck --repair \(lun)`"))
            }
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}
