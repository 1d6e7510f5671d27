/// The Extended System Description Table (ACPI 6.5 §5.2.8): the 64-bit addresses of the other
/// tables (here FADT and MADT; the DSDT is reached through the FADT).
///
/// ```
///  0 36 header        "XSDT", revision 1
/// 36 8n entries       table addresses, 8 bytes each
/// ```
public struct XSDT: Sendable, Equatable {
    public var entries: [UInt64]

    public var bytes: [UInt8] {
        var body: [UInt8] = []
        for e in entries { body.appendLittleEndian(e) }
        return SystemDescriptionHeader(signature: "XSDT", revision: 1).table(body: body)
    }
}
