import ArgumentParser
import Foundation
import LunarFS
import LunarIO
import LunarVMM

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Make, list and run VMs stored on a LunarFS volume.",
        discussion: """
            A VM is a folder on the volume, /vms/NAME, holding its config (vm.json), copies of \
            its boot images and its disks (thin files, disk0.raw, disk1.raw, ...): any host with \
            the LUN can run it.

            Examples:
              lunar fs mkfs vol.img --size 20G
              lunar vm create vol.img web01 --cpus 2 --memory 512M --disk 10G --kernel bzImage --initrd initrd.img
              lunar vm create vol.img hello --memory 64M --image hello.bin
              lunar vm list vol.img
              lunar vm run vol.img hello --verbose
              lunar vm snapshot vol.img hello before-upgrade
            """,
        subcommands: [VMCreateCommand.self, VMRunCommand.self, VMStopCommand.self, VMListCommand.self, VMShowCommand.self, VMRmCommand.self,
                      VMSnapshotCommand.self, VMSnapshotsCommand.self, VMRevertCommand.self, VMDeleteSnapshotCommand.self,
                      VMBootCommand.self]
    )
}

// MARK: create

struct VMCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Make a VM on a volume: its folder, config, boot images and thin disks.",
        discussion: """
            Boot images are copied from this host into the VM's folder, so the VM does not \
            depend on files outside the volume. Give either --kernel (a Linux bzImage, with \
            --initrd and --cmdline) or --image (a freestanding guest: a flat image linked at \
            1 MiB, or a static x86-64 ELF). Each --disk adds a thin disk, disk0, disk1, ...; \
            append ',ro' for a read-only one (e.g. --disk 10G,ro).
            """
    )

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "VM name: letters, digits, '.', '_', '-' (up to 64).")
    var name: String

    @Option(parsing: .unconditional, help: "Virtual CPUs, 1 to 16.")
    var cpus = 1

    @Option(parsing: .unconditional, help: "Guest memory (e.g. 512M, 2G).", transform: ByteSize.parse)
    var memory = ByteSize(bytes: 512 << 20)

    @Option(help: """
        How the host backs guest memory: huge (transparent huge pages, the default), small \
        (4 KiB pages), or mergeable (4 KiB pages shared between VMs by KSM).
        """)
    var memoryBacking: GuestMemory.Backing = .hugePages

    @Option(name: .customLong("disk"), parsing: .unconditionalSingleValue,
            help: "Add a thin disk of this size (repeatable): SIZE, SIZE,ro (read-only), or SIZE,undo (writes thrown away when the VM stops).")
    var disks: [String] = []

    @Option(help: "Linux kernel (bzImage) on this host, copied into the VM.", transform: hostPath)
    var kernel: String?

    @Option(help: "initrd on this host, copied into the VM (with --kernel).", transform: hostPath)
    var initrd: String?

    @Option(help: "Kernel command line (with --kernel).")
    var cmdline: String?

    @Option(help: "Freestanding test guest on this host (flat image or ELF), copied into the VM.", transform: hostPath)
    var image: String?

    @Option(help: "Serial console: terminal, none, socket:PATH (a Unix socket this host's VMM listens on), or a host file path to append to.")
    var console = "terminal"

    @Flag(help: "Print the config as JSON.")
    var json = false

    func validate() throws {
        guard (kernel == nil) != (image == nil) else { throw ValidationError("give either --kernel or --image") }
        if image != nil, initrd != nil || cmdline != nil { throw ValidationError("--initrd and --cmdline go with --kernel") }
        _ = try Self.parseDisks(disks)
    }

    /// `--disk SIZE[,ro|,undo]` options: disk0, disk1, ...
    static func parseDisks(_ texts: [String]) throws -> [VMConfig.Disk] {
        try texts.enumerated().map { i, text in
            var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let mode = parts.count == 2 ? parts[1] : nil
            if mode == "ro" || mode == "undo" { parts.removeLast() }
            guard parts.count == 1, let size = ByteSize(argument: parts[0]) else {
                throw ValidationError("--disk '\(text)': give a size such as 10G, optionally followed by ',ro' or ',undo'")
            }
            return VMConfig.Disk(name: "disk\(i)", size: size.bytes, readOnly: mode == "ro", undo: mode == "undo")
        }
    }

    func run() async throws {
        try reportingErrors {
            let boot: VMConfig.Boot
            if kernel != nil {
                boot = .linux(kernel: "kernel", initrd: initrd == nil ? nil : "initrd", commandLine: cmdline ?? VMConfig.defaultCommandLine)
            } else {
                boot = .freestanding(image: "guest.img", format: try Self.imageFormat(image!))
            }
            let diskList = try Self.parseDisks(disks)
            let config = VMConfig(name: name, cpus: cpus, memory: memory.bytes, memoryBacking: memoryBacking, boot: boot, disks: diskList,
                                  console: try consoleArgument(console))
            let created = try withVolume(lun, readOnly: false) { volume in
                try VMLibrary.create(on: volume, config: config,
                                     images: .init(kernel: kernel, initrd: initrd, image: image))
            }
            if json { return printJSON(vmJSON(created, allocated: created.disks.map { _ in 0 })) }
            print("created VM \(created.name) on \(lun): \(describe(created))")
        }
    }

    /// ELF by its magic, else a flat image.
    static func imageFormat(_ path: String) throws -> VMConfig.ImageFormat {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw CLIError.system(path) }
        defer { try? handle.close() }
        let magic = (try? handle.read(upToCount: 4)) ?? Data()
        return magic == Data([0x7F, 0x45, 0x4C, 0x46]) ? .elf : .flat
    }
}

// MARK: run

struct VMRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a VM in the foreground with its serial console on this terminal.",
        discussion: """
            The volume is opened read-write and the VM's disks are held open until it stops. \
            On a terminal the console is in raw mode: Ctrl-A x quits (the VM is stopped and the \
            volume closed cleanly), Ctrl-A Ctrl-A sends Ctrl-A. SIGINT and SIGTERM stop the VM \
            the same way. The exit status is the guest's power-off status (0 after a reset, a \
            shutdown or Ctrl-A x).

            A Linux guest on the paravirtual KVM (kvm_pvm, no VMX/SVM: guest code runs about a \
            thousand times slower) is refused unless --force is given.
            """
    )

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "VM name.")
    var name: String

    @Option(help: "Serial console for this run: terminal, none, socket:PATH, or a host file path (default: the VM's config).")
    var console: String?

    @Flag(name: .shortAndLong, help: "Print the KVM kind, the VM's layout, the exit reason and the run time (on standard error).")
    var verbose = false

    @Flag(help: "Run a Linux guest even on the paravirtual KVM.")
    var force = false

    func run() async throws {
        // The VM runs in lunar-vmm, which this process becomes: the VMM process carries no
        // more than the VM needs (no Foundation, no argument parser).
        var arguments = ["run", lun, name]
        if let console { arguments += ["--console", console] }
        if verbose { arguments.append("--verbose") }
        if force { arguments.append("--force") }
        try reportingErrors { try execVMM(arguments) }
    }
}

/// Replaces this process with `lunar-vmm` (beside this executable, or `$LUNAR_VMM`); returns
/// only by throwing.
func execVMM(_ arguments: [String]) throws {
    let path: String
    if let override = ProcessInfo.processInfo.environment["LUNAR_VMM"] {
        path = override
    } else {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw CLIError.system("/proc/self/exe") }
        let me = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        path = String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/lunar-vmm"
    }
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    execv(path, argv)
    let why = String(cString: strerror(errno))
    throw CLIError("""
        cannot start the VMM, \(path): \(why) (lunar-vmm is built and installed beside lunar:         `swift build -c release` builds both; LUNAR_VMM names another)
        """)
}

// MARK: boot (hidden: the VMM alone, for Tools/bench/vmm.sh)

/// Runs a freestanding image straight from a host file, with no volume: the VMM's own start-up
/// cost, which Tools/bench/vmm.sh compares with QEMU's.
struct VMBootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot", abstract: "Run a freestanding guest image from a host file, without a volume (for benchmarks).",
        shouldDisplay: false)

    @Argument(help: "Flat image linked at 1 MiB, or a static x86-64 ELF.", transform: hostPath)
    var image: String

    @Option(parsing: .unconditional, help: "Guest memory.", transform: ByteSize.parse)
    var memory = ByteSize(bytes: 64 << 20)

    func run() async throws {
        try reportingErrors { try execVMM(["boot", image, "--memory", "\(memory.bytes)"]) }
    }
}

// MARK: list, show, rm

struct VMListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs on a volume.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let (vms, damaged) = try withVolume(lunArgument(lun), readOnly: true) { volume in try VMLibrary.list(on: volume) }
            for d in damaged { printError(d.error) }
            if json { return printJSON(vms.map { vmJSON($0.config, allocated: $0.allocated) }) }
            guard !vms.isEmpty else { return print("no VMs on \(lun) (make one with `lunar vm create`)") }
            let widths = [20, 6, 10, 14, 0]
            print(zip(["name", "cpus", "memory", "boot", "disks"], widths).map { pad($0, $1) }.joined())
            for vm in vms {
                let c = vm.config
                let disks = zip(c.disks, vm.allocated).map { disk, allocated in
                    "\(disk.name) \(ByteSize.format(disk.size)) (\(allocated.map { ByteSize.format($0) } ?? "missing") allocated)"
                        + (disk.readOnly ? " ro" : "") + (disk.undo ? " undo" : "")
                }
                let cells = [c.name, "\(c.cpus)", ByteSize.format(c.memory), c.boot.kindName, disks.isEmpty ? "-" : disks.joined(separator: ", ")]
                print(zip(cells, widths).map { pad($0, $1) }.joined())
            }
        }
    }
}

struct VMShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one VM's config and disks.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "VM name.")
    var name: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let (config, allocated, socket) = try withVolume(lunArgument(lun), readOnly: true) { volume in
                let config = try VMLibrary.load(name, on: volume)
                return (config, config.disks.map { try? volume.stat(config.path($0.file)).allocatedBytes },
                        VMControl.socketPath(volume: volume.header.uuid, vm: config.name))
            }
            if json {
                var object = vmJSON(config, allocated: allocated)
                object["control_socket"] = socket
                return printJSON(object)
            }
            print("VM \(config.name) (\(lun):\(config.folder))")
            print("  control: \(socket) (while it runs on this host)")
            print("  cpus:    \(config.cpus)")
            print("  memory:  \(ByteSize.format(config.memory)), \(config.memoryBacking.rawValue) pages")
            switch config.boot {
            case .linux(let kernel, let initrd, let commandLine):
                print("  boot:    linux, kernel \(kernel)" + (initrd.map { ", initrd \($0)" } ?? ""))
                print("  cmdline: \(commandLine)")
            case .freestanding(let image, let format):
                print("  boot:    freestanding \(format.rawValue) image \(image)")
            }
            print("  console: \(config.console.description)")
            for (disk, a) in zip(config.disks, allocated) {
                print("  \(disk.name):   \(disk.file), \(ByteSize.format(disk.size)), \(a.map { ByteSize.format($0) } ?? "missing") allocated"
                      + (disk.readOnly ? ", read-only" : "") + (disk.undo ? ", undo (writes thrown away at stop)" : ""))
            }
        }
    }
}

struct VMRmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a VM with its disks and images.",
        discussion: "A running VM holds its volume open read-write: rm waits for it (up to 30 s) like any other change.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "VM name.")
    var name: String

    func run() async throws {
        try reportingErrors {
            try withVolume(lun, readOnly: false) { volume in try VMLibrary.remove(name, on: volume) }
            print("removed VM \(name) from \(lun)")
        }
    }
}

// MARK: formatting

func consoleArgument(_ text: String) throws -> VMConfig.Console {
    guard let console = VMConfig.Console(argument: text) else {
        throw CLIError("--console '\(text)': give \(VMConfig.Console.accepted)")
    }
    return console
}

func describe(_ c: VMConfig) -> String {
    var parts = ["\(c.cpus) vCPU\(c.cpus == 1 ? "" : "s")", ByteSize.format(c.memory) + " memory"]
    switch c.boot {
    case .linux(_, let initrd, _): parts.append("Linux kernel" + (initrd == nil ? "" : " and initrd"))
    case .freestanding(_, let format): parts.append("freestanding \(format.rawValue) image")
    }
    parts += c.disks.map { "\($0.name) \(ByteSize.format($0.size)) thin\($0.readOnly ? " read-only" : "")\($0.undo ? " undo" : "")" }
    return parts.joined(separator: ", ")
}

func vmJSON(_ c: VMConfig, allocated: [UInt64?]) -> [String: Any] {
    var boot: [String: Any] = ["kind": c.boot.kindName]
    switch c.boot {
    case .linux(let kernel, let initrd, let commandLine):
        boot["kernel"] = kernel
        boot["command_line"] = commandLine
        if let initrd { boot["initrd"] = initrd }
    case .freestanding(let image, let format):
        boot["image"] = image
        boot["format"] = format.rawValue
    }
    return [
        "name": c.name, "cpus": c.cpus, "memory_bytes": c.memory, "memory_backing": c.memoryBacking.rawValue, "boot": boot, "console": c.console.description,
        "folder": c.folder,
        "disks": zip(c.disks, allocated).map { disk, a in
            ["name": disk.name, "file": disk.file, "size_bytes": disk.size, "allocated_bytes": a.map { $0 as Any } ?? NSNull(),
             "read_only": disk.readOnly, "mode": disk.undo ? "undo" : "persistent"] as [String: Any]
        },
    ]
}

extension GuestMemory.Backing: ExpressibleByArgument {}
