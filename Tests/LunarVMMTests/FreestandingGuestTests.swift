import Foundation
import Glibc
import LunarTesting
import LunarVMM
import Testing

/// Real KVM, real guests: small freestanding programs the test compiles (a stock kernel is far
/// too slow under this machine's paravirtual KVM; see BRIEF §5).
@Suite("Freestanding guests on KVM", .enabled(if: FreestandingGuests.available, FreestandingGuests.whyNot))
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

    @Test("the KVM kind is detected and named")
    func kind() throws {
        let kvm = try KVM()
        #expect(kvm.apiVersion == 12)
        print("KVM here: \(kvm.kind.rawValue)")
    }
}

final class ConsoleCapture: @unchecked Sendable {
    private(set) var bytes: [UInt8] = []
    func append(_ byte: UInt8) { bytes.append(byte) }
    var text: String { String(decoding: bytes, as: UTF8.self) }
}

enum FreestandingGuests {
    static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    static var available: Bool { access("/dev/kvm", R_OK | W_OK) == 0 && access("/usr/bin/gcc", X_OK) == 0 && access("/usr/bin/ld", X_OK) == 0 }
    static var whyNot: Comment { "needs read-write /dev/kvm and gcc/ld to build the test guests" }

    /// Compiles Tools/guest/freestanding/NAME into a flat image linked at 1 MiB.
    static func build(_ name: String, defines: [String] = []) throws -> [UInt8] {
        let scratch = Scratch()
        let source = root.appendingPathComponent("Tools/guest/freestanding/\(name)").path
        let object = scratch.path("guest.o"), image = scratch.path("guest.bin")
        let compile = ["-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-mno-red-zone", "-m64", "-O2",
                       "-fno-asynchronous-unwind-tables"] + defines.map { "-D\($0)" } + ["-c", source, "-o", object]
        guard run("/usr/bin/gcc", compile) == 0 else { throw GuestBuildError("gcc failed on \(source)") }
        guard run("/usr/bin/ld", ["-Ttext=0x100000", "-e", "_start", "--oformat", "binary", "-o", image, object]) == 0 else {
            throw GuestBuildError("ld failed on \(object)")
        }
        return Array(try Data(contentsOf: URL(fileURLWithPath: image)))
    }
}

struct GuestBuildError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
