/// What to boot: a bzImage, an optional initramfs, a kernel command line.
public struct LinuxBootConfiguration: Sendable {
    public var kernel: [UInt8]
    public var initrd: [UInt8]?
    public var commandLine: String

    public init(kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
    }
}

/// Where a Linux boot put everything in guest memory.
public struct LinuxBootLayout: Sendable, Equatable {
    public var zeroPage: UInt64
    public var commandLine: UInt64
    /// The protected-mode kernel as loaded, and the 64-bit entry into it.
    public var kernel: UInt64
    public var kernelSize: UInt64
    public var entry: UInt64
    /// Where the kernel decompresses itself to and how far its init_size reaches: nothing
    /// else may live in [kernelRunAddress, kernelEnd).
    public var kernelRunAddress: UInt64
    public var kernelEnd: UInt64
    public var initrd: UInt64?
    public var initrdSize: UInt64
    public var acpi: ACPITables.Addresses
    public var e820: [E820Entry]
}

/// Loads Linux by the 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
/// Protocol"): kernel, initrd, command line, ACPI tables and zero page into guest memory. The
/// VMM then enters the kernel at its 64-bit entry in long mode with RSI = the zero page.
///
/// ```
/// 0x0000_0500  GDT                 null, null, __BOOT_CS 0x10, __BOOT_DS 0x18
/// 0x0000_7000  zero page           struct boot_params, 4 KiB
/// 0x0000_9000  page tables         identity map of the first 4 GiB (2 MiB pages), 24 KiB
/// 0x0002_0000  command line        NUL-terminated, at most cmdline_size + 1 bytes
/// 0x0008_0000  initial stack top   (the kernel sets up its own at once)
/// 0x000E_0000  ACPI tables         RSDP, XSDT, FADT, MADT, DSDT (reserved in e820)
/// 0x0010_0000  kernel              protected-mode part of the bzImage; entry at +0x200
/// pref_address kernel run area     where it decompresses to, init_size bytes (16 MiB and up
///                                  for Debian's kernels)
/// top of RAM   initrd              page-aligned, ending below min(initrd_addr_max + 1, RAM end)
/// ```
public enum LinuxBoot {
    public static let zeroPageAddress: UInt64 = 0x7000
    public static let commandLineAddress: UInt64 = 0x2_0000
    static let commandLineAreaEnd: UInt64 = 0x3_0000
    public static let kernelAddress: UInt64 = 0x10_0000
    /// The 64-bit entry point's offset from the protected-mode kernel's start (startup_64).
    public static let entryOffset: UInt64 = 0x200

    /// Writes everything a 64-bit-entered kernel expects into `memory` and returns where.
    /// Everything is checked before the first byte is written.
    public static func load(_ config: LinuxBootConfiguration, into memory: GuestMemory, acpi: ACPITables) throws(VMMError) -> LinuxBootLayout {
        func bad(_ why: String) -> VMMError { VMMError(.invalidConfiguration(why)) }
        let mib = { (v: UInt64) in "\((v + (1 << 20) - 1) >> 20) MiB" }
        // The kernel, its run area and the initrd go below the device hole (RAM beyond it
        // continues at 4 GiB, which only the e820 map mentions).
        let low = memory.lowSize
        let image = try BzImage(config.kernel)

        let commandLine = Array(config.commandLine.utf8)
        guard !commandLine.contains(0) else { throw bad("kernel command line contains a NUL byte") }
        guard commandLine.count <= Int(image.commandLineSize),
              commandLineAddress + UInt64(commandLine.count) + 1 <= commandLineAreaEnd else {
            throw bad("kernel command line of \(commandLine.count) bytes; this kernel takes at most \(image.commandLineSize)")
        }

        let kernelSize = UInt64(image.kernel.count)
        let runAddress = image.runAddress(loadedAt: kernelAddress)
        let kernelEnd = max(kernelAddress + kernelSize, runAddress + UInt64(image.initSize))
        guard kernelEnd <= low else {
            throw bad("the kernel needs memory up to \(mib(kernelEnd)) to decompress (init_size \(image.initSize) at 0x\(String(runAddress, radix: 16))); the guest has \(mib(low))")
        }

        var initrdAddress: UInt64?
        var initrdSize: UInt64 = 0
        if let initrd = config.initrd, !initrd.isEmpty {
            initrdSize = UInt64(initrd.count)
            let limit = min(UInt64(image.initrdAddressMax) + 1, low)
            guard initrdSize <= limit, (limit - initrdSize) & ~0xFFF >= kernelEnd else {
                throw bad("an initrd of \(initrdSize) bytes does not fit between the kernel's end (\(mib(kernelEnd))) and \(mib(limit))")
            }
            initrdAddress = (limit - initrdSize) & ~0xFFF
        }

        let e820 = E820Entry.map(ram: memory.ranges)
        let (acpiAddresses, tables) = acpi.layout()
        guard acpiAddresses.end <= ACPITables.biosAreaEnd else {
            throw bad("ACPI tables of \(acpiAddresses.end - acpiAddresses.rsdp) bytes overflow the BIOS area 0xE0000–0xFFFFF")
        }
        var params = BootParams(setupHeader: image.setupHeader, commandLineAddress: commandLineAddress,
                                rsdpAddress: acpiAddresses.rsdp, e820: e820)
        if let initrdAddress {
            params.ramdiskAddress = initrdAddress
            params.ramdiskSize = initrdSize
        }
        let zeroPage = try params.bytes()

        try memory.write(image.kernel, at: kernelAddress)
        if let initrdAddress, let initrd = config.initrd { try memory.write(initrd, at: initrdAddress) }
        try memory.write(commandLine + [0], at: commandLineAddress)
        for t in tables { try memory.write(t.bytes, at: t.address) }
        try memory.write(zeroPage, at: zeroPageAddress)

        return LinuxBootLayout(zeroPage: zeroPageAddress, commandLine: commandLineAddress, kernel: kernelAddress, kernelSize: kernelSize,
                               entry: kernelAddress + entryOffset, kernelRunAddress: runAddress, kernelEnd: kernelEnd,
                               initrd: initrdAddress, initrdSize: initrdSize, acpi: acpiAddresses, e820: e820)
    }
}
