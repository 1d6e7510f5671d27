import LunarDisk
import Glibc
import LunarIO
import Synchronization

/// A virtio-blk driver run by the host instead of a guest, for benchmarks and tests: it lays
/// a split virtqueue, request headers, status bytes and data buffers out in guest memory as a
/// guest driver would, makes requests available, notifies the device, and takes completions
/// off the used ring when the device's interrupt eventfd fires. No guest code runs.
///
/// Requests live in slots: slot `s` uses descriptors 3s (header), 3s + 1 (data) and 3s + 2
/// (status), its header and status at fixed places, and `bytesPerSlot` of page-aligned data.
public final class SyntheticBlockDriver {
    public let memory: GuestMemory
    public let device: VirtioBlockDevice
    public let queueSize: UInt16
    public let slots: Int
    public let bytesPerSlot: Int

    static let descriptorTable: UInt64 = 0x1_0000
    let available: UInt64
    let used: UInt64
    let headers: UInt64
    let statuses: UInt64
    let dataBase: UInt64
    private var availableIndex: UInt16 = 0
    private var published: UInt16 = 0
    private var usedSeen: UInt16 = 0

    public init(disk: DiskChannel, queueSize: UInt16 = 256, slots: Int, bytesPerSlot: Int,
                memoryBacking: GuestMemory.Backing = .hugePages) throws(VMMError) {
        guard slots >= 1, slots * 3 <= Int(queueSize), bytesPerSlot > 0, bytesPerSlot % 4096 == 0 else {
            throw VMMError(.invalidConfiguration("\(slots) slots of \(bytesPerSlot) bytes on a queue of \(queueSize)"))
        }
        self.queueSize = queueSize
        self.slots = slots
        self.bytesPerSlot = bytesPerSlot
        let q = UInt64(queueSize)
        available = (Self.descriptorTable + 16 * q + 4095) / 4096 * 4096
        used = (available + 6 + 2 * q + 4095) / 4096 * 4096
        headers = (used + 6 + 8 * q + 4095) / 4096 * 4096
        statuses = headers + 16 * UInt64(slots)
        let mib: UInt64 = 1 << 20
        dataBase = (statuses + UInt64(slots) + mib - 1) / mib * mib
        let size = (dataBase + UInt64(slots) * UInt64(bytesPerSlot) + mib) / mib * mib
        memory = try GuestMemory(size: max(size, 4 << 20), backing: memoryBacking)
        device = try VirtioBlockDevice(memory: memory, disk: disk, serial: "synthetic")
        guard device.setQueue(size: queueSize, descriptors: Self.descriptorTable, available: available, used: used) else {
            throw VMMError(.invalidConfiguration("synthetic queue layout does not fit"))
        }
    }

    private func put<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        // Every address here was laid out inside `memory` at init.
        guard let r = memory.region(address, MemoryLayout<T>.size) else { return }
        r.storeBytes(of: value.littleEndian, as: T.self)
    }

    private func fetch<T: FixedWidthInteger>(_ address: UInt64, _: T.Type = T.self) -> T {
        guard let r = memory.region(address, MemoryLayout<T>.size) else { return 0 }
        return T(littleEndian: UnsafeRawBufferPointer(r).loadUnaligned(as: T.self))
    }

    /// The data buffer of `slot` (guest memory).
    public func data(_ slot: Int) -> UnsafeMutableRawBufferPointer {
        precondition(slot >= 0 && slot < slots, "slot \(slot) of \(slots)")
        guard let r = memory.region(dataBase + UInt64(slot) * UInt64(bytesPerSlot), bytesPerSlot) else {
            preconditionFailure("slot buffers were laid out inside guest memory")
        }
        return r
    }

    public func status(_ slot: Int) -> UInt8 { fetch(statuses + UInt64(slot)) }

    /// The used ring's index as the device last published it.
    public var usedIndex: UInt16 { fetch(used + 2) }

    /// Lays out a request in `slot` (type 0 read, 1 write, 4 flush, 11 discard, ...) over the
    /// first `length` bytes of its buffer, and makes it available; the device hears of it at
    /// the next `publish`.
    public func enqueue(slot: Int, type: UInt32, sector: UInt64, length: Int) {
        let header = headers + 16 * UInt64(slot), status = statuses + UInt64(slot)
        put(type, at: header)
        put(UInt32(0), at: header + 4)
        put(sector, at: header + 8)
        put(UInt8(0xFF), at: status)
        let d = Self.descriptorTable + 48 * UInt64(slot)
        let deviceWrites: UInt16 = type == 0 || type == 8 ? 2 : 0
        put(header, at: d)
        put(UInt32(16), at: d + 8)
        put(UInt16(1), at: d + 12)
        put(UInt16(3 * slot + (length > 0 ? 1 : 2)), at: d + 14)
        if length > 0 {
            put(dataBase + UInt64(slot) * UInt64(bytesPerSlot), at: d + 16)
            put(UInt32(length), at: d + 24)
            put(UInt16(1) | deviceWrites, at: d + 28)
            put(UInt16(3 * slot + 2), at: d + 30)
        }
        put(status, at: d + 32)
        put(UInt32(1), at: d + 40)
        put(UInt16(2), at: d + 44)
        put(UInt16(0), at: d + 46)
        put(UInt16(3 * slot), at: available + 4 + 2 * UInt64(availableIndex % queueSize))
        availableIndex &+= 1
    }

    /// Publishes what `enqueue` laid out and notifies the device, as a guest's QueueNotify write.
    public func publish() {
        guard availableIndex != published else { return }
        // Ring entries must be visible before the index that publishes them.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        put(availableIndex, at: available + 2)
        published = availableIndex
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // VRING_USED_F_NO_NOTIFY: the device will look anyway.
        let flags: UInt16 = fetch(used)
        if flags & 1 == 0 { device.notify() }
    }

    /// Calls `body` with the slot, status byte and length the device wrote, for each request
    /// completed since the last call, in the order the device completed them; returns how many.
    @discardableResult
    public func takeCompleted(_ body: (_ slot: Int, _ status: UInt8, _ written: UInt32) -> Void) -> Int {
        let index: UInt16 = fetch(used + 2)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        var n = 0
        while usedSeen != index {
            let entry = used + 4 + 8 * UInt64(usedSeen % queueSize)
            let head: UInt32 = fetch(entry)
            let written: UInt32 = fetch(entry + 4)
            let slot = Int(head) / 3
            body(slot, status(slot), written)
            usedSeen &+= 1
            n += 1
        }
        return n
    }

    /// Sleeps until the device raises its interrupt (or `timeout` seconds pass); true when it did.
    /// With `pollSeconds`, first looks at the used ring for that long, as a guest driver that
    /// polls before it sleeps: true at once when something came.
    @discardableResult
    public func waitForInterrupt(timeout: Double = 10, pollSeconds: Double = 0) -> Bool {
        if pollSeconds > 0 {
            let until = monotonicSeconds() + pollSeconds
            repeat {
                if usedIndex != usedSeen { return true }
            } while monotonicSeconds() < until
        }
        var count: UInt64 = 0
        // Often the interrupt is already there: one read, no poll.
        if read(device.interruptEventFD, &count, 8) != 8 {
            var p = pollfd(fd: device.interruptEventFD, events: Int16(POLLIN), revents: 0)
            var r: Int32
            repeat { r = poll(&p, 1, Int32(timeout * 1000)) } while r < 0 && errno == EINTR
            guard r > 0 else { return false }
            _ = read(device.interruptEventFD, &count, 8)
        }
        device.acknowledgeInterrupt(1)
        return true
    }

    /// Requests made available and not yet seen completed.
    public var outstanding: Int { Int(availableIndex &- usedSeen) }
}
