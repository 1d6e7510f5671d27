import LunarDisk
import LunarFS
import LunarIO
import Synchronization

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
    /// The disks, open for as long as the session lives.
    private let disks: [DiskChannel]
    private var linux: LinuxBootConfiguration?
    /// One snapshot at a time.
    private let snapshotting = Mutex(())
    private let control = Mutex<ControlSocket?>(nil)
    /// `vm.json`, held exclusive while the session lives.
    private let runLock: File
    /// Undo disks' runs, thrown away when the VM ends.
    private let undos: [UndoOverlay]

    public init(config: VMConfig, volume: Volume, kvm: KVM, console: @escaping (UInt8) -> Void) throws {
        try config.validate()
        // The VM's own lock: held exclusive for its whole run, so that it never runs on two
        // hosts at once, disks or no disks, and `vm rm` waits for it.
        let configPath = config.folder + "/" + VMLibrary.configFile
        do throws(FSError) {
            runLock = try volume.openFile(configPath, lock: .exclusive)
        } catch {
            guard case .busy(let why) = error.kind else { throw error }
            // "…; close it there" would mislead: what holds it is a running VM.
            let holder = why.firstRange(of: "; close it there").map { String(why[..<$0.lowerBound]) } ?? why
            throw VMConfigError(.invalid("VM '\(config.name)' runs already: \(configPath): \(holder); stop it there first"))
        }
        var files: [File] = []
        var undos: [UndoOverlay] = []
        for disk in config.disks {
            let path = config.path(disk.file)
            guard try volume.exists(path) else {
                throw VMConfigError(.damaged(name: config.name, reason: "disk \(disk.name) (\(path)) is missing"))
            }
            if disk.undo {
                let undo = try VirtualDisk(volume, path: path).openUndo()
                undos.append(undo)
                files.append(undo.overlay)
            } else {
                files.append(try volume.openFile(path))
            }
        }
        let vm = try VirtualMachine(kvm: kvm, memorySize: config.memory, memoryBacking: config.memoryBacking, cpus: config.cpus,
                                    console: console)
        var slots: [Layout.DiskSlot] = []
        var channels: [DiskChannel] = []
        for (disk, file) in zip(config.disks, files) {
            let channel = try DiskChannel(file: file, readOnly: disk.readOnly)
            let window = try vm.addBlockDevice(channel, serial: String("\(config.name)-\(disk.name)".prefix(20)))
            slots.append(.init(name: disk.name, path: file.path, size: channel.capacity, readOnly: channel.isReadOnly,
                               address: window.address, irq: window.irq))
            channels.append(channel)
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
        self.disks = channels
        self.undos = undos
        layout = Layout(kvmKind: kvm.kind, memory: config.memory, cpus: config.cpus,
                        bootKind: config.boot.kindName, entry: entry, disks: slots)
    }

    /// Runs the guest until it powers off, resets, shuts down or is stopped.
    public func run() throws -> VMExit {
        defer {
            control.withLock { $0?.close() }
            for disk in disks { try? disk.file.flush() }
            for undo in undos { try? undo.discard() }
            try? runLock.close()
        }
        switch config.boot {
        case .freestanding:
            return try vm.runFreestanding(entry: layout.entry ?? VirtualMachine.imageAddress)
        case .linux:
            guard let linux else { throw VMConfigError(.invalid("VM '\(config.name)' has no Linux kernel loaded")) }
            return try vm.runLinux(linux)
        }
    }

    /// What `snapshot` did: the disks' snapshots, and how long the guest's disks were paused.
    public struct SnapshotTaken: Sendable {
        /// Each disk's path and its new snapshot.
        public var snapshots: [(disk: String, snapshot: SnapshotInfo)]
        public var pausedSeconds: Double
    }

    /// Takes snapshot `name` of every writable disk at one point while the guest runs: every
    /// disk pauses (requests in flight complete; new ones wait in the ring), each is captured,
    /// and all resume; the snapshots are then entered in their trees. Crash-consistent across
    /// the disks: no disk holds a write the guest made after another disk's point. Read-only
    /// disks never change and are not snapshotted. Callable from any thread; one at a time.
    public func snapshot(_ name: String) throws(DiskError) -> SnapshotTaken {
        // Undo disks are left out: what their guest writes is thrown away at the end anyway.
        let undoFiles = Set(undos.map(\.overlay.path))
        let writable = disks.filter { !$0.isReadOnly && !undoFiles.contains($0.file.path) }
        guard !writable.isEmpty else { throw DiskError.invalidArgument("VM '\(config.name)' has no persistent writable disk to snapshot") }
        try SnapshotTree.checkName(name)
        return try snapshotting.withLock { (_) throws(DiskError) -> SnapshotTaken in try snapshot(name, of: writable) }
    }

    private func snapshot(_ name: String, of writable: [DiskChannel]) throws(DiskError) -> SnapshotTaken {
        let start = monotonicSeconds()
        vm.pauseDisks()
        var failure: DiskError?
        do throws(DiskError) {
            for disk in writable { try disk.prepareSnapshot() }
            try VirtualDisk.captureSnapshot(name, of: writable.map(\.virtualDisk))
        } catch {
            failure = error
        }
        vm.resumeDisks()
        let paused = monotonicSeconds() - start
        if let failure { throw failure }
        var infos: [(disk: String, snapshot: SnapshotInfo)] = []
        for disk in writable { infos.append((disk.file.path, try disk.virtualDisk.recordSnapshot(name))) }
        return SnapshotTaken(snapshots: infos, pausedSeconds: paused)
    }

    // MARK: the control socket

    /// Takes requests on the VM's control socket at `path` (`VMControl.socketPath`) until the
    /// session ends (`Spec/vm-control.md`).
    public func listen(on path: String) throws {
        let socket = try ControlSocket(path: path)
        try socket.serve { [self] request in answer(request) }
        control.withLock { $0 = socket }
    }

    /// The answer to one control request.
    public func answer(_ request: JSONValue) -> JSONValue {
        switch request["op"]?.stringValue {
        case "status":
            return ControlAnswer.success(["vm": .string(config.name), "state": .string("running"),
                                          "disks": .array(disks.map { .string($0.file.path) })])
        case "snapshot":
            guard let name = request["name"]?.stringValue else { return ControlAnswer.failure("a snapshot request needs \"name\"") }
            do throws(DiskError) {
                let taken = try snapshot(name)
                return ControlAnswer.success([
                    "vm": .string(config.name), "name": .string(name),
                    "stun_ms": .number(fixedPoint(taken.pausedSeconds * 1000, places: 3)),
                    "disks": .array(taken.snapshots.map { .string($0.disk) }),
                ])
            } catch {
                return ControlAnswer.failure(error.description)
            }
        case "stop":
            stop()
            return ControlAnswer.success(["vm": .string(config.name), "state": .string("stopping")])
        case let op:
            return ControlAnswer.failure("unknown op \(op.map { "'\($0)'" } ?? "(none)"): give status, snapshot or stop")
        }
    }

    /// Ends `run()` soon with `.stopped`; callable from any thread.
    public func stop() { vm.requestStop() }

    /// Console input for the guest's UART; callable from any thread.
    public func sendConsoleInput(_ bytes: [UInt8]) { vm.sendConsoleInput(bytes) }
}
