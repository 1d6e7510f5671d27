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
    /// The host asked the VM to stop (`requestStop()`: Ctrl-A x on the console, SIGTERM).
    case stopped
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
    private let stop = StopSignal()

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
        let vmFD = fd
        serial.interrupt = { level in _ = lunar_kvm_irq_line(vmFD, 4, level ? 1 : 0) }
        ports.attach(serial, at: 0x3F8...0x3FF)
        ports.attach(i8042, at: 0x60...0x64)
        ports.attach(exitPort, at: 0x501...0x501)
    }

    deinit { close(fd) }

    /// Adds a virtio-blk disk; its register window is the next 0x200 bytes from `mmioBase`.
    /// Returns the window's address and IRQ, which a Linux guest is told on its command line
    /// (`virtio_mmio.device=512@0xd0000000:5`).
    @discardableResult
    public func addBlockDevice(_ backend: VirtioBlockBackend, serial: String) -> (address: UInt64, irq: UInt32) {
        let index = blockDevices.count
        let address = Self.mmioBase + UInt64(index) * VirtioMMIOBlock.windowSize
        let irq = Self.firstDeviceIRQ + UInt32(index)
        let device = VirtioBlockDevice(memory: memory, backend: backend, serial: serial)
        let vmFD = fd
        blockDevices.append(VirtioMMIOBlock(base: address, device: device, backend: backend) {
            // An edge on the in-kernel IOAPIC.
            _ = lunar_kvm_irq_line(vmFD, irq, 1)
            _ = lunar_kvm_irq_line(vmFD, irq, 0)
        })
        return (address, irq)
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

    /// Bytes typed on the console, for the guest to read from the UART (polled, or by IRQ 4
    /// when it enabled the received-data interrupt). Any thread may call it.
    public func sendConsoleInput(_ bytes: [UInt8]) { serial.feed(bytes) }

    /// Makes the running (or next) `runFreestanding` return `.stopped` soon. Any thread may call
    /// it; a guest halted with interrupts off is woken for it too.
    public func requestStop() { stop.request() }

    private func run(_ cpu: VCPU) throws(VMMError) -> VMExit {
        try cpu.kickable(by: stop) { () throws(VMMError) -> VMExit in try runLoop(cpu) }
    }

    private func runLoop(_ cpu: VCPU) throws(VMMError) -> VMExit {
        while true {
            switch try cpu.run(stop: stop) {
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
            case .stopped:
                return .stopped
            }
        }
    }
}
