/// The ACPI tables of one machine and where they go in guest memory: the RSDP at the start of
/// the BIOS area (0xE0000, where Linux scans for it even without the zero page's pointer),
/// then XSDT, FADT, MADT and DSDT, each on a 16-byte boundary, all below 1 MiB in memory the
/// e820 map reserves.
///
/// ```
/// 0xE0000  RSDP   → XSDT
///          XSDT   → FADT, MADT
///          FADT   → DSDT (X_DSDT)
///          MADT
///          DSDT
///  …       up to 0xFFFFF
/// ```
public struct ACPITables: Sendable, Equatable {
    public static let biosAreaStart: UInt64 = 0xE_0000
    public static let biosAreaEnd: UInt64 = 0x10_0000

    /// Where each table was placed.
    public struct Addresses: Sendable, Equatable {
        public var rsdp: UInt64
        public var xsdt: UInt64
        public var fadt: UInt64
        public var madt: UInt64
        public var dsdt: UInt64
        /// The first byte after the last table.
        public var end: UInt64
    }

    public let madt: MADT
    public let dsdt: DSDT

    public init(cpuCount: Int, virtioDevices: [DSDT.VirtioMMIODevice]) throws(VMMError) {
        madt = try MADT(cpuCount: cpuCount)
        dsdt = try DSDT(virtioDevices: virtioDevices)
    }

    /// The tables laid out from `base`: the addresses and each table's bytes, in memory order.
    public func layout(at base: UInt64 = biosAreaStart) -> (addresses: Addresses, tables: [(address: UInt64, bytes: [UInt8])]) {
        func aligned(_ a: UInt64) -> UInt64 { (a + 15) & ~15 }
        let dsdtBytes = dsdt.bytes, madtBytes = madt.bytes
        let xsdtAddress = aligned(base + UInt64(RSDP.size))
        let fadtAddress = aligned(xsdtAddress + UInt64(SystemDescriptionHeader.size + 2 * 8))
        let madtAddress = aligned(fadtAddress + UInt64(FADT.size))
        let dsdtAddress = aligned(madtAddress + UInt64(madtBytes.count))
        let addresses = Addresses(rsdp: base, xsdt: xsdtAddress, fadt: fadtAddress, madt: madtAddress, dsdt: dsdtAddress,
                                  end: dsdtAddress + UInt64(dsdtBytes.count))
        return (addresses, [
            (base, RSDP(xsdtAddress: xsdtAddress).bytes),
            (xsdtAddress, XSDT(entries: [fadtAddress, madtAddress]).bytes),
            (fadtAddress, FADT(dsdtAddress: dsdtAddress).bytes),
            (madtAddress, madtBytes),
            (dsdtAddress, dsdtBytes),
        ])
    }

    /// Writes the tables into the BIOS area of `memory`.
    @discardableResult
    public func place(into memory: GuestMemory) throws(VMMError) -> Addresses {
        let (addresses, tables) = layout()
        guard addresses.end <= Self.biosAreaEnd else {
            throw VMMError(.invalidConfiguration("ACPI tables of \(addresses.end - addresses.rsdp) bytes overflow the BIOS area 0xE0000–0xFFFFF"))
        }
        for t in tables { try memory.write(t.bytes, at: t.address) }
        return addresses
    }
}
