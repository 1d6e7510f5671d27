import LunarIO
import Testing

/// The COMPARE AND WRITE path's decisions, from sense data alone: no target needed (Debian's
/// tgt never answers MISCOMPARE, as it lacks the command).
@Suite("iSCSI sense classification")
struct ISCSISenseTests {
    /// Captured from tgt 1.0.85 answering COMPARE AND WRITE (0x89): fixed-format sense,
    /// ILLEGAL REQUEST, ASC/ASCQ 0x20/0x00 (invalid command operation code).
    static let tgtInvalidOpcode: [UInt8] = [0x70, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00,
                                            0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00]
    /// A MISCOMPARE as SBC-3 describes it for COMPARE AND WRITE: fixed format with VALID set,
    /// the INFORMATION field holding the offset of the first differing byte (5), ASC/ASCQ
    /// 0x1D/0x00 (miscompare during verify operation).
    static let miscompareFixed: [UInt8] = [0xF0, 0x00, 0x0E, 0x00, 0x00, 0x00, 0x05, 0x0A, 0x00, 0x00,
                                           0x00, 0x00, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x00]
    /// The same in descriptor format, with an information descriptor.
    static let miscompareDescriptor: [UInt8] = [0x72, 0x0E, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x0C,
                                                0x00, 0x0A, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x05]

    @Test("MISCOMPARE sense (key 0x0E) means the sector differs: a mismatch, not a failure")
    func miscompare() throws {
        for raw in [Self.miscompareFixed, Self.miscompareDescriptor] {
            let sense = try #require(SCSISense(bytes: raw))
            #expect(sense == SCSISense(key: 0x0E, asc: 0x1D, ascq: 0x00))
            #expect(SCSICommandOutcome.classify(status: 0x02, sense: sense) == .miscompare)
            #expect("\(sense)".contains("MISCOMPARE"))
        }
    }

    @Test("ILLEGAL REQUEST / invalid operation code (0x05/0x20/0x00) means fall back to a reservation")
    func invalidOpcode() throws {
        let sense = try #require(SCSISense(bytes: Self.tgtInvalidOpcode))
        #expect(sense == SCSISense(key: 0x05, asc: 0x20, ascq: 0x00))
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: sense) == .unsupported)
        #expect("\(sense)" == "ILLEGAL REQUEST, ASC/ASCQ 0x20/0x00 (invalid command operation code)")
        // Invalid field in CDB (an unsupported length) is treated the same way.
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: SCSISense(key: 0x05, asc: 0x24, ascq: 0x00)) == .unsupported)
    }

    @Test("other statuses: conflicts and unit attentions retry, out of range and protection are errors")
    func others() {
        #expect(SCSICommandOutcome.classify(status: 0x00, sense: nil) == .good)
        #expect(SCSICommandOutcome.classify(status: 0x18, sense: nil) == .reservationConflict)
        #expect(SCSICommandOutcome.classify(status: 0x08, sense: nil) == .retry)
        #expect(SCSICommandOutcome.classify(status: -1, sense: nil) == .failed)
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: nil) == .failed)
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: SCSISense(key: 0x06, asc: 0x29, ascq: 0x00)) == .retry)
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: SCSISense(key: 0x05, asc: 0x21, ascq: 0x00)) == .beyondEnd)
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: SCSISense(key: 0x07, asc: 0x27, ascq: 0x00)) == .writeProtected)
        #expect(SCSICommandOutcome.classify(status: 0x02, sense: SCSISense(key: 0x03, asc: 0x11, ascq: 0x00)) == .failed)
        #expect(SCSISense(bytes: [UInt8]()) == nil)
        #expect(SCSISense(bytes: [0x00, 0x01, 0x02]) == nil)
    }
}
