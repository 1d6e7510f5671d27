import CLunar

/// Puts a vCPU straight into 64-bit mode (a freestanding guest, or Linux by its 64-bit boot
/// protocol): a flat GDT, identity page tables for the first 4 GiB (2 MiB pages), paging and
/// long mode on, interrupts off. A freestanding guest's application processors reuse both:
/// they start in real mode at their SIPI vector, so that GDT also has a flat 32-bit code
/// segment for the trampoline's protected-mode step.
enum LongModeBoot {
    /// Where in the GDT the flat descriptors sit. Linux's 64-bit boot protocol asks for
    /// __BOOT_CS 0x10 and __BOOT_DS 0x18; a freestanding guest takes the first slots and a
    /// 32-bit code segment at 0x18 (its AP trampoline's CODE32).
    struct Selectors {
        var code: UInt16
        var data: UInt16
        var code32: UInt16?
        static let freestanding = Selectors(code: 0x08, data: 0x10, code32: 0x18)
        static let linux = Selectors(code: 0x10, data: 0x18, code32: nil)
        var gdtLimit: UInt16 { max(code, data, code32 ?? 0) + 7 }
    }

    static func writeTables(into memory: GuestMemory, gdt: UInt64, pageTables: UInt64, selectors: Selectors = .freestanding) throws(VMMError) {
        // Null descriptors everywhere but the 64-bit code (execute/read, L=1), data
        // (read/write) and 32-bit code (D=1) slots.
        for slot in stride(from: UInt64(0), through: UInt64(selectors.gdtLimit), by: 8) { try memory.store(UInt64(0), at: gdt + slot) }
        try memory.store(UInt64(0x00AF_9B00_0000_FFFF), at: gdt + UInt64(selectors.code))
        try memory.store(UInt64(0x00CF_9300_0000_FFFF), at: gdt + UInt64(selectors.data))
        if let code32 = selectors.code32 { try memory.store(UInt64(0x00CF_9B00_0000_FFFF), at: gdt + UInt64(code32)) }
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

    /// `rsi`: the one argument register a guest may expect (Linux: its zero page).
    static func enter(_ cpu: VCPU, entry: UInt64, stack: UInt64, gdt: UInt64, pageTables: UInt64,
                      selectors: Selectors = .freestanding, rsi: UInt64 = 0) throws(VMMError) {
        var s = try cpu.getSpecialRegisters()
        var code = kvm_segment()
        code.base = 0; code.limit = 0xFFFF_FFFF; code.selector = selectors.code
        code.type = 11; code.present = 1; code.dpl = 0; code.db = 0; code.s = 1; code.l = 1; code.g = 1
        var data = kvm_segment()
        data.base = 0; data.limit = 0xFFFF_FFFF; data.selector = selectors.data
        data.type = 3; data.present = 1; data.dpl = 0; data.db = 1; data.s = 1; data.l = 0; data.g = 1
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.gdt.base = gdt
        s.gdt.limit = selectors.gdtLimit
        s.cr3 = pageTables
        s.cr4 = 1 << 5                              // PAE
        s.cr0 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 31) // PE, MP, ET, PG
        s.efer = (1 << 8) | (1 << 10)               // LME, LMA
        try cpu.setSpecialRegisters(s)
        var r = kvm_regs()
        r.rip = entry
        r.rsp = stack
        r.rsi = rsi
        r.rflags = 0x2
        try cpu.setRegisters(r)
    }
}
