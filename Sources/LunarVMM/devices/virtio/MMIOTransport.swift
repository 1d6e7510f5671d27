import LunarDisk
/// The virtio-mmio transport (virtio 1.x §4.2.2, "modern", version 2) for one virtio-blk
/// device: the register window a guest driver programs, turned into calls on the device.
/// Runs on the vCPU thread; the device's I/O thread owns the queue, the interrupt status
/// (shared atomically) and whether the device broke.
final class VirtioMMIOBlock {
    static let windowSize: UInt64 = 0x200
    static let queueNotifyOffset: UInt64 = 0x050
    static let magic: UInt32 = 0x7472_6976 // "virt"
    static let vendor: UInt32 = 0x524E_554C // "LUNR"
    static let deviceIDBlock: UInt32 = 2
    static let queueSizeMax: UInt16 = 256

    static let featureVersion1: UInt64 = 1 << 32
    static let featureFlush: UInt64 = 1 << 9
    static let featureReadOnly: UInt64 = 1 << 5
    static let featureDiscard: UInt64 = 1 << 13

    static let statusNeedsReset: UInt32 = 0x40

    let base: UInt64
    let device: VirtioBlockDevice
    let offered: UInt64
    /// The device configuration space (virtio-blk's `struct virtio_blk_config`), little-endian.
    let config: [UInt8]

    private var deviceFeaturesSelect: UInt32 = 0
    private var driverFeaturesSelect: UInt32 = 0
    private var driverFeatures: UInt64 = 0
    private var queueSize: UInt16 = queueSizeMax
    private var queueReady = false
    private var descriptors: UInt64 = 0, available: UInt64 = 0, used: UInt64 = 0
    private var status: UInt32 = 0

    init(base: UInt64, device: VirtioBlockDevice, disk: DiskChannel) {
        self.base = base
        self.device = device
        // A read-only disk offers no discard: it would only ever fail.
        offered = Self.featureVersion1 | Self.featureFlush | (disk.isReadOnly ? Self.featureReadOnly : Self.featureDiscard)
        var c = [UInt8](repeating: 0, count: 0x3C)
        func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            for i in 0..<MemoryLayout<T>.size { c[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
        }
        let sectors = disk.capacity / VirtioBlock.sectorSize
        put(sectors, at: 0x00)                                           // capacity
        if !disk.isReadOnly {
            put(UInt32(clamping: sectors), at: 0x24)                     // max_discard_sectors
            put(UInt32(VirtioBlock.maxDiscardSegments), at: 0x28)      // max_discard_seg
            put(UInt32(8), at: 0x2C)                                     // discard_sector_alignment: 4 KiB
        }
        config = c
    }

    func contains(_ address: UInt64) -> Bool { address >= base && address < base + Self.windowSize }

    func read(_ address: UInt64, into data: UnsafeMutableRawBufferPointer) {
        let offset = address - base
        var value: UInt64
        switch offset {
        case 0x000: value = UInt64(Self.magic)
        case 0x004: value = 2
        case 0x008: value = UInt64(Self.deviceIDBlock)
        case 0x00C: value = UInt64(Self.vendor)
        case 0x010: value = deviceFeaturesSelect == 0 ? offered & 0xFFFF_FFFF : deviceFeaturesSelect == 1 ? offered >> 32 : 0
        case 0x034: value = UInt64(Self.queueSizeMax)
        case 0x044: value = queueReady ? 1 : 0
        case 0x060: value = UInt64(device.interruptStatus)
        case 0x070: value = UInt64(status | (device.shared.isBroken.load(ordering: .sequentiallyConsistent) ? Self.statusNeedsReset : 0))
        case 0x0FC: value = 0
        case 0x100..<0x200:
            value = 0
            let start = Int(offset - 0x100)
            for i in 0..<data.count where start + i < config.count { value |= UInt64(config[start + i]) << (8 * UInt64(i)) }
        default: value = 0
        }
        for i in 0..<data.count { data[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    func write(_ address: UInt64, from data: UnsafeRawBufferPointer) {
        let offset = address - base
        var value: UInt32 = 0
        for i in 0..<min(4, data.count) { value |= UInt32(data[i]) << (8 * UInt32(i)) }
        switch offset {
        case 0x014: deviceFeaturesSelect = value
        case 0x020:
            if driverFeaturesSelect < 2 {
                let shift = UInt64(driverFeaturesSelect) * 32
                driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
            }
        case 0x024: driverFeaturesSelect = value
        case 0x030: break // one queue: only 0 exists
        case 0x038: queueSize = UInt16(truncatingIfNeeded: value)
        case 0x044:
            queueReady = value == 1
            if queueReady && !device.setQueue(size: queueSize, descriptors: descriptors, available: available, used: used) {
                // Areas outside guest memory: the driver broke the rules.
                status |= Self.statusNeedsReset
                queueReady = false
            }
        case Self.queueNotifyOffset:
            // With an ioeventfd registered, KVM signals the I/O thread for 4-byte writes itself;
            // other sizes still come here. Only queue 0 exists.
            if value == 0 && queueReady { device.notify() }
        case 0x064: device.acknowledgeInterrupt(value)
        case 0x070:
            if value == 0 { reset() } else { status = value }
        case 0x080: descriptors = (descriptors & ~0xFFFF_FFFF) | UInt64(value)
        case 0x084: descriptors = (descriptors & 0xFFFF_FFFF) | (UInt64(value) << 32)
        case 0x090: available = (available & ~0xFFFF_FFFF) | UInt64(value)
        case 0x094: available = (available & 0xFFFF_FFFF) | (UInt64(value) << 32)
        case 0x0A0: used = (used & ~0xFFFF_FFFF) | UInt64(value)
        case 0x0A4: used = (used & 0xFFFF_FFFF) | (UInt64(value) << 32)
        default: break
        }
    }

    /// Waits for the I/O thread to finish what it has in flight for this device before the
    /// registers clear: after the reset the guest owns its buffers again.
    private func reset() {
        device.reset()
        status = 0
        driverFeatures = 0
        queueReady = false
        queueSize = Self.queueSizeMax
        descriptors = 0; available = 0; used = 0
    }
}
