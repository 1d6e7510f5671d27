import Foundation
import Glibc
import LunarFS
import LunarIO
import LunarTesting
import Testing

/// Damaged metadata of every record type gives a clear error that names the record and its
/// offset — from open, from the operation that reads it, and from fsck — and never a crash.
@Suite("Bad input: damaged records")
struct CorruptionTests {
    enum Damage: String, CaseIterable { case bitFlip, garbage }

    /// A volume with one of everything: a hashed directory, a file with pointer blocks.
    static func populated() throws -> TestVolume {
        let t = try TestVolume(options: FormatOptions(blockSize: 64 << 10))
        let v = try t.open()
        try v.mkdir("/dir")
        for i in 0..<400 { _ = try v.create("/dir/entry-\(i)") }
        // Past 960 blocks of 64 KiB: the map needs a pointer block.
        try v.create("/dir/big").write(bytes(8192, seed: 1), at: 100 << 20)
        try v.close()
        return t
    }

    static func damage(_ path: String, at offset: UInt64, _ how: Damage) throws {
        changeSector(path, at: offset) { sector in
            switch how {
            case .bitFlip: sector[100] ^= 0x10
            case .garbage:
                var g = SystemRandomNumberGenerator()
                for i in sector.indices { sector[i] = UInt8.random(in: 0...255, using: &g) }
            }
        }
    }

    /// The description of what `body` threw, or nil when it did not throw.
    static func failure(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch { return "\(error)" }
    }

    @Test("a damaged record of a file or directory: the operation and fsck name it", arguments: Damage.allCases)
    func treeRecords(_ how: Damage) throws {
        let t = try Self.populated()
        let records = try { () throws -> [MetadataRecordLocation] in
            let v = try t.open(readOnly: true)
            return try v.records(of: "/dir") + v.records(of: "/dir/big")
        }()
        let kinds = Set(records.map(\.record))
        #expect(kinds.isSuperset(of: ["file descriptor (inode)", "pointer block", "directory header", "directory hash table", "directory leaf"]))
        for kind in kinds.sorted() {
            guard let target = records.first(where: { $0.record == kind }) else { continue }
            let copy = t.scratch.path("damaged.img")
            try? FileManager.default.removeItem(atPath: copy)
            try copySparse(from: t.path, to: copy)
            try Self.damage(copy, at: target.offset, how)
            let v = try Volume.open(path: copy, options: OpenOptions(readOnly: true))
            let message = Self.failure {
                _ = try v.list("/dir")
                for i in 0..<400 { _ = try v.stat("/dir/entry-\(i)") }
                _ = try v.openFile("/dir/big").read(at: 0, count: 4096)
                _ = try v.openFile("/dir/big").read(at: 100 << 20, count: 8192)
            }
            #expect(message?.contains("corrupt \(kind) at byte offset \(target.offset)") == true, "\(kind): \(message ?? "no error")")
            let report = try v.check()
            #expect(report.exitCode == 4, "\(kind): fsck exit \(report.exitCode)")
            #expect(report.problems.contains { $0.message.contains("\(target.offset)") }, "\(kind): \(report.problems.prefix(3))")
        }
    }

    @Test("a damaged volume-wide record: open or fsck names it", arguments: Damage.allCases)
    func volumeRecords(_ how: Damage) throws {
        let t = try Self.populated()
        let records = try t.open(readOnly: true).fixedRecords()
        for target in records {
            let copy = t.scratch.path("damaged.img")
            try? FileManager.default.removeItem(atPath: copy)
            try copySparse(from: t.path, to: copy)
            try Self.damage(copy, at: target.offset, how)
            var opened: Volume?
            let message = Self.failure { opened = try Volume.open(path: copy, options: OpenOptions(lockTimeout: 1)) }
            if let v = opened {
                // Still usable (the backup header, an unused cluster): fsck must say what is wrong.
                let report = try v.check()
                #expect(!report.isClean, "\(target.record) at \(target.offset): fsck found nothing")
                #expect(report.problems.contains { $0.message.contains("\(target.offset)") || $0.message.contains("header") },
                        "\(target.record): \(report.problems.prefix(3))")
                try? v.close()
            } else {
                #expect(message?.contains(target.record) == true && message?.contains("\(target.offset)") == true,
                        "\(target.record) at \(target.offset): \(message ?? "")")
            }
        }
    }

    @Test("primary and backup headers both damaged, a foreign file, a newer format: clear refusals")
    func refusals() throws {
        let t = try Self.populated()
        let records = try t.open(readOnly: true).fixedRecords()
        let headers = records.filter { $0.record == "volume header" }
        for h in headers { try Self.damage(t.path, at: h.offset, .bitFlip) }
        #expect(Self.failure { _ = try t.open() }?.contains("corrupt volume header") == true)

        let foreign = t.scratch.path("foreign.img")
        #expect(FileManager.default.createFile(atPath: foreign, contents: Data(repeating: 0x41, count: 1 << 20)))
        #expect(Self.failure { _ = try Volume.open(path: foreign) }?.contains("not a LunarFS volume") == true)

        let newer = try TestVolume(size: 1 << 30)
        let fd = open(newer.path, O_RDWR)
        var version: UInt16 = 2
        _ = pwrite(fd, &version, 2, 4)
        close(fd)
        #expect(Self.failure { _ = try newer.open() }?.contains("newer than this lunar understands") == true)
    }

    @Test("garbage after the last journal transaction is the end of the log, not an error")
    func journalTail() throws {
        let t = try TestVolume(size: 1 << 30)
        // Keeping the metadata lock (a long linger) keeps the transaction in the journal.
        let v = try Volume.open(path: t.path, options: OpenOptions(metadataLockLinger: 60, metadataLockMaxHold: 60))
        try v.mkdir("/a")
        try v.sync()
        // A copy taken now is what a crash would leave: slot 0's journal holds the transaction.
        let copy = t.scratch.path("crashed.img")
        try copySparse(from: t.path, to: copy)
        try v.close()
        let journal = try #require(v.fixedRecords().first { $0.record == "journal header" }).offset
        for sector in 30..<40 { try Self.damage(copy, at: journal + 4096 * UInt64(sector), .garbage) }
        let again = try Volume.open(path: copy)
        #expect(again.mountReport.replayedTransactions >= 1)
        #expect(try again.stat("/a").type == .directory)
        #expect(try again.check().isClean)
        try again.close()
    }
}
