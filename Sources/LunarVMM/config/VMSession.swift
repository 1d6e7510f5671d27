import LunarFS
import LunarIO

/// A stored VM made real: its disks open (held for the VM's whole life), its memory and
/// devices built, its boot image loaded. `run()` then runs it on the calling thread; `stop()`
/// from any other thread ends it.
///
/// This is the one place a `VMConfig` becomes a `VirtualMachine`. Sendable for `stop()`, the
/// one call made from another thread.
public final class VMSession: @unchecked Sendable {
    /// How the VM was laid out: what `lunar vm run --verbose` prints.
    public struct Layout: Sendable {
        public struct DiskSlot: Sendable {
            public var name: String
            public var path: String
            public var size: UInt64
            public var readOnly: Bool
            /// The virtio-mmio register window and its IRQ.
            public var address: UInt64
            public var irq: UInt32
        }
        public var kvmKind: KVM.Kind
        public var memory: UInt64
        public var cpus: Int
        public var bootKind: String
        public var entry: UInt64?
        public var disks: [DiskSlot]
    }

    public let config: VMConfig
    public private(set) var layout: Layout
    private let vm: VirtualMachine
    /// The disk files, open for as long as the session lives.
    private let disks: [File]
    private var linux: LinuxBootConfiguration?

    public init(config: VMConfig, volume: Volume, kvm: KVM, console: @escaping (UInt8) -> Void) throws {
        try config.validate()
        var files: [File] = []
        for disk in config.disks {
            let path = config.path(disk.file)
            do throws(FSError) {
                files.append(try volume.openFile(path))
            } catch {
                guard error.kind == .notFound else { throw error }
                throw VMConfigError(.damaged(name: config.name, reason: "disk \(disk.name) (\(path)) is missing"))
            }
        }
        let vm = try VirtualMachine(kvm: kvm, memorySize: config.memory, memoryBacking: config.memoryBacking, cpus: config.cpus,
                                    console: console)
        var slots: [Layout.DiskSlot] = []
        for (disk, file) in zip(config.disks, files) {
            let backend = try LunarFSDisk(file: file, readOnly: disk.readOnly)
            let window = try vm.addBlockDevice(backend, serial: String("\(config.name)-\(disk.name)".prefix(20)))
            slots.append(.init(name: disk.name, path: file.path, size: backend.capacity, readOnly: backend.isReadOnly,
                               address: window.address, irq: window.irq))
        }
        var entry: UInt64?
        switch config.boot {
        case .freestanding(let name, let format):
            let image = try VMLibrary.readFile(config.path(name), on: volume)
            switch format {
            case .flat:
                try vm.loadFlatImage(image)
                entry = VirtualMachine.imageAddress
            case .elf:
                entry = try vm.loadELF(image)
            }
        case .linux(let kernel, let initrd, let commandLine):
            // The guest finds its virtio-mmio disks in the DSDT, not on its command line.
            linux = LinuxBootConfiguration(kernel: try VMLibrary.readFile(config.path(kernel), on: volume),
                                           initrd: try initrd.map { try VMLibrary.readFile(config.path($0), on: volume) },
                                           commandLine: commandLine)
        }
        self.config = config
        self.vm = vm
        self.disks = files
        layout = Layout(kvmKind: kvm.kind, memory: config.memory, cpus: config.cpus,
                        bootKind: config.boot.kindName, entry: entry, disks: slots)
    }

    /// Runs the guest until it powers off, resets, shuts down or is stopped.
    public func run() throws -> VMExit {
        defer { for disk in disks { try? disk.flush() } }
        switch config.boot {
        case .freestanding:
            return try vm.runFreestanding(entry: layout.entry ?? VirtualMachine.imageAddress)
        case .linux:
            guard let linux else { throw VMConfigError(.invalid("VM '\(config.name)' has no Linux kernel loaded")) }
            return try vm.runLinux(linux)
        }
    }

    /// Ends `run()` soon with `.stopped`; callable from any thread.
    public func stop() { vm.requestStop() }

    /// Console input for the guest's UART; callable from any thread.
    public func sendConsoleInput(_ bytes: [UInt8]) { vm.sendConsoleInput(bytes) }
}
