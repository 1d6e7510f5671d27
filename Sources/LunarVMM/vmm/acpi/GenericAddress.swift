/// An ACPI Generic Address Structure (ACPI 6.5 §5.2.3.2): where a register lives.
///
/// ```
///  0  1 address space   0 system memory, 1 system I/O
///  1  1 bit width       of the register
///  2  1 bit offset      within it
///  3  1 access size     1 byte, 2 word, 3 dword, 4 qword (0 undefined)
///  4  8 address
/// ```
public struct GenericAddress: Sendable, Equatable {
    public static let size = 12
    public static let none = GenericAddress(space: 0, bitWidth: 0, accessSize: 0, address: 0)

    public var space: UInt8
    public var bitWidth: UInt8
    public var accessSize: UInt8
    public var address: UInt64

    /// A one-byte register on an I/O port.
    public static func ioPort(_ port: UInt16) -> GenericAddress {
        GenericAddress(space: 1, bitWidth: 8, accessSize: 1, address: UInt64(port))
    }

    func append(to b: inout [UInt8]) {
        b.append(space)
        b.append(bitWidth)
        b.append(0)
        b.append(accessSize)
        b.appendLittleEndian(address)
    }
}
