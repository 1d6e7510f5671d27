/// The header every ACPI system description table starts with (ACPI 6.5 §5.2.6), and the
/// identity this VMM signs its tables with.
///
/// ```
///  0  4 signature         "XSDT", "FACP", "APIC", "DSDT"
///  4  4 length            of the whole table, header included
///  8  1 revision          of the table's layout
///  9  1 checksum          makes all `length` bytes sum to 0 (mod 256)
/// 10  6 OEM ID            "LUNAR "
/// 16  8 OEM table ID      "LUNARVMM"
/// 24  4 OEM revision
/// 28  4 creator ID        "LNRV" (the tool that made the table)
/// 32  4 creator revision
/// ```
public struct SystemDescriptionHeader: Sendable, Equatable {
    public static let size = 36
    public static let oemID = "LUNAR"
    public static let oemTableID = "LUNARVMM"
    public static let creatorID = "LNRV"

    public var signature: String
    public var revision: UInt8

    /// A whole table: this header, then `body`, with length and checksum filled in.
    func table(body: [UInt8]) -> [UInt8] {
        var t: [UInt8] = []
        t.reserveCapacity(Self.size + body.count)
        t.appendPadded(signature, width: 4)
        t.appendLittleEndian(UInt32(Self.size + body.count))
        t.append(revision)
        t.append(0) // checksum, below
        t.appendPadded(Self.oemID, width: 6)
        t.appendPadded(Self.oemTableID, width: 8)
        t.appendLittleEndian(UInt32(1))
        t.appendPadded(Self.creatorID, width: 4)
        t.appendLittleEndian(UInt32(1))
        t += body
        t[9] = ACPIChecksum.fix(t)
        return t
    }
}

enum ACPIChecksum {
    /// The byte that, stored in the (zeroed) checksum field, makes `bytes` sum to 0 mod 256.
    static func fix(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}
