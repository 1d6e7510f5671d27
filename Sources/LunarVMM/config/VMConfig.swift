/// A VM as stored on a shared volume: `/vms/NAME/vm.json` next to its disks and boot images,
/// so that any host with the LUN can run it. File names in the config are relative to the
/// VM's folder; nothing in it points outside the volume.
public struct VMConfig: Sendable, Equatable {
    /// What the guest boots.
    public enum Boot: Sendable, Equatable {
        /// A Linux kernel (bzImage) with an optional initrd and a command line.
        case linux(kernel: String, initrd: String?, commandLine: String)
        /// A freestanding test guest: a flat image entered at 1 MiB, or a static ELF.
        case freestanding(image: String, format: ImageFormat)

        public var kindName: String {
            switch self {
            case .linux: "linux"
            case .freestanding: "freestanding"
            }
        }

        /// The files of the VM's folder this boot reads.
        public var files: [String] {
            switch self {
            case .linux(let kernel, let initrd, _): [kernel] + (initrd.map { [$0] } ?? [])
            case .freestanding(let image, _): [image]
            }
        }
    }

    public enum ImageFormat: String, Sendable {
        case flat, elf
    }

    /// A virtio-blk disk: a thin file of the VM's folder.
    public struct Disk: Sendable, Equatable {
        public var name: String
        public var size: UInt64
        public var readOnly: Bool
        /// An undo disk (a non-persistent disk): the guest writes a linked clone of it made at
        /// start (`VirtualDisk.openUndo`), thrown away when the VM stops, so the disk is as it
        /// was before every run.
        public var undo: Bool
        /// The file in the VM's folder: `NAME.raw`.
        public var file: String { "\(name).raw" }

        public init(name: String, size: UInt64, readOnly: Bool = false, undo: Bool = false) {
            self.name = name
            self.size = size
            self.readOnly = readOnly
            self.undo = undo
        }
    }

    /// Where the guest's serial console goes.
    public enum Console: Sendable, Equatable {
        /// The terminal (or standard output) of whoever runs the VM.
        case terminal
        /// Appended to a file on the running host.
        case file(String)
        /// A Unix socket on the running host that the VMM listens on: one client at a time
        /// (`socat - UNIX-CONNECT:PATH`) reads the guest's output and types its input.
        case socket(String)
        case none

        /// `terminal`, `none`, `socket:PATH`, or a host path: `file:PATH`, or any path with a
        /// `/` in it (so that a mistyped word is not taken for a file name); nil for anything else.
        public init?(argument: String) {
            switch argument {
            case "terminal", "stdio": self = .terminal
            case "none": self = .none
            case _ where argument.hasPrefix("socket:") && argument.count > 7: self = .socket(String(argument.dropFirst(7)))
            case _ where argument.hasPrefix("file:") && argument.count > 5: self = .file(String(argument.dropFirst(5)))
            case _ where argument.contains("/"): self = .file(argument)
            default: return nil
            }
        }

        /// What `init(argument:)` takes, for messages.
        public static let accepted = "terminal, none, socket:PATH (a Unix socket to listen on), or a host file path (file:NAME, ./NAME or /path/NAME)"

        public var description: String {
            switch self {
            case .terminal: "terminal"
            case .none: "none"
            case .file(let path): "file:\(path)"
            case .socket(let path): "socket:\(path)"
            }
        }
    }

    public static let currentVersion = 1
    public static let cpuRange = 1...16
    /// Guest memory accepted: 2 MiB to 1 TiB, a multiple of 4 KiB (what GuestMemory maps).
    public static let memoryRange: ClosedRange<UInt64> = (2 << 20)...(1 << 40)
    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1"

    public var version = VMConfig.currentVersion
    public var name: String
    public var cpus: Int
    /// Bytes of guest RAM.
    public var memory: UInt64
    /// How the host backs guest RAM (`memory_backing` in vm.json; huge pages when absent).
    public var memoryBacking: GuestMemory.Backing
    public var boot: Boot
    public var disks: [Disk]
    public var console: Console

    public init(name: String, cpus: Int = 1, memory: UInt64 = 512 << 20, memoryBacking: GuestMemory.Backing = .hugePages,
                boot: Boot, disks: [Disk] = [], console: Console = .terminal) {
        self.name = name
        self.cpus = cpus
        self.memory = memory
        self.memoryBacking = memoryBacking
        self.boot = boot
        self.disks = disks
        self.console = console
    }

    /// The VM's folder on the volume.
    public static func folder(_ name: String) -> String { "/vms/\(name)" }
    public var folder: String { Self.folder(name) }
    public func path(_ file: String) -> String { folder + "/" + file }

    /// A VM name: 1 to 64 of letters, digits, `.`, `_`, `-`, starting with a letter or digit
    /// (it is a directory name on the volume and a word on command lines). Disk names follow the
    /// same rule (they name files in the VM's folder); `what` says which name the error is about.
    public static func checkName(_ name: String, what: String = "VM name") throws(VMConfigError) {
        let bytes = Array(name.utf8)
        func allowed(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
        guard (1...64).contains(bytes.count), bytes.allSatisfy(allowed), bytes[0] != 0x2E, bytes[0] != 0x5F, bytes[0] != 0x2D else {
            throw VMConfigError(.invalid("\(what) '\(name)': use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
        }
    }

    /// Checks every field; the first problem found is the error.
    public func validate() throws(VMConfigError) {
        guard version == Self.currentVersion else {
            throw VMConfigError(.invalid("config version \(version); this lunar reads version \(Self.currentVersion)"))
        }
        try Self.checkName(name)
        guard Self.cpuRange.contains(cpus) else {
            throw VMConfigError(.invalid("\(cpus) vCPUs: choose \(Self.cpuRange.lowerBound) to \(Self.cpuRange.upperBound)"))
        }
        guard Self.memoryRange.contains(memory), memory % 4096 == 0 else {
            throw VMConfigError(.invalid("memory of \(memory) bytes: give 2 MiB to 1 TiB, a multiple of 4 KiB"))
        }
        var names = Set<String>()
        for (i, disk) in disks.enumerated() {
            try Self.checkName(disk.name, what: "disk name (disks[\(i)].name)")
            guard names.insert(disk.name).inserted else { throw VMConfigError(.invalid("two disks named '\(disk.name)'")) }
            guard !(disk.undo && disk.readOnly) else {
                throw VMConfigError(.invalid("disk \(disk.name) is read-only and an undo disk: a read-only disk has no writes to undo; choose one"))
            }
            guard disk.size > 0, disk.size % 512 == 0 else {
                throw VMConfigError(.invalid("disk \(disk.name) of \(disk.size) bytes: give a non-zero multiple of 512 bytes"))
            }
        }
        for file in boot.files {
            guard !file.isEmpty, !file.contains("/"), file != ".", file != "..", file != "vm.json",
                  !disks.contains(where: { $0.file == file }) else {
                throw VMConfigError(.invalid("boot file '\(file)' must be a plain file name in the VM's folder"))
            }
        }
        if case .linux(_, _, let commandLine) = boot, commandLine.utf8.count > 2048 {
            throw VMConfigError(.invalid("kernel command line longer than 2048 bytes"))
        }
    }

    // MARK: JSON (flat, with a `kind` for the boot and the console)

    /// The config as `vm.json` holds it.
    public var json: JSONValue {
        var boot: [String: JSONValue] = ["kind": .string(self.boot.kindName)]
        switch self.boot {
        case .linux(let kernel, let initrd, let commandLine):
            boot["kernel"] = .string(kernel)
            if let initrd { boot["initrd"] = .string(initrd) }
            boot["command_line"] = .string(commandLine)
        case .freestanding(let image, let format):
            boot["image"] = .string(image)
            boot["format"] = .string(format.rawValue)
        }
        let console: [String: JSONValue] = switch self.console {
        case .terminal: ["kind": .string("terminal")]
        case .none: ["kind": .string("none")]
        case .file(let path): ["kind": .string("file"), "path": .string(path)]
        case .socket(let path): ["kind": .string("socket"), "path": .string(path)]
        }
        return .object([
            "version": .number(version), "name": .string(name), "cpus": .number(cpus), "memory_bytes": .number(memory),
            "memory_backing": .string(memoryBacking.rawValue),
            "disks": .array(disks.map { disk in
                .object(["name": .string(disk.name), "size_bytes": .number(disk.size), "read_only": .bool(disk.readOnly),
                         "mode": .string(disk.undo ? "undo" : "persistent")])
            }),
            "boot": .object(boot), "console": .object(console),
        ])
    }

    /// Reads a config from `vm.json`'s document; `validate()` then checks the values.
    public init(json: JSONValue) throws(VMConfigError) {
        func field<T>(_ object: JSONValue, _ key: String, _ what: String, _ get: (JSONValue) -> T?) throws(VMConfigError) -> T {
            guard let value = object[key] else { throw VMConfigError(.invalid("'\(key)' is missing")) }
            guard let typed = get(value) else { throw VMConfigError(.invalid("'\(key)' must be \(what)")) }
            return typed
        }
        func optional<T>(_ object: JSONValue, _ key: String, _ what: String, _ get: (JSONValue) -> T?) throws(VMConfigError) -> T? {
            guard let value = object[key], value != .null else { return nil }
            return try field(object, key, what, get)
        }
        let text = "a string", count = "a whole number"
        guard case .object = json else { throw VMConfigError(.invalid("the config must be a JSON object")) }
        version = try field(json, "version", count) { $0.integer(Int.self) }
        name = try field(json, "name", text) { $0.stringValue }
        cpus = try field(json, "cpus", count) { $0.integer(Int.self) }
        memory = try field(json, "memory_bytes", "a whole number of bytes") { $0.integer(UInt64.self) }
        let backing = try optional(json, "memory_backing", text) { $0.stringValue }
        guard let memoryBacking = GuestMemory.Backing(rawValue: backing ?? GuestMemory.Backing.hugePages.rawValue) else {
            throw VMConfigError(.invalid("unknown memory_backing '\(backing ?? "")' (\(GuestMemory.Backing.names))"))
        }
        self.memoryBacking = memoryBacking
        let diskList = try optional(json, "disks", "an array") { $0.arrayValue } ?? []
        disks = []
        for item in diskList {
            guard case .object = item else { throw VMConfigError(.invalid("each of 'disks' must be an object")) }
            let mode = try optional(item, "mode", text) { $0.stringValue } ?? "persistent"
            guard mode == "persistent" || mode == "undo" else { throw VMConfigError(.invalid("unknown disk mode '\(mode)' (persistent or undo)")) }
            disks.append(Disk(name: try field(item, "name", text) { $0.stringValue },
                              size: try field(item, "size_bytes", "a whole number of bytes") { $0.integer(UInt64.self) },
                              readOnly: try optional(item, "read_only", "true or false") { $0.boolValue } ?? false,
                              undo: mode == "undo"))
        }
        let b = try field(json, "boot", "an object") { if case .object = $0 { $0 } else { nil } }
        switch try field(b, "kind", text, { $0.stringValue }) {
        case "linux":
            boot = .linux(kernel: try field(b, "kernel", text) { $0.stringValue },
                          initrd: try optional(b, "initrd", text) { $0.stringValue },
                          commandLine: try optional(b, "command_line", text) { $0.stringValue } ?? Self.defaultCommandLine)
        case "freestanding":
            let format = try field(b, "format", text) { $0.stringValue }
            guard let imageFormat = ImageFormat(rawValue: format) else {
                throw VMConfigError(.invalid("unknown image format '\(format)' (flat or elf)"))
            }
            boot = .freestanding(image: try field(b, "image", text) { $0.stringValue }, format: imageFormat)
        case let other:
            throw VMConfigError(.invalid("unknown boot kind '\(other)' (linux or freestanding)"))
        }
        if let k = try optional(json, "console", "an object", { if case .object = $0 { $0 } else { nil } }) {
            switch try field(k, "kind", text, { $0.stringValue }) {
            case "terminal": console = .terminal
            case "none": console = .none
            case "file": console = .file(try field(k, "path", text) { $0.stringValue })
            case "socket": console = .socket(try field(k, "path", text) { $0.stringValue })
            case let other: throw VMConfigError(.invalid("unknown console kind '\(other)' (terminal, none, file or socket)"))
            }
        } else {
            console = .terminal
        }
    }
}

/// What went wrong with a stored VM, in words an operator can act on.
public struct VMConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case invalid(String)
        case exists(name: String)
        case notFound(name: String)
        /// A file on this host (an image to copy in) could not be read.
        case hostFile(path: String, reason: String)
        case noSpace(needed: UInt64, free: UInt64, what: String)
        /// vm.json is missing or unreadable.
        case damaged(name: String, reason: String)
    }

    public var kind: Kind
    public init(_ kind: Kind) { self.kind = kind }

    public var description: String {
        switch kind {
        case .invalid(let why): return "invalid VM configuration: \(why)"
        case .exists(let name): return "a VM named '\(name)' already exists (remove it with `lunar vm rm` or choose another name)"
        case .notFound(let name): return "no VM named '\(name)' on this volume (see `lunar vm list`)"
        case .hostFile(let path, let reason): return "\(path): \(reason)"
        case .noSpace(let needed, let free, let what):
            return "not enough space on the volume: \(what) need \(mib(needed)), \(mib(free)) free"
        case .damaged(let name, let reason): return "VM '\(name)': \(reason)"
        }
    }
}

func mib(_ bytes: UInt64) -> String {
    bytes >= 1 << 30 && bytes % (1 << 30) == 0 ? "\(bytes >> 30) GiB"
        : bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
}
