import Glibc

/// A LunarVMM failure: what the VMM was doing, and the system's words for what went wrong.
public struct VMMError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A KVM ioctl or another system call failed.
        case system(call: String, errno: Int32)
        /// The guest image, memory size or layout asked for does not fit.
        case invalidConfiguration(String)
        /// The guest did something the VMM cannot continue from.
        case guestFault(String)
    }

    public var kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    static func system(_ call: String, _ code: Int32) -> VMMError { VMMError(.system(call: call, errno: code)) }

    public var description: String {
        switch kind {
        case .system(let call, let code):
            let hint = call.hasPrefix("open /dev/kvm") ? " (is KVM available and readable by this user?)" : ""
            return "\(call): \(String(cString: strerror(code)))\(hint)"
        case .invalidConfiguration(let why): return "invalid VM configuration: \(why)"
        case .guestFault(let why): return "guest fault: \(why)"
        }
    }
}

/// Turns a shim's `-errno` result into a typed error.
@inline(__always)
func check(_ result: Int32, _ call: @autoclosure () -> String) throws(VMMError) -> Int32 {
    if result < 0 { throw VMMError.system(call(), -result) }
    return result
}
