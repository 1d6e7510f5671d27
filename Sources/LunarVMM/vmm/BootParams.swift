/// The Linux zero page, `struct boot_params` (Documentation/arch/x86/zero-page.rst): what a
/// 64-bit-entered kernel knows about its machine, since no real-mode setup ran to ask a BIOS.
/// Built from zeros (so the `sentinel` byte at 0x1EF is 0, and the kernel trusts the rest), with
/// the image's setup header copied in at 0x1F1 and the loader's fields written over it.
///
/// ```
/// 0x070  8 acpi_rsdp_addr         the RSDP (protocol 2.14+), sparing the kernel its scan
/// 0x0C0  4 ext_ramdisk_image      high 32 bits of ramdisk_image (0: all below 4 GiB)
/// 0x0C4  4 ext_ramdisk_size       high 32 bits of ramdisk_size
/// 0x0C8  4 ext_cmd_line_ptr       high 32 bits of cmd_line_ptr
/// 0x1E8  1 e820_entries
/// 0x1F1  … setup header           from the bzImage; then these loader fields in it:
/// 0x210  1   type_of_loader       0xFF: a loader with no assigned ID
/// 0x218  4   ramdisk_image        initrd address (0: none)
/// 0x21C  4   ramdisk_size
/// 0x228  4   cmd_line_ptr         NUL-terminated command line
/// 0x2D0 20n e820_table            up to 128 entries:
///                                   0 8 address   8 8 size   16 4 type (1 RAM, 2 reserved)
/// 0x1000    end
/// ```
public struct BootParams: Sendable, Equatable {
    public static let size = 0x1000
    public static let maxE820Entries = 128
    public static let loaderType: UInt8 = 0xFF

    public var setupHeader: [UInt8]
    public var commandLineAddress: UInt64
    public var ramdiskAddress: UInt64 = 0
    public var ramdiskSize: UInt64 = 0
    public var rsdpAddress: UInt64
    public var e820: [E820Entry]

    public init(setupHeader: [UInt8], commandLineAddress: UInt64, rsdpAddress: UInt64, e820: [E820Entry]) {
        self.setupHeader = setupHeader
        self.commandLineAddress = commandLineAddress
        self.rsdpAddress = rsdpAddress
        self.e820 = e820
    }

    public func bytes() throws(VMMError) -> [UInt8] {
        guard e820.count <= Self.maxE820Entries else { throw VMMError(.invalidConfiguration("\(e820.count) e820 entries (at most 128)")) }
        guard BzImage.setupHeaderStart + setupHeader.count <= BzImage.setupHeaderLimit else {
            throw VMMError(.invalidConfiguration("setup header of \(setupHeader.count) bytes"))
        }
        var b = [UInt8](repeating: 0, count: Self.size)
        b.replaceSubrange(BzImage.setupHeaderStart..<(BzImage.setupHeaderStart + setupHeader.count), with: setupHeader)
        b.storeLittleEndian(rsdpAddress, at: 0x070)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: ramdiskAddress >> 32), at: 0x0C0)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: ramdiskSize >> 32), at: 0x0C4)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: commandLineAddress >> 32), at: 0x0C8)
        b.storeLittleEndian(UInt8(e820.count), at: 0x1E8)
        b.storeLittleEndian(Self.loaderType, at: 0x210)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: ramdiskAddress), at: 0x218)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: ramdiskSize), at: 0x21C)
        b.storeLittleEndian(UInt32(truncatingIfNeeded: commandLineAddress), at: 0x228)
        for (i, e) in e820.enumerated() {
            let at = 0x2D0 + i * E820Entry.size
            b.storeLittleEndian(e.address, at: at)
            b.storeLittleEndian(e.size, at: at + 8)
            b.storeLittleEndian(e.type.rawValue, at: at + 16)
        }
        return b
    }
}

/// One range of the BIOS e820 memory map, as the zero page carries it.
public struct E820Entry: Sendable, Equatable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2 }
    public static let size = 20

    public var address: UInt64
    public var size: UInt64
    public var type: Kind

    public init(address: UInt64, size: UInt64, type: Kind) {
        self.address = address
        self.size = size
        self.type = type
    }

    /// Conventional memory below 640 KiB, the BIOS area 0xE0000–0xFFFFF reserved (the ACPI
    /// tables live there), everything from 1 MiB to the end of the first piece of RAM, and each
    /// further piece (`GuestMemory.ranges`: RAM above 4 GiB). The legacy VGA hole
    /// 0xA0000–0xDFFFF is not RAM and not listed, nor is the device hole below 4 GiB.
    public static func map(ram: [Range<UInt64>]) -> [E820Entry] {
        var entries = [
            E820Entry(address: 0, size: 0xA_0000, type: .ram),
            E820Entry(address: ACPITables.biosAreaStart, size: ACPITables.biosAreaEnd - ACPITables.biosAreaStart, type: .reserved),
        ]
        for (i, piece) in ram.enumerated() {
            let start = i == 0 ? LinuxBoot.kernelAddress : piece.lowerBound
            entries.append(E820Entry(address: start, size: piece.upperBound - start, type: .ram))
        }
        return entries
    }
}
