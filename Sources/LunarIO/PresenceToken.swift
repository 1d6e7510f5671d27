import CLunar
import Glibc

/// Presence tokens: which processes of this host have a LUN open as a given role (a host slot
/// of a cluster file system, say). A token is an OFD lock on one byte far past the end of the
/// device, so it never overlaps the sector locks of compare-and-write, and the kernel drops it
/// when the holder exits or is killed — which makes "is the holder of slot N still running?"
/// exact for processes of one host, with no timeout. Across hosts it means nothing: there, a
/// cluster layer watches on-disk heartbeats instead.
extension BlockDevice {
    private static let presenceBase: UInt64 = 1 << 62

    /// Takes token `token` unless another open of this LUN holds it. Never waits.
    public func tryHoldPresence(_ token: UInt32) throws(IOError) -> Bool {
        let r = lunar_ofd_lock(file.fd, 1, Self.presenceBase + UInt64(token), 1, 0)
        if r == 0 { return true }
        if r == -EAGAIN || r == -EACCES { return false }
        throw file.error(.system, .setup, errno: -r)
    }

    public func releasePresence(_ token: UInt32) {
        _ = lunar_ofd_lock(file.fd, 0, Self.presenceBase + UInt64(token), 1, 0)
    }

    /// Whether another open of this LUN (another process, or another `BlockDevice` here)
    /// holds token `token`. Tokens this device holds itself do not count.
    public func isPresenceHeldElsewhere(_ token: UInt32) throws(IOError) -> Bool {
        try isLockedElsewhere(Self.presenceBase + UInt64(token), length: 1)
    }

    /// Whether another open of this LUN holds a sector lock (a compare-and-write in progress)
    /// anywhere in the device's bytes; presence tokens, which lie past the end, do not count.
    public var isSectorLockedElsewhere: Bool {
        get throws(IOError) { try isLockedElsewhere(0, length: Self.presenceBase) }
    }

    private func isLockedElsewhere(_ start: UInt64, length: UInt64) throws(IOError) -> Bool {
        let r = lunar_ofd_probe(file.fd, start, length)
        if r < 0 { throw file.error(.system, .setup, errno: -r) }
        return r == 1
    }
}
