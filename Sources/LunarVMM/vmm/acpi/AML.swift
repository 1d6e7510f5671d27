/// The few ACPI Machine Language terms (ACPI 6.5 §20.2) and resource descriptors (§6.4) the
/// DSDT of this VMM needs, encoded the way the reference compiler (ACPICA's iasl) encodes the
/// same ASL, so its output can be compared byte for byte.
///
/// ```
/// ScopeOp     0x10 PkgLength NameString TermList
/// DeviceOp    0x5B 0x82 PkgLength NameString TermList
/// NameOp      0x08 NameString DataRefObject
/// BufferOp    0x11 PkgLength BufferSize ByteList
/// PackageOp   0x12 PkgLength NumElements PackageElementList
/// String      0x0D ASCII bytes 0x00
/// Integer     0x00 Zero, 0x01 One, 0x0A byte, 0x0B word, 0x0C dword, 0x0E qword
/// NameString  [0x5C root] NameSeg (4 characters, '_' padded)
/// PkgLength   1 byte if the package (PkgLength included) is < 64 bytes: the length;
///             else byte 0 = (extra bytes << 6) | low 4 bits, then the rest 8 bits a byte
/// ```
public enum AML {
    public static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        [0x10] + package(nameString(path) + terms.flatMap { $0 })
    }

    public static func device(_ name: String, _ terms: [[UInt8]]) -> [UInt8] {
        [0x5B, 0x82] + package(nameString(name) + terms.flatMap { $0 })
    }

    public static func name(_ name: String, _ value: [UInt8]) -> [UInt8] {
        [0x08] + nameString(name) + value
    }

    public static func string(_ s: String) -> [UInt8] {
        [0x0D] + Array(s.utf8) + [0x00]
    }

    public static func integer(_ v: UInt64) -> [UInt8] {
        var b: [UInt8]
        switch v {
        case 0: return [0x00]
        case 1: return [0x01]
        case ...0xFF: b = [0x0A]; b.appendLittleEndian(UInt8(v))
        case ...0xFFFF: b = [0x0B]; b.appendLittleEndian(UInt16(v))
        case ...0xFFFF_FFFF: b = [0x0C]; b.appendLittleEndian(UInt32(v))
        default: b = [0x0E]; b.appendLittleEndian(v)
        }
        return b
    }

    /// A compressed EISA ID ("PNP0501") as the DWord integer ASL's EisaId() makes: three
    /// letters in 5 bits each (letter - 0x40), four hex digits, stored big-endian.
    public static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        precondition(c.count == 7, "EISA IDs are 3 letters and 4 hex digits")
        func letter(_ x: UInt8) -> UInt32 { UInt32(x - 0x40) & 0x1F }
        func hex(_ x: UInt8) -> UInt32 { UInt32(x <= 0x39 ? x - 0x30 : (x | 0x20) - 0x61 + 10) }
        let value = letter(c[0]) << 26 | letter(c[1]) << 21 | letter(c[2]) << 16
            | hex(c[3]) << 12 | hex(c[4]) << 8 | hex(c[5]) << 4 | hex(c[6])
        var b: [UInt8] = [0x0C]
        b.appendLittleEndian(value.byteSwapped)
        return b
    }

    public static func packageOf(_ elements: [[UInt8]]) -> [UInt8] {
        [0x12] + package([UInt8(elements.count)] + elements.flatMap { $0 })
    }

    /// ResourceTemplate(): a buffer of resource descriptors closed by the End Tag (checksum 0,
    /// which means "not checksummed").
    public static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        let bytes: [UInt8] = Array(descriptors.joined()) + [0x79, 0x00]
        return [0x11] + package(integer(UInt64(bytes.count)) + bytes)
    }

    /// IO (Decode16, base, base, 1, length): a fixed range of I/O ports.
    ///
    /// ```
    /// 0 1 0x47 (small item 0x08, length 7)   1 1 information: bit 0 16-bit decode
    /// 2 2 minimum base   4 2 maximum base    6 1 alignment   7 1 length
    /// ```
    public static func io(base: UInt16, length: UInt8) -> [UInt8] {
        var b: [UInt8] = [0x47, 0x01]
        b.appendLittleEndian(base)
        b.appendLittleEndian(base)
        b += [0x01, length]
        return b
    }

    /// Memory32Fixed (ReadWrite, base, length).
    ///
    /// ```
    /// 0 1 0x86 (large item 0x06)   1 2 length 9   3 1 information: bit 0 read-write
    /// 4 4 base   8 4 length
    /// ```
    public static func memory32Fixed(base: UInt32, length: UInt32) -> [UInt8] {
        var b: [UInt8] = [0x86, 0x09, 0x00, 0x01]
        b.appendLittleEndian(base)
        b.appendLittleEndian(length)
        return b
    }

    /// Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {gsi}: the extended interrupt
    /// descriptor with one GSI. Edge because the VMM signals its devices' interrupts as edges
    /// on the in-kernel IOAPIC.
    ///
    /// ```
    /// 0 1 0x89 (large item 0x09)   1 2 length 6
    /// 3 1 flags: bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared
    /// 4 1 interrupt count 1        5 4 GSI
    /// ```
    public static func interrupt(_ gsi: UInt32) -> [UInt8] {
        var b: [UInt8] = [0x89, 0x06, 0x00, 0x03, 0x01]
        b.appendLittleEndian(gsi)
        return b
    }

    /// "\\_SB_" or "COM1": an optional root prefix and one NameSeg, '_'-padded to 4.
    static func nameString(_ path: String) -> [UInt8] {
        var chars = Array(path.utf8)
        var b: [UInt8] = []
        if chars.first == 0x5C { b.append(0x5C); chars.removeFirst() }
        precondition((1...4).contains(chars.count), "one NameSeg per name here")
        return b + chars + [UInt8](repeating: 0x5F, count: 4 - chars.count)
    }

    /// PkgLength followed by `contents`; the encoded length counts its own bytes.
    static func package(_ contents: [UInt8]) -> [UInt8] {
        let n = contents.count
        if n + 1 < 64 { return [UInt8(n + 1)] + contents }
        for extra in 1...3 {
            let total = n + 1 + extra
            if total < 1 << (4 + 8 * extra) {
                var b: [UInt8] = [UInt8(extra << 6) | UInt8(total & 0xF)]
                for i in 0..<extra { b.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
                return b + contents
            }
        }
        preconditionFailure("AML package of \(n) bytes exceeds 2^28")
    }
}
