/// A 16550A-compatible UART on COM1 (ports 0x3f8–0x3ff): the console. Transmit is immediate
/// (the line status always says the holding register is empty), so a guest's polled output
/// costs one exit per byte and nothing else.
final class Serial8250: PortDevice {
    private let output: (UInt8) -> Void
    private var dlab = false
    private var registers = [UInt8](repeating: 0, count: 8)
    private var input: [UInt8] = []

    static let lineStatusTransmitterEmpty: UInt8 = 0x60
    static let lineStatusDataReady: UInt8 = 0x01

    init(output: @escaping (UInt8) -> Void) { self.output = output }

    /// Bytes the guest will read from the receive register.
    func feed(_ bytes: [UInt8]) { input += bytes }

    func read(port: UInt16, size: Int) -> UInt32 {
        switch port {
        case 0 where !dlab: return input.isEmpty ? 0 : UInt32(input.removeFirst())
        case 2: return 0x01 // no interrupt pending
        case 5: return UInt32(Self.lineStatusTransmitterEmpty | (input.isEmpty ? 0 : Self.lineStatusDataReady))
        case 6: return 0xB0 // carrier detect, data set ready, clear to send
        default: return UInt32(registers[Int(port & 7)])
        }
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        switch port {
        case 0 where !dlab: output(byte)
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
