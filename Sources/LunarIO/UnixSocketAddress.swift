import Glibc

extension sockaddr_un {
    /// The address of the Unix socket at `path`; nil when the path is empty or does not fit
    /// `sun_path` with its terminating NUL (107 bytes on Linux).
    public init?(path: String) {
        self.init()
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: sun_path), !bytes.contains(0) else { return nil }
        sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
    }

    /// Calls `body` with the address as the `sockaddr` that bind and connect take.
    public mutating func withSocketAddress<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: &self) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
