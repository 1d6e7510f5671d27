/// A device on the x86 I/O port bus.
protocol PortDevice: AnyObject {
    func read(port: UInt16, size: Int) -> UInt32
    func write(port: UInt16, size: Int, value: UInt32)
}

/// Routes port accesses to devices by range. Unclaimed ports read as all ones and ignore
/// writes, as on a PC.
final class PortBus {
    private var ranges: [(ClosedRange<UInt16>, PortDevice)] = []

    func attach(_ device: PortDevice, at range: ClosedRange<UInt16>) {
        ranges.append((range, device))
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        for (range, device) in ranges where range.contains(port) { return device.read(port: port - range.lowerBound, size: size) }
        return size >= 4 ? UInt32.max : (UInt32(1) << (8 * UInt32(size))) - 1
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        for (range, device) in ranges where range.contains(port) {
            device.write(port: port - range.lowerBound, size: size, value: value)
            return
        }
    }
}
