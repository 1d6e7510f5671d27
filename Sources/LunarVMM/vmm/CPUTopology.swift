import CLunar

/// The CPUID a vCPU sees: KVM's supported leaves, with the topology of this VM instead of the
/// host's (one package of `count` single-threaded cores, APIC ID = vCPU index, which is also
/// the local APIC ID KVM gives each vCPU) and without nested virtualization, which a microVM
/// does not offer.
struct CPUTopology {
    let count: Int

    /// The x2APIC ID bits a core number takes: the shift to the package level.
    var coreIDBits: UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < count { bits += 1 }
        return bits
    }

    func cpuid(for index: Int, from supported: [kvm_cpuid_entry2]) -> [kvm_cpuid_entry2] {
        let apicID = UInt32(index)
        // "AuthenticAMD" or "HygonGenuine": the vendors whose extended leaves describe cores.
        let vendor = supported.first(where: { $0.function == 0 })?.ebx
        let amd = vendor == 0x6874_7541 || vendor == 0x6F67_7948
        var entries: [kvm_cpuid_entry2] = []
        for var entry in supported {
            switch entry.function {
            case 0x1:
                // EBX[31:24] initial APIC ID, [23:16] addressable logical processors in the package.
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (apicID << 24) | (UInt32(count) << 16)
                // HTT: the count above is meaningful.
                entry.edx = count > 1 ? entry.edx | (1 << 28) : entry.edx & ~(1 << 28)
                entry.ecx &= ~(1 << 5)                          // VMX
            case 0xB, 0x1F:
                // Rebuilt below, whatever the host has.
                continue
            case 0x8000_0001:
                entry.ecx &= ~(1 << 2)                          // SVM
            case 0x8000_000A:
                // SVM's feature leaf, empty once SVM is hidden.
                entry.eax = 0; entry.ebx = 0; entry.ecx = 0; entry.edx = 0
            case 0x8000_0008 where amd:
                // ECX[15:12] APIC ID bits for the core number, [7:0] cores - 1.
                entry.ecx = (entry.ecx & ~0xF0FF) | (coreIDBits << 12) | UInt32(count - 1)
            case 0x8000_001E where amd:
                // With TOPOEXT a guest reads its IDs here: extended APIC ID, core ID with one
                // thread per core, node 0 of one.
                entry.eax = apicID
                entry.ebx = apicID & 0xFF
                entry.ecx = 0
            default:
                break
            }
            entries.append(entry)
        }
        // Extended topology: SMT level (one thread per core), core level (all vCPUs), then the
        // invalid level that ends the enumeration; EDX is the x2APIC ID on every subleaf.
        let maxBasic = supported.first(where: { $0.function == 0 })?.eax ?? 0
        for leaf: UInt32 in [0xB, 0x1F] where maxBasic >= leaf && supported.contains(where: { $0.function == leaf }) {
            let levels: [(eax: UInt32, ebx: UInt32, type: UInt32)] = [(0, 1, 1), (coreIDBits, UInt32(count), 2), (0, 0, 0)]
            for (subleaf, level) in levels.enumerated() {
                var entry = kvm_cpuid_entry2()
                entry.function = leaf
                entry.index = UInt32(subleaf)
                entry.flags = UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
                entry.eax = level.eax
                entry.ebx = level.ebx
                entry.ecx = (level.type << 8) | UInt32(subleaf)
                entry.edx = apicID
                entries.append(entry)
            }
        }
        return entries
    }
}
