import LunarDisk
import Foundation
import Glibc
import LunarTesting
import LunarFS
import LunarVMM
import Synchronization
import Testing

/// Real KVM, real guests: small freestanding programs the test compiles (a stock kernel is far
/// too slow under this machine's paravirtual KVM; see BRIEF §5).
@Suite("Freestanding guests on KVM", .enabled(if: FreestandingGuests.available, Comment(rawValue: FreestandingGuests.whyNot)))
struct FreestandingGuestTests {
    @Test("a guest prints over the 8250 UART and powers off with its status")
    func helloAndPowerOff() throws {
        let image = try FreestandingGuests.build("hello.c")
        let kvm = try KVM()
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: kvm, memorySize: 64 << 20, console: console.append)
        try vm.loadFlatImage(image)
        let exit = try vm.runFreestanding()
        #expect(console.text == "hello from the guest\n")
        // 0x31: the guest saw an unclaimed port read as all ones.
        #expect(exit == .poweredOff(status: 0x31))
    }

    @Test("a guest that pulses the i8042 reset line ends the VM with a reset")
    func reset() throws {
        let image = try FreestandingGuests.build("hello.c", defines: ["STOP_BY_RESET"])
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 64 << 20, console: console.append)
        try vm.loadFlatImage(image)
        #expect(try vm.runFreestanding() == .reset)
        #expect(console.text == "hello from the guest\n")
    }

    @Test("an image that does not fit guest memory is refused")
    func oversizedImage() throws {
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 2 << 20, console: { _ in })
        #expect(throws: VMMError.self) { try vm.loadFlatImage([UInt8](repeating: 0x90, count: 2 << 20)) }
    }

    @Test("a guest drives virtio-blk over MMIO: write, read back, flush; the data is in the LunarFS file",
          arguments: [64 << 20, GuestMemory.holeStart + (64 << 20)] as [UInt64])
    func virtioBlock(memory: UInt64) throws {
        // The second size has RAM beyond the device hole (at 4 GiB): the windows below stay devices.
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let file = try volume.create("/disk.raw")
        try file.truncate(to: 16 << 20)
        let image = try FreestandingGuests.build("virtio_blk.c", elf: true)
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: memory, console: console.append)
        let window = try vm.addBlockDevice(try DiskChannel(file: file), serial: "disk0")
        #expect(window.notificationsInKernel && window.interruptsInKernel)
        #expect(window.address == 0xD000_0000)
        let entry = try vm.loadELF(image)
        let exit = try vm.runFreestanding(entry: entry)
        #expect(console.text == "virtio-blk ok\n")
        #expect(exit == .poweredOff(status: 0x31))
        let text = Array("LunarFS disk written by a KVM guest through virtio-blk".utf8)
        let expected = (0..<512).map { text[$0 % text.count] }
        #expect(try file.read(at: 2 * 512, count: 512) == expected)
        try volume.close()
    }

    @Test("a guest's malformed chains break its device 0 while device 1 keeps serving; device 0's file is untouched")
    func hostileGuestTwoDevices() throws {
        let scratch = Scratch()
        try Volume.format(path: scratch.path("lun.img"), size: 1 << 30)
        let volume = try Volume.open(path: scratch.path("lun.img"))
        let victim = try volume.create("/victim.raw")
        try victim.truncate(to: 16 << 20)
        // Device 0's disk holds known bytes at the sector its malformed writes name.
        let before = pattern(64 << 10, seed: 11).array
        try victim.write(before, at: 0)
        let allocatedBefore = try victim.allocatedRanges()
        let healthy = try volume.create("/healthy.raw")
        try healthy.truncate(to: 16 << 20)

        let image = try FreestandingGuests.build("virtio_hostile.c", elf: true)
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 64 << 20, console: console.append)
        let slot0 = try vm.addBlockDevice(try DiskChannel(file: victim), serial: "victim")
        let slot1 = try vm.addBlockDevice(try DiskChannel(file: healthy), serial: "healthy")
        #expect(slot0.address == 0xD000_0000 && slot1.address == 0xD000_0200)
        #expect(slot0.irq == 5 && slot1.irq == 6)
        let exit = try vm.runFreestanding(entry: try vm.loadELF(image))
        #expect(console.text == """
            device 0, descriptor loop: needs reset
            device 0, address outside memory: needs reset
            device 0, length overflows: needs reset
            device 0, zero-length header: I/O error
            device 0, chain longer than the queue: needs reset
            device 0, head out of range: needs reset
            device 0, write from a device-writable buffer: I/O error
            device 0 serves again after reset
            device 1: 8 writes, 7 read-backs and a flush ok
            hostile ok

            """)
        #expect(exit == .poweredOff(status: 0x31))

        // What the guest wrote to device 1, computed as the guest does.
        for round in 0..<7 {
            let expected = (0..<4096).map { i in UInt8(truncatingIfNeeded: (round * 37 + i * 13 + (i >> 8)) ^ 0x5A) }
            #expect(try healthy.read(at: UInt64(8 * (round + 1)) * 512, count: 4096) == expected, "round \(round)")
        }
        #expect(try healthy.read(at: 0, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try victim.read(at: 0, count: before.count) == before)
        #expect(try victim.allocatedRanges() == allocatedBefore)
        try volume.close()
    }

    @Test("the KVM kind is detected and named")
    func kind() throws {
        let kvm = try KVM()
        #expect(kvm.apiVersion == 12)
        print("KVM here: \(kvm.kind.rawValue)")
    }
}

/// The guest's UART output; vCPU threads append while a test may already read it.
final class ConsoleCapture: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    func append(_ byte: UInt8) { bytes.withLock { $0.append(byte) } }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

@Suite("VM configs")
struct VMConfigTests {
    @Test("vm.json round-trips and is flat, with a kind for the boot and the console")
    func json() throws {
        let config = VMConfig(name: "web01", cpus: 2, memory: 512 << 20, memoryBacking: .mergeable,
                              boot: .linux(kernel: "kernel", initrd: "initrd", commandLine: "console=ttyS0"),
                              disks: [.init(name: "disk0", size: 10 << 30), .init(name: "disk1", size: 1 << 20, readOnly: true)],
                              console: .file("/var/log/web01.log"))
        try config.validate()
        let data = Data(config.json.prettyPrinted.utf8)
        #expect(try VMConfig(json: JSONValue(parsing: Array(data))) == config)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect((object["boot"] as? [String: Any])?["kind"] as? String == "linux")
        #expect((object["console"] as? [String: Any])?["path"] as? String == "/var/log/web01.log")
        #expect(object["memory_bytes"] as? Int == 512 << 20)
        #expect(object["memory_backing"] as? String == "mergeable")
    }

    @Test("console arguments and their vm.json form", arguments: [
        ("terminal", VMConfig.Console.terminal), ("stdio", .terminal), ("none", .none),
        ("socket:/run/lunar/web01.sock", .socket("/run/lunar/web01.sock")), ("file:web01.log", .file("web01.log")),
        ("./web01.log", .file("./web01.log")),
    ])
    func consoleArguments(text: String, console: VMConfig.Console) throws {
        #expect(VMConfig.Console(argument: text) == console)
        let config = VMConfig(name: "a", memory: 64 << 20, boot: .freestanding(image: "guest.img", format: .flat), console: console)
        #expect(try VMConfig(json: JSONValue(parsing: Array(config.json.prettyPrinted.utf8))).console == console)
    }

    @Test("console arguments that are none of them are refused", arguments: ["socket:", "file:", "web01.log", ""])
    func badConsoleArguments(text: String) {
        #expect(VMConfig.Console(argument: text) == nil)
    }

    @Test("memory_backing: huge when absent, an unknown one refused with the choices")
    func memoryBacking() throws {
        var object = VMConfig(name: "a", memory: 64 << 20, boot: .freestanding(image: "guest.img", format: .flat)).json
        guard case .object(var fields) = object else { Issue.record("not an object"); return }
        fields["memory_backing"] = nil
        #expect(try VMConfig(json: .object(fields)).memoryBacking == .hugePages)
        fields["memory_backing"] = .string("gigantic")
        object = .object(fields)
        #expect {
            try VMConfig(json: object)
        } throws: { error in
            "\(error)".contains("unknown memory_backing 'gigantic' (huge, small or mergeable)")
        }
    }

    @Test("validation names the problem", arguments: [
        ("bad name", "VM name"), ("cpus 0", "0 vCPUs"), ("cpus 17", "17 vCPUs"), ("memory", "memory of"),
        ("disk size", "disk disk0"), ("disk twice", "two disks"), ("boot file", "boot file"),
        ("bad disk name", "disk name (disks[1].name) 'a/b': use 1 to 64 letters"),
    ])
    func validation(case: String, message: String) {
        var c = VMConfig(name: "ok", memory: 64 << 20, boot: .freestanding(image: "guest.img", format: .flat),
                         disks: [.init(name: "disk0", size: 1 << 20)])
        switch `case` {
        case "bad name": c.name = "-x"
        case "cpus 0": c.cpus = 0
        case "cpus 17": c.cpus = 17
        case "memory": c.memory = (64 << 20) + 512
        case "disk size": c.disks[0].size = 1000
        case "disk twice": c.disks.append(c.disks[0])
        case "bad disk name": c.disks.append(.init(name: "a/b", size: 1 << 20))
        default: c.boot = .freestanding(image: "../x", format: .elf)
        }
        do {
            try c.validate()
            Issue.record("\(`case`) passed validation")
        } catch {
            #expect(error.description.contains(message), "\(error)")
        }
    }

    @Test("requestStop ends a guest halted for good, from another thread", .enabled(if: FreestandingGuests.available))
    func stop() throws {
        let image = try FreestandingGuests.build("hello.c", defines: ["IDLE"])
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 16 << 20, console: console.append)
        try vm.loadFlatImage(image)
        nonisolated(unsafe) let target = vm
        let stopper = Thread {
            Thread.sleep(forTimeInterval: 0.3)
            target.requestStop()
        }
        stopper.start()
        #expect(try vm.runFreestanding() == .stopped)
        #expect(console.text == "hello from the guest\n")
    }
}

@Suite("Console input", .enabled(if: FreestandingGuests.available, Comment(rawValue: FreestandingGuests.whyNot)))
struct ConsoleInputTests {
    @Test("bytes sent to the console reach a guest polling the UART, before and while it runs")
    func echo() throws {
        let image = try FreestandingGuests.build("echo.c")
        let console = ConsoleCapture()
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 16 << 20, console: console.append)
        try vm.loadFlatImage(image)
        vm.sendConsoleInput(Array("hi".utf8))
        nonisolated(unsafe) let target = vm
        let typist = Thread {
            Thread.sleep(forTimeInterval: 0.2)
            target.sendConsoleInput(Array(" there\n".utf8))
        }
        typist.start()
        #expect(try vm.runFreestanding() == .poweredOff(status: 8))
        #expect(console.text == "> hi there\n")
    }
}
