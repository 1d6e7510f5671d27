/// The sleep control and sleep status registers of hardware-reduced ACPI (ACPI 6.5 §4.8.3.7),
/// named by the FADT: the one way a hardware-reduced guest can power off. Linux writes
/// SLP_TYP (from the DSDT's `_S5_`) with SLP_EN to the control register, then polls the
/// status register for a wake that never comes; the VMM stops the VM at the write.
///
/// ```
/// port 0x3C0  sleep control  write: bits 4:2 SLP_TYP, bit 5 SLP_EN
/// port 0x3C1  sleep status   read:  bit 7 WAK_STS, always 0 (the guest never wakes)
/// ```
public final class ACPISleepControl: PortDevice {
    public static let controlPort: UInt16 = 0x3C0
    public static let statusPort: UInt16 = 0x3C1
    /// The SLP_TYP the DSDT's `_S5_` gives for soft-off.
    public static let softOffType: UInt8 = 5

    private let powerOff: () -> Void

    init(powerOff: @escaping () -> Void) { self.powerOff = powerOff }

    func read(port: UInt16, size: Int) -> UInt32 { 0 }

    func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        let sleepEnable = byte & 0x20 != 0, sleepType = (byte >> 2) & 0x7
        if port == 0 && sleepEnable && sleepType == Self.softOffType { powerOff() }
    }
}
