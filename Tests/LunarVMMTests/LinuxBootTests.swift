import LunarDisk
import Dispatch
import Foundation
import Glibc
import LunarFS
import LunarTesting
import LunarVMM
import Testing

/// A bzImage built field by field (Documentation/arch/x86/boot.rst), so each malformation is
/// one change away from an image the loader accepts.
struct SyntheticBzImage {
    var setupSectors: UInt8 = 1
    var magic = Array("HdrS".utf8)
    var bootFlag: UInt16 = 0xAA55
    var version: UInt16 = 0x020F
    var loadFlags: UInt8 = 0x01
    var xloadFlags: UInt16 = 0x03
    var initrdAddressMax: UInt32 = 0x7FFF_FFFF
    var kernelAlignment: UInt32 = 0x20_0000
    var relocatable: UInt8 = 1
    var commandLineSize: UInt32 = 255
    var preferredAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 4 << 20
    var headerJump: UInt8 = 0x6A
    var kernel: [UInt8] = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    var systemSize: UInt32?

    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: ((setupSectors == 0 ? 4 : Int(setupSectors)) + 1) * 512)
        func put<T: FixedWidthInteger>(_ v: T, _ offset: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[offset + i] = x } }
        }
        b[0x1EF] = 0xFF // the sentinel real images carry; the loader must not copy it
        put(setupSectors, 0x1F1)
        put(systemSize ?? UInt32(kernel.count / 16), 0x1F4)
        put(bootFlag, 0x1FE)
        b[0x200] = 0xEB
        put(headerJump, 0x201)
        b.replaceSubrange(0x202..<0x206, with: magic)
        put(version, 0x206)
        put(loadFlags, 0x211)
        put(initrdAddressMax, 0x22C)
        put(kernelAlignment, 0x230)
        put(relocatable, 0x234)
        put(xloadFlags, 0x236)
        put(commandLineSize, 0x238)
        put(preferredAddress, 0x258)
        put(initSize, 0x260)
        return b + kernel
    }
}

func u16(_ b: UnsafeMutableRawBufferPointer, _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
func u32(_ b: UnsafeMutableRawBufferPointer, _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
func u64(_ b: UnsafeMutableRawBufferPointer, _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }

@Suite("Linux boot protocol: bzImage, zero page, placement")
struct LinuxBootTests {
    static let acpi = { () -> ACPITables in
        do { return try ACPITables(cpuCount: 1, virtioDevices: [.init(address: 0xD000_0000, length: 0x200, irq: 5)]) } catch { fatalError("\(error)") }
    }()

    @Test("kernel, initrd, command line, ACPI tables and zero page land where the layout says")
    func placement() throws {
        let image = SyntheticBzImage()
        let memory = try GuestMemory(size: 64 << 20)
        let initrd = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let commandLine = "console=ttyS0 panic=-1 lunar=test"
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: image.bytes, initrd: initrd, commandLine: commandLine),
                                        into: memory, acpi: Self.acpi)
        #expect(layout.kernel == 0x10_0000 && layout.entry == 0x10_0200)
        #expect(layout.kernelRunAddress == 0x100_0000)                 // pref_address beats 2 MiB alignment
        #expect(layout.kernelEnd == 0x100_0000 + (4 << 20))
        #expect(Array(try #require(memory.region(0x10_0000, image.kernel.count))) == image.kernel)

        let initrdAddress = try #require(layout.initrd)
        #expect(initrdAddress % 4096 == 0)
        #expect(initrdAddress >= layout.kernelEnd)
        #expect(initrdAddress + 100_000 <= 64 << 20 && (64 << 20) - (initrdAddress + 100_000) < 4096) // as high as it goes
        #expect(Array(try #require(memory.region(initrdAddress, initrd.count))) == initrd)

        #expect(Array(try #require(memory.region(0x2_0000, commandLine.utf8.count + 1))) == Array(commandLine.utf8) + [0])
        #expect(Array(try #require(memory.region(0xE_0000, 8))) == Array("RSD PTR ".utf8))

        let zp = try #require(memory.region(layout.zeroPage, 4096))
        #expect(layout.zeroPage == 0x7000)
        #expect(Array(zp[0x1F1..<0x26C]) == Array(image.bytes[0x1F1..<0x26C]).enumerated().map { i, b in
            // The loader's own fields, written over the copied header.
            switch 0x1F1 + i {
            case 0x210: return 0xFF
            case 0x218..<0x21C, 0x21C..<0x220, 0x228..<0x22C: return zp[0x1F1 + i]
            default: return b
            }
        })
        #expect(zp[0x1EF] == 0)                                        // sentinel: header copied from 0x1F1 on
        #expect(zp[0x210] == 0xFF)                                     // type_of_loader
        #expect(u32(zp, 0x228) == 0x2_0000)                            // cmd_line_ptr
        #expect(u32(zp, 0x218) == UInt32(initrdAddress))               // ramdisk_image
        #expect(u32(zp, 0x21C) == 100_000)                             // ramdisk_size
        #expect(u32(zp, 0x0C0) == 0 && u32(zp, 0x0C4) == 0 && u32(zp, 0x0C8) == 0)
        #expect(u64(zp, 0x070) == 0xE_0000)                            // acpi_rsdp_addr
        #expect(zp[0x1E8] == 3)                                        // e820_entries
        let e820 = (0..<3).map { i in (u64(zp, 0x2D0 + 20 * i), u64(zp, 0x2D0 + 20 * i + 8), u32(zp, 0x2D0 + 20 * i + 16)) }
        #expect(e820[0] == (0, 0xA_0000, 1))                           // RAM below 640 KiB
        #expect(e820[1] == (0xE_0000, 0x2_0000, 2))                    // BIOS area: ACPI tables
        #expect(e820[2] == (0x10_0000, (64 << 20) - 0x10_0000, 1))     // RAM from 1 MiB
        #expect(zp[(0x2D0 + 60)..<0x1000].allSatisfy { $0 == 0 })
        #expect(layout.e820 == E820Entry.map(ram: [0..<(64 << 20)]))
    }

    @Test("no initrd: ramdisk fields stay 0")
    func noInitrd() throws {
        let memory = try GuestMemory(size: 32 << 20)
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: SyntheticBzImage().bytes, commandLine: ""), into: memory, acpi: Self.acpi)
        #expect(layout.initrd == nil)
        let zp = try #require(memory.region(0x7000, 4096))
        #expect(u32(zp, 0x218) == 0 && u32(zp, 0x21C) == 0)
        #expect(try #require(memory.region(0x2_0000, 1))[0] == 0)
    }

    @Test("the initrd stays below initrd_addr_max when RAM reaches beyond it")
    func initrdAddressMax() throws {
        var image = SyntheticBzImage()
        image.initrdAddressMax = (32 << 20) - 1
        let memory = try GuestMemory(size: 64 << 20)
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: image.bytes, initrd: [UInt8](repeating: 1, count: 5000), commandLine: ""),
                                        into: memory, acpi: Self.acpi)
        let at = try #require(layout.initrd)
        #expect(at + 5000 <= 32 << 20 && at >= (32 << 20) - 8192) // page-aligned, as high as it goes
    }

    @Test("a kernel that is not relocatable runs at pref_address")
    func fixedKernel() throws {
        var image = SyntheticBzImage()
        image.relocatable = 0
        image.preferredAddress = 0x20_0000
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: image.bytes, commandLine: ""), into: GuestMemory(size: 32 << 20), acpi: Self.acpi)
        #expect(layout.kernelRunAddress == 0x20_0000)
    }

    func expectRefused(_ kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "console=ttyS0", memory: UInt64 = 64 << 20,
                       _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let m = try GuestMemory(size: memory)
        do {
            _ = try LinuxBoot.load(LinuxBootConfiguration(kernel: kernel, initrd: initrd, commandLine: commandLine), into: m, acpi: Self.acpi)
            Issue.record("accepted; expected a refusal mentioning \"\(fragment)\"", sourceLocation: sourceLocation)
        } catch {
            guard case .invalidConfiguration(let why) = error.kind else {
                Issue.record("\(error)", sourceLocation: sourceLocation)
                return
            }
            #expect(why.contains(fragment), "\(why)", sourceLocation: sourceLocation)
        }
    }

    @Test("malformed bzImages are refused with a reason")
    func malformed() throws {
        let good = SyntheticBzImage()
        try expectRefused([], "too short")
        try expectRefused(Array(good.bytes.prefix(100)), "too short")
        try expectRefused(Array(good.bytes.prefix(0x263)), "too short")
        var b = good; b.magic = Array("HdrT".utf8)
        try expectRefused(b.bytes, "HdrS")
        b = good; b.bootFlag = 0
        try expectRefused(b.bytes, "0xAA55")
        b = good; b.version = 0x0205
        try expectRefused(b.bytes, "2.05 is older than 2.06")
        b = good; b.version = 0x020A
        try expectRefused(b.bytes, "2.10 has no 64-bit entry")
        b = good; b.xloadFlags = 0x02
        try expectRefused(b.bytes, "XLF_KERNEL_64")
        b = good; b.loadFlags = 0
        try expectRefused(b.bytes, "LOADED_HIGH")
        b = good; b.kernelAlignment = 0
        try expectRefused(b.bytes, "kernel_alignment")
        b = good; b.kernelAlignment = 0x30_0000
        try expectRefused(b.bytes, "kernel_alignment")
        b = good; b.headerJump = 0xFF
        try expectRefused(b.bytes, "past 0x290")
        b = good; b.kernel = []
        try expectRefused(b.bytes, "no kernel")
        b = good; b.setupSectors = 0 // means 4: the setup is longer than this file's
        try expectRefused(Array(b.bytes.prefix(2048)), "no kernel")
        b = good; b.systemSize = UInt32(good.kernel.count / 16 + 1)
        try expectRefused(b.bytes, "truncated")
        b = good; b.initSize = 100
        try expectRefused(b.bytes, "init_size")
    }

    @Test("what does not fit is refused: memory, initrd, command line")
    func doesNotFit() throws {
        var b = SyntheticBzImage()
        b.initSize = 60 << 20                       // 16 MiB + 60 MiB > 64 MiB
        try expectRefused(b.bytes, "to decompress")
        let good = SyntheticBzImage().bytes
        try expectRefused(good, initrd: [UInt8](repeating: 0, count: 45 << 20), "initrd of")
        try expectRefused(good, commandLine: String(repeating: "x", count: 256), "at most 255")
        try expectRefused(good, commandLine: "a\u{0}b", "NUL")
    }

    @Test("e820: RAM below 640 KiB, BIOS area reserved, RAM from 1 MiB to the end")
    func e820Map() {
        #expect(E820Entry.map(ram: [0..<0xC000_0000]) == [
            E820Entry(address: 0, size: 0xA_0000, type: .ram),
            E820Entry(address: 0xE_0000, size: 0x2_0000, type: .reserved),
            E820Entry(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, type: .ram),
        ])
    }

    @Test("RAM larger than the space below the device hole: the rest is listed from 4 GiB; the kernel and initrd stay low")
    func splitMemory() throws {
        let memory = try GuestMemory(size: (4 << 30) + (64 << 20))
        #expect(memory.lowSize == 0xD000_0000 && memory.highSize == 0x3000_0000 + (64 << 20))
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: SyntheticBzImage().bytes, initrd: [UInt8](repeating: 7, count: 4096),
                                                               commandLine: ""), into: memory, acpi: Self.acpi)
        #expect(layout.e820 == [
            E820Entry(address: 0, size: 0xA_0000, type: .ram),
            E820Entry(address: 0xE_0000, size: 0x2_0000, type: .reserved),
            E820Entry(address: 0x10_0000, size: 0xD000_0000 - 0x10_0000, type: .ram),
            E820Entry(address: 4 << 30, size: 0x3000_0000 + (64 << 20), type: .ram),
        ])
        let initrd = try #require(layout.initrd)
        #expect(initrd + 4096 <= 0xD000_0000, "the initrd ends below the hole")
        let zp = try #require(memory.region(0x7000, 4096))
        #expect(zp[0x1E8] == 4)
    }
}

/// The installed Debian cloud kernel, where there is one.
enum DebianKernel {
    static let path: String? = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return names.filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") }.sorted().last.map { "/boot/" + $0 }
    }()
    static var whyNot: Comment { "needs /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)" }
    static func bytes() throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: try #require(path)))) }
}

@Suite("Linux boot protocol on the installed Debian kernel", .enabled(if: DebianKernel.path != nil, DebianKernel.whyNot))
struct DebianKernelTests {
    @Test("its setup header parses: 64-bit entry, relocatable, 2 MiB alignment, and it loads")
    func header() throws {
        let bytes = try DebianKernel.bytes()
        let image = try BzImage(bytes)
        #expect(image.protocolVersion >= 0x020C)
        #expect(image.xloadFlags & BzImage.kernel64 != 0)
        #expect(image.loadFlags & BzImage.loadedHigh != 0)
        #expect(image.relocatable)
        #expect(image.kernelAlignment == 0x20_0000)
        #expect(image.setupHeader.count == 0x202 + Int(bytes[0x201]) - 0x1F1)
        #expect(image.kernel.count == bytes.count - (image.setupSectors + 1) * 512)
        #expect(UInt64(image.initSize) > UInt64(image.kernel.count))
        if DebianKernel.path?.contains("vmlinuz-6.1.") == true {
            // Debian 12's kernels: boot protocol 2.15, CONFIG_PHYSICAL_START 16 MiB, 2 KiB command lines.
            #expect(image.protocolVersion == 0x020F)
            #expect(image.preferredAddress == 0x100_0000)
            #expect(image.commandLineSize == 2047)
        }
        let memory = try GuestMemory(size: 256 << 20)
        let layout = try LinuxBoot.load(LinuxBootConfiguration(kernel: bytes, initrd: [1, 2, 3], commandLine: "console=ttyS0"),
                                        into: memory, acpi: LinuxBootTests.acpi)
        #expect(layout.kernelRunAddress == image.preferredAddress)
        #expect(layout.kernelEnd == image.preferredAddress + UInt64(image.initSize))
        #expect(Array(try #require(memory.region(layout.entry - 0x200, 4096))) == Array(image.kernel.prefix(4096)))
    }

    @Test("a truncated copy of it is refused")
    func truncated() throws {
        let bytes = try DebianKernel.bytes()
        #expect(throws: VMMError.self) { try BzImage(Array(bytes.prefix(1 << 20))) }
        #expect(throws: VMMError.self) { try BzImage(Array(bytes.prefix(0x200))) }
    }
}

/// The Debian guest of Tools/guest/build-debian-guest.sh booted to its /init on real KVM.
enum DebianGuest {
    /// Why the boot cannot run here, or nil when it can.
    static let skipReason: String? = {
        let kind: KVM.Kind
        do { kind = try KVM().kind } catch { return "no usable /dev/kvm (\(error))" }
        guard kind == .hardware else {
            return "KVM here is \(kind.rawValue): a stock Debian kernel does not get past its decompressor in minutes, so the boot runs only with hardware virtualization"
        }
        guard DebianKernel.path != nil else { return "needs /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)" }
        guard access("/bin/busybox", X_OK) == 0 else { return "needs /bin/busybox (apt-get install busybox-static)" }
        guard access("/usr/bin/cpio", X_OK) == 0 else { return "needs cpio to build the initramfs" }
        return nil
    }()

    /// Runs Tools/guest/build-debian-guest.sh into `directory`; returns kernel and initramfs.
    static func build(into directory: String) throws -> (kernel: [UInt8], initrd: [UInt8]) {
        let script = FreestandingGuests.root.appendingPathComponent("Tools/guest/build-debian-guest.sh").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [script, "--out", directory]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw GuestBuildError("\(script) failed with status \(p.terminationStatus)") }
        return (Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/vmlinuz"))),
                Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/initramfs.cpio.gz"))))
    }
}

final class LockedConsole: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ byte: UInt8) { lock.lock(); bytes.append(byte); lock.unlock() }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: bytes, as: UTF8.self) }
}

final class UncheckedBox<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

@Suite("Debian guest boot", .enabled(if: DebianGuest.skipReason == nil, Comment(rawValue: DebianGuest.skipReason ?? "")))
struct DebianGuestBootTests {
    @Test("the Debian cloud kernel boots by ACPI to /init, loads the virtio modules, finds /dev/vda and powers off")
    func bootsToInit() throws {
        let scratch = Scratch()
        let guest = try DebianGuest.build(into: scratch.path("guest"))
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let file = try volume.create("/disk.raw")
        try file.truncate(to: 64 << 20)

        let console = LockedConsole()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 256 << 20, console: console.append)
        try vm.addBlockDevice(try DiskChannel(file: file), serial: "disk0")
        let config = LinuxBootConfiguration(kernel: guest.kernel, initrd: guest.initrd, commandLine: "console=ttyS0 panic=-1 reboot=k")
        // The vCPU runs on its own thread so a hung guest fails the test instead of the run.
        let box = UncheckedBox<Result<VMExit, VMMError>?>(nil)
        let machine = UncheckedBox(vm)
        let done = DispatchSemaphore(value: 0)
        Thread {
            do throws(VMMError) { box.value = .success(try machine.value.runLinux(config)) } catch { box.value = .failure(error) }
            done.signal()
        }.start()
        guard done.wait(timeout: .now() + 180) == .success else {
            Issue.record("no power-off within 180 s; console so far:\n\(console.text)")
            return
        }
        let text = console.text
        #expect(text.contains("lunar-guest: /init reached"), "\(text)")
        #expect(text.contains("lunar-guest: block devices: /dev/vda"), "\(text)")
        #expect(!text.contains("insmod") || !text.contains("failed"), "\(text)")
        #expect(try box.value?.get() == .poweredOff(status: 0), "\(text)")
        try volume.close()
    }
}
