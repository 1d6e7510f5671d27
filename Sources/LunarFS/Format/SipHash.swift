/// SipHash-2-4 (Aumasson & Bernstein), the directory name hash: keyed per volume, so names
/// chosen to collide on one volume do not collide on another.
struct SipHash24 {
    static func hash(_ data: [UInt8], key: [UInt8]) -> UInt64 {
        precondition(key.count == 16)
        func word(_ b: [UInt8], _ at: Int) -> UInt64 {
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
            return v
        }
        let k0 = word(key, 0), k1 = word(key, 8)
        var v0: UInt64 = 0x736f_6d65_7073_6575 ^ k0
        var v1: UInt64 = 0x646f_7261_6e64_6f6d ^ k1
        var v2: UInt64 = 0x6c79_6765_6e65_7261 ^ k0
        var v3: UInt64 = 0x7465_6462_7974_6573 ^ k1

        @inline(__always) func round() {
            v0 = v0 &+ v1; v1 = (v1 << 13) | (v1 >> 51); v1 ^= v0; v0 = (v0 << 32) | (v0 >> 32)
            v2 = v2 &+ v3; v3 = (v3 << 16) | (v3 >> 48); v3 ^= v2
            v0 = v0 &+ v3; v3 = (v3 << 21) | (v3 >> 43); v3 ^= v0
            v2 = v2 &+ v1; v1 = (v1 << 17) | (v1 >> 47); v1 ^= v2; v2 = (v2 << 32) | (v2 >> 32)
        }

        let full = data.count / 8 * 8
        var i = 0
        while i < full {
            let m = word(data, i)
            v3 ^= m; round(); round(); v0 ^= m
            i += 8
        }
        var last = UInt64(data.count & 0xFF) << 56
        for j in 0..<(data.count - full) { last |= UInt64(data[full + j]) << (8 * UInt64(j)) }
        v3 ^= last; round(); round(); v0 ^= last
        v2 ^= 0xFF
        round(); round(); round(); round()
        return v0 ^ v1 ^ v2 ^ v3
    }
}
