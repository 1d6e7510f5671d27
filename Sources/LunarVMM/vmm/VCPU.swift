import CLunar
import Glibc

/// One virtual CPU: its KVM handle and the shared `kvm_run` page it exits through.
final class VCPU {
    enum Exit {
        /// A port access; `data` is the bytes to send (write) or to fill (read).
        case io(port: UInt16, isWrite: Bool, size: Int, data: UnsafeMutableRawBufferPointer)
        case mmio(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer)
        case halt
        case shutdown
        /// `StopSignal.request()` was called.
        case stopped
    }

    let fd: Int32
    let id: Int
    private let runPage: UnsafeMutableRawPointer
    private let runSize: Int

    init(vm: VirtualMachine, id: Int) throws(VMMError) {
        fd = try check(lunar_kvm_create_vcpu(vm.fd, Int32(id)), "KVM_CREATE_VCPU")
        self.id = id
        runSize = vm.kvm.vcpuMapSize
        let p = mmap(nil, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw VMMError.system("mmap kvm_run", e)
        }
        runPage = p
    }

    deinit {
        munmap(runPage, runSize)
        close(fd)
    }

    func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(VMMError) {
        _ = try check(entries.withUnsafeBufferPointer { lunar_kvm_set_cpuid2(fd, $0.baseAddress, UInt32($0.count)) }, "KVM_SET_CPUID2")
    }

    func getSpecialRegisters() throws(VMMError) -> kvm_sregs {
        var s = kvm_sregs()
        _ = try check(lunar_kvm_get_sregs(fd, &s), "KVM_GET_SREGS")
        return s
    }

    func setSpecialRegisters(_ s: kvm_sregs) throws(VMMError) {
        var copy = s
        _ = try check(lunar_kvm_set_sregs(fd, &copy), "KVM_SET_SREGS")
    }

    func setRegisters(_ r: kvm_regs) throws(VMMError) {
        var copy = r
        _ = try check(lunar_kvm_set_regs(fd, &copy), "KVM_SET_REGS")
    }

    /// Runs `body` (the run loop) with this thread registered to be kicked by `stop`.
    func kickable<T>(by stop: StopSignal, _ body: () throws(VMMError) -> T) throws(VMMError) -> T {
        let mask = stop.enter(runPage: runPage)
        defer { stop.leave(runPage: runPage, mask: mask) }
        return try body()
    }

    /// Runs the guest until its next exit the VMM must handle, or until `stop` is requested
    /// (call it inside `kickable(by: stop)`).
    func run(stop: StopSignal? = nil) throws(VMMError) -> Exit {
        while true {
            if let stop, stop.isRequested { return .stopped }
            let r = lunar_kvm_run(fd)
            if r == -EINTR || r == -EAGAIN { continue }
            _ = try check(r, "KVM_RUN")
            let kvmRun = runPage.assumingMemoryBound(to: kvm_run.self)
            switch Int32(lunar_kvm_run_exit_reason(kvmRun)) {
            case KVM_EXIT_IO:
                var direction: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0, count: UInt32 = 0, offset: UInt64 = 0
                lunar_kvm_run_io(kvmRun, &direction, &size, &port, &count, &offset)
                let length = Int(size) * Int(count)
                guard size <= 4, count >= 1, offset + UInt64(length) <= UInt64(runSize) else {
                    throw VMMError(.guestFault("port I/O exit with size \(size) × \(count) at offset \(offset)"))
                }
                // String I/O (count > 1) arrives as one buffer; devices here take it byte-group by group.
                if count > 1 {
                    throw VMMError(.guestFault("string port I/O (rep ins/outs) on port 0x\(String(port, radix: 16)) is not supported"))
                }
                return .io(port: port, isWrite: direction == UInt8(KVM_EXIT_IO_OUT), size: Int(size),
                           data: UnsafeMutableRawBufferPointer(start: runPage + Int(offset), count: length))
            case KVM_EXIT_MMIO:
                var address: UInt64 = 0, length: UInt32 = 0, isWrite: UInt8 = 0
                var data: UnsafeMutablePointer<UInt8>?
                lunar_kvm_run_mmio(kvmRun, &address, &data, &length, &isWrite)
                guard let data, length <= 8 else { throw VMMError(.guestFault("MMIO exit of \(length) bytes")) }
                return .mmio(address: address, isWrite: isWrite != 0, data: UnsafeMutableRawBufferPointer(start: data, count: Int(length)))
            case KVM_EXIT_HLT:
                return .halt
            case KVM_EXIT_SHUTDOWN:
                return .shutdown
            case KVM_EXIT_FAIL_ENTRY:
                throw VMMError(.guestFault("VM entry failed, hardware reason 0x\(String(lunar_kvm_run_fail_entry_reason(kvmRun), radix: 16))"))
            case KVM_EXIT_INTERNAL_ERROR:
                throw VMMError(.guestFault("KVM internal error, suberror \(lunar_kvm_run_internal_suberror(kvmRun))"))
            case let other:
                throw VMMError(.guestFault("unhandled KVM exit reason \(other)"))
            }
        }
    }
}
