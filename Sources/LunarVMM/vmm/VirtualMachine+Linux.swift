extension VirtualMachine {
    /// Describes this machine in ACPI and loads `config` into its memory; `runLinux` then
    /// starts it. Separate so the placement can be inspected before a vCPU runs.
    public func loadLinux(_ config: LinuxBootConfiguration) throws(VMMError) -> LinuxBootLayout {
        let devices = virtioMMIODevices.map { DSDT.VirtioMMIODevice(address: $0.address, length: VirtioMMIOBlock.windowSize, irq: $0.irq) }
        // Every vCPU in the MADT: Linux brings the application processors up by INIT/SIPI.
        let tables = try ACPITables(cpuCount: cpus, virtioDevices: devices)
        let layout = try LinuxBoot.load(config, into: memory, acpi: tables)
        // The FADT names these registers; a guest's ACPI power-off lands in the exit port, so
        // the VM ends the way a test guest's power-off ends it, with status 0.
        let exit = exitPort
        ports.attach(ACPISleepControl { exit.write(port: 0, size: 1, value: 0) },
                     at: ACPISleepControl.controlPort...ACPISleepControl.statusPort)
        return layout
    }

    /// Boots Linux and runs it until it powers off (ACPI S5: `.poweredOff(status: 0)`), reboots
    /// (`.reset`, through the FADT's reset register or the i8042) or triple-faults.
    public func runLinux(_ config: LinuxBootConfiguration) throws(VMMError) -> VMExit {
        let layout = try loadLinux(config)
        try LongModeBoot.writeTables(into: memory, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress, selectors: .linux)
        return try runBootCPU { cpu throws(VMMError) in
            try LongModeBoot.enter(cpu, entry: layout.entry, stack: Self.stackTop, gdt: Self.gdtAddress, pageTables: Self.pageTableAddress,
                                   selectors: .linux, rsi: layout.zeroPage)
        }
    }
}
