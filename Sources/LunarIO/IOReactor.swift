import CLunar
import Glibc
import Synchronization

/// Drives one `IOQueue` on its own thread for the async API: callers post requests to an
/// inbox and ring an eventfd doorbell; the thread batches whatever arrived into the queue,
/// submits and waits in one call, and resumes each caller as its completion lands.
final class IOReactor: Sendable {
    enum Request: @unchecked Sendable {
        case read(UnsafeMutableRawBufferPointer, UInt64)
        case write(UnsafeRawBufferPointer, UInt64)
        case flush
        case discard(UInt64, UInt64)
    }

    /// Called once on the reactor's thread when the request completes (or at once, on the
    /// caller's, when the reactor no longer takes requests).
    typealias Completion = @Sendable (Result<Int, IOError>) -> Void

    private struct Inbox: ~Copyable {
        var requests: [(Request, Completion)] = []
        var stopping = false
    }

    private let inbox = Mutex(Inbox())
    private let doorbell: Int32
    private let file: DeviceFile
    private let thread = Mutex<pthread_t?>(nil)

    init(file: DeviceFile, engine: IOEngineKind, depth: Int) throws(IOError) {
        let queue = try IOQueue(file: file, engine: engine, depth: depth)
        let fd = lunar_eventfd()
        guard fd >= 0 else { throw file.error(.system, .setup, errno: -fd) }
        self.doorbell = fd
        self.file = file
        let owned = UncheckedBox(queue)
        let started = startThread { [self] in self.run(owned.value) }
        switch started {
        case .success(let handle): thread.withLock { $0 = handle }
        case .failure(let e):
            Glibc.close(fd)
            throw file.error(.system, .setup, errno: e.code)
        }
    }

    deinit { Glibc.close(doorbell) }

    /// Queues one request and suspends until it completes.
    func perform(_ request: Request) async -> Result<Int, IOError> {
        await withCheckedContinuation { continuation in
            submit(request) { continuation.resume(returning: $0) }
        }
    }

    /// Queues one request; `completion` runs on the reactor's thread once it completes: for
    /// callers that live on an event loop of their own rather than in Swift's concurrency.
    func submit(_ request: Request, completion: @escaping Completion) {
        let outcome: (accepted: Bool, ring: Bool) = inbox.withLock { box in
            if box.stopping { return (false, false) }
            box.requests.append((request, completion))
            return (true, box.requests.count == 1)
        }
        if !outcome.accepted {
            completion(.failure(file.error(.closed, operationKind(request))))
        } else if outcome.ring {
            ringDoorbell()
        }
    }

    /// Finishes everything already accepted, then ends the thread. Later requests fail `.closed`.
    func stop() {
        inbox.withLock { $0.stopping = true }
        ringDoorbell()
        if let handle = thread.withLock({ h -> pthread_t? in defer { h = nil }; return h }) {
            pthread_join(handle, nil)
        }
    }

    private func ringDoorbell() {
        var one: UInt64 = 1
        _ = write(doorbell, &one, 8)
    }

    private func operationKind(_ request: Request) -> IOOperationKind {
        switch request {
        case .read: .read
        case .write: .write
        case .flush: .flush
        case .discard: .discard
        }
    }

    private func run(_ queue: IOQueue) {
        let doorbellTag = UInt64.max
        var waiting: [(Request, Completion)] = []
        var waitingHead = 0
        var inFlight: [UInt64: Completion] = [:]
        var nextTag: UInt64 = 0
        var doorbellArmed = false

        func fail(_ error: IOError) {
            for (_, c) in waiting[waitingHead...] { c(.failure(error)) }
            for (_, c) in inFlight { c(.failure(error)) }
            waiting = []
            waitingHead = 0
            inFlight = [:]
        }

        while true {
            let (arrived, stopping) = inbox.withLock { box in
                defer { box.requests.removeAll(keepingCapacity: true) }
                return (box.requests, box.stopping)
            }
            waiting.append(contentsOf: arrived)

            // Move as many waiting requests into the queue as its depth allows.
            while waitingHead < waiting.count && queue.outstanding - (doorbellArmed ? 1 : 0) < queue.depth {
                let (request, completion) = waiting[waitingHead]
                waitingHead += 1
                nextTag &+= 1
                do {
                    switch request {
                    case .read(let b, let off): try queue.prepareRead(into: b, at: off, tag: nextTag)
                    case .write(let b, let off): try queue.prepareWrite(from: b, at: off, tag: nextTag)
                    case .flush: try queue.prepareFlush(tag: nextTag)
                    case .discard(let off, let len): try queue.prepareDiscard(at: off, length: len, tag: nextTag)
                    }
                    inFlight[nextTag] = completion
                } catch {
                    completion(.failure(error))
                }
            }
            if waitingHead == waiting.count {
                waiting.removeAll(keepingCapacity: true)
                waitingHead = 0
            }

            if stopping && inFlight.isEmpty && waiting.isEmpty { return }

            if !doorbellArmed {
                do {
                    try queue.prepareDoorbell(fd: doorbell, tag: doorbellTag)
                    doorbellArmed = true
                } catch {
                    fail(error)
                    return
                }
            }

            do {
                try queue.reap(minimum: 1) { completion in
                    if completion.tag == doorbellTag {
                        doorbellArmed = false
                        var count: UInt64 = 0
                        _ = read(doorbell, &count, 8)
                    } else if let done = inFlight.removeValue(forKey: completion.tag) {
                        if let error = completion.error {
                            done(.failure(error))
                        } else {
                            done(.success(completion.bytesTransferred))
                        }
                    }
                }
            } catch {
                // The engine itself failed (not one request): nothing more can complete.
                inbox.withLock { $0.stopping = true }
                fail(error)
                let late = inbox.withLock { box in
                    defer { box.requests.removeAll() }
                    return box.requests
                }
                for (_, c) in late { c(.failure(error)) }
                return
            }
        }
    }
}

/// Hands a non-Sendable value to exactly one other thread, which becomes its only user.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Starts a joinable POSIX thread running `body` (a thread of its own, outside Swift's pools:
/// for loops that block in the kernel, such as a ring's reactor, an I/O thread or a vCPU).
public func startThread(_ body: @escaping @Sendable () -> Void) -> Result<pthread_t, SystemErrno> {
    final class Context {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let context = Unmanaged.passRetained(Context(body)).toOpaque()
    var handle = pthread_t()
    let r = pthread_create(&handle, nil, { raw in
        guard let raw else { return nil }
        Unmanaged<Context>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, context)
    if r != 0 {
        Unmanaged<Context>.fromOpaque(context).release()
        return .failure(SystemErrno(r))
    }
    return .success(handle)
}
