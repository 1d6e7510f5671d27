/// The Multiple APIC Description Table (ACPI 6.5 §5.2.12): one local APIC per vCPU and the
/// in-kernel IOAPIC. The cloud kernel has no MP-table parser (CONFIG_X86_MPPARSE off), so
/// this table is how it learns about its CPUs and interrupt routing at all.
///
/// No interrupt source override: KVM's default GSI routing (no KVM_SET_GSI_ROUTING here)
/// wires ISA IRQ n, the PIT's IRQ 0 included, to IOAPIC pin n, so the ISA identity mapping
/// Linux assumes without overrides is the truth. (QEMU re-routes GSI 0 to pin 2 and says so
/// with an override; this VMM does not.) Flags stay 0: PCAT_COMPAT would tell the guest to
/// expect and mask 8259 PICs, which a hardware-reduced guest does not use.
///
/// ```
///  0 36 header              "APIC", revision 5
/// 36  4 local APIC address  0xFEE00000
/// 40  4 flags               0
/// 44  … entries:
///   processor local APIC    0  1 type 0       1 1 length 8
///                           2  1 ACPI processor UID   3 1 APIC ID
///                           4  4 flags: bit 0 enabled
///   I/O APIC                0  1 type 1       1 1 length 12
///                           2  1 I/O APIC ID  3 1 reserved
///                           4  4 address      8 4 global system interrupt base
/// ```
public struct MADT: Sendable, Equatable {
    public static let revision: UInt8 = 5
    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000
    public static let headerSize = 44
    public static let localAPICEntrySize = 8
    public static let ioAPICEntrySize = 12

    public var cpuCount: Int

    public init(cpuCount: Int) throws(VMMError) {
        // APIC IDs are one byte here (no x2APIC entries), and 0xFF is the broadcast ID.
        guard (1...254).contains(cpuCount) else { throw VMMError(.invalidConfiguration("MADT for \(cpuCount) CPUs (1–254)")) }
        self.cpuCount = cpuCount
    }

    public var bytes: [UInt8] {
        var body: [UInt8] = []
        body.appendLittleEndian(Self.localAPICAddress)
        body.appendLittleEndian(UInt32(0))
        for cpu in 0..<cpuCount {
            body += [0, UInt8(Self.localAPICEntrySize), UInt8(cpu), UInt8(cpu)]
            body.appendLittleEndian(UInt32(1))
        }
        // ID 0, as KVM's IOAPIC reports in its ID register.
        body += [1, UInt8(Self.ioAPICEntrySize), 0, 0]
        body.appendLittleEndian(Self.ioAPICAddress)
        body.appendLittleEndian(UInt32(0))
        return SystemDescriptionHeader(signature: "APIC", revision: Self.revision).table(body: body)
    }
}
