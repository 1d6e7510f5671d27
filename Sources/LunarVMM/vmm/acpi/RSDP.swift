/// The Root System Description Pointer, version 2 (ACPI 6.5 §5.2.5.3): what the guest finds
/// first, by scanning the BIOS area 0xE0000–0xFFFFF on a 16-byte boundary or through the zero
/// page's `acpi_rsdp_addr`. It names only the XSDT; the 32-bit RSDT is left out (0), which
/// every ACPI 2.0+ OS accepts.
///
/// ```
///  0  8 signature          "RSD PTR "
///  8  1 checksum           of bytes 0..<20 (the ACPI 1.0 part)
///  9  6 OEM ID
/// 15  1 revision           2 (ACPI 2.0 and later)
/// 16  4 RSDT address       0: none
/// 20  4 length             36
/// 24  8 XSDT address
/// 32  1 extended checksum  of all 36 bytes
/// 33  3 reserved
/// ```
public struct RSDP: Sendable, Equatable {
    public static let size = 36
    public var xsdtAddress: UInt64

    public var bytes: [UInt8] {
        var b: [UInt8] = []
        b.appendPadded("RSD PTR ", width: 8)
        b.append(0)
        b.appendPadded(SystemDescriptionHeader.oemID, width: 6)
        b.append(2)
        b.appendLittleEndian(UInt32(0))
        b.appendLittleEndian(UInt32(Self.size))
        b.appendLittleEndian(xsdtAddress)
        b += [0, 0, 0, 0]
        b[8] = ACPIChecksum.fix(b[0..<20])
        b[32] = ACPIChecksum.fix(b)
        return b
    }
}
