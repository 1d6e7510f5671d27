import ArgumentParser
import Dispatch
import Foundation
import LunarDisk
import LunarExport
import LunarFS
import LunarIO

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Serve files of a volume over NBD to backup software (qemu-img, nbdcopy, nbdinfo).",
        discussion: """
            An export is named by its path on the volume (/vms/web01/disk0.raw), a snapshot \
            of a disk by PATH@SNAP (/vms/web01/disk0.raw@nightly). The server offers exactly \
            the exports named, read-only unless --writable, on 127.0.0.1:10809 unless told \
            otherwise. On a disk or a snapshot, the block status context \
            qemu:dirty-bitmap:OLDER gives the changes since an older snapshot, for \
            incremental backups (Spec/export.md).

            Examples:
              lunar export list vol.img
              lunar export serve vol.img /vms/web01/disk0.raw --socket /run/lunar-nbd.sock
              nbdcopy 'nbd+unix:///vms/web01/disk0.raw?socket=/run/lunar-nbd.sock' backup.raw
              lunar export serve vol.img /vms/web01/disk0.raw@tuesday --socket /run/lunar-nbd.sock
              nbdinfo --map=qemu:dirty-bitmap:monday 'nbd+unix:///vms/web01/disk0.raw@tuesday?socket=/run/lunar-nbd.sock'
              lunar export serve vol.img /vms/web01/disk0.raw --writable
              qemu-img convert -n -O raw backup.raw nbd://127.0.0.1:10809/vms/web01/disk0.raw
            """,
        subcommands: [ExportServeCommand.self, ExportListCommand.self]
    )
}

/// An export error in the words the user typed: paths inside the volume as LUN:/path.
private func shown(_ error: ExportError, lun: String) -> any Error {
    switch error.kind {
    case .fileSystem(let fs): return fs.naming(lun)
    case .notRegularFile(let path): return CLIError(ExportError(.notRegularFile("\(lun):\(path)")).description)
    case .unknownSnapshot(let disk, let snapshot):
        return CLIError("\(lun):\(disk) has no snapshot '\(snapshot)' (list them with `lunar disk snapshots \(lun):\(disk)`)")
    default: return CLIError(error.description)
    }
}

// MARK: serve

struct ExportServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve files of a volume over NBD until interrupted.",
        discussion: """
            Each EXPORT is a file's path on the volume; clients name it the same way (the \
            leading slash may be left out, as in nbd://127.0.0.1:10809/vms/web01/disk0.raw). \
            With one export it is also the default export (the empty name). Read-only exports \
            hold their file shared read-only, so no host can write it while it is served, and \
            are offered to many connections at once; --writable holds each file exclusive (a \
            running VM's disk is refused) for restores. A snapshot, disk0.raw@NAME, is \
            always served read-only (a snapshot is never written).

            Block status offers base:allocation (data and holes) and, on a read-only export \
            of a disk or a snapshot, qemu:dirty-bitmap:OLDER for each snapshot OLDER it \
            descends from: the ranges that differ from OLDER, from the block maps alone. \
            Copy those ranges onto the backup of OLDER and it equals the export.

            The server listens on 127.0.0.1:10809 by default, on --listen ADDR:PORT (port 0 \
            picks a free one), or on a Unix socket (--socket PATH, made owner-only). A \
            non-loopback address is refused without TLS or --insecure: anyone who reaches it \
            would read (or with --writable change) the disks. With --tls-cert and --tls-key \
            (PEM) every client must start TLS first (nbds:// URIs; e.g. nbdinfo with \
            tls-certificates=DIR holding the CA as ca-cert.pem). SIGINT or SIGTERM stops the \
            server, ends its connections and releases the files.
            """
    )

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "Paths of the files to export (e.g. /vms/web01/disk0.raw), or snapshots (/vms/web01/disk0.raw@nightly).")
    var exports: [String] = []

    @Option(help: "Listen on this Unix socket instead of TCP.", transform: hostPath)
    var socket: String?

    @Option(help: "Listen on ADDR:PORT (default 127.0.0.1:10809; [::1]:PORT for IPv6).")
    var listen: String?

    @Flag(help: "Let clients write (restores); files are held exclusive.")
    var writable = false

    @Option(help: "PEM certificate chain: clients must then start TLS (nbds:// URIs).", transform: hostPath)
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert.", transform: hostPath)
    var tlsKey: String?

    @Flag(help: "Allow listening on a non-loopback address without TLS.")
    var insecure = false

    @Flag(help: "Print what is served as JSON (one line) once the server listens.")
    var json = false

    func validate() throws {
        if socket != nil && listen != nil { throw ValidationError("give --socket or --listen, not both") }
        if exports.isEmpty { throw ValidationError(ExportError(.noExports).description) }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    func run() async throws {
        let endpoint: ExportServer.Endpoint
        var tls: ExportTLS?
        do throws(ExportError) {
            if let tlsCert, let tlsKey { tls = try ExportTLS(certificate: tlsCert, key: tlsKey) }
            if let socket {
                endpoint = .unix(path: socket)
            } else {
                endpoint = try ExportServer.Endpoint.parse(listen: listen ?? "127.0.0.1:10809")
            }
            if !endpoint.isLocal && !insecure && tls == nil { throw ExportError(.insecureListen(endpoint.description)) }
        } catch {
            printError(error)
            throw ExitCode.failure
        }
        guard BlockDevice.exists(lun) else {
            printError(CLIError("\(lun): no such file or directory (make a volume with `lunar fs mkfs \(lun) --size 20G`)"))
            throw ExitCode.failure
        }
        let volume: Volume
        do throws(FSError) {
            volume = try Volume.open(path: lun, options: OpenOptions(heartbeatInterval: OpenOptions.toolHeartbeatInterval))
        } catch {
            printError(error.naming(lun))
            throw ExitCode.failure
        }
        var opened: [ServedExport] = []
        let server: ExportServer
        do throws(ExportError) {
            for text in exports {
                let name = try ExportName(parsing: text)
                guard !opened.contains(where: { $0.name == name }) else { throw ExportError(.duplicate(name.description)) }
                opened.append(try ServedExport.open(name, on: volume, writable: writable))
            }
            server = try await ExportServer.start(exports: opened, endpoint: endpoint, tls: tls)
        } catch {
            for e in opened { try? e.close() }
            try? volume.close()
            printError(shown(error, lun: lun))
            throw ExitCode.failure
        }
        announce(server)
        raiseOpenFileLimit()

        // Stop on SIGINT/SIGTERM: the server's connections end and the files are released
        // before the volume closes.
        let stopRequested = AsyncStream<Int32> { continuation in
            for number in [SIGINT, SIGTERM] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { continuation.yield(number) }
                source.resume()
                Self.signalSources.append(source)
            }
        }
        for await _ in stopRequested { break }
        await server.stop()
        do throws(FSError) {
            try volume.close()
        } catch {
            printError(error.naming(lun))
            throw ExitCode.failure
        }
    }

    /// A server holds a descriptor per client: as many as the hard limit allows.
    private func raiseOpenFileLimit() {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(resource, &limit)
    }

    /// Kept alive for the process's life.
    nonisolated(unsafe) private static var signalSources: [any DispatchSourceSignal] = []

    private func announce(_ server: ExportServer) {
        if json {
            let object: [String: Any] = [
                "endpoint": server.endpoint.description,
                "exports": server.exports.map { e -> [String: Any] in
                    ["name": e.name.description, "size": e.size, "writable": e.writable, "uri": server.uri(for: e)]
                },
            ]
            if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) {
                print(String(decoding: data, as: UTF8.self))
            }
        } else {
            let mode = (writable ? "writable" : "read-only") + (server.tls ? ", TLS required" : "")
            print("serving \(server.exports.count) export\(server.exports.count == 1 ? "" : "s") (\(mode)) on \(server.endpoint):")
            for e in server.exports {
                print("  \(pad(e.name.description, 28)) \(rightAligned(ByteSize.format(e.size), 9))  \(server.uri(for: e))")
            }
        }
        // A test or script waits for this before it connects.
        fflush(nil)
    }
}

// MARK: list

struct ExportListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Show what `lunar export serve` would offer: the files of a volume, or the ones named.",
        discussion: """
            Without EXPORT, every regular file on the volume is listed (each is an export \
            name), each disk followed by its snapshots as PATH@SNAP; with EXPORTs, those are \
            checked the way serve checks them. SIZE is what a client sees, ALLOCATED the data \
            in it (the rest reads as holes, which clients skip). --json prints {"exports": [{"name", "size", "allocated"}]}.
            """
    )

    @Argument(help: "Image file, block device or iSCSI URL holding the volume.", transform: hostPath)
    var lun: String

    @Argument(help: "Export names to check (paths of files on the volume, or PATH@SNAP).")
    var exports: [String] = []

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        try reportingErrors {
            let names: [ExportName]
            do throws(ExportError) {
                names = try exports.map { (text) throws(ExportError) -> ExportName in try ExportName(parsing: text) }
            } catch {
                throw shown(error, lun: lun)
            }
            let found: [(name: String, info: FileInfo)] = try withVolume(lun, readOnly: true) { volume in
                if !names.isEmpty {
                    return try names.map { (name) throws -> (name: String, info: FileInfo) in
                        let path: String
                        do throws(ExportError) { path = try ServedExport.filePath(of: name, on: volume) } catch { throw shown(error, lun: lun) }
                        return (name.description, try volume.stat(path))
                    }
                }
                var offered: [(name: String, info: FileInfo)] = []
                var pending = ["/"]
                var seen: Set<UInt32> = []
                while !pending.isEmpty {
                    let directory = pending.removeFirst()
                    let items = try volume.list(directory)
                    // A disk's snapshot folder is offered as the disk's snapshots, PATH@SNAP,
                    // not as the files LunarDisk keeps them in.
                    let snapshotFolders = Set(items.filter { $0.type != .directory }.map {
                        VirtualDisk(volume, path: joinPath(directory, $0.name)).snapshotFolder
                    })
                    for item in items {
                        let path = joinPath(directory, item.name)
                        if item.type == .directory {
                            // A damaged volume could name a directory twice; never loop on it.
                            if !snapshotFolders.contains(path), seen.insert(item.inode).inserted { pending.append(path) }
                            continue
                        }
                        offered.append((path, try volume.stat(path)))
                        let disk = VirtualDisk(volume, path: path)
                        for snapshot in try disk.tree().entries {
                            offered.append(("\(path)@\(snapshot.name)", try volume.stat(disk.snapshotPath(snapshot.name))))
                        }
                    }
                }
                return offered
            }
            if json {
                return printJSON(["exports": found.map { ["name": $0.name, "size": $0.info.size, "allocated": $0.info.allocatedBytes] as [String: Any] }])
            }
            guard !found.isEmpty else { return print("no files on \(lun) to export") }
            let width = max(4, found.map(\.name.count).max() ?? 0)
            print("\(pad("NAME", width)) \(rightAligned("SIZE", 9)) \(rightAligned("ALLOCATED", 10))")
            for f in found {
                print("\(pad(f.name, width)) \(rightAligned(ByteSize.format(f.info.size), 9)) \(rightAligned(ByteSize.format(f.info.allocatedBytes), 10))")
            }
        }
    }
}
