import CLunar
import Glibc
import Synchronization

/// A request, from any thread, that a VM's run loop return `.stopped`: the console's Ctrl-A x,
/// or SIGINT/SIGTERM to `lunar vm run`. A vCPU blocked in KVM_RUN (also in a halted guest) is
/// kicked out of it with SIGUSR1 (a handler that does nothing, so KVM_RUN fails with EINTR);
/// `kvm_run.immediate_exit` closes the window between the loop's check and the ioctl.
final class StopSignal: @unchecked Sendable {
    private let requested = Atomic<Bool>(false)
    /// The vCPU threads in their run loops, with the addresses of their kvm_run pages.
    private let running = Mutex<[(thread: pthread_t, runPage: UInt)]>([])

    static let kickSignal = SIGUSR1
    private static let installHandler: Void = {
        _ = signal(StopSignal.kickSignal) { _ in }
    }()

    init() { _ = Self.installHandler }

    var isRequested: Bool { requested.load(ordering: .sequentiallyConsistent) }

    func request() {
        requested.store(true, ordering: .sequentiallyConsistent)
        running.withLock { threads in
            for t in threads {
                Self.setImmediateExit(UnsafeMutableRawPointer(bitPattern: t.runPage)!)
                pthread_kill(t.thread, Self.kickSignal)
            }
        }
    }

    /// The calling thread runs the vCPU of `runPage` until `leave`. The kick signal is unblocked
    /// on it (threads of Swift's concurrency pool start with most signals blocked); the mask it
    /// had is returned for `leave`.
    func enter(runPage: UnsafeMutableRawPointer) -> sigset_t {
        var kick = sigset_t(), old = sigset_t()
        sigemptyset(&kick)
        sigaddset(&kick, Self.kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &kick, &old)
        let me = pthread_self(), page = UInt(bitPattern: runPage)
        running.withLock { $0.append((me, page)) }
        if isRequested { Self.setImmediateExit(runPage) }
        return old
    }

    func leave(runPage: UnsafeMutableRawPointer, mask: sigset_t) {
        let page = UInt(bitPattern: runPage)
        running.withLock { $0.removeAll { $0.runPage == page } }
        var old = mask
        pthread_sigmask(SIG_SETMASK, &old, nil)
    }

    /// struct kvm_run begins with request_interrupt_window (u8), then immediate_exit (u8).
    private static func setImmediateExit(_ runPage: UnsafeMutableRawPointer) {
        runPage.storeBytes(of: UInt8(1), toByteOffset: 1, as: UInt8.self)
    }
}
