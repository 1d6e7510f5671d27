import Foundation
import LunarIO
import LunarVMM
import Testing

@Suite("JSON without Foundation (vm.json)")
struct JSONTests {
    static let sample = #"""
        {"name": "web01", "cpus": 2, "memory_bytes": 18446744073709551615, "ratio": -1.5e-3,
         "flags": [true, false, null], "nested": {"a": [], "b": {}},
         "text": "tab\t quote\" slash\/ back\\ \u00e9 \ud83d\ude00 nl\n"}
        """#

    @Test("reads every kind of value; numbers keep their text, so 64-bit sizes are exact")
    func reads() throws {
        let v = try JSONValue(parsing: Array(Self.sample.utf8))
        #expect(v["name"]?.stringValue == "web01")
        #expect(v["cpus"]?.integer(Int.self) == 2)
        #expect(v["memory_bytes"]?.integer(UInt64.self) == UInt64.max)
        #expect(v["memory_bytes"]?.integer(Int64.self) == nil, "does not fit")
        #expect(v["ratio"] == .number("-1.5e-3"))
        #expect(v["ratio"]?.integer(Int.self) == nil, "not an integer")
        #expect(v["flags"] == .array([.bool(true), .bool(false), .null]))
        #expect(v["nested"] == .object(["a": .array([]), "b": .object([:])]))
        #expect(v["text"]?.stringValue == "tab\t quote\" slash/ back\\ é 😀 nl\n")
    }

    @Test("what it writes, Foundation reads the same, and it reads back equal")
    func roundTrip() throws {
        let v = try JSONValue(parsing: Array(Self.sample.utf8))
        let text = v.prettyPrinted
        #expect(try JSONValue(parsing: Array(text.utf8)) == v)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object["text"] as? String == "tab\t quote\" slash/ back\\ é 😀 nl\n")
        #expect((object["flags"] as? [Any])?.count == 3)
        let control = JSONValue.string("\u{01}\u{7F}\r")
        #expect(control.prettyPrinted == "\"\\u0001\\u007f\\r\"\n")
        #expect(try JSONValue(parsing: Array(control.prettyPrinted.utf8)) == control)
    }

    @Test("vm.json as earlier versions wrote it (Foundation's JSONEncoder) still reads")
    func foundationWritten() throws {
        let written = #"""
            {
              "boot" : {
                "format" : "flat",
                "image" : "guest.img",
                "kind" : "freestanding"
              },
              "console" : {
                "kind" : "terminal"
              },
              "cpus" : 1,
              "disks" : [
                {
                  "name" : "disk0",
                  "read_only" : false,
                  "size_bytes" : 1048576
                }
              ],
              "memory_bytes" : 67108864,
              "name" : "hello",
              "version" : 1
            }
            """#
        let config = try VMConfig(json: JSONValue(parsing: Array(written.utf8)))
        #expect(config == VMConfig(name: "hello", memory: 64 << 20, boot: .freestanding(image: "guest.img", format: .flat),
                                   disks: [.init(name: "disk0", size: 1 << 20)]))
    }

    @Test("malformed text is refused with what and where", arguments: [
        ("", "unexpected end"), ("{", "member name"), (#"{"a" 1}"#, "':'"), (#"{"a":1,}"#, "member name"),
        ("[1,]", "unexpected character"), ("[1 2]", "',' or ']'"), (#"{"a":1,"a":2}"#, "given twice"),
        ("01", "start with 0"), ("1.", "after '.'"), ("1e", "exponent"), ("-", "needs digits"), ("+1", "unexpected character"),
        (#""abc"#, "unterminated"), ("\"a\u{01}\"", "control character"), (#""\x""#, "unknown escape"),
        (#""\u12""#, "short"), (#""\u12G4""#, "hex digit"), (#""\ud800""#, "lone high"), (#""\udc00""#, "lone low"),
        (#""\ud800\u0041""#, "without a low"), ("tru", "expected 'true'"), ("nul", "expected 'null'"),
        ("{} x", "text after"), ("NaN", "unexpected character"),
    ])
    func malformed(text: String, message: String) {
        do {
            let v = try JSONValue(parsing: Array(text.utf8))
            Issue.record("\(text.debugDescription) read as \(v)")
        } catch {
            #expect(error.description.contains(message), "\(text.debugDescription): \(error)")
        }
    }

    @Test("invalid UTF-8 and deep nesting are refused, not crashed on")
    func hostileBytes() {
        #expect(throws: JSONError.self) { try JSONValue(parsing: [0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONError.self) { try JSONValue(parsing: [0x22, 0xED, 0xA0, 0x80, 0x22]) }
        let deep = Array(String(repeating: "[", count: 100_000).utf8)
        do {
            _ = try JSONValue(parsing: deep)
            Issue.record("100 000 nested arrays accepted")
        } catch {
            #expect(error.description.contains("deeper than 64"))
        }
        let fine = String(repeating: "[", count: JSONValue.maxDepth) + String(repeating: "]", count: JSONValue.maxDepth)
        #expect(throws: Never.self) { try JSONValue(parsing: Array(fine.utf8)) }
    }

    @Test("random damage to a vm.json: the reader and the config check refuse or accept, never crash")
    func mutations() throws {
        let config = VMConfig(name: "web01", cpus: 2, memory: 512 << 20,
                              boot: .linux(kernel: "kernel", initrd: "initrd", commandLine: "console=ttyS0"),
                              disks: [.init(name: "disk0", size: 10 << 30)], console: .file("/var/log/web01.log"))
        let original = Array(config.json.prettyPrinted.utf8)
        var rng = SplitMix64(seed: 0x4C554E4152)
        var accepted = 0, agreed = 0
        let alphabet = Array(#"{}[]",:\"0123456789-+.eEtrufalsn \#u{0}\#u{80}\#u{FF}"#.utf8)
        for _ in 0..<20_000 {
            var bytes = original
            for _ in 0..<Int(rng.next() % 4 + 1) {
                let at = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                case 1: bytes.remove(at: at)
                default: bytes.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
                }
            }
            let ours = try? JSONValue(parsing: bytes)
            if let ours {
                accepted += 1
                if let parsed = try? VMConfig(json: ours) { _ = try? parsed.validate() }
            }
            // Foundation is the second opinion on what is JSON (it allows duplicate keys; our
            // reader does not, and a mutation rarely makes one).
            let theirs = (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            if (ours != nil) == theirs { agreed += 1 }
        }
        #expect(accepted > 0)
        #expect(agreed >= 19_900, "our reader and Foundation's disagree on \(20_000 - agreed) of 20 000 texts")
    }
}

