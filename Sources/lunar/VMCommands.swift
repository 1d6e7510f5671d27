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
            """,
        subcommands: [VMCreateCommand.self, VMRunCommand.self, VMListCommand.self, VMShowCommand.self, VMRmCommand.self,
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

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.")
    var lun: String

    @Argument(help: "VM name: letters, digits, '.', '_', '-' (up to 64).")
    var name: String

    @Option(help: "Virtual CPUs, 1 to 16.")
    var cpus = 1

    @Option(help: "Guest memory (e.g. 512M, 2G).", transform: ByteSize.parse)
    var memory = ByteSize(bytes: 512 << 20)

    @Option(name: .customLong("disk"), help: "Add a thin disk of this size (repeatable; SIZE or SIZE,ro).")
    var disks: [String] = []

    @Option(help: "Linux kernel (bzImage) on this host, copied into the VM.")
    var kernel: String?

    @Option(help: "initrd on this host, copied into the VM (with --kernel).")
    var initrd: String?

    @Option(help: "Kernel command line (with --kernel).")
    var cmdline: String?

    @Option(help: "Freestanding test guest on this host (flat image or ELF), copied into the VM.")
    var image: String?

    @Option(help: "Serial console: terminal, none, or a host file path to append to.")
    var console = "terminal"

    @Flag(help: "Print the config as JSON.")
    var json = false

    func validate() throws {
        guard (kernel == nil) != (image == nil) else { throw ValidationError("give either --kernel or --image") }
        if image != nil, initrd != nil || cmdline != nil { throw ValidationError("--initrd and --cmdline go with --kernel") }
        _ = try Self.parseDisks(disks)
    }

    /// `--disk SIZE[,ro]` options: disk0, disk1, ...
    static func parseDisks(_ texts: [String]) throws -> [VMConfig.Disk] {
        try texts.enumerated().map { i, text in
            var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let readOnly = parts.count == 2 && parts[1] == "ro"
            if readOnly { parts.removeLast() }
            guard parts.count == 1, let size = ByteSize(argument: parts[0]) else {
                throw ValidationError("--disk '\(text)': give a size such as 10G, optionally followed by ',ro'")
            }
            return VMConfig.Disk(name: "disk\(i)", size: size.bytes, readOnly: readOnly)
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
            let config = VMConfig(name: name, cpus: cpus, memory: memory.bytes, boot: boot, disks: diskList,
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

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.")
    var lun: String

    @Argument(help: "VM name.")
    var name: String

    @Option(help: "Serial console for this run: terminal, none, or a host file path (default: the VM's config).")
    var console: String?

    @Flag(name: .shortAndLong, help: "Print the KVM kind, the VM's layout, the exit reason and the run time (on standard error).")
    var verbose = false

    @Flag(help: "Run a Linux guest even on the paravirtual KVM.")
    var force = false

    func run() async throws {
        var status: Int32 = 0
        try reportingErrors {
            status = try withVolume(lun, readOnly: false) { volume in try runVM(volume) }
        }
        if status != 0 { throw ExitCode(status) }
    }

    private func note(_ text: String) { print("lunar vm: \(text)", to: &standardError) }

    private func runVM(_ volume: Volume) throws -> Int32 {
        var config = try VMLibrary.load(name, on: volume)
        if let console { config.console = try consoleArgument(console) }
        let kvm = try KVM()
        if case .linux = config.boot, kvm.kind == .paravirtual {
            guard force else {
                throw CLIError("""
                    VM '\(name)' boots Linux, and this host's KVM is \(kvm.kind.rawValue): booting would take hours. \
                    Pass --force to run it anyway.
                    """)
            }
            note("warning: Linux on the paravirtual KVM runs about a thousand times slower than on hardware KVM")
        }
        let attachment = try ConsoleAttachment(config.console)
        let session = try VMSession(config: config, volume: volume, kvm: kvm, console: attachment.output)
        if verbose {
            let l = session.layout
            note("KVM: \(l.kvmKind.rawValue)")
            note("VM \(config.name) on \(lun): \(ByteSize.format(l.memory)) memory, "
                 + "\(l.cpus) vCPU\(l.cpus == 1 ? "" : "s")"
                 + ", boot \(l.bootKind)" + (l.entry.map { " at 0x\(String($0, radix: 16))" } ?? ""))
            for d in l.disks {
                note("  \(d.name): \(d.path), \(ByteSize.format(d.size))\(d.readOnly ? " read-only" : ""), virtio-mmio at 0x\(String(d.address, radix: 16)) IRQ \(d.irq)")
            }
            note("console: \(config.console.description)\(attachment.interactive ? " (Ctrl-A x quits)" : "")")
        }
        let start = monotonicSeconds()
        attachment.attach(stop: { session.stop() }, input: { session.sendConsoleInput($0) })
        let exit: VMExit
        do {
            exit = try session.run()
        } catch {
            attachment.detach()
            throw error
        }
        attachment.detach()
        let seconds = monotonicSeconds() - start
        let (reason, status): (String, Int32) = switch exit {
        case .poweredOff(let code): ("powered off with status \(code)", Int32(code))
        case .reset: ("reset", 0)
        case .shutdown: ("shut down (triple fault or halt)", 0)
        case .stopped: ("stopped by the host", 0)
        }
        if verbose { note(String(format: "%@ after %.3f s", reason, seconds)) }
        return status
    }
}

/// The VM's serial console on this side: standard output (raw terminal input, with the Ctrl-A
/// escapes, when standard input is a terminal), a host file, or nothing.
final class ConsoleAttachment: @unchecked Sendable {
    let outputFD: Int32
    let interactive: Bool
    private var saved: termios?
    /// Wakes the watcher thread: "s" from a signal handler (stop), "q" to end it.
    private var wake: [Int32] = [-1, -1]
    private var ownsOutput = false

    init(_ console: VMConfig.Console) throws {
        switch console {
        case .terminal:
            outputFD = STDOUT_FILENO
            interactive = isatty(STDIN_FILENO) == 1
        case .none:
            outputFD = -1
            interactive = false
        case .file(let path):
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw CLIError.system(path) }
            outputFD = fd
            ownsOutput = true
            interactive = false
        }
    }

    deinit {
        if ownsOutput { close(outputFD) }
    }

    /// One byte from the guest's UART, written at once (a console is watched live).
    var output: (UInt8) -> Void {
        let fd = outputFD
        return { byte in
            guard fd >= 0 else { return }
            var b = byte
            while write(fd, &b, 1) < 0 && errno == EINTR {} // EPIPE and the like: the byte is dropped
        }
    }

    /// Raw mode and the Ctrl-A escapes (on a terminal), SIGINT/SIGTERM/SIGHUP: `stop` and
    /// `input` (what is typed, for the guest's UART) are called on a watcher thread.
    func attach(stop: @escaping @Sendable () -> Void, input: @escaping @Sendable ([UInt8]) -> Void) {
        // A reader of the console that goes away must not kill the VMM before it closes the
        // volume: the guest's output is then dropped.
        _ = signal(SIGPIPE, SIG_IGN)
        guard pipe(&wake) == 0 else { return }
        consoleWakeFD = wake[1]
        for s in [SIGINT, SIGTERM, SIGHUP] {
            _ = signal(s) { _ in
                var b = UInt8(ascii: "s")
                _ = write(consoleWakeFD, &b, 1)
            }
        }
        if interactive {
            var t = termios()
            if tcgetattr(STDIN_FILENO, &t) == 0 {
                saved = t
                // Raw input, output processing kept (a guest printing "\n" still starts a new line).
                t.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
                t.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
                t.c_cflag |= tcflag_t(CS8)
                _ = tcsetattr(STDIN_FILENO, TCSANOW, &t)
            }
        }
        let readWake = wake[0], interactive = self.interactive
        let thread = Thread {
            var fds = [pollfd(fd: readWake, events: Int16(POLLIN), revents: 0)]
            if interactive { fds.append(pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)) }
            var escape = false
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue } else { return } }
                if fds[0].revents != 0 {
                    let n = read(readWake, &buffer, 1)
                    if n <= 0 || buffer[0] == UInt8(ascii: "q") { return }
                    stop()
                }
                if fds.count > 1, fds[1].revents != 0 {
                    let n = read(STDIN_FILENO, &buffer, buffer.count)
                    if n <= 0 { fds.removeLast(); continue }
                    var typed: [UInt8] = []
                    defer { if !typed.isEmpty { input(typed) } }
                    for byte in buffer[0..<n] {
                        if escape {
                            escape = false
                            switch byte {
                            case UInt8(ascii: "x"), UInt8(ascii: "X"):
                                stop()
                            case UInt8(ascii: "h"), UInt8(ascii: "?"):
                                let help = "\r\nC-a x    stop the VM and exit\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n"
                                _ = help.withCString { write(STDERR_FILENO, $0, strlen($0)) }
                            case 0x01:
                                typed.append(0x01)
                            default:
                                break
                            }
                        } else if byte == 0x01 {
                            escape = true
                        } else {
                            typed.append(byte)
                        }
                    }
                }
            }
        }
        thread.start()
    }

    /// Restores the terminal and ends the watcher.
    func detach() {
        if var t = saved {
            _ = tcsetattr(STDIN_FILENO, TCSANOW, &t)
            saved = nil
        }
        for s in [SIGINT, SIGTERM, SIGHUP] { _ = signal(s, SIG_DFL) }
        if wake[1] >= 0 {
            var b = UInt8(ascii: "q")
            _ = write(wake[1], &b, 1)
        }
    }
}

/// Where the signal handlers of `ConsoleAttachment` write (a handler cannot capture).
nonisolated(unsafe) var consoleWakeFD: Int32 = -1

// MARK: boot (hidden: the VMM alone, for Tools/bench/vmm.sh)

/// Runs a freestanding image straight from a host file, with no volume: the VMM's own start-up
/// cost, which Tools/bench/vmm.sh compares with QEMU's.
struct VMBootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot", abstract: "Run a freestanding guest image from a host file, without a volume (for benchmarks).",
        shouldDisplay: false)

    @Argument(help: "Flat image linked at 1 MiB, or a static x86-64 ELF.")
    var image: String

    @Option(help: "Guest memory.", transform: ByteSize.parse)
    var memory = ByteSize(bytes: 64 << 20)

    func run() async throws {
        var status: Int32 = 0
        try reportingErrors {
            guard let data = FileManager.default.contents(atPath: image) else { throw CLIError.system(image) }
            let bytes = [UInt8](data)
            let attachment = try ConsoleAttachment(.terminal)
            let vm = try VirtualMachine(kvm: try KVM(), memorySize: memory.bytes, console: attachment.output)
            let entry: UInt64
            if bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) { entry = try vm.loadELF(bytes) } else {
                try vm.loadFlatImage(bytes)
                entry = VirtualMachine.imageAddress
            }
            nonisolated(unsafe) let target = vm
            attachment.attach(stop: { target.requestStop() }, input: { target.sendConsoleInput($0) })
            defer { attachment.detach() }
            if case .poweredOff(let code) = try vm.runFreestanding(entry: entry) { status = Int32(code) }
        }
        if status != 0 { throw ExitCode(status) }
    }
}

// MARK: list, show, rm

struct VMListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs on a volume.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.")
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
                        + (disk.readOnly ? " ro" : "")
                }
                let cells = [c.name, "\(c.cpus)", ByteSize.format(c.memory), c.boot.kindName, disks.isEmpty ? "-" : disks.joined(separator: ", ")]
                print(zip(cells, widths).map { pad($0, $1) }.joined())
            }
        }
    }
}

struct VMShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one VM's config and disks.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.")
    var lun: String

    @Argument(help: "VM name.")
    var name: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let (config, allocated) = try withVolume(lunArgument(lun), readOnly: true) { volume in
                let config = try VMLibrary.load(name, on: volume)
                return (config, config.disks.map { try? volume.stat(config.path($0.file)).allocatedBytes })
            }
            if json { return printJSON(vmJSON(config, allocated: allocated)) }
            print("VM \(config.name) (\(lun):\(config.folder))")
            print("  cpus:    \(config.cpus)")
            print("  memory:  \(ByteSize.format(config.memory))")
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
                      + (disk.readOnly ? ", read-only" : ""))
            }
        }
    }
}

struct VMRmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove a VM with its disks and images.",
        discussion: "A running VM holds its volume open read-write: rm waits for it (up to 30 s) like any other change.")

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.")
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
        throw CLIError("--console '\(text)': give terminal, none, or a host file path (file:NAME, ./NAME or /path/NAME)")
    }
    return console
}

func describe(_ c: VMConfig) -> String {
    var parts = ["\(c.cpus) vCPU\(c.cpus == 1 ? "" : "s")", ByteSize.format(c.memory) + " memory"]
    switch c.boot {
    case .linux(_, let initrd, _): parts.append("Linux kernel" + (initrd == nil ? "" : " and initrd"))
    case .freestanding(_, let format): parts.append("freestanding \(format.rawValue) image")
    }
    parts += c.disks.map { "\($0.name) \(ByteSize.format($0.size)) thin\($0.readOnly ? " read-only" : "")" }
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
        "name": c.name, "cpus": c.cpus, "memory_bytes": c.memory, "boot": boot, "console": c.console.description,
        "folder": c.folder,
        "disks": zip(c.disks, allocated).map { disk, a in
            ["name": disk.name, "file": disk.file, "size_bytes": disk.size, "allocated_bytes": a.map { $0 as Any } ?? NSNull(),
             "read_only": disk.readOnly] as [String: Any]
        },
    ]
}
