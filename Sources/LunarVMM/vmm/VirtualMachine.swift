import LunarDisk
import CLunar
import Glibc
import Synchronization

/// How a VM ended.
public enum VMExit: Sendable, Equatable {
    /// The guest pulsed the reset line (i8042): a reboot request, which a microVM treats as stop.
    case reset
    /// The guest wrote its status to the exit port.
    case poweredOff(status: UInt8)
    /// A triple fault or another shutdown condition.
    case shutdown
    /// The host asked the VM to stop (`requestStop()`: Ctrl-A x on the console, SIGTERM).
    case stopped
}

/// One VM: its KVM handle, guest memory, devices and 1 to 16 vCPUs, each run on a thread of
/// its own. vCPU 0 is the bootstrap processor; the others are application processors the
/// guest starts through its local APIC (INIT, then SIPI), as on a PC.
public final class VirtualMachine {
    public let kvm: KVM
    public let memory: GuestMemory
    /// How many vCPUs the guest has.
    public let cpus: Int
    let fd: Int32
    let ports = PortBus()
    private let serial: Serial8250
    private let i8042 = I8042()
    let exitPort = ExitPort()
    private var vcpus: [VCPU] = []
    private var blockDevices: [VirtioMMIOBlock] = []
    /// Held around every device access: exits from all vCPU threads reach the same devices,
    /// which are written for one caller at a time.
    private let deviceLock = DeviceLock()

    public static let maximumCPUs = 16
    /// The threads of the run in progress, for `requestStop` from other threads.
    private struct RunState {
        var threads: VCPUThreads?
        var stopRequested = false
    }
    private let running = Mutex<RunState>(RunState())

    /// Where virtio-mmio windows start (in the 32-bit hole, like Firecracker's) and the IRQ of
    /// the first one.
    public static let mmioBase: UInt64 = GuestMemory.holeStart
    static let firstDeviceIRQ: UInt32 = 5

    /// Where the freestanding boot puts its tables (below 1 MiB, above the BIOS data area).
    static let gdtAddress: UInt64 = 0x500
    static let pageTableAddress: UInt64 = 0x9000
    public static let imageAddress: UInt64 = 0x10_0000
    static let stackTop: UInt64 = 0x8_0000

    /// `console` receives the UART's output, from whichever vCPU thread writes it (one at a time).
    public init(kvm: KVM, memorySize: UInt64, memoryBacking: GuestMemory.Backing = .hugePages, cpus: Int = 1,
                console: @escaping (UInt8) -> Void) throws(VMMError) {
        guard (1...Self.maximumCPUs).contains(cpus) else {
            throw VMMError(.invalidConfiguration("\(cpus) vCPUs; a VM has 1 to \(Self.maximumCPUs)"))
        }
        self.kvm = kvm
        self.cpus = cpus
        memory = try GuestMemory(size: memorySize, backing: memoryBacking)
        fd = try check(lunar_kvm_create_vm(kvm.fd), "KVM_CREATE_VM")
        serial = Serial8250(output: console)
        do throws(VMMError) {
            // The TSS and identity map KVM needs on Intel sit just under 4 GiB, out of RAM's way.
            _ = try check(lunar_kvm_set_tss_addr(fd, 0xFFFB_D000), "KVM_SET_TSS_ADDR")
            _ = try check(lunar_kvm_create_irqchip(fd), "KVM_CREATE_IRQCHIP")
            _ = try check(lunar_kvm_create_pit2(fd), "KVM_CREATE_PIT2")
            for (slot, range) in memory.ranges.enumerated() {
                _ = try check(lunar_kvm_set_user_memory_region(fd, UInt32(slot), range.lowerBound, UInt64(range.count),
                                                               memory.host(range.lowerBound)), "KVM_SET_USER_MEMORY_REGION")
            }
        } catch {
            close(fd)
            throw error
        }
        let vmFD = fd
        serial.interrupt = { level in _ = lunar_kvm_irq_line(vmFD, 4, level ? 1 : 0) }
        ports.attach(serial, at: 0x3F8...0x3FF)
        ports.attach(i8042, at: 0x60...0x64)
        ports.attach(exitPort, at: 0x501...0x501)
    }

    deinit {
        // The I/O threads may still raise interrupts through the VM's descriptor: they end first.
        for b in blockDevices { b.device.shutdown() }
        close(fd)
    }

    /// Where a virtio-blk disk was placed, and how its notifications and interrupts travel.
    public struct BlockDeviceSlot: Sendable, Equatable {
        /// The register window (0x200 bytes) and the IRQ, which a Linux guest is told on its
        /// command line (`virtio_mmio.device=512@0xd0000000:5`).
        public var address: UInt64
        public var irq: UInt32
        /// The guest's QueueNotify writes signal the I/O thread in the kernel (ioeventfd),
        /// without an exit to the vCPU thread.
        public var notificationsInKernel: Bool
        /// The I/O thread raises the interrupt through an irqfd (else with KVM_IRQ_LINE).
        public var interruptsInKernel: Bool
    }

    /// Adds a virtio-blk disk served by an I/O thread of its own; its register window is the
    /// next 0x200 bytes from `mmioBase`.
    @discardableResult
    public func addBlockDevice(_ disk: DiskChannel, serial: String) throws(VMMError) -> BlockDeviceSlot {
        let index = blockDevices.count
        let address = Self.mmioBase + UInt64(index) * VirtioMMIOBlock.windowSize
        let irq = Self.firstDeviceIRQ + UInt32(index)
        let device = try VirtioBlockDevice(memory: memory, disk: disk, serial: serial)
        // Queue 0 is the only queue: match the value 0 so a write naming another still exits
        // (and is ignored) instead of waking the thread.
        let ioeventfd = lunar_kvm_ioeventfd(fd, address + VirtioMMIOBlock.queueNotifyOffset, 4, device.notificationEventFD, 1, 0) == 0
        let irqfd = lunar_kvm_irqfd(fd, device.interruptEventFD, irq, 0) == 0
        if !irqfd { device.useInterruptLine(vm: fd, irq: irq) }
        blockDevices.append(VirtioMMIOBlock(base: address, device: device, disk: disk))
        return BlockDeviceSlot(address: address, irq: irq, notificationsInKernel: ioeventfd, interruptsInKernel: irqfd)
    }

    /// Pauses every disk (each drains what it has in flight, then takes nothing until
    /// `resumeDisks`): the guest runs on, and its disk requests wait in their rings. Callable
    /// from any thread once the devices are added.
    public func pauseDisks() { for b in blockDevices { b.device.pause() } }

    public func resumeDisks() { for b in blockDevices { b.device.resume() } }

    /// Loads a flat 64-bit image (linked to run at `imageAddress`) for `runFreestanding`.
    public func loadFlatImage(_ image: [UInt8]) throws(VMMError) {
        try memory.write(image, at: Self.imageAddress)
    }

    /// Loads a static x86-64 ELF executable; returns its entry point for `runFreestanding`.
    public func loadELF(_ image: [UInt8]) throws(VMMError) -> UInt64 {
        try ElfLoader.load(image, into: memory)
    }

    /// Runs a freestanding guest from `entry` in 64-bit mode with the first 4 GiB identity-mapped,
    /// until it resets, powers off or shuts down. The bootstrap processor starts at `entry`;
    /// application processors wait for the guest's INIT and SIPI, then start in real mode at
    /// the SIPI vector's page. Returns once every vCPU thread has been joined. The first run
    /// installs a no-op SIGRTMIN handler for the process: that signal is how a vCPU thread is
    /// interrupted in KVM_RUN when another vCPU ends the VM.
    public func runFreestanding(entry: UInt64 = VirtualMachine.imageAddress) throws(VMMError) -> VMExit {
        try LongModeBoot.writeTables(into: memory, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress)
        return try runBootCPU { cpu throws(VMMError) in
            try LongModeBoot.enter(cpu, entry: entry, stack: Self.stackTop, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress)
        }
    }

    /// Creates the vCPUs, lets `setUp` give the bootstrap processor its first state, and runs
    /// them all until the VM ends.
    func runBootCPU(_ setUp: (VCPU) throws(VMMError) -> Void) throws(VMMError) -> VMExit {
        let cpus = try createVCPUs()
        try setUp(cpus[0])
        return try runThreads(cpus)
    }

    /// The virtio-mmio windows and their IRQs in the order added: what the DSDT lists.
    var virtioMMIODevices: [(address: UInt64, irq: UInt32)] {
        blockDevices.enumerated().map { ($0.element.base, Self.firstDeviceIRQ + UInt32($0.offset)) }
    }

    /// Creates the vCPUs (once per VM: KVM has no way to remove one) with their CPUID; the
    /// application processors are left waiting for INIT/SIPI.
    private func createVCPUs() throws(VMMError) -> [VCPU] {
        guard vcpus.isEmpty else { throw VMMError(.invalidConfiguration("this VM has already run; create a new one")) }
        let maximum = lunar_kvm_check_extension(fd, KVM_CAP_MAX_VCPUS)
        guard maximum <= 0 || cpus <= maximum else {
            throw VMMError(.invalidConfiguration("\(cpus) vCPUs; this host's KVM allows \(maximum)"))
        }
        // Without immediate_exit a kick that lands just before KVM_RUN would be lost.
        guard lunar_kvm_check_extension(kvm.fd, KVM_CAP_IMMEDIATE_EXIT) > 0 else {
            throw VMMError(.invalidConfiguration("KVM lacks KVM_CAP_IMMEDIATE_EXIT (Linux 4.11 and later have it)"))
        }
        let supported = try kvm.supportedCPUID()
        let topology = CPUTopology(count: cpus)
        var created: [VCPU] = []
        for index in 0..<cpus {
            let cpu = try VCPU(vm: self, id: index)
            try cpu.setCPUID(topology.cpuid(for: index, from: supported))
            // With the in-kernel irqchip KVM already makes every vCPU but its bootstrap processor
            // (vCPU 0 unless told otherwise) wait for SIPI; this keeps it so if that changes.
            let waitForSIPI = UInt32(KVM_MP_STATE_UNINITIALIZED)
            if index > 0, try cpu.multiprocessingState() != waitForSIPI { try cpu.setMultiprocessingState(waitForSIPI) }
            created.append(cpu)
        }
        vcpus = created
        return created
    }

    /// Bytes typed on the console, for the guest to read from the UART (polled, or by IRQ 4
    /// when it enabled the received-data interrupt). Any thread may call it.
    public func sendConsoleInput(_ bytes: [UInt8]) { serial.feed(bytes) }

    /// Makes the running (or next) run return `.stopped` soon: every vCPU is kicked out of
    /// KVM_RUN, a halted guest's too. Any thread may call it.
    public func requestStop() {
        let threads = running.withLock { (state: inout RunState) -> VCPUThreads? in
            state.stopRequested = true
            return state.threads
        }
        threads?.finish(.success(.stopped))
    }

    /// Runs each vCPU on a thread of its own until one of them ends the VM, then joins them all.
    private func runThreads(_ cpus: [VCPU]) throws(VMMError) -> VMExit {
        try VCPUKick.install()
        let threads = VCPUThreads(cpus)
        let stopAlready = running.withLock { (state: inout RunState) -> Bool in
            state.threads = threads
            return state.stopRequested
        }
        defer { running.withLock { $0.threads = nil } }
        if stopAlready { threads.finish(.success(.stopped)) }
        // Unchecked: the threads share this VM only through `run(_:in:)`, which touches the
        // devices under `deviceLock`, and all are joined before this function returns.
        let vm = UncheckedVM(self)
        var started: [pthread_t] = []
        for cpu in cpus {
            do throws(VMMError) {
                started.append(try startVCPUThread {
                    VCPUKick.unblockOnThisThread()
                    guard threads.enter(cpu.id) else { return }
                    defer { threads.leave(cpu.id) }
                    do throws(VMMError) {
                        if let exit = try vm.value.run(cpu, in: threads) { threads.finish(.success(exit)) }
                    } catch {
                        threads.finish(.failure(error))
                    }
                })
            } catch {
                threads.finish(.failure(error))
                break
            }
        }
        for thread in started { pthread_join(thread, nil) }
        switch threads.outcome {
        case .success(let exit): return exit
        case .failure(let error): throw error
        case nil: throw VMMError(.guestFault("every vCPU thread ended without an outcome"))
        }
    }

    /// One vCPU's run loop; nil when another vCPU ended the VM.
    private func run(_ cpu: VCPU, in threads: VCPUThreads) throws(VMMError) -> VMExit? {
        while true {
            switch try cpu.run() {
            case .interrupted:
                if threads.isStopping { return nil }
                // Any other signal: carry on.
            case .io(let port, let isWrite, let size, let data):
                deviceLock.lock()
                defer { deviceLock.unlock() }
                if isWrite {
                    var value: UInt32 = 0
                    for i in 0..<size { value |= UInt32(data[i]) << (8 * UInt32(i)) }
                    ports.write(port: port, size: size, value: value)
                    if i8042.resetRequested { return .reset }
                    if let status = exitPort.status { return .poweredOff(status: status) }
                } else {
                    let value = ports.read(port: port, size: size)
                    for i in 0..<size { data[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
                }
            case .mmio(let address, let isWrite, let data):
                deviceLock.lock()
                defer { deviceLock.unlock() }
                if let device = blockDevices.first(where: { $0.contains(address) }) {
                    if isWrite { device.write(address, from: UnsafeRawBufferPointer(data)) } else { device.read(address, into: data) }
                } else if !isWrite {
                    // Nothing there: reads see all ones, writes vanish.
                    data.initializeMemory(as: UInt8.self, repeating: 0xFF)
                }
            case .shutdown:
                return .shutdown
            case .halt:
                return .shutdown
            }
        }
    }
}

/// Hands the VM to its vCPU threads; see `runThreads`.
private struct UncheckedVM: @unchecked Sendable {
    let value: VirtualMachine
    init(_ value: VirtualMachine) { self.value = value }
}
