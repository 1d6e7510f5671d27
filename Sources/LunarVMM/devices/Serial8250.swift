import Synchronization

/// A 16550A-compatible UART on COM1 (ports 0x3f8–0x3ff): the console. Transmit is immediate
/// (the line status always says the holding register is empty), so a guest's polled output
/// costs one exit per byte and nothing else. Receive: bytes fed from any thread (`feed`) wait
/// in the receive buffer register's queue; the line status shows data ready, and with the
/// received-data interrupt enabled (IER bit 0) IRQ 4 is held high while data waits (IIR 0x04).
final class Serial8250: PortDevice {
    private let output: (UInt8) -> Void
    private var dlab = false
    private var registers = [UInt8](repeating: 0, count: 8)

    /// What another thread touches: the receive queue, the interrupt enable register and the
    /// level the IRQ line was last set to.
    private struct Receive {
        var input: [UInt8] = []
        var interruptEnable: UInt8 = 0
        var level = false
    }
    private let receive = Mutex(Receive())
    /// Sets the UART's interrupt line (IRQ 4) high or low; nil: no interrupts.
    var interrupt: (@Sendable (Bool) -> Void)?

    static let lineStatusTransmitterEmpty: UInt8 = 0x60
    static let lineStatusDataReady: UInt8 = 0x01

    init(output: @escaping (UInt8) -> Void) { self.output = output }

    /// Bytes the guest will read from the receive register. Any thread may call it.
    func feed(_ bytes: [UInt8]) {
        receive.withLock { r in
            r.input += bytes
            update(&r)
        }
    }

    private func update(_ r: inout Receive) {
        let level = r.interruptEnable & 1 != 0 && !r.input.isEmpty
        if level != r.level {
            r.level = level
            interrupt?(level)
        }
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        switch port {
        case 0 where !dlab:
            return receive.withLock { r in
                guard !r.input.isEmpty else { return 0 }
                let byte = r.input.removeFirst()
                update(&r)
                return UInt32(byte)
            }
        case 1 where !dlab: return UInt32(receive.withLock { $0.interruptEnable })
        case 2: // interrupt identification: received data available, or none pending
            return receive.withLock { $0.interruptEnable & 1 != 0 && !$0.input.isEmpty } ? 0x04 : 0x01
        case 5: return UInt32(Self.lineStatusTransmitterEmpty | (receive.withLock { $0.input.isEmpty } ? 0 : Self.lineStatusDataReady))
        case 6: return 0xB0 // carrier detect, data set ready, clear to send
        default: return UInt32(registers[Int(port & 7)])
        }
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        switch port {
        case 0 where !dlab: output(byte)
        case 1 where !dlab:
            receive.withLock { r in
                r.interruptEnable = byte & 0x0F
                update(&r)
            }
        case 3:
            dlab = byte & 0x80 != 0
            registers[3] = byte
        default: registers[Int(port & 7)] = byte
        }
    }
}

/// The i8042 keyboard controller, for its one job in a VM: command 0xFE on port 0x64 pulses
/// the reset line, which is how a guest reboots or, in a microVM, asks to stop.
final class I8042: PortDevice {
    private(set) var resetRequested = false

    func read(port: UInt16, size: Int) -> UInt32 { 0 }

    func write(port: UInt16, size: Int, value: UInt32) {
        if port == 4 && UInt8(truncatingIfNeeded: value) == 0xFE { resetRequested = true }
    }
}

/// A one-byte exit port (0x501, as QEMU's isa-debug-exit): a test guest writes its status to
/// power off with it.
final class ExitPort: PortDevice {
    private(set) var status: UInt8?

    func read(port: UInt16, size: Int) -> UInt32 { 0 }

    func write(port: UInt16, size: Int, value: UInt32) { status = UInt8(truncatingIfNeeded: value) }
}
