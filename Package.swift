// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Lunar",
    products: [
        .executable(name: "lunar", targets: ["lunar"]),
        .executable(name: "lunar-vmm", targets: ["lunar-vmm"]),
        .library(name: "LunarIO", targets: ["LunarIO"]),
        .library(name: "LunarFS", targets: ["LunarFS"]),
        .library(name: "LunarDisk", targets: ["LunarDisk"]),
        .library(name: "LunarVMM", targets: ["LunarVMM"]),
        .library(name: "LunarExport", targets: ["LunarExport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // Thin C shims only: liburing's and libaio's inline helpers, Linux ioctls, CRC32C, libiscsi calls.
        .target(
            name: "CLunar",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("aio"), .linkedLibrary("iscsi")]
        ),
        .target(name: "LunarIO", dependencies: ["CLunar"]),
        .target(name: "LunarFS", dependencies: ["LunarIO"]),
        // Virtual disks on LunarFS files: snapshot trees, revert, linked clones, changed blocks.
        .target(name: "LunarDisk", dependencies: ["LunarFS", "LunarIO"]),
        .target(name: "LunarVMM", dependencies: ["CLunar", "LunarIO", "LunarFS", "LunarDisk"]),
        // The NBD server that backup software pulls exports from (Spec/export.md): it reads
        // snapshots and their changed blocks through LunarDisk, never the other way round.
        .target(
            name: "LunarExport",
            dependencies: ["LunarIO", "LunarFS", "LunarDisk", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOSSL", package: "swift-nio-ssl")]
        ),
        // Shared by the test targets and Tools: scratch space, patterns, the crash harness, the
        // snapshot oracle.
        .target(name: "LunarTesting", dependencies: ["CLunar", "LunarIO", "LunarFS", "LunarDisk"]),
        .executableTarget(
            name: "lunar",
            dependencies: [
                "LunarIO",
                "LunarFS",
                "LunarDisk",
                "LunarVMM",
                "LunarExport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The VMM process `lunar vm run` execs: no Foundation, the Swift runtime linked in, so a
        // running VM costs little memory beyond its guest RAM.
        .executableTarget(
            name: "lunar-vmm",
            dependencies: ["LunarVMM", "LunarDisk", "LunarFS", "LunarIO"],
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        // Hosts sharing one volume: the torture test's host and verifier, lock benchmarks.
        .executableTarget(
            name: "lunar-hosts",
            dependencies: ["LunarFS", "LunarDisk", "LunarIO", "LunarTesting", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Tools/hosts"
        ),
        // Tools/bench/vmm.sh's driver: virtio-blk from the host side against fio.
        .executableTarget(name: "lunar-vmm-bench", dependencies: ["LunarVMM", "LunarDisk", "LunarFS", "LunarIO"]),
        .testTarget(name: "LunarIOTests", dependencies: ["LunarIO", "LunarTesting", "CLunar"]),
        .testTarget(name: "LunarFSTests", dependencies: ["LunarFS", "LunarDisk", "LunarIO", "LunarTesting"]),
        .testTarget(name: "LunarDiskTests", dependencies: ["LunarDisk", "LunarFS", "LunarTesting"]),
        .testTarget(name: "LunarVMMTests", dependencies: ["LunarVMM", "LunarDisk", "LunarTesting"]),
        .testTarget(name: "LunarExportTests", dependencies: ["LunarExport", "LunarDisk", "LunarFS", "LunarIO", "LunarTesting"]),
        // Spawns the real `lunar` binary as separate processes (multi-process ATS, CLI behaviour),
        // and lunar-vmm, which `swift test` builds with the rest (not named here: a test bundle
        // depending on it would be linked with its -static-stdlib).
        .testTarget(name: "IntegrationTests", dependencies: ["lunar", "lunar-hosts", "LunarIO", "LunarTesting"]),
    ],
    swiftLanguageModes: [.v6]
)
