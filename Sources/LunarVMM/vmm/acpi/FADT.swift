/// The Fixed ACPI Description Table, revision 6 (ACPI 6.5 §5.2.9), for hardware-reduced ACPI:
/// no PM1 event/control blocks, no PM timer, no GPEs, no SCI. What it still says: where the
/// DSDT is (X_DSDT only, the 32-bit DSDT field stays 0 as the spec requires then), that there
/// is no VGA, no MSI (no PCI) and no CMOS RTC, and the three registers a hardware-reduced
/// platform has for reset and sleep: the reset register (the i8042's pulse-reset command,
/// which the VMM already treats as reset), and the sleep control/status registers of
/// `ACPISleepControl` through which Linux powers off into S5.
///
/// ```
///   0 36 header              "FACP", revision 6
///  36  4 FIRMWARE_CTRL       0: no FACS (hardware-reduced)
///  40  4 DSDT                0: see X_DSDT
///  44  1 reserved
///  45  1 preferred PM profile 0 unspecified
///  46  2 SCI_INT             0
///  48 40 SMI_CMD … GPE1_BLK  0: no fixed hardware (10 × 4-byte fields)
///  88  8 PM1_EVT_LEN … GPE1_BASE, CST_CNT    0
///  96  8 P_LVL2_LAT … FLUSH_STRIDE           0
/// 104  5 DUTY_OFFSET … CENTURY               0
/// 109  2 IAPC_BOOT_ARCH      bit 2 VGA not present, bit 3 MSI not supported,
///                            bit 5 CMOS RTC not present; bit 1 (8042) clear: the i8042
///                            here only resets, so Linux must not probe it as a keyboard
/// 111  1 reserved
/// 112  4 flags               bit 4 PWR_BUTTON and bit 5 SLP_BUTTON (no fixed buttons),
///                            bit 10 RESET_REG_SUP, bit 20 HW_REDUCED_ACPI
/// 116 12 RESET_REG           I/O port 0x64, 8 bits
/// 128  1 RESET_VALUE         0xFE
/// 129  2 ARM_BOOT_ARCH       0
/// 131  1 FADT minor version  5 (ACPI 6.5)
/// 132  8 X_FIRMWARE_CTRL     0
/// 140  8 X_DSDT
/// 148 96 X_PM1a_EVT_BLK … X_GPE1_BLK   8 × 12-byte generic addresses, all zero
/// 244 12 SLEEP_CONTROL_REG   I/O port 0x3C0, 8 bits
/// 256 12 SLEEP_STATUS_REG    I/O port 0x3C1, 8 bits
/// 268  8 hypervisor vendor   "LUNARVMM"
/// ```
public struct FADT: Sendable, Equatable {
    public static let size = 276
    public static let revision: UInt8 = 6
    public static let minorVersion: UInt8 = 5

    public static let flagPowerButton: UInt32 = 1 << 4
    public static let flagSleepButton: UInt32 = 1 << 5
    public static let flagResetRegister: UInt32 = 1 << 10
    public static let flagHardwareReduced: UInt32 = 1 << 20

    public static let bootVGANotPresent: UInt16 = 1 << 2
    public static let bootMSINotSupported: UInt16 = 1 << 3
    public static let bootNoCMOSRTC: UInt16 = 1 << 5

    public var dsdtAddress: UInt64
    public var resetRegister = GenericAddress.ioPort(0x64)
    public var resetValue: UInt8 = 0xFE
    public var sleepControl = GenericAddress.ioPort(ACPISleepControl.controlPort)
    public var sleepStatus = GenericAddress.ioPort(ACPISleepControl.statusPort)

    public init(dsdtAddress: UInt64) { self.dsdtAddress = dsdtAddress }

    public var flags: UInt32 { Self.flagPowerButton | Self.flagSleepButton | Self.flagResetRegister | Self.flagHardwareReduced }
    public var bootArchitecture: UInt16 { Self.bootVGANotPresent | Self.bootMSINotSupported | Self.bootNoCMOSRTC }

    public var bytes: [UInt8] {
        var body = [UInt8](repeating: 0, count: Self.size - SystemDescriptionHeader.size)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) { body.storeLittleEndian(value, at: offset - SystemDescriptionHeader.size) }
        func put(_ address: GenericAddress, _ offset: Int) {
            var g: [UInt8] = []
            address.append(to: &g)
            body.replaceSubrange((offset - SystemDescriptionHeader.size)..<(offset - SystemDescriptionHeader.size + GenericAddress.size), with: g)
        }
        put(bootArchitecture, 109)
        put(flags, 112)
        put(resetRegister, 116)
        put(resetValue, 128)
        put(Self.minorVersion, 131)
        put(dsdtAddress, 140)
        put(sleepControl, 244)
        put(sleepStatus, 256)
        body.replaceSubrange((268 - SystemDescriptionHeader.size)..<(276 - SystemDescriptionHeader.size), with: Array("LUNARVMM".utf8))
        return SystemDescriptionHeader(signature: "FACP", revision: Self.revision).table(body: body)
    }
}
