import Foundation
import Glibc
import LunarTesting
import Testing

/// A `lunar` process killed with SIGKILL while it holds a volume (its host slot, the volume
/// lock, a journal full of committed transactions): the next process sees the holder gone,
/// replays its journal, and finds the volume consistent.
@Suite("kill -9 of a process holding a volume")
struct FSKillTests {
    @Test("after SIGKILL mid-way through 100 000 creates: fsck clean, the next writer recovers")
    func killedWriter() throws {
        let scratch = Scratch()
        let lun = scratch.path("vol.img")
        let mkfs = try LunarProcess.run(["fs", "mkfs", lun, "--size", "2G", "--max-files", "120000"])
        try #require(mkfs.status == 0, "\(mkfs.stderr)")

        let writer = try LunarProcess.start(["fs", "bench", lun, "--create", "100000"])
        // Let it commit a good number of transactions, then kill it without warning.
        usleep(1_500_000)
        #expect(kill(writer.process.processIdentifier, SIGKILL) == 0)
        let killed = writer.finish()
        #expect(killed.status != 0, "the writer finished before it could be killed: \(killed.stdout)")

        // A read-only look replays the dead writer's journal in memory and sees a sound volume.
        let check = try LunarProcess.run(["fs", "fsck", lun])
        #expect(check.status == 0, "fsck: \(check.stdout) \(check.stderr)")
        #expect(check.stdout.contains("is held by"), "the dead writer's slot: \(check.stdout)")
        let listing = try LunarProcess.run(["fs", "ls", "-R", "--json", lun])
        #expect(listing.status == 0, "\(listing.stderr)")

        // The next writer takes the dead holder's lock, replays its journal, frees its slot.
        let mkdir = try LunarProcess.run(["fs", "mkdir", "\(lun):/after"])
        #expect(mkdir.status == 0, "mkdir after the kill: \(mkdir.stderr)")
        let repaired = try LunarProcess.run(["fs", "fsck", "--json", lun])
        #expect(repaired.status == 0, "fsck after recovery: \(repaired.stdout)")
        #expect(!repaired.stdout.contains("is held by"), "the dead writer's slot is freed: \(repaired.stdout)")
        let created = try LunarProcess.run(["fs", "ls", "--json", "\(lun):/bench"])
        #expect(created.status == 0)
        let dirs = (try? JSONSerialization.jsonObject(with: Data(created.stdout.utf8))) as? [[String: Any]]
        #expect(dirs?.count == 1, "one creation directory: \(created.stdout.prefix(300))")
    }
}
