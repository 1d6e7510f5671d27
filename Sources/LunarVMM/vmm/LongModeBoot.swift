import CLunar

/// Puts a vCPU straight into 64-bit mode for a freestanding guest: a flat GDT, identity page
/// tables for the first 4 GiB (2 MiB pages), paging and long mode on, interrupts off.
/// An application processor's trampoline reuses both: it starts in real mode at its SIPI
/// vector, so the GDT also has a flat 32-bit code segment for its protected-mode step.
enum LongModeBoot {
    static let codeSelector: UInt16 = 0x08
    static let dataSelector: UInt16 = 0x10
    static let code32Selector: UInt16 = 0x18
    static let gdtLimit: UInt16 = 31

    static func writeTables(into memory: GuestMemory, gdt: UInt64, pageTables: UInt64) throws(VMMError) {
        // Null, 64-bit code (execute/read, L=1), data (read/write), 32-bit code (D=1).
        try memory.store(UInt64(0), at: gdt)
        try memory.store(UInt64(0x00AF_9B00_0000_FFFF), at: gdt + 8)
        try memory.store(UInt64(0x00CF_9300_0000_FFFF), at: gdt + 16)
        try memory.store(UInt64(0x00CF_9B00_0000_FFFF), at: gdt + 24)
        // Identity map of the first 4 GiB (RAM below, device windows in the 32-bit hole):
        // one PML4 entry, one PDPT with four entries, four page directories of 2 MiB pages.
        let pml4 = pageTables, pdpt = pageTables + 0x1000, directories = pageTables + 0x2000
        try memory.store(pdpt | 0x3, at: pml4)          // present, writable
        for g in 0..<UInt64(4) {
            let pd = directories + g * 0x1000
            try memory.store(pd | 0x3, at: pdpt + g * 8)
            for i in 0..<UInt64(512) {
                try memory.store(((g * 512 + i) << 21) | 0x83, at: pd + i * 8) // present, writable, 2 MiB page
            }
        }
    }

    static func enter(_ cpu: VCPU, entry: UInt64, stack: UInt64, gdt: UInt64, pageTables: UInt64) throws(VMMError) {
        var s = try cpu.getSpecialRegisters()
        var code = kvm_segment()
        code.base = 0; code.limit = 0xFFFF_FFFF; code.selector = codeSelector
        code.type = 11; code.present = 1; code.dpl = 0; code.db = 0; code.s = 1; code.l = 1; code.g = 1
        var data = kvm_segment()
        data.base = 0; data.limit = 0xFFFF_FFFF; data.selector = dataSelector
        data.type = 3; data.present = 1; data.dpl = 0; data.db = 1; data.s = 1; data.l = 0; data.g = 1
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.gdt.base = gdt
        s.gdt.limit = gdtLimit
        s.cr3 = pageTables
        s.cr4 = 1 << 5                              // PAE
        s.cr0 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 31) // PE, MP, ET, PG
        s.efer = (1 << 8) | (1 << 10)               // LME, LMA
        try cpu.setSpecialRegisters(s)
        var r = kvm_regs()
        r.rip = entry
        r.rsp = stack
        r.rflags = 0x2
        try cpu.setRegisters(r)
    }
}
