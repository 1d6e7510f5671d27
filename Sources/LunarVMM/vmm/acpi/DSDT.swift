/// The Differentiated System Description Table (ACPI 6.5 §5.2.11.1): the devices Linux cannot
/// find by itself. Debian's kernels build virtio-mmio without command-line devices
/// (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES off), so its ACPI match on "LNRO0005" is the only way
/// its virtio_mmio module ever binds; the UART is listed so the 8250 PNP driver owns COM1 with
/// its IRQ. `_S5_` gives the soft-off sleep type Linux writes to the FADT's sleep control
/// register to power off.
///
/// ```
/// header "DSDT", revision 2 (64-bit AML integers), then the AML of:
///
/// Scope (\_SB_) {              // encoded as the root-relative _SB_
///     Device (COM1) {
///         Name (_HID, EisaId ("PNP0501"))          // 16550A-compatible UART
///         Name (_UID, Zero)
///         Name (_CRS, ResourceTemplate () {
///             IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
///             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 4 }
///         })
///     }
///     Device (V000) {                               // one per virtio-mmio window, V001 …
///         Name (_HID, "LNRO0005")                   // virtio-mmio
///         Name (_UID, Zero)                         // its index
///         Name (_CRS, ResourceTemplate () {
///             Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
///             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
///         })
///     }
/// }
/// Name (_S5_, Package (0x02) { 0x05, Zero })        // SLP_TYPa 5, SLP_TYPb 0
/// ```
public struct DSDT: Sendable, Equatable {
    public struct VirtioMMIODevice: Sendable, Equatable {
        public var address: UInt64
        public var length: UInt64
        public var irq: UInt32
        public init(address: UInt64, length: UInt64, irq: UInt32) {
            self.address = address
            self.length = length
            self.irq = irq
        }
    }

    public static let revision: UInt8 = 2
    public static let serialPort: UInt16 = 0x3F8
    public static let serialIRQ: UInt32 = 4
    /// The IOAPIC's pin count: KVM's in-kernel IOAPIC has 24.
    public static let ioAPICPins: UInt32 = 24

    public let virtioDevices: [VirtioMMIODevice]

    public init(virtioDevices: [VirtioMMIODevice]) throws(VMMError) {
        guard virtioDevices.count <= 0x1000 else { throw VMMError(.invalidConfiguration("\(virtioDevices.count) virtio-mmio devices in the DSDT")) }
        for d in virtioDevices {
            let (end, overflow) = d.address.addingReportingOverflow(d.length)
            guard !overflow, end <= 1 << 32, d.length > 0 else {
                throw VMMError(.invalidConfiguration("virtio-mmio window 0x\(String(d.address, radix: 16)) + 0x\(String(d.length, radix: 16)) is not a 32-bit range"))
            }
            guard d.irq < Self.ioAPICPins else { throw VMMError(.invalidConfiguration("virtio-mmio IRQ \(d.irq) beyond the IOAPIC's \(Self.ioAPICPins) pins")) }
        }
        self.virtioDevices = virtioDevices
    }

    /// The table's AML: everything after the header.
    public var aml: [UInt8] {
        var devices = [Self.serialDevice]
        for (i, d) in virtioDevices.enumerated() {
            devices.append(AML.device(Self.deviceName(i), [
                AML.name("_HID", AML.string("LNRO0005")),
                AML.name("_UID", AML.integer(UInt64(i))),
                AML.name("_CRS", AML.resourceTemplate([
                    AML.memory32Fixed(base: UInt32(d.address), length: UInt32(d.length)),
                    AML.interrupt(d.irq),
                ])),
            ]))
        }
        // "_SB_", not "\_SB_": at the root they name the same scope, and the short form is
        // what iasl emits for the ASL in the layout comment.
        return AML.scope("_SB_", devices)
            + AML.name("_S5_", AML.packageOf([AML.integer(UInt64(ACPISleepControl.softOffType)), AML.integer(0)]))
    }

    public var bytes: [UInt8] { SystemDescriptionHeader(signature: "DSDT", revision: Self.revision).table(body: aml) }

    /// V000, V001, … VFFF.
    static func deviceName(_ index: Int) -> String {
        let hex = String(index, radix: 16, uppercase: true)
        return "V" + String(repeating: "0", count: 3 - hex.count) + hex
    }

    static var serialDevice: [UInt8] {
        AML.device("COM1", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([
                AML.io(base: serialPort, length: 8),
                AML.interrupt(serialIRQ),
            ])),
        ])
    }
}
