import LunarDisk
import LunarIO

/// The virtio-blk device path measured from the host side (`Tools/bench/vmm.sh`): a synthetic
/// driver keeps a workload's queue depth of requests in the virtqueue, in guest memory, and
/// re-issues each slot as its completion arrives on the interrupt eventfd, the way a guest
/// driver with one request per completion would. No guest code runs, so the figure is the
/// device's: notification, chain checks, the LUN through io_uring, used ring, interrupt.
public enum VirtioBlockBenchmark {
    /// `pollSeconds`: how long the driver looks at the used ring before it sleeps on the
    /// interrupt (0: it always sleeps, as a purely interrupt-driven guest).
    public static func run(_ workload: IOWorkload, on disk: DiskChannel, seconds: Double,
                           pollSeconds: Double = 0, memoryBacking: GuestMemory.Backing = .hugePages) throws(VMMError) -> IOBenchmarkResult {
        let bs = UInt64(workload.blockSize)
        let blocks = disk.capacity / bs
        guard blocks >= UInt64(workload.depth) else {
            throw VMMError(.invalidConfiguration("a \(disk.capacity)-byte disk is too small for \(workload)"))
        }
        if workload.write && disk.isReadOnly { throw VMMError(.invalidConfiguration("the disk is read-only")) }
        let driver = try SyntheticBlockDriver(disk: disk, queueSize: 256, slots: workload.depth, bytesPerSlot: workload.blockSize,
                                              memoryBacking: memoryBacking)
        var random = SplitMix64(seed: 0x4C55_4E41_52)
        if workload.write {
            for slot in 0..<workload.depth {
                let words = driver.data(slot).bindMemory(to: UInt64.self)
                for i in words.indices { words[i] = random.next() }
            }
        }
        var cursor: UInt64 = 0
        func issue(_ slot: Int) {
            let block: UInt64
            if workload.random {
                block = random.next() % blocks
            } else {
                block = cursor
                cursor = (cursor + 1) % blocks
            }
            driver.enqueue(slot: slot, type: workload.write ? 1 : 0, sector: block * bs / 512, length: workload.blockSize)
        }

        for slot in 0..<workload.depth { issue(slot) }
        let start = monotonicSeconds()
        let deadline = start + seconds
        driver.publish()
        var operations = 0
        var failedStatus: UInt8?
        var running = true
        while driver.outstanding > 0 {
            let taken = driver.takeCompleted { slot, status, _ in
                guard status == 0 else {
                    failedStatus = failedStatus ?? status
                    running = false
                    return
                }
                operations += 1
                if running { issue(slot) }
            }
            if running && monotonicSeconds() >= deadline { running = false }
            driver.publish()
            if taken == 0 && !driver.waitForInterrupt(pollSeconds: pollSeconds) {
                throw VMMError(.guestFault("the device completed nothing for 10 s"))
            }
        }
        let elapsed = monotonicSeconds() - start
        if let failedStatus { throw VMMError(.guestFault("a \(workload.name) request failed with virtio-blk status \(failedStatus)")) }
        return IOBenchmarkResult(workload: workload, engine: driver.device.hasDirectPath ? disk.lun?.engine ?? .sync : .sync,
                                 operations: operations, bytes: UInt64(operations) * bs, seconds: elapsed)
    }
}
