/// A JSON document (RFC 8259), read and written without Foundation: the VMM process
/// (Sources/lunar-vmm) reads `vm.json` and must stay small (BRIEF §4: < 8 MiB beyond guest RAM),
/// and Foundation alone costs it more than that.
///
/// `vm.json` lives on a shared volume any host can write, so the reader is strict: one value,
/// UTF-8, no duplicate keys, nesting at most `maxDepth` deep; anything else is an error that
/// says what and at which byte. Numbers keep their text, so that a 64-bit size reads back exact.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number as written, already checked against JSON's number grammar.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public static let maxDepth = 64

    public static func number<T: BinaryInteger>(_ value: T) -> JSONValue { .number("\(value)") }

    // MARK: reading

    public init(parsing bytes: [UInt8]) throws(JSONError) {
        var reader = JSONReader(bytes: bytes)
        self = try reader.document()
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { members[key] } else { nil }
    }

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { a } else { nil } }

    /// The number as an integer of type `T`, if it is written as one (no fraction or
    /// exponent) and fits.
    public func integer<T: FixedWidthInteger>(_: T.Type = T.self) -> T? {
        if case .number(let text) = self { T(text, radix: 10) } else { nil }
    }

    // MARK: writing

    /// Two-space indentation, keys sorted, a newline at the end: stable for `diff` and review.
    public var prettyPrinted: String {
        var out = ""
        write(to: &out, indent: "")
        return out + "\n"
    }

    /// One line, no spaces, keys sorted: a request or answer on a control socket.
    public var compact: String {
        var out = ""
        write(to: &out, indent: nil)
        return out
    }

    /// `indent` nil writes everything on one line.
    private func write(to out: inout String, indent: String?) {
        let inner = indent.map { $0 + "  " }
        let open = indent == nil ? "" : "\n", itemEnd = indent == nil ? "" : "\n"
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let text): out += text
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "[" + open
            for (i, item) in items.enumerated() {
                out += inner ?? ""
                item.write(to: &out, indent: inner)
                out += (i == items.count - 1 ? "" : ",") + itemEnd
            }
            out += (indent ?? "") + "]"
        case .object(let members):
            guard !members.isEmpty else { out += "{}"; return }
            out += "{" + open
            let keys = members.keys.sorted()
            for (i, key) in keys.enumerated() {
                out += inner ?? ""
                Self.quote(key, into: &out)
                out += indent == nil ? ":" : ": "
                members[key]?.write(to: &out, indent: inner)
                out += (i == keys.count - 1 ? "" : ",") + itemEnd
            }
            out += (indent ?? "") + "}"
        }
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

/// Why a JSON text was refused, with the byte offset where reading stopped.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public var offset: Int
    public var description: String { "\(reason) at byte \(offset)" }
}

/// A recursive-descent reader over the bytes; `depth` bounds the recursion.
private struct JSONReader {
    let bytes: [UInt8]
    var position = 0
    var depth = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func document() throws(JSONError) -> JSONValue {
        let value = try self.value()
        skipWhitespace()
        guard position == bytes.count else { throw fail("text after the JSON value") }
        return value
    }

    func fail(_ reason: String) -> JSONError { JSONError(reason: reason, offset: position) }

    mutating func skipWhitespace() {
        while position < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) { position += 1 }
    }

    mutating func value() throws(JSONError) -> JSONValue {
        skipWhitespace()
        guard position < bytes.count else { throw fail("unexpected end of text") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try nested { (r: inout JSONReader) throws(JSONError) in try r.object() }
        case UInt8(ascii: "["): return try nested { (r: inout JSONReader) throws(JSONError) in try r.array() }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw fail("unexpected character '\(Unicode.Scalar(bytes[position]).escaped(asASCII: true))'")
        }
    }

    mutating func nested(_ body: (inout JSONReader) throws(JSONError) -> JSONValue) throws(JSONError) -> JSONValue {
        depth += 1
        guard depth <= JSONValue.maxDepth else { throw fail("nested deeper than \(JSONValue.maxDepth) levels") }
        defer { depth -= 1 }
        return try body(&self)
    }

    mutating func literal(_ word: String) throws(JSONError) {
        let expected = Array(word.utf8)
        guard bytes.count - position >= expected.count, Array(bytes[position..<position + expected.count]) == expected else {
            throw fail("expected '\(word)'")
        }
        position += expected.count
    }

    /// Expects `byte` after optional whitespace and steps over it.
    mutating func expect(_ byte: UInt8, _ what: String) throws(JSONError) {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == byte else { throw fail("expected \(what)") }
        position += 1
    }

    /// After optional whitespace: steps over `byte` if it is next.
    mutating func take(_ byte: UInt8) -> Bool {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == byte else { return false }
        position += 1
        return true
    }

    mutating func object() throws(JSONError) -> JSONValue {
        position += 1
        var members: [String: JSONValue] = [:]
        if take(UInt8(ascii: "}")) { return .object(members) }
        repeat {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
            let keyStart = position
            let key = try string()
            try expect(UInt8(ascii: ":"), "':' after a member name")
            let value = try self.value()
            guard members.updateValue(value, forKey: key) == nil else {
                throw JSONError(reason: "member '\(key)' given twice", offset: keyStart)
            }
        } while take(UInt8(ascii: ","))
        try expect(UInt8(ascii: "}"), "',' or '}' in an object")
        return .object(members)
    }

    mutating func array() throws(JSONError) -> JSONValue {
        position += 1
        var items: [JSONValue] = []
        if take(UInt8(ascii: "]")) { return .array(items) }
        repeat { items.append(try value()) } while take(UInt8(ascii: ","))
        try expect(UInt8(ascii: "]"), "',' or ']' in an array")
        return .array(items)
    }

    /// A string starting at its opening quote; escapes decoded, UTF-8 checked.
    mutating func string() throws(JSONError) -> String {
        position += 1
        var utf8: [UInt8] = []
        while true {
            guard position < bytes.count else { throw fail("unterminated string") }
            let byte = bytes[position]
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: utf8, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                return text
            case UInt8(ascii: "\\"):
                guard position < bytes.count else { throw fail("unterminated escape") }
                let escape = bytes[position]
                position += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"): utf8 += try unicodeEscape()
                default: throw fail("unknown escape '\\\(Unicode.Scalar(escape).escaped(asASCII: true))'")
                }
            case 0x00..<0x20:
                throw fail("control character in a string (escape it)")
            default:
                utf8.append(byte)
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair of two escapes; the scalar as UTF-8.
    mutating func unicodeEscape() throws(JSONError) -> [UInt8] {
        var value = try hex4()
        if (0xD800..<0xDC00).contains(value) {
            guard bytes.count - position >= 2, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                throw fail("lone high surrogate")
            }
            position += 2
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw fail("high surrogate without a low one") }
            value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00..<0xE000).contains(value) {
            throw fail("lone low surrogate")
        }
        guard let scalar = Unicode.Scalar(value) else { throw fail("invalid \\u escape") }
        return Array(String(Character(scalar)).utf8)
    }

    mutating func hex4() throws(JSONError) -> UInt32 {
        guard bytes.count - position >= 4 else { throw fail("short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[position]
            let digit: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = c - UInt8(ascii: "A") + 10
            default: throw fail("bad hex digit in a \\u escape")
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, returned as written.
    mutating func number() throws(JSONError) -> String {
        let start = position
        func isDigit(_ at: Int) -> Bool { at < bytes.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[at]) }
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        guard isDigit(position) else { throw fail("a number needs digits") }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if isDigit(position) { throw fail("a number may not start with 0") }
        } else {
            while isDigit(position) { position += 1 }
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard isDigit(position) else { throw fail("digits expected after '.'") }
            while isDigit(position) { position += 1 }
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
            position += 1
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") { position += 1 }
            guard isDigit(position) else { throw fail("digits expected in the exponent") }
            while isDigit(position) { position += 1 }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }
}
