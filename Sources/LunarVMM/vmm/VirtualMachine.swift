import CLunar
import Glibc

/// How a VM ended.
public enum VMExit: Sendable, Equatable {
    /// The guest pulsed the reset line (i8042): a reboot request, which a microVM treats as stop.
    case reset
    /// The guest wrote its status to the exit port.
    case poweredOff(status: UInt8)
    /// A triple fault or another shutdown condition.
    case shutdown
}

/// One VM: its KVM handle, guest memory, devices and (for now) one vCPU run on the caller's
/// thread.
public final class VirtualMachine {
    public let kvm: KVM
    public let memory: GuestMemory
    let fd: Int32
    let ports = PortBus()
    private let serial: Serial8250
    private let i8042 = I8042()
    private let exitPort = ExitPort()
    private var vcpu: VCPU?
    private var blockDevices: [VirtioMMIOBlock] = []

    /// Where virtio-mmio windows start (in the 32-bit hole, like Firecracker's) and the IRQ of
    /// the first one.
    public static let mmioBase: UInt64 = 0xD000_0000
    static let firstDeviceIRQ: UInt32 = 5

    /// Where the freestanding boot puts its tables (below 1 MiB, above the BIOS data area).
    static let gdtAddress: UInt64 = 0x500
    static let pageTableAddress: UInt64 = 0x9000
    public static let imageAddress: UInt64 = 0x10_0000
    static let stackTop: UInt64 = 0x8_0000

    public init(kvm: KVM, memorySize: UInt64, console: @escaping (UInt8) -> Void) throws(VMMError) {
        self.kvm = kvm
        memory = try GuestMemory(size: memorySize)
        fd = try check(lunar_kvm_create_vm(kvm.fd), "KVM_CREATE_VM")
        serial = Serial8250(output: console)
        do throws(VMMError) {
            // The TSS and identity map KVM needs on Intel sit just under 4 GiB, out of RAM's way.
            _ = try check(lunar_kvm_set_tss_addr(fd, 0xFFFB_D000), "KVM_SET_TSS_ADDR")
            _ = try check(lunar_kvm_create_irqchip(fd), "KVM_CREATE_IRQCHIP")
            _ = try check(lunar_kvm_create_pit2(fd), "KVM_CREATE_PIT2")
            _ = try check(lunar_kvm_set_user_memory_region(fd, 0, 0, memory.size, memory.base), "KVM_SET_USER_MEMORY_REGION")
        } catch {
            close(fd)
            throw error
        }
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
    public func addBlockDevice(_ backend: VirtioBlockBackend, serial: String) throws(VMMError) -> BlockDeviceSlot {
        let index = blockDevices.count
        let address = Self.mmioBase + UInt64(index) * VirtioMMIOBlock.windowSize
        let irq = Self.firstDeviceIRQ + UInt32(index)
        let device = try VirtioBlockDevice(memory: memory, backend: backend, serial: serial)
        // Queue 0 is the only queue: match the value 0 so a write naming another still exits
        // (and is ignored) instead of waking the thread.
        let ioeventfd = lunar_kvm_ioeventfd(fd, address + VirtioMMIOBlock.queueNotifyOffset, 4, device.notificationEventFD, 1, 0) == 0
        let irqfd = lunar_kvm_irqfd(fd, device.interruptEventFD, irq, 0) == 0
        if !irqfd { device.useInterruptLine(vm: fd, irq: irq) }
        blockDevices.append(VirtioMMIOBlock(base: address, device: device, backend: backend))
        return BlockDeviceSlot(address: address, irq: irq, notificationsInKernel: ioeventfd, interruptsInKernel: irqfd)
    }

    /// Loads a flat 64-bit image (linked to run at `imageAddress`) for `runFreestanding`.
    public func loadFlatImage(_ image: [UInt8]) throws(VMMError) {
        try memory.write(image, at: Self.imageAddress)
    }

    /// Loads a static x86-64 ELF executable; returns its entry point for `runFreestanding`.
    public func loadELF(_ image: [UInt8]) throws(VMMError) -> UInt64 {
        try ElfLoader.load(image, into: memory)
    }

    /// Runs a freestanding guest from `entry` in 64-bit mode with the first GiB identity-mapped,
    /// until it resets, powers off or shuts down.
    public func runFreestanding(entry: UInt64 = VirtualMachine.imageAddress) throws(VMMError) -> VMExit {
        try LongModeBoot.writeTables(into: memory, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress)
        let cpu = try VCPU(vm: self, id: 0)
        vcpu = cpu
        try cpu.setCPUID(try kvm.supportedCPUID())
        try LongModeBoot.enter(cpu, entry: entry, stack: Self.stackTop, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress)
        return try run(cpu)
    }

    private func run(_ cpu: VCPU) throws(VMMError) -> VMExit {
        while true {
            switch try cpu.run() {
            case .io(let port, let isWrite, let size, let data):
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
