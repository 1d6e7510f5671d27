/// A Linux bzImage as the x86 boot protocol (Documentation/arch/x86/boot.rst) describes it:
/// a real-mode setup of `setup_sects` + 1 sectors whose setup header tells the loader how to
/// place the protected-mode kernel that follows. Only the 64-bit entry is used (the VMM puts
/// the vCPU in long mode itself), so the header must offer it: protocol 2.12 or later with
/// XLF_KERNEL_64. Every field is read with a bounds check; a malformed image is an error.
///
/// ```
/// offset size field               (file offsets; the header is copied to the zero page
///                                  at the same offsets, 0x1F1 onwards)
/// 0x1F1  1 setup_sects            real-mode sectors after the boot sector (0 means 4)
/// 0x1F4  4 syssize                protected-mode kernel size in 16-byte units
/// 0x1FE  2 boot_flag              0xAA55
/// 0x201  1 (jump displacement)    the header ends at 0x202 + this byte
/// 0x202  4 header                 "HdrS"
/// 0x206  2 version                boot protocol, 0x020F (2.15) for 6.1
/// 0x210  1 type_of_loader         written by the loader
/// 0x211  1 loadflags              bit 0 LOADED_HIGH (kernel at 1 MiB)
/// 0x218  4 ramdisk_image          written by the loader
/// 0x21C  4 ramdisk_size           written by the loader
/// 0x228  4 cmd_line_ptr           written by the loader
/// 0x22C  4 initrd_addr_max        highest address the initrd may occupy
/// 0x230  4 kernel_alignment       physical alignment the kernel runs at
/// 0x234  1 relocatable_kernel
/// 0x236  2 xloadflags             bit 0 XLF_KERNEL_64 (entry at load address + 0x200),
///                                 bit 1 XLF_CAN_BE_LOADED_ABOVE_4G
/// 0x238  4 cmdline_size           longest command line, NUL excluded
/// 0x258  8 pref_address           where the kernel runs unless relocated
/// 0x260  4 init_size              bytes the kernel needs from where it runs, to decompress
/// ```
public struct BzImage: Sendable {
    public static let minimumProtocol: UInt16 = 0x0206
    /// The first protocol with xloadflags, so the first that can promise a 64-bit entry.
    public static let sixtyFourBitProtocol: UInt16 = 0x020C
    public static let loadedHigh: UInt8 = 1 << 0
    public static let kernel64: UInt16 = 1 << 0
    public static let setupHeaderStart = 0x1F1
    /// struct boot_params keeps the setup header below its EDD MBR signature buffer.
    static let setupHeaderLimit = 0x290

    public let protocolVersion: UInt16
    public let setupSectors: Int
    public let loadFlags: UInt8
    public let xloadFlags: UInt16
    public let initrdAddressMax: UInt32
    public let kernelAlignment: UInt32
    public let relocatable: Bool
    public let commandLineSize: UInt32
    public let preferredAddress: UInt64
    public let initSize: UInt32
    /// The setup header as found in the file, 0x1F1 up to its end.
    public let setupHeader: [UInt8]
    /// The protected-mode kernel: everything after the setup sectors.
    public let kernel: ArraySlice<UInt8>

    public init(_ image: [UInt8]) throws(VMMError) {
        func bad(_ why: String) -> VMMError { VMMError(.invalidConfiguration("bzImage: \(why)")) }
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) throws(VMMError) -> T {
            guard let v = image.loadLittleEndian(T.self, at: offset) else { throw bad("\(image.count) bytes, too short for its setup header") }
            return v
        }
        guard image.count >= 0x264 else { throw bad("\(image.count) bytes, too short for a setup header") }
        guard try field(0x202, UInt32.self) == 0x5372_6448 else { throw bad("no \"HdrS\" magic at 0x202: not a Linux bzImage") }
        guard try field(0x1FE, UInt16.self) == 0xAA55 else { throw bad("no 0xAA55 boot flag at 0x1FE") }
        protocolVersion = try field(0x206, UInt16.self)
        // boot.rst writes versions as major.minor in decimal: 0x020C is 2.12.
        let minor = protocolVersion & 0xFF
        let version = "\(protocolVersion >> 8).\(minor < 10 ? "0" : "")\(minor)"
        guard protocolVersion >= Self.minimumProtocol else { throw bad("boot protocol \(version) is older than 2.06") }
        guard protocolVersion >= Self.sixtyFourBitProtocol else { throw bad("boot protocol \(version) has no 64-bit entry point (2.12 or later needed)") }
        let sectors = Int(try field(0x1F1, UInt8.self))
        setupSectors = sectors == 0 ? 4 : sectors
        loadFlags = try field(0x211, UInt8.self)
        guard loadFlags & Self.loadedHigh != 0 else { throw bad("not a bzImage (LOADED_HIGH clear: a zImage loads below 1 MiB)") }
        xloadFlags = try field(0x236, UInt16.self)
        guard xloadFlags & Self.kernel64 != 0 else { throw bad("kernel has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)") }
        initrdAddressMax = try field(0x22C, UInt32.self)
        kernelAlignment = try field(0x230, UInt32.self)
        guard kernelAlignment != 0, kernelAlignment & (kernelAlignment - 1) == 0 else { throw bad("kernel_alignment 0x\(String(kernelAlignment, radix: 16)) is not a power of two") }
        relocatable = try field(0x234, UInt8.self) != 0
        commandLineSize = try field(0x238, UInt32.self)
        preferredAddress = try field(0x258, UInt64.self)
        initSize = try field(0x260, UInt32.self)
        let headerEnd = 0x202 + Int(try field(0x201, UInt8.self))
        guard headerEnd <= Self.setupHeaderLimit else { throw bad("setup header runs to 0x\(String(headerEnd, radix: 16)), past 0x290") }
        setupHeader = Array(image[Self.setupHeaderStart..<headerEnd])
        let kernelOffset = (setupSectors + 1) * 512
        guard kernelOffset < image.count else { throw bad("\(image.count) bytes end inside its \(setupSectors) setup sectors: no kernel") }
        kernel = image[kernelOffset...]
        // A signed kernel carries its signature after the code, so the file may be longer;
        // shorter means truncated.
        let systemSize = UInt64(try field(0x1F4, UInt32.self)) * 16
        guard UInt64(kernel.count) >= systemSize else { throw bad("truncated: \(kernel.count) bytes of kernel where syssize says \(systemSize)") }
        guard UInt64(initSize) >= UInt64(kernel.count) else { throw bad("init_size \(initSize) is smaller than the \(kernel.count)-byte kernel") }
    }

    /// Where the kernel decompresses itself and runs when loaded at `loadAddress`: a relocatable
    /// kernel aligns up to kernel_alignment but never goes below pref_address; a fixed one runs
    /// at pref_address (arch/x86/boot/compressed/head_64.S).
    public func runAddress(loadedAt loadAddress: UInt64) -> UInt64 {
        guard relocatable else { return preferredAddress }
        let mask = UInt64(kernelAlignment) - 1
        return max((loadAddress + mask) & ~mask, preferredAddress)
    }
}
