import CLunar
import Glibc

/// The host's KVM: the system handle every VM is made from.
public final class KVM: @unchecked Sendable {
    /// Which KVM this host offers. The paravirtual kind (`kvm_pvm`, nested without VMX/SVM)
    /// implements the whole API but runs guest code about a thousand times slower.
    public enum Kind: String, Sendable {
        case hardware = "hardware virtualization (VMX/SVM)"
        case paravirtual = "paravirtual nested KVM (kvm_pvm: no VMX/SVM; guest code runs ~1 µs per instruction)"
    }

    let fd: Int32
    public let apiVersion: Int32
    public let kind: Kind
    let vcpuMapSize: Int

    public init(path: String = "/dev/kvm") throws(VMMError) {
        let fd = lunar_open(path, O_RDWR, 0)
        guard fd >= 0 else { throw VMMError.system("open \(path)", -fd) }
        do throws(VMMError) {
            apiVersion = try check(lunar_kvm_get_api_version(fd), "KVM_GET_API_VERSION")
            guard apiVersion == 12 else { throw VMMError(.invalidConfiguration("KVM API version \(apiVersion), expected 12")) }
            vcpuMapSize = Int(try check(lunar_kvm_vcpu_mmap_size(fd), "KVM_GET_VCPU_MMAP_SIZE"))
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
        kind = Self.detectKind()
    }

    deinit { close(fd) }

    static func detectKind() -> Kind {
        guard let cpuinfo = readFile("/proc/cpuinfo") else { return .paravirtual }
        for line in cpuinfo.split(separator: "\n") where line.hasPrefix("flags") {
            let flags = line.split(separator: " ")
            if flags.contains("vmx") || flags.contains("svm") { return .hardware }
        }
        return .paravirtual
    }

    /// The CPUID leaves KVM can give a guest on this host.
    func supportedCPUID() throws(VMMError) -> [kvm_cpuid_entry2] {
        var count: UInt32 = 256
        var entries = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: Int(count))
        _ = try check(lunar_kvm_get_supported_cpuid(fd, &entries, &count), "KVM_GET_SUPPORTED_CPUID")
        return Array(entries.prefix(Int(count)))
    }
}

func readFile(_ path: String) -> String? {
    let fd = lunar_open(path, O_RDONLY, 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        data += chunk[0..<n]
    }
    return String(decoding: data, as: UTF8.self)
}
