import Synchronization

/// A 16550A-compatible UART on COM1 (ports 0x3f8–0x3ff): the console.
///
/// Transmit is immediate: the line status always says the holding register is empty, so a
/// guest's polled output costs one exit per byte. A guest driven by interrupts (Linux's 8250
/// driver) enables the transmitter-empty interrupt (IER bit 1): it is pending whenever the
/// holding register is empty — once it is enabled, and again after each byte — and reading
/// the interrupt identification that reports it clears it, as on the chip (and as QEMU models
/// it: a rising IER bit 1 asserts it again, which Linux's start-up test for a "THRE bug"
/// relies on). Receive: bytes fed from any thread (`feed`) wait in the receive queue; the line
/// status shows data ready, and with IER bit 0 the received-data interrupt (IIR 0x04, ahead of
/// the transmitter's 0x02) is pending while data waits. IRQ 4 is raised while any enabled
/// interrupt is pending, so each new one is a fresh edge. FCR bit 0 turns the FIFOs on (IIR
/// bits 7:6 then read 11, which is how a driver tells a 16550A), bit 1 empties the receive one.
public final class Serial8250: PortDevice {
    private let output: (UInt8) -> Void

    /// Everything the vCPU threads and the feeding thread share.
    private struct State {
        var input: [UInt8] = []
        var interruptEnable: UInt8 = 0
        var transmitPending = false
        var fifoEnabled = false
        var dlab = false
        /// LCR, MCR, scratch and, with DLAB set, the divisor latch (ports 0 and 1).
        var registers = [UInt8](repeating: 0, count: 8)
        var level = false
    }
    private let state = Mutex(State())
    /// Sets the UART's interrupt line (IRQ 4) high or low; nil: no interrupts.
    public var interrupt: (@Sendable (Bool) -> Void)?

    static let lineStatusTransmitterEmpty: UInt8 = 0x60
    static let lineStatusDataReady: UInt8 = 0x01
    static let receivedDataInterrupt: UInt8 = 0x01
    static let transmitterEmptyInterrupt: UInt8 = 0x02

    public init(output: @escaping (UInt8) -> Void) { self.output = output }

    /// Bytes the guest will read from the receive register. Any thread may call it.
    public func feed(_ bytes: [UInt8]) {
        state.withLock { s in
            s.input += bytes
            update(&s)
        }
    }

    private func receivedDataPending(_ s: State) -> Bool {
        s.interruptEnable & Self.receivedDataInterrupt != 0 && !s.input.isEmpty
    }

    private func transmitterEmptyPending(_ s: State) -> Bool {
        s.interruptEnable & Self.transmitterEmptyInterrupt != 0 && s.transmitPending
    }

    private func update(_ s: inout State) {
        let level = receivedDataPending(s) || transmitterEmptyPending(s)
        if level != s.level {
            s.level = level
            interrupt?(level)
        }
    }

    public func read(port: UInt16, size: Int) -> UInt32 {
        state.withLock { s -> UInt32 in
            switch port {
            case 0 where !s.dlab:
                guard !s.input.isEmpty else { return 0 }
                let byte = s.input.removeFirst()
                update(&s)
                return UInt32(byte)
            case 1 where !s.dlab: return UInt32(s.interruptEnable)
            case 2:
                // Interrupt identification, the highest-priority pending source first.
                let fifo: UInt8 = s.fifoEnabled ? 0xC0 : 0
                if receivedDataPending(s) { return UInt32(fifo | 0x04) }
                if transmitterEmptyPending(s) {
                    s.transmitPending = false
                    update(&s)
                    return UInt32(fifo | 0x02)
                }
                return UInt32(fifo | 0x01)
            case 5: return UInt32(Self.lineStatusTransmitterEmpty | (s.input.isEmpty ? 0 : Self.lineStatusDataReady))
            case 6: return 0xB0 // carrier detect, data set ready, clear to send
            default: return UInt32(s.registers[Int(port & 7)])
            }
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        let transmit = state.withLock { s -> Bool in
            switch port {
            case 0 where !s.dlab:
                // The holding register fills (the interrupt drops) and empties again at once.
                s.transmitPending = false
                update(&s)
                return true
            case 1 where !s.dlab:
                let changed = (s.interruptEnable ^ byte) & Self.transmitterEmptyInterrupt
                s.interruptEnable = byte & 0x0F
                if changed != 0 { s.transmitPending = byte & Self.transmitterEmptyInterrupt != 0 }
                update(&s)
            case 2:
                s.fifoEnabled = byte & 0x01 != 0
                if byte & 0x02 != 0 { s.input.removeAll() }
                update(&s)
            case 3:
                s.dlab = byte & 0x80 != 0
                s.registers[3] = byte
            default: s.registers[Int(port & 7)] = byte
            }
            return false
        }
        guard transmit else { return }
        output(byte)
        state.withLock { s in
            s.transmitPending = true
            update(&s)
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
