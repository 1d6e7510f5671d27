/// The virtio-mmio transport (virtio 1.x §4.2.2, "modern", version 2) for one virtio-blk
/// device: the register window a guest driver programs, turned into calls on the device.
final class VirtioMMIOBlock {
    static let windowSize: UInt64 = 0x200
    static let magic: UInt32 = 0x7472_6976 // "virt"
    static let vendor: UInt32 = 0x524E_554C // "LUNR"
    static let deviceIDBlock: UInt32 = 2
    static let queueSizeMax: UInt16 = 256

    static let featureVersion1: UInt64 = 1 << 32
    static let featureFlush: UInt64 = 1 << 9
    static let featureReadOnly: UInt64 = 1 << 5

    let base: UInt64
    let device: VirtioBlockDevice
    let capacitySectors: UInt64
    let offered: UInt64
    /// Raises the device's interrupt line.
    private let interrupt: () -> Void

    private var deviceFeaturesSelect: UInt32 = 0
    private var driverFeaturesSelect: UInt32 = 0
    private var driverFeatures: UInt64 = 0
    private var queueSize: UInt16 = queueSizeMax
    private var queueReady = false
    private var descriptors: UInt64 = 0, available: UInt64 = 0, used: UInt64 = 0
    private var status: UInt32 = 0
    private var interruptStatus: UInt32 = 0

    init(base: UInt64, device: VirtioBlockDevice, backend: VirtioBlockBackend, interrupt: @escaping () -> Void) {
        self.base = base
        self.device = device
        capacitySectors = backend.capacity / 512
        offered = Self.featureVersion1 | Self.featureFlush | (backend.isReadOnly ? Self.featureReadOnly : 0)
        self.interrupt = interrupt
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
        case 0x060: value = UInt64(interruptStatus)
        case 0x070: value = UInt64(status)
        case 0x0FC: value = 0
        case 0x100..<0x108:
            // Configuration space: capacity in 512-byte sectors, little-endian.
            value = capacitySectors >> (8 * (offset - 0x100))
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
                status |= 0x40 // DEVICE_NEEDS_RESET
                queueReady = false
            }
        case 0x050:
            if queueReady && device.serviceQueue() > 0 {
                interruptStatus |= 1
                interrupt()
            }
            if device.broken != nil { status |= 0x40 }
        case 0x064: interruptStatus &= ~value
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

    private func reset() {
        status = 0
        interruptStatus = 0
        driverFeatures = 0
        queueReady = false
        queueSize = Self.queueSizeMax
        descriptors = 0; available = 0; used = 0
        device.reset()
    }
}
