import LunarVMM
import Synchronization
import Testing

/// The 8250/16550A UART driven from the host side, as a guest's driver would drive its ports.
@Suite("8250 UART")
struct SerialTests {
    /// The UART with its output and its IRQ line's history.
    final class Bench {
        final class Record: Sendable {
            let state = Mutex<(output: [UInt8], edges: Int, level: Bool)>(([], 0, false))
            func withLock<T: Sendable>(_ body: (inout sending (output: [UInt8], edges: Int, level: Bool)) -> sending T) -> T {
                state.withLock(body)
            }
        }
        let uart: Serial8250
        private let record = Record()

        init() {
            let record = self.record
            uart = Serial8250(output: { byte in record.withLock { $0.output.append(byte) } })
            uart.interrupt = { level in
                record.withLock { r in
                    if level && !r.level { r.edges += 1 }
                    r.level = level
                }
            }
        }

        var output: [UInt8] { record.withLock { $0.output } }
        /// Rising edges of IRQ 4 so far.
        var edges: Int { record.withLock { $0.edges } }
        var level: Bool { record.withLock { $0.level } }

        func identify() -> UInt32 { uart.read(port: 2, size: 1) }
        func setInterrupts(_ mask: UInt8) { uart.write(port: 1, size: 1, value: UInt32(mask)) }
        func transmit(_ byte: UInt8) { uart.write(port: 0, size: 1, value: UInt32(byte)) }
    }

    @Test("transmitter-empty interrupt: pending once enabled and after each byte, cleared by reading IIR, a new edge each time")
    func transmitterEmpty() {
        let b = Bench()
        #expect(b.identify() == 0x01, "nothing pending, nothing enabled")
        b.setInterrupts(0x02)
        #expect(b.level && b.edges == 1, "enabling it with the holding register empty raises it")
        #expect(b.identify() == 0x02)
        #expect(!b.level, "reading IIR that reports it clears it")
        #expect(b.identify() == 0x01)
        for (i, byte) in "hi".utf8.enumerated() {
            b.transmit(byte)
            #expect(b.level && b.edges == 2 + i, "the register empties again at once: a fresh edge per byte")
            #expect(b.identify() == 0x02)
        }
        #expect(b.output == Array("hi".utf8))
        #expect(b.uart.read(port: 5, size: 1) & 0x60 == 0x60, "line status: holding register and transmitter empty")
    }

    @Test("turning IER bit 1 off and on asserts it again (Linux's start-up test for the THRE bug); off, it never raises the line")
    func rearmOnEnable() {
        let b = Bench()
        b.setInterrupts(0x02)
        #expect(b.identify() == 0x02)
        b.setInterrupts(0x00)
        b.setInterrupts(0x02)
        #expect(b.identify() == 0x02, "a working 16550 reasserts THRE when the interrupt is enabled again")
        b.setInterrupts(0x00)
        b.transmit(UInt8(ascii: "x"))
        #expect(!b.level && b.identify() == 0x01, "disabled: the empty register interrupts nobody")
    }

    @Test("received data comes ahead of the transmitter; the line stays up while either is pending")
    func priorities() {
        let b = Bench()
        b.setInterrupts(0x03)
        b.uart.feed(Array("ab".utf8))
        #expect(b.identify() == 0x04, "received data first")
        #expect(b.identify() == 0x04, "and it stays until the data is read")
        #expect(b.uart.read(port: 0, size: 1) == UInt32(UInt8(ascii: "a")))
        #expect(b.uart.read(port: 5, size: 1) & 0x01 == 0x01, "data ready while 'b' waits")
        #expect(b.uart.read(port: 0, size: 1) == UInt32(UInt8(ascii: "b")))
        #expect(b.level, "the transmitter-empty interrupt is still pending")
        #expect(b.identify() == 0x02)
        #expect(!b.level)
    }

    @Test("FIFO control: enabled FIFOs show in IIR bits 7:6; bit 1 empties the receive FIFO")
    func fifo() {
        let b = Bench()
        b.uart.write(port: 2, size: 1, value: 0x01)
        #expect(b.identify() == 0xC1, "a 16550A with its FIFOs on")
        b.uart.feed([1, 2, 3])
        b.uart.write(port: 2, size: 1, value: 0x03)
        #expect(b.uart.read(port: 5, size: 1) & 0x01 == 0, "receive FIFO emptied")
        b.uart.write(port: 2, size: 1, value: 0x00)
        #expect(b.identify() == 0x01)
    }

    @Test("with DLAB set, ports 0 and 1 are the divisor latch: nothing is sent and IER keeps its value")
    func divisorLatch() {
        let b = Bench()
        b.setInterrupts(0x01)
        b.uart.write(port: 3, size: 1, value: 0x83)   // DLAB, 8N1
        b.uart.write(port: 0, size: 1, value: 0x01)   // 115200 baud
        b.uart.write(port: 1, size: 1, value: 0x00)
        #expect(b.uart.read(port: 0, size: 1) == 0x01 && b.uart.read(port: 1, size: 1) == 0x00)
        b.uart.write(port: 3, size: 1, value: 0x03)
        #expect(b.uart.read(port: 1, size: 1) == 0x01, "IER as it was")
        #expect(b.output.isEmpty)
    }
}
