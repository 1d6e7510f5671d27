/// A size a person types: `4096`, `512K`, `10G`, `1TiB` (binary multiples, as qemu-img), and
/// how sizes are shown back (`512 MiB`, `1.5 GiB`).
public struct ByteSize: Sendable, Equatable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    public init?(argument: String) {
        let text = Substring(argument).drop { $0 == " " || $0 == "\t" }
        let trimmed = text.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let value = UInt64(String(digits)) else { return nil }
        var unit = String(trimmed.dropFirst(digits.count)).lowercased()
        if unit.hasSuffix("ib") { unit.removeLast(2) } else if unit.hasSuffix("b") { unit.removeLast() }
        let shift: UInt64
        switch unit {
        case "": shift = 0
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        case "p": shift = 50
        default: return nil
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        bytes = result
    }

    /// What a size argument may look like, for error messages.
    public static let accepted = "a number with an optional K, M, G, T or P suffix (binary multiples), e.g. 20G or 1M"

    public var description: String { ByteSize.format(bytes) }

    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var i = 0
        while value >= 1024 && i < units.count - 1 { value /= 1024; i += 1 }
        if i == 0 { return "\(bytes) B" }
        return value == value.rounded() ? "\(Int(value)) \(units[i])" : "\(fixedPoint(value, places: 1)) \(units[i])"
    }
}
