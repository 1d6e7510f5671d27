import CLunar
import Glibc
import LunarIO
import Synchronization

/// The threads of one run of a VM, one per vCPU: which are inside their run loop, and how the
/// run ended. The first vCPU to end the VM (power-off, reset, shutdown, or an error) records
/// the outcome and kicks every other vCPU out of KVM_RUN, so all threads can be joined.
final class VCPUThreads: Sendable {
    private struct State {
        var outcome: Result<VMExit, VMMError>?
        /// Threads inside their run loop, by vCPU index. Only these are signalled: a thread
        /// that has left its loop may be joined at any moment, after which its id is invalid.
        var running: [Int: pthread_t] = [:]
    }

    let vcpus: [VCPU]
    private let state = Mutex(State())

    init(_ vcpus: [VCPU]) { self.vcpus = vcpus }

    var isStopping: Bool { state.withLock { $0.outcome != nil } }

    /// Registers the calling thread as vCPU `index`'s; false if the VM has already ended.
    func enter(_ index: Int) -> Bool {
        state.withLock { state in
            guard state.outcome == nil else { return false }
            state.running[index] = pthread_self()
            return true
        }
    }

    func leave(_ index: Int) {
        _ = state.withLock { $0.running.removeValue(forKey: index) }
    }

    /// Ends the run with `outcome` unless another vCPU already did, and stops the others.
    func finish(_ outcome: Result<VMExit, VMMError>) {
        state.withLock { state in
            guard state.outcome == nil else { return }
            state.outcome = outcome
            let me = pthread_self()
            // Every run page first: a vCPU whose thread has not entered KVM_RUN yet (or is
            // handling an exit) returns from its next KVM_RUN at once.
            for vcpu in vcpus { vcpu.requestImmediateExit() }
            for (_, thread) in state.running where pthread_equal(thread, me) == 0 {
                // Holding the lock keeps `thread` from leaving its loop, hence alive.
                _ = pthread_kill(thread, VCPUKick.signal)
            }
        }
    }

    var outcome: Result<VMExit, VMMError>? { state.withLock { $0.outcome } }
}

/// The signal that interrupts a vCPU thread's KVM_RUN (SIGRTMIN, as kvmtool). Its handler does
/// nothing: the point is the -EINTR. SA_RESTART keeps it from failing a device's system call
/// on a thread that happens to be outside KVM_RUN; KVM_RUN itself is never restarted.
enum VCPUKick {
    static let signal = __libc_current_sigrtmin()

    /// 0, or the errno of installing the handler; done once per process.
    private static let installation: Int32 = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        return sigaction(signal, &action, nil) == 0 ? 0 : errno
    }()

    static func install() throws(VMMError) {
        let e = installation
        if e != 0 { throw VMMError.system("sigaction(SIGRTMIN)", e) }
    }

    /// Lets the kick reach the calling thread. A new thread inherits its creator's signal
    /// mask, and callers such as libdispatch's worker threads block nearly every signal, which
    /// would leave a vCPU sleeping in KVM_RUN (halted, or waiting for SIPI) deaf to the kick.
    static func unblockOnThisThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

/// Starts a joinable thread running `body`.
func startVCPUThread(_ body: @escaping @Sendable () -> Void) throws(VMMError) -> pthread_t {
    switch startThread(body) {
    case .success(let handle): return handle
    case .failure(let e): throw VMMError.system("pthread_create (vCPU)", e.code)
    }
}

/// A plain mutex. Unlike `Mutex.withLock` its lock and unlock can bracket one case of a
/// `switch` (with `defer`), which is how the run loop holds it around a device access.
final class DeviceLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() {
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
}
