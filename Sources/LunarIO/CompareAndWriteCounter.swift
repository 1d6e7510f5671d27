/// A self-check of a LUN's compare-and-write: any number of processes (or hosts sharing the
/// LUN) increment one counter sector; if compare-and-write is atomic among them, no increment
/// is lost and the final count is the sum of everyone's increments.
///
/// Counter sector layout: bytes 0..<8 the count (little-endian UInt64), the rest zero.
public struct CompareAndWriteCounterReport: Sendable {
    public var increments: Int
    /// Compare-and-writes that found another writer had been first, and were retried.
    public var lostRaces: Int
    /// The counter value this caller's last increment wrote.
    public var lastValue: UInt64
}

extension BlockStorage {
    /// Adds 1 to the counter sector at `offset`, `times` times, retrying each lost race.
    public func incrementCounter(at offset: UInt64, times: Int) throws(IOError) -> CompareAndWriteCounterReport {
        let expected = IOBuffer(count: sectorSize)
        let new = IOBuffer(count: sectorSize)
        var lost = 0
        var last: UInt64 = 0
        for _ in 0..<times {
            while true {
                let value = expected.baseAddress.loadUnaligned(as: UInt64.self).littleEndian
                new.bytes.copyMemory(from: UnsafeRawBufferPointer(expected.bytes))
                new.baseAddress.storeBytes(of: (value &+ 1).littleEndian, as: UInt64.self)
                switch try compareAndWriteBlocking(expected: expected, new: new, at: offset) {
                case .written:
                    expected.bytes.copyMemory(from: UnsafeRawBufferPointer(new.bytes))
                    last = value &+ 1
                case .mismatch(let current):
                    expected.bytes.copyMemory(from: UnsafeRawBufferPointer(current.bytes))
                    lost += 1
                    continue
                }
                break
            }
        }
        return CompareAndWriteCounterReport(increments: times, lostRaces: lost, lastValue: last)
    }

    /// Reads the counter sector at `offset`.
    public func readCounter(at offset: UInt64) throws(IOError) -> UInt64 {
        let sector = IOBuffer(count: sectorSize)
        try readBlocking(into: sector, at: offset)
        return sector.baseAddress.loadUnaligned(as: UInt64.self).littleEndian
    }
}
