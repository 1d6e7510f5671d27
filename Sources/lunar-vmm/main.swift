// lunar-vmm: the VMM process. `lunar vm run` and `lunar vm boot` exec it, so a running VM is
// this small program: no Foundation, the Swift runtime linked in, nothing loaded that the VM
// does not use (BRIEF §4: < 8 MiB resident beyond guest RAM). It holds the volume open
// read-write (a host with its heartbeat and journal) and the VM's disks locked for as long as
// the VM runs.
import Glibc
import LunarFS
import LunarIO
import LunarVMM

let usage = """
    usage: lunar-vmm run LUN NAME [--console C] [--verbose] [--force]
           lunar-vmm boot IMAGE [--memory SIZE]

      run    runs the VM NAME stored on the volume on LUN (image file, block device or
             iSCSI URL) in the foreground, as `lunar vm run` does (see `lunar vm run --help`)
      boot   runs a freestanding guest image (flat at 1 MiB, or a static ELF) from a host
             file, without a volume: the VMM's own start-up, for benchmarks

      --console C   terminal, none, socket:PATH, or a host file path (file:NAME, ./NAME, /path/NAME)
      -v, --verbose the KVM kind, the VM's layout, the exit reason and the run time
      --force       run a Linux guest even on the paravirtual KVM
      --memory SIZE guest memory for boot (default 64M)

    The exit status is the guest's power-off status (0 after a reset, a shutdown or a stop);
    1 when the VM could not run, 2 for a wrong command line.
    """

/// A line on standard error, written at once (the console may be in raw mode).
func note(_ text: String) {
    let line = Array("lunar-vmm: \(text)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

func fail(_ text: String, status: Int32 = 1) -> Never {
    note(text)
    exit(status)
}

/// The command line: a verb, its operands, and `--name [value]` options.
struct Arguments {
    var verb: String
    var operands: [String] = []
    var console: String?
    var memory: String?
    var verbose = false
    var force = false

    init(_ words: [String]) {
        guard let first = words.first else { fail("no command given\n\(usage)", status: 2) }
        if first == "-h" || first == "--help" || first == "help" {
            print(usage)
            exit(0)
        }
        verb = first
        var rest = words.dropFirst()[...]
        while let word = rest.popFirst() {
            func value() -> String {
                guard let v = rest.popFirst() else { fail("\(word) needs a value\n\(usage)", status: 2) }
                return v
            }
            switch word {
            case "--console": console = value()
            case "--memory": memory = value()
            case "-v", "--verbose": verbose = true
            case "--force": force = true
            case "-h", "--help":
                print(usage)
                exit(0)
            case _ where word.hasPrefix("-") && word.count > 1: fail("unknown option \(word)\n\(usage)", status: 2)
            default: operands.append(word)
            }
        }
    }

    func operands(_ names: String...) -> [String] {
        guard operands.count == names.count else {
            fail("\(verb) takes \(names.joined(separator: " ")), got \(operands.count) operand\(operands.count == 1 ? "" : "s")\n\(usage)", status: 2)
        }
        return operands
    }
}

/// The exit status a VM's end gives, and how `--verbose` names it.
func outcome(_ exit: VMExit) -> (reason: String, status: Int32) {
    switch exit {
    case .poweredOff(let code): ("powered off with status \(code)", Int32(code))
    case .reset: ("reset", 0)
    case .shutdown: ("shut down (triple fault or halt)", 0)
    case .stopped: ("stopped by the host", 0)
    }
}

/// `lunar-vmm run LUN NAME`: the stored VM, with its disks held, until it ends.
func runStored(_ arguments: Arguments) throws -> Int32 {
    let operands = arguments.operands("LUN", "NAME")
    let lun = operands[0], name = operands[1]
    var console: VMConfig.Console?
    if let text = arguments.console {
        guard let parsed = VMConfig.Console(argument: text) else {
            fail("--console '\(text)': give \(VMConfig.Console.accepted)", status: 2)
        }
        console = parsed
    }
    guard BlockDevice.exists(lun) else {
        throw FSError(.notFound).naming(lun)
    }
    let options = OpenOptions(readOnly: false, heartbeatInterval: OpenOptions.toolHeartbeatInterval)
    return try Volume.withOpen(path: lun, options: options) { volume in
        try runStored(name, on: volume, lun: lun, console: console, arguments)
    }
}

func runStored(_ name: String, on volume: Volume, lun: String, console: VMConfig.Console?, _ arguments: Arguments) throws -> Int32 {
    var config = try VMLibrary.load(name, on: volume)
    if let console { config.console = console }
    let kvm = try KVM()
    if case .linux = config.boot, kvm.kind == .paravirtual {
        guard arguments.force else {
            throw VMConfigError(.invalid("""
                VM '\(name)' boots Linux, and this host's KVM is \(kvm.kind.rawValue): booting would take hours. \
                Pass --force to run it anyway.
                """))
        }
        note("warning: Linux on the paravirtual KVM runs about a thousand times slower than on hardware KVM")
    }
    let attachment = try ConsoleAttachment(config.console)
    let session = try VMSession(config: config, volume: volume, kvm: kvm, console: attachment.output)
    // `lunar vm snapshot` and, later, migration and the host agent reach the running VM here.
    try session.listen(on: VMControl.socketPath(volume: volume.header.uuid, vm: config.name))
    if arguments.verbose {
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
    defer { attachment.detach() }
    trimWhenSettled()
    let (reason, status) = outcome(try session.run())
    if arguments.verbose { note("\(reason) after \(fixedPoint(monotonicSeconds() - start, places: 3)) s") }
    return status
}

/// `lunar-vmm boot IMAGE`: a freestanding guest from a host file, console on the terminal.
func bootImage(_ arguments: Arguments) throws -> Int32 {
    let path = arguments.operands("IMAGE")[0]
    var memory: UInt64 = 64 << 20
    if let text = arguments.memory {
        guard let size = ByteSize(argument: text) else { fail("--memory '\(text)' is not a size: give \(ByteSize.accepted)", status: 2) }
        memory = size.bytes
    }
    let image = try readHostFile(path)
    let attachment = try ConsoleAttachment(.terminal)
    let vm = try VirtualMachine(kvm: try KVM(), memorySize: memory, console: attachment.output)
    let entry: UInt64
    if image.starts(with: [0x7F, 0x45, 0x4C, 0x46]) {
        entry = try vm.loadELF(image)
    } else {
        try vm.loadFlatImage(image)
        entry = VirtualMachine.imageAddress
    }
    nonisolated(unsafe) let target = vm
    attachment.attach(stop: { target.requestStop() }, input: { target.sendConsoleInput($0) })
    defer { attachment.detach() }
    trimWhenSettled()
    return outcome(try vm.runFreestanding(entry: entry)).status
}

/// A whole host file (a guest image: at most 1 GiB).
func readHostFile(_ path: String) throws(VMConfigError) -> [UInt8] {
    func failure() -> VMConfigError { VMConfigError(.hostFile(path: path, reason: String(cString: strerror(errno)))) }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw failure() }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw failure() }
    guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0, st.st_size <= 1 << 30 else {
        throw VMConfigError(.hostFile(path: path, reason: "not a regular file of 1 byte to 1 GiB"))
    }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { buffer in
            pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(done))
        }
        if n < 0, errno == EINTR { continue }
        guard n > 0 else { throw n < 0 ? failure() : VMConfigError(.hostFile(path: path, reason: "file shrank while read")) }
        done += n
    }
    return bytes
}

/// Unmaps the pages of this process's read-only file mappings (code, symbol tables and
/// relocation records of the binary and its libraries) that it holds no private copy of. They
/// stay in the page cache and come back on the next touch, so nothing is lost; until then they
/// do not count against the VM. Most of what start-up ran (argument parsing, opening the
/// volume, building the machine) and what the dynamic loader read is then no longer resident;
/// a running VM keeps what its threads touch again, in 64 KiB pieces (the kernel maps a
/// fault's neighbours too, and MADV_RANDOM does not stop that on current kernels).
///
/// Mappings with anonymous pages are left alone: RELRO data was written by the loader before
/// it became read-only, and dropping those pages would bring back the unrelocated file bytes.
func trimResidentFilePages() {
    guard let smaps = fopen("/proc/self/smaps", "r") else { return }
    defer { fclose(smaps) }
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    var candidate: (address: UnsafeMutableRawPointer, length: Int)?
    var trimmable: [(address: UnsafeMutableRawPointer, length: Int)] = []
    while getline(&line, &capacity, smaps) > 0, let line {
        let text = String(cString: line)
        let fields = text.split(separator: " ", omittingEmptySubsequences: true)
        if let range = fields.first, range.contains("-"), fields.count >= 5 {
            // "start-end perms offset dev inode [path]": a new mapping.
            candidate = nil
            let bounds = range.split(separator: "-")
            guard fields.count >= 6, fields[1] == "r-xp" || fields[1] == "r--p", fields[5].hasPrefix("/"),
                  bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16),
                  end > start, let address = UnsafeMutableRawPointer(bitPattern: start) else { continue }
            candidate = (address, Int(end - start))
        } else if fields.first == "Anonymous:", let c = candidate {
            if fields.count >= 2, fields[1] == "0" { trimmable.append(c) }
            candidate = nil
        }
    }
    for m in trimmable { _ = madvise(m.address, m.length, MADV_DONTNEED) }
}

/// Trims once the VM has run for a moment: by then start-up is over, and what it touched is
/// not needed again. (Trimming at start would only make start-up fault it all back in.)
func trimWhenSettled() {
    let started = startThread {
        usleep(250_000)
        trimResidentFilePages()
    }
    if case .success(let thread) = started { pthread_detach(thread) }
}

// A signal mask is inherited through exec: `lunar` execs this from a thread of its async pool,
// which blocks SIGTERM and SIGINT, and the VM must still stop on them.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)

let arguments = Arguments(Array(CommandLine.arguments.dropFirst()))
let status: Int32
do {
    switch arguments.verb {
    case "run": status = try runStored(arguments)
    case "boot": status = try bootImage(arguments)
    default: fail("unknown command '\(arguments.verb)'\n\(usage)", status: 2)
    }
} catch {
    fail("\(error)")
}
exit(status)
