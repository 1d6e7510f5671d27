import Synchronization

/// One split virtqueue (virtio 1.x §2.7) living in guest memory, seen from the device side.
///
/// Everything in it is written by the guest and trusted by nothing here: descriptor indices,
/// addresses, lengths, flags and chain lengths are all checked, and a queue whose guest broke
/// the rules reports why instead of touching memory outside the guest's.
final class Virtqueue {
    struct Descriptor {
        var region: UnsafeMutableRawBufferPointer
        /// Device-writable (VIRTQ_DESC_F_WRITE): the guest wants data back in it.
        var deviceWrites: Bool
    }

    struct Chain {
        var head: UInt16
        var descriptors: [Descriptor]
    }

    enum Fault: Error, Equatable {
        case badIndex(UInt16)
        case outOfMemory(address: UInt64, length: UInt32)
        case loop
        case indirectNotNegotiated
        case ringOutsideMemory
    }

    static let flagNext: UInt16 = 1
    static let flagWrite: UInt16 = 2
    static let flagIndirect: UInt16 = 4

    let memory: GuestMemory
    let size: UInt16
    let descriptorTable: UInt64
    let availableRing: UInt64
    let usedRing: UInt64
    private var nextAvailable: UInt16 = 0
    private var nextUsed: UInt16 = 0

    /// Checks the three areas fit guest memory; nil (a driver error) when not.
    init?(memory: GuestMemory, size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64) {
        guard size > 0, size <= 32768, size & (size - 1) == 0,
              memory.region(descriptorTable, 16 * Int(size)) != nil,
              memory.region(availableRing, 6 + 2 * Int(size)) != nil,
              memory.region(usedRing, 6 + 8 * Int(size)) != nil else { return nil }
        self.memory = memory
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }

    private func load<T: FixedWidthInteger>(_ address: UInt64, _: T.Type = T.self) -> T {
        // Addresses were checked at init; the guest can change contents, not where they are.
        let r = memory.region(address, MemoryLayout<T>.size)!
        return T(littleEndian: UnsafeRawBufferPointer(r).loadUnaligned(as: T.self))
    }

    private func store<T: FixedWidthInteger>(_ value: T, _ address: UInt64) {
        memory.region(address, MemoryLayout<T>.size)!.storeBytes(of: value.littleEndian, as: T.self)
    }

    /// The next chain the guest made available, or nil when there is none.
    func pop() throws(Fault) -> Chain? {
        var descriptors: [Descriptor] = []
        guard let head = try pop(into: &descriptors) else { return nil }
        return Chain(head: head, descriptors: descriptors)
    }

    /// The same into the caller's array (emptied first, its storage reused: the hot path
    /// allocates nothing per request); returns the chain's head.
    func pop(into out: inout [Descriptor]) throws(Fault) -> UInt16? {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let available: UInt16 = load(availableRing + 2)
        guard available != nextAvailable else { return nil }
        let head: UInt16 = load(availableRing + 4 + 2 * UInt64(nextAvailable % size))
        nextAvailable &+= 1
        out.removeAll(keepingCapacity: true)
        try walk(head, into: &out)
        return head
    }

    private func walk(_ head: UInt16, into out: inout [Descriptor]) throws(Fault) {
        var index = head
        while true {
            guard index < size else { throw .badIndex(index) }
            // A chain longer than the table must revisit a descriptor: a loop.
            guard out.count < Int(size) else { throw .loop }
            let d = descriptorTable + 16 * UInt64(index)
            let address: UInt64 = load(d)
            let length: UInt32 = load(d + 8)
            let flags: UInt16 = load(d + 12)
            let next: UInt16 = load(d + 14)
            if flags & Self.flagIndirect != 0 { throw .indirectNotNegotiated }
            guard let region = memory.region(address, Int(length)) else { throw .outOfMemory(address: address, length: length) }
            out.append(Descriptor(region: region, deviceWrites: flags & Self.flagWrite != 0))
            guard flags & Self.flagNext != 0 else { return }
            index = next
        }
    }

    /// Whether chains are available that `pop` has not taken.
    var hasAvailable: Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let available: UInt16 = load(availableRing + 2)
        return available != nextAvailable
    }

    /// Tells the driver whether to notify after making chains available (VRING_USED_F_NO_NOTIFY
    /// clear or set). Only a hint: a driver may notify anyway, and after turning notifications
    /// back on the device must look at the ring once more, since the driver may have added a
    /// chain while it still saw them off.
    func setNotifications(_ wanted: Bool) {
        store(UInt16(wanted ? 0 : 1), usedRing)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Returns a finished chain to the guest with `written` bytes filled in.
    func push(head: UInt16, written: UInt32) {
        let slot = usedRing + 4 + 8 * UInt64(nextUsed % size)
        store(UInt32(head), slot)
        store(written, slot + 4)
        nextUsed &+= 1
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        store(nextUsed, usedRing + 2)
    }
}
