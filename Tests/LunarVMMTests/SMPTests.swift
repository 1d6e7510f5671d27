import Foundation
import Glibc
import LunarTesting
import LunarVMM
import Testing

/// Several vCPUs, one thread each: the guest's bootstrap processor starts the others through
/// its local APIC (INIT, SIPI, SIPI) and they come up through a real-mode trampoline.
@Suite("SMP guests on KVM", .enabled(if: FreestandingGuests.available, Comment(rawValue: FreestandingGuests.whyNot)))
struct SMPTests {
    static let sources = ["smp.c", "smp_trampoline.S"]

    /// Builds the SMP guest and runs it on `cpus` vCPUs on a thread of its own, waiting at most
    /// `seconds`: a VM that fails to stop is a failed test, not a hung test run.
    static func run(cpus: Int, defines: [String] = [], seconds: Double = 60) throws -> (exit: VMExit, console: String) {
        let image = try FreestandingGuests.build(sources, defines: defines, elf: true)
        let console = ConsoleCapture()
        return try bounded(seconds, console: console) {
            let vm = try VirtualMachine(kvm: try KVM(), memorySize: 64 << 20, cpus: cpus, console: console.append)
            let entry = try vm.loadELF(image)
            let exit = try vm.runFreestanding(entry: entry)
            return (exit, console.text)
        }
    }

    @Test("4 vCPUs: the BSP wakes 3 APs by INIT/SIPI, each reports its APIC ID, the BSP powers off with 4")
    func fourCPUs() throws {
        let (exit, console) = try Self.run(cpus: 4)
        let lines = console.split(separator: "\n").map(String.init)
        #expect(exit == .poweredOff(status: 4), "console: \(console)")
        #expect(lines.dropLast().sorted() == ["cpu 1 up", "cpu 2 up", "cpu 3 up"], "console: \(console)")
        #expect(lines.last == "all 4 cpus up")
    }

    @Test("16 vCPUs, the most a VM has, all come up")
    func sixteenCPUs() throws {
        let (exit, console) = try Self.run(cpus: 16)
        let lines = console.split(separator: "\n").map(String.init)
        #expect(exit == .poweredOff(status: 16), "console: \(console)")
        #expect(Set(lines.dropLast()) == Set((1..<16).map { "cpu \($0) up" }), "console: \(console)")
        #expect(lines.count == 16)
        #expect(lines.last == "all 16 cpus up")
    }

    @Test("1 vCPU: the SMP guest finds no AP to start")
    func oneCPU() throws {
        let (exit, console) = try Self.run(cpus: 1)
        #expect(console == "all 1 cpus up\n")
        #expect(exit == .poweredOff(status: 1))
    }

    @Test("0 and 17 vCPUs are refused", arguments: [0, 17, -1])
    func refused(cpus: Int) throws {
        let error = #expect(throws: VMMError.self) {
            _ = try VirtualMachine(kvm: try KVM(), memorySize: 2 << 20, cpus: cpus, console: { _ in })
        }
        guard case .invalidConfiguration(let why) = error?.kind else {
            Issue.record("expected an invalid configuration, got \(String(describing: error))")
            return
        }
        #expect(why.contains("\(cpus) vCPUs"))
    }

    @Test("a power-off from an AP ends the VM while the BSP and the other APs spin in guest code")
    func powerOffFromAP() throws {
        let (exit, console) = try Self.run(cpus: 4, defines: ["AP_POWEROFF"])
        let lines = console.split(separator: "\n").map(String.init)
        #expect(exit == .poweredOff(status: 0x43), "console: \(console)")
        #expect(lines.dropLast().sorted() == ["cpu 1 up", "cpu 2 up", "cpu 3 up"], "console: \(console)")
        #expect(lines.last == "cpu 3 powers off")
    }

    @Test("an error on an AP (code fetched from unbacked memory) ends the VM with that error while the BSP spins")
    func errorOnAP() throws {
        let error = #expect(throws: VMMError.self) { _ = try Self.run(cpus: 3, defines: ["AP_FAULT"]) }
        guard case .guestFault(let why) = error?.kind else {
            Issue.record("expected a guest fault, got \(String(describing: error))")
            return
        }
        #expect(why.contains("KVM internal error"), "\(why)")
    }

    @Test("a triple fault on an AP shuts the VM down while the BSP spins")
    func tripleFaultOnAP() throws {
        let (exit, console) = try Self.run(cpus: 2, defines: ["AP_TRIPLE_FAULT"])
        #expect(exit == .shutdown)
        #expect(console == "cpu 1 up\n")
    }

    @Test("a guest that never starts its APs still ends: vCPUs waiting for SIPI are kicked out")
    func apsNeverStarted() throws {
        let (exit, console) = try Self.run(cpus: 4, defines: ["NO_SIPI"])
        #expect(console == "no APs started\n")
        #expect(exit == .poweredOff(status: 0x50))
    }

    @Test("a VM runs once: a second run is refused, not a KVM_CREATE_VCPU failure")
    func runsOnce() throws {
        let image = try FreestandingGuests.build("hello.c")
        let vm = try VirtualMachine(kvm: try KVM(), memorySize: 64 << 20, cpus: 2, console: { _ in })
        try vm.loadFlatImage(image)
        #expect(try vm.runFreestanding() == .poweredOff(status: 0x31))
        let error = #expect(throws: VMMError.self) { try vm.runFreestanding() }
        guard case .invalidConfiguration = error?.kind else {
            Issue.record("expected an invalid configuration, got \(String(describing: error))")
            return
        }
    }
}

struct Timeout: Error, CustomStringConvertible {
    let seconds: Double
    let console: String
    var description: String { "still running after \(seconds) s; console so far: \(console.debugDescription)" }
}

/// Written by the thread before it signals, read after the wait: the semaphore orders them.
private final class BoundedOutcome<T>: @unchecked Sendable {
    var value: Result<T, any Error>?
}

/// Runs `body` on a thread of its own and waits at most `seconds` for it; on a timeout the
/// thread is left behind and the caller gets `Timeout`, with what the guest printed.
func bounded<T: Sendable>(_ seconds: Double, console: ConsoleCapture, _ body: @escaping @Sendable () throws -> T) throws -> T {
    let outcome = BoundedOutcome<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        outcome.value = Result { try body() }
        done.signal()
    }
    thread.start()
    guard done.wait(timeout: .now() + seconds) == .success, let value = outcome.value else { throw Timeout(seconds: seconds, console: console.text) }
    return try value.get()
}
