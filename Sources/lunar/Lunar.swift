import ArgumentParser

@main
struct Lunar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lunar",
        abstract: "Lunar: a shared-disk cluster file system and KVM runtime, driven from one command.",
        discussion: """
            Every subcommand works on the LUN directly (an image file, a block device, later an \
            iSCSI LUN): no daemon, no FUSE, no kernel module.
            """,
        version: "0.1.0",
        subcommands: [IOCommand.self, FSCommand.self, DiskCommand.self, VMCommand.self, ExportCommand.self]
    )
}
