import Foundation
import Glibc
import LunarTesting
import LunarVMM
import Testing

/// The ACPI tables a Linux guest reads, checked byte by byte where they are placed in guest
/// memory: they are what the Debian kernel needs to find its CPUs, IOAPIC, UART and virtio
/// disks, and the boot that would exercise them cannot run under this machine's paravirtual
/// KVM.
@Suite("ACPI tables")
struct ACPITests {
    static let oneDisk = [DSDT.VirtioMMIODevice(address: 0xD000_0000, length: 0x200, irq: 5)]

    func placed(cpus: Int = 1, devices: [DSDT.VirtioMMIODevice] = oneDisk) throws -> (GuestMemory, ACPITables.Addresses) {
        let memory = try GuestMemory(size: 2 << 20)
        let tables = try ACPITables(cpuCount: cpus, virtioDevices: devices)
        return (memory, try tables.place(into: memory))
    }

    func bytes(_ memory: GuestMemory, _ address: UInt64, _ count: Int) throws -> [UInt8] {
        Array(try #require(memory.region(address, count)))
    }

    func u32(_ b: [UInt8], _ offset: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[offset + $1]) << (8 * $1) } }
    func u64(_ b: [UInt8], _ offset: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[offset + $1]) << (8 * $1) } }
    func sum(_ b: some Sequence<UInt8>) -> UInt8 { b.reduce(0, &+) }

    /// A whole table read from memory by its header's length; its checksum must hold.
    func table(_ memory: GuestMemory, at address: UInt64, signature: String) throws -> [UInt8] {
        let header = try bytes(memory, address, 36)
        #expect(String(decoding: header[0..<4], as: UTF8.self) == signature)
        let t = try bytes(memory, address, Int(u32(header, 4)))
        #expect(sum(t) == 0, "\(signature) checksum")
        #expect(String(decoding: t[10..<16], as: UTF8.self) == "LUNAR ")
        #expect(String(decoding: t[16..<24], as: UTF8.self) == "LUNARVMM")
        return t
    }

    @Test("RSDP v2 at 0xE0000: signature, revision, length, both checksums, XSDT address")
    func rsdp() throws {
        let (memory, at) = try placed()
        #expect(at.rsdp == 0xE_0000)
        let r = try bytes(memory, at.rsdp, 36)
        #expect(Array(r[0..<8]) == Array("RSD PTR ".utf8))
        #expect(sum(r[0..<20]) == 0)
        #expect(sum(r) == 0)
        #expect(r[15] == 2)
        #expect(u32(r, 16) == 0)         // no RSDT
        #expect(u32(r, 20) == 36)
        #expect(u64(r, 24) == at.xsdt)
        #expect(at.rsdp % 16 == 0)        // Linux's scan steps by 16
    }

    @Test("XSDT lists FADT and MADT; every table lies in the BIOS area on a 16-byte boundary")
    func xsdt() throws {
        let (memory, at) = try placed()
        let x = try table(memory, at: at.xsdt, signature: "XSDT")
        #expect(x.count == 36 + 16)
        #expect(x[8] == 1)
        #expect(u64(x, 36) == at.fadt)
        #expect(u64(x, 44) == at.madt)
        _ = try table(memory, at: at.fadt, signature: "FACP")
        _ = try table(memory, at: at.madt, signature: "APIC")
        _ = try table(memory, at: at.dsdt, signature: "DSDT")
        for a in [at.xsdt, at.fadt, at.madt, at.dsdt] {
            #expect(a % 16 == 0 && a >= 0xE_0000 && a < 0x10_0000)
        }
        #expect(at.end <= 0x10_0000)
    }

    @Test("FADT revision 6: hardware-reduced, X_DSDT, reset and sleep registers, boot flags")
    func fadt() throws {
        let (memory, at) = try placed()
        let f = try table(memory, at: at.fadt, signature: "FACP")
        #expect(f.count == 276)
        #expect(f[8] == 6)
        #expect(f[131] == 5)                      // minor version: ACPI 6.5
        #expect(u32(f, 40) == 0)                  // 32-bit DSDT unused when X_DSDT is set
        #expect(u64(f, 140) == at.dsdt)
        let flags = u32(f, 112)
        #expect(flags & (1 << 20) != 0)           // HW_REDUCED_ACPI
        #expect(flags == (1 << 20) | (1 << 10) | (1 << 5) | (1 << 4))
        #expect(UInt16(f[109]) | UInt16(f[110]) << 8 == 0b10_1100) // no VGA, no MSI, no CMOS RTC; no 8042
        // Generic addresses: I/O space, 8 bits, offset 0, byte access, port.
        #expect(Array(f[116..<128]) == [1, 8, 0, 1, 0x64, 0, 0, 0, 0, 0, 0, 0])
        #expect(f[128] == 0xFE)
        #expect(Array(f[244..<256]) == [1, 8, 0, 1, 0xC0, 0x03, 0, 0, 0, 0, 0, 0])
        #expect(Array(f[256..<268]) == [1, 8, 0, 1, 0xC1, 0x03, 0, 0, 0, 0, 0, 0])
        // No fixed hardware: SCI, SMI command, PM1/PM2/timer/GPE blocks all zero.
        #expect(f[44..<109].allSatisfy { $0 == 0 })
        #expect(f[148..<244].allSatisfy { $0 == 0 })
        #expect(String(decoding: f[268..<276], as: UTF8.self) == "LUNARVMM")
    }

    @Test("MADT: one local APIC per vCPU, then the IOAPIC at 0xFEC00000 with GSI base 0", arguments: [1, 2, 4, 254])
    func madt(cpus: Int) throws {
        let (memory, at) = try placed(cpus: cpus)
        let m = try table(memory, at: at.madt, signature: "APIC")
        #expect(m.count == 44 + 8 * cpus + 12)
        #expect(m[8] == 5)
        #expect(u32(m, 36) == 0xFEE0_0000)
        #expect(u32(m, 40) == 0)
        var offset = 44, entries = 0, localAPICs = 0, ioAPICs = 0
        while offset < m.count {
            let type = m[offset], length = Int(m[offset + 1])
            switch type {
            case 0:
                #expect(length == 8)
                #expect(m[offset + 2] == UInt8(localAPICs) && m[offset + 3] == UInt8(localAPICs))
                #expect(u32(m, offset + 4) == 1)
                localAPICs += 1
            case 1:
                #expect(length == 12)
                #expect(u32(m, offset + 4) == 0xFEC0_0000)
                #expect(u32(m, offset + 8) == 0)
                ioAPICs += 1
            default:
                Issue.record("unexpected MADT entry type \(type)")
            }
            entries += 1
            offset += max(length, 1)
        }
        #expect(offset == m.count)
        #expect(entries == cpus + 1)
        #expect(localAPICs == cpus && ioAPICs == 1)
    }

    @Test("CPU counts the one-byte APIC IDs cannot name are refused")
    func madtLimits() {
        #expect(throws: VMMError.self) { try MADT(cpuCount: 0) }
        #expect(throws: VMMError.self) { try MADT(cpuCount: 255) }
    }

    /// The DSDT for COM1 and one virtio-mmio disk, assembled and checked by hand against the
    /// AML grammar (ACPI 6.5 §20.2) and the resource descriptor layouts (§6.4).
    static let expectedDSDTBody: [UInt8] = [
        0x10, 0x45, 0x07,                               // Scope, PkgLength 0x75 (2 bytes)
        0x5F, 0x53, 0x42, 0x5F,                         //   _SB_
        0x5B, 0x82, 0x31,                               //   Device, PkgLength 49
        0x43, 0x4F, 0x4D, 0x31,                         //     COM1
        0x08, 0x5F, 0x48, 0x49, 0x44,                   //     Name _HID
        0x0C, 0x41, 0xD0, 0x05, 0x01,                   //       EisaId("PNP0501") = 0x0105D041
        0x08, 0x5F, 0x55, 0x49, 0x44, 0x00,             //     Name _UID Zero
        0x08, 0x5F, 0x43, 0x52, 0x53,                   //     Name _CRS
        0x11, 0x16, 0x0A, 0x13,                         //       Buffer, PkgLength 22, size 19
        0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, //         IO (Decode16, 0x3F8, 0x3F8, 1, 8)
        0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00, // Interrupt (consumer, edge, high) {4}
        0x79, 0x00,                                     //         End Tag
        0x5B, 0x82, 0x3A,                               //   Device, PkgLength 58
        0x56, 0x30, 0x30, 0x30,                         //     V000
        0x08, 0x5F, 0x48, 0x49, 0x44,                   //     Name _HID
        0x0D, 0x4C, 0x4E, 0x52, 0x4F, 0x30, 0x30, 0x30, 0x35, 0x00, // "LNRO0005"
        0x08, 0x5F, 0x55, 0x49, 0x44, 0x00,             //     Name _UID Zero
        0x08, 0x5F, 0x43, 0x52, 0x53,                   //     Name _CRS
        0x11, 0x1A, 0x0A, 0x17,                         //       Buffer, PkgLength 26, size 23
        0x86, 0x09, 0x00, 0x01,                         //         Memory32Fixed (ReadWrite,
        0x00, 0x00, 0x00, 0xD0, 0x00, 0x02, 0x00, 0x00, //           0xD0000000, 0x200)
        0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00, // Interrupt (consumer, edge, high) {5}
        0x79, 0x00,                                     //         End Tag
        0x08, 0x5F, 0x53, 0x35, 0x5F,                   // Name _S5_
        0x12, 0x05, 0x02, 0x0A, 0x05, 0x00,             //   Package (2) {5, Zero}
    ]

    @Test("DSDT AML for COM1 and a virtio-mmio disk matches the hand-assembled bytes")
    func dsdtBytes() throws {
        let (memory, at) = try placed()
        let d = try table(memory, at: at.dsdt, signature: "DSDT")
        #expect(d[8] == 2)
        #expect(d.count == 36 + Self.expectedDSDTBody.count)
        #expect(Array(d[36...]) == Self.expectedDSDTBody)
    }

    @Test("several disks: names V000…, UIDs, windows and IRQs follow the devices")
    func dsdtSeveralDevices() throws {
        let devices = (0..<3).map { DSDT.VirtioMMIODevice(address: 0xD000_0000 + UInt64($0) * 0x200, length: 0x200, irq: 5 + UInt32($0)) }
        let aml = try DSDT(virtioDevices: devices).aml
        for (i, d) in devices.enumerated() {
            let name = Array("V00\(i)".utf8)
            let at = try #require(aml.firstRange(of: name)).lowerBound
            let device = Array(aml[at...])
            // Name (4 bytes), then Name(_HID, "LNRO0005") (15 bytes), then Name(_UID, i).
            #expect(Array(device[19..<24]) == [0x08, 0x5F, 0x55, 0x49, 0x44])
            #expect(Array(device[24...].prefix(AML.integer(UInt64(i)).count)) == AML.integer(UInt64(i)))
            let memory32 = try #require(device.firstRange(of: [0x86, 0x09, 0x00, 0x01])).lowerBound
            #expect(u32(device, memory32 + 4) == UInt32(d.address) && u32(device, memory32 + 8) == 0x200)
            let interrupt = try #require(device.firstRange(of: [0x89, 0x06, 0x00, 0x03, 0x01])).lowerBound
            #expect(u32(device, interrupt + 5) == d.irq)
        }
    }

    @Test("device windows outside 32 bits and IRQs past the IOAPIC's pins are refused")
    func dsdtLimits() {
        #expect(throws: VMMError.self) { try DSDT(virtioDevices: [.init(address: 0xFFFF_FF00, length: 0x200, irq: 5)]) }
        #expect(throws: VMMError.self) { try DSDT(virtioDevices: [.init(address: 0xD000_0000, length: 0x200, irq: 24)]) }
    }
}

/// The same tables through ACPICA's own tools (acpica-tools): iasl compiles the ASL the
/// DSDT's layout comment shows into AML that must equal the VMM's byte for byte, and
/// disassembles every table the VMM writes without a complaint.
@Suite("ACPI tables through ACPICA's iasl", .enabled(if: IASL.available, IASL.whyNot))
struct ACPIIaslTests {
    func iasl(_ arguments: [String], in directory: String) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: IASL.path)
        p.arguments = arguments
        p.currentDirectoryURL = URL(fileURLWithPath: directory)
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func asl(_ devices: [DSDT.VirtioMMIODevice]) -> String {
        var s = """
        DefinitionBlock ("", "DSDT", 2, "LUNAR", "LUNARVMM", 1)
        {
            Scope (\\_SB)
            {
                Device (COM1)
                {
                    Name (_HID, EisaId ("PNP0501"))
                    Name (_UID, Zero)
                    Name (_CRS, ResourceTemplate ()
                    {
                        IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, )
                        Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 4 }
                    })
                }

        """
        for (i, d) in devices.enumerated() {
            s += """
                    Device (V\(String(format: "%03X", i)))
                    {
                        Name (_HID, "LNRO0005")
                        Name (_UID, \(i))
                        Name (_CRS, ResourceTemplate ()
                        {
                            Memory32Fixed (ReadWrite, 0x\(String(d.address, radix: 16)), 0x\(String(d.length, radix: 16)), )
                            Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { \(d.irq) }
                        })
                    }

            """
        }
        s += """
            }
            Name (_S5, Package (0x02) { 0x05, Zero })
        }

        """
        return s
    }

    @Test("iasl compiles the equivalent ASL to the same AML", arguments: [1, 3, 19])
    func compiledAMLMatches(count: Int) throws {
        let scratch = Scratch()
        let devices = (0..<count).map { DSDT.VirtioMMIODevice(address: 0xD000_0000 + UInt64($0) * 0x200, length: 0x200, irq: 5 + UInt32($0)) }
        try Self.asl(devices).write(toFile: scratch.path("dsdt.asl"), atomically: true, encoding: .utf8)
        let r = iasl(["-p", "dsdt", "dsdt.asl"], in: scratch.path(""))
        #expect(r.status == 0, "\(r.output)")
        let compiled = Array(try Data(contentsOf: URL(fileURLWithPath: scratch.path("dsdt.aml"))))
        let ours = try DSDT(virtioDevices: devices).bytes
        #expect(compiled.count == ours.count)
        #expect(Array(compiled.dropFirst(36)) == Array(ours.dropFirst(36)))
        #expect(Array(compiled[0..<9]) == Array(ours[0..<9])) // signature, length, revision
    }

    @Test("iasl disassembles every table the VMM places, without errors or checksum warnings")
    func disassembles() throws {
        let scratch = Scratch()
        let memory = try GuestMemory(size: 2 << 20)
        let devices = (0..<2).map { DSDT.VirtioMMIODevice(address: 0xD000_0000 + UInt64($0) * 0x200, length: 0x200, irq: 5 + UInt32($0)) }
        let at = try ACPITables(cpuCount: 2, virtioDevices: devices).place(into: memory)
        var texts: [String: String] = [:]
        for (name, address) in [("xsdt", at.xsdt), ("facp", at.fadt), ("apic", at.madt), ("dsdt", at.dsdt)] {
            let header = Array(try #require(memory.region(address, 36)))
            let length = Int(header[4]) | Int(header[5]) << 8 | Int(header[6]) << 16
            let bytes = Data(try #require(memory.region(address, length)))
            try bytes.write(to: URL(fileURLWithPath: scratch.path("\(name).dat")))
            let r = iasl(["-d", "\(name).dat"], in: scratch.path(""))
            #expect(r.status == 0, "\(name): \(r.output)")
            #expect(!r.output.lowercased().contains("error"), "\(name): \(r.output)")
            #expect(!r.output.lowercased().contains("checksum"), "\(name): \(r.output)")
            texts[name] = try String(contentsOfFile: scratch.path("\(name).dsl"), encoding: .utf8)
        }
        let facp = try #require(texts["facp"])
        #expect(facp.contains("Hardware Reduced (V5) : 1"), "\(facp)")
        // X_DSDT: the 8-byte field at 140 (iasl labels it "DSDT Address" too).
        let xDSDT = #"\[08Ch 0140 +8\] +DSDT Address : 0*"# + String(at.dsdt, radix: 16, uppercase: true)
        #expect(facp.range(of: xDSDT, options: .regularExpression) != nil, "\(facp)")
        let apic = try #require(texts["apic"])
        #expect(apic.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count == 3, "\(apic)")
        #expect(apic.contains("Address : FEC00000"), "\(apic)")
        let dsdt = try #require(texts["dsdt"])
        for line in ["EisaId (\"PNP0501\")", "Device (V001)", "\"LNRO0005\"", "Memory32Fixed (ReadWrite,", "0xD0000200", "Name (_S5, Package (0x02)"] {
            #expect(dsdt.contains(line), "\(line) in \(dsdt)")
        }
    }
}

enum IASL {
    static let path = "/usr/bin/iasl"
    static var available: Bool { access(path, X_OK) == 0 }
    static var whyNot: Comment { "needs iasl (apt-get install acpica-tools) to cross-check the tables with ACPICA" }
}
