import Glibc
import LunarFS

/// The VMs stored on a volume: one folder each under `/vms`.
public enum VMLibrary {
    public static let root = "/vms"
    public static let configFile = "vm.json"

    /// A VM as listed: its config and how much of each disk is allocated.
    public struct Entry: Sendable {
        public var config: VMConfig
        /// Allocated bytes of each disk, in `config.disks` order (nil when the file is missing).
        public var allocated: [UInt64?]
    }

    /// Host files to copy into a new VM's folder.
    public struct Images: Sendable {
        public var kernel: String?
        public var initrd: String?
        /// A freestanding test guest (flat or ELF, told apart by the ELF magic).
        public var image: String?
        public init(kernel: String? = nil, initrd: String? = nil, image: String? = nil) {
            self.kernel = kernel
            self.initrd = initrd
            self.image = image
        }
    }

    /// Makes `/vms/NAME` with copies of the boot images, thin disks and `vm.json` (written last).
    /// `config.boot` names the files inside the folder; `images` says where they come from on
    /// this host. On failure nothing of the new VM is left behind.
    public static func create(on volume: Volume, config: VMConfig, images: Images) throws -> VMConfig {
        try config.validate()
        let folder = config.folder
        if try volume.exists(folder) { throw VMConfigError(.exists(name: config.name)) }

        // Everything is checked before anything is written.
        var copies: [(source: String, target: String, size: UInt64)] = []
        switch config.boot {
        case .linux(let kernel, let initrd, _):
            guard let source = images.kernel else { throw VMConfigError(.invalid("a Linux VM needs --kernel")) }
            copies.append((source, kernel, try hostFileSize(source)))
            if let initrd {
                guard let source = images.initrd else { throw VMConfigError(.invalid("the config names an initrd; give --initrd")) }
                copies.append((source, initrd, try hostFileSize(source)))
            }
        case .freestanding(let image, _):
            guard let source = images.image else { throw VMConfigError(.invalid("a freestanding VM needs --image")) }
            copies.append((source, image, try hostFileSize(source)))
        }
        let usage = try volume.usage()
        let free = usage.capacityBytes > usage.allocatedBytes ? usage.capacityBytes - usage.allocatedBytes : 0
        let imageBytes = copies.reduce(0) { $0 + roundUp($1.size, 1 << 20) }
        if imageBytes > free { throw VMConfigError(.noSpace(needed: imageBytes, free: free, what: "the boot images")) }
        for disk in config.disks where disk.size > volume.header.maxFileSize {
            throw VMConfigError(.invalid("disk \(disk.name) of \(mib(disk.size)) is larger than this volume's largest file (\(mib(volume.header.maxFileSize)))"))
        }
        // Disks are thin, but a volume that could never hold them is refused.
        let diskBytes = config.disks.reduce(UInt64(0)) { $0 + $1.size }
        if imageBytes + diskBytes > free {
            throw VMConfigError(.noSpace(needed: imageBytes + diskBytes, free: free, what: "the boot images and disks (\(mib(diskBytes)), thin)"))
        }

        try volume.mkdir(root, parents: true)
        do throws(FSError) {
            try volume.mkdir(folder)
        } catch {
            if error.kind == .exists { throw VMConfigError(.exists(name: config.name)) }
            throw error
        }
        do {
            for copy in copies { try copyIn(copy.source, to: volume, path: config.path(copy.target)) }
            for disk in config.disks {
                let file = try volume.create(config.path(disk.file), exclusive: true)
                try file.truncate(to: disk.size)
            }
            try writeConfig(config, to: volume)
            try volume.sync()
        } catch {
            try? volume.remove(folder, recursive: true)
            if isNoSpace(error) { throw VMConfigError(.noSpace(needed: imageBytes, free: free, what: "the boot images")) }
            throw error
        }
        return config
    }

    /// The config of VM `name`.
    public static func load(_ name: String, on volume: Volume) throws -> VMConfig {
        try VMConfig.checkName(name)
        let path = VMConfig.folder(name) + "/" + configFile
        let bytes: [UInt8]
        do throws(FSError) {
            bytes = try readFile(path, on: volume, limit: maxConfigSize)
        } catch {
            guard error.kind == .notFound else { throw error }
            if try volume.exists(VMConfig.folder(name)) { throw VMConfigError(.damaged(name: name, reason: "\(path) is missing")) }
            throw VMConfigError(.notFound(name: name))
        }
        let config: VMConfig
        do throws(VMConfigError) {
            let document: JSONValue
            do throws(JSONError) {
                document = try JSONValue(parsing: bytes)
            } catch {
                throw VMConfigError(.invalid("not JSON: \(error)"))
            }
            config = try VMConfig(json: document)
        } catch {
            let why = if case .invalid(let why) = error.kind { why } else { error.description }
            throw VMConfigError(.damaged(name: name, reason: "\(path) is not a valid VM config: \(why)"))
        }
        guard config.name == name else {
            throw VMConfigError(.damaged(name: name, reason: "\(path) names the VM '\(config.name)'"))
        }
        try config.validate()
        return config
    }

    /// Every VM on the volume, by name; folders whose config cannot be read are reported as
    /// errors beside them.
    public static func list(on volume: Volume) throws -> (vms: [Entry], damaged: [(name: String, error: any Error)]) {
        guard try volume.exists(root) else { return ([], []) }
        var vms: [Entry] = [], damaged: [(String, any Error)] = []
        for item in try volume.list(root) where item.type == .directory {
            do {
                let config = try load(item.name, on: volume)
                let allocated = config.disks.map { disk in try? volume.stat(config.path(disk.file)).allocatedBytes }
                vms.append(Entry(config: config, allocated: allocated))
            } catch {
                damaged.append((item.name, error))
            }
        }
        return (vms, damaged)
    }

    /// Removes the VM's folder with everything in it.
    public static func remove(_ name: String, on volume: Volume) throws {
        try VMConfig.checkName(name)
        guard try volume.exists(VMConfig.folder(name)) else { throw VMConfigError(.notFound(name: name)) }
        try volume.remove(VMConfig.folder(name), recursive: true)
    }

    static func writeConfig(_ config: VMConfig, to volume: Volume) throws {
        let data = Array(config.json.prettyPrinted.utf8)
        let file = try volume.create(config.path(configFile))
        try file.truncate(to: 0)
        try file.write(data, at: 0)
    }

    static func hostFileSize(_ path: String) throws(VMConfigError) -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw VMConfigError(.hostFile(path: path, reason: String(cString: strerror(errno)))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw VMConfigError(.hostFile(path: path, reason: "not a regular file")) }
        guard st.st_size > 0 else { throw VMConfigError(.hostFile(path: path, reason: "empty file")) }
        return UInt64(st.st_size)
    }

    /// Copies a host file into a new file of the volume, 1 MiB at a time.
    static func copyIn(_ source: String, to volume: Volume, path: String) throws {
        let fd = open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMConfigError(.hostFile(path: source, reason: String(cString: strerror(errno)))) }
        defer { close(fd) }
        let file = try volume.create(path, exclusive: true)
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while true {
            let n = pread(fd, buffer.baseAddress, chunk, off_t(offset))
            if n < 0 {
                if errno == EINTR { continue }
                throw VMConfigError(.hostFile(path: source, reason: String(cString: strerror(errno))))
            }
            if n == 0 { break }
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: offset)
            offset += UInt64(n)
        }
    }

    /// vm.json is a few hundred bytes; a bigger one is damage, not a config to read.
    static let maxConfigSize: UInt64 = 1 << 20

    /// Reads a file of the VM's folder whole (boot images, vm.json), refusing one over `limit`
    /// bytes: another host may have written anything there.
    static func readFile(_ path: String, on volume: Volume, limit: UInt64 = 1 << 32) throws(FSError) -> [UInt8] {
        // No lock: reading never conflicts with the VM that runs (it holds vm.json, see
        // VMSession), and these files are written whole before vm.json names them.
        let file = try volume.openFile(path, lock: nil)
        let size = try file.size
        guard size <= limit else {
            throw FSError(.invalidArgument("\(mib(size)) is more than a VM's \(path.split(separator: "/").last ?? "") may hold (\(mib(limit)))"), path: path)
        }
        return try file.read(at: 0, count: Int(size))
    }
}

private func isNoSpace(_ error: any Error) -> Bool {
    guard let fs = error as? FSError else { return false }
    if case .noSpace = fs.kind { return true }
    return false
}

func roundUp(_ value: UInt64, _ unit: UInt64) -> UInt64 { (value + unit - 1) / unit * unit }
