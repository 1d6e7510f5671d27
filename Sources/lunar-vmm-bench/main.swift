// The LunarVMM side of Tools/bench/vmm.sh: virtio-blk driven from the host side on a
// preallocated LunarFS file.
//
//   lunar-vmm-bench prepare VOLUME --size 1G
//       formats VOLUME (a sparse image twice the size, plus room for metadata), writes
//       /bench.raw of SIZE in full, and prints one JSON line: the file, its size, the device
//       offset of its first byte, and whether it lies in one piece on the image (then fio can
//       run on exactly the same bytes).
//   lunar-vmm-bench run VOLUME --workload randread|randwrite|seqread|seqwrite [--runtime 5] [--driver-poll-us 0]
//                              [--memory-backing huge|small|mergeable]
//       prints one JSON line: {"workload": ..., "iops": ..., "mb_per_s": ..., "engine": ...}
//   lunar-vmm-bench disk VOLUME [--small 256M] [--large 16G] [--owned 4G] [--io-size 1G]
//                               [--runtime 5] [--rounds 3] [--repeats 5]
//       Tools/bench/disk.sh's LunarDisk figures (DiskBench.swift): formats VOLUME, prints one
//       JSON line per figure and a summary line.
import LunarDisk
import Glibc
import LunarFS
import LunarIO
import LunarVMM

func fail(_ message: String) -> Never {
    let line = Array("lunar-vmm-bench: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(1)
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2 else { fail("usage: lunar-vmm-bench prepare|run|disk VOLUME [options] (see the source's header)") }
let command = arguments[0], volumePath = arguments[1]
var options: [String: String] = [:]
var i = 2
while i < arguments.count {
    guard arguments[i].hasPrefix("--"), i + 1 < arguments.count else { fail("unexpected argument \(arguments[i])") }
    options[String(arguments[i].dropFirst(2))] = arguments[i + 1]
    i += 2
}
let filePath = options["file"] ?? "/bench.raw"

do {
    switch command {
    case "prepare":
        guard let size = ByteSize(argument: options["size"] ?? "1G")?.bytes, size >= 64 << 20 else { fail("bad --size") }
        try Volume.format(path: volumePath, size: 2 * size + (256 << 20))
        let volume = try Volume.open(path: volumePath)
        _ = try FSBenchmark.layOut(volume, path: filePath, size: size)
        let extents = try volume.openFile(filePath).extents(0..<size)
        let first = extents.first?.deviceOffset ?? 0
        var contiguous = true
        for e in extents where e.deviceOffset != first + e.range.lowerBound { contiguous = false }
        try volume.close()
        print("{\"file\": \"\(filePath)\", \"size\": \(size), \"device_offset\": \(first), \"contiguous\": \(contiguous)}")
    case "run":
        guard let workload = IOWorkload.named(options["workload"] ?? "randread") else { fail("unknown --workload") }
        guard let seconds = Double(options["runtime"] ?? "5"), seconds > 0 else { fail("bad --runtime") }
        let volume = try Volume.open(path: volumePath)
        let disk = try DiskChannel(file: try volume.openFile(filePath))
        guard let poll = Double(options["driver-poll-us"] ?? "0"), poll >= 0 else { fail("bad --driver-poll-us") }
        guard let backing = GuestMemory.Backing(rawValue: options["memory-backing"] ?? "huge") else {
            fail("--memory-backing: give \(GuestMemory.Backing.names)")
        }
        let result = try VirtioBlockBenchmark.run(workload, on: disk, seconds: seconds, pollSeconds: poll / 1e6, memoryBacking: backing)
        try volume.close()
        print("{\"workload\": \"\(workload.name)\", \"iops\": \(result.iops), \"mb_per_s\": \(result.megabytesPerSecond), \"engine\": \"\(result.engine)\"}")
    case "disk":
        var o = DiskBench.Options()
        func size(_ key: String, _ into: inout UInt64) {
            guard let text = options[key] else { return }
            guard let v = ByteSize(argument: text)?.bytes, v >= 64 << 20 else { fail("bad --\(key)") }
            into = v
        }
        size("small", &o.small)
        size("large", &o.large)
        size("owned", &o.owned)
        size("io-size", &o.ioSize)
        if let t = options["runtime"] { guard let v = Double(t), v > 0 else { fail("bad --runtime") }; o.runtime = v }
        if let t = options["rounds"] { guard let v = Int(t), v > 0 else { fail("bad --rounds") }; o.rounds = v }
        if let t = options["repeats"] { guard let v = Int(t), v > 0 else { fail("bad --repeats") }; o.repeats = v }
        try DiskBench.run(volumePath: volumePath, o)
    default:
        fail("unknown command \(command)")
    }
} catch {
    fail("\(error)")
}
