/// The numbers of the NBD protocol as `Spec/export.md` §2 lists them: magics, options, option
/// replies, information items, commands, flags, reply chunk types and error values.
enum NBD {
    static let initPassword: UInt64 = 0x4E42_444D_4147_4943 // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054 // "IHAVEOPT"
    static let optionReplyMagic: UInt64 = 0x0003_E889_0455_65A9
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleReplyMagic: UInt32 = 0x6744_6698
    static let structuredReplyMagic: UInt32 = 0x668E_33EF

    /// Handshake flags the server sends, client flags it accepts.
    struct HandshakeFlags: OptionSet {
        let rawValue: UInt16
        static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
        static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
    }

    struct ClientFlags: OptionSet {
        let rawValue: UInt32
        static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
        static let noZeroes = ClientFlags(rawValue: 1 << 1)
        static let known: ClientFlags = [.fixedNewstyle, .noZeroes]
    }

    struct TransmissionFlags: OptionSet {
        let rawValue: UInt16
        static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
        static let readOnly = TransmissionFlags(rawValue: 1 << 1)
        static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
        static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
        static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
        static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
        static let sendDF = TransmissionFlags(rawValue: 1 << 7)
        static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
        static let sendCache = TransmissionFlags(rawValue: 1 << 10)
        static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
    }

    enum Option: UInt32 {
        case exportName = 1
        case abort = 2
        case list = 3
        case startTLS = 5
        case info = 6
        case go = 7
        case structuredReply = 8
        case listMetaContext = 9
        case setMetaContext = 10
    }

    enum OptionReply: UInt32 {
        case ack = 1
        case server = 2
        case info = 3
        case metaContext = 4
        case errorUnsupported = 0x8000_0001
        case errorPolicy = 0x8000_0002
        case errorInvalid = 0x8000_0003
        case errorPlatform = 0x8000_0004
        case errorTLSRequired = 0x8000_0005
        case errorUnknown = 0x8000_0006
        case errorShutdown = 0x8000_0007
        case errorBlockSizeRequired = 0x8000_0008
        case errorTooBig = 0x8000_0009
    }

    enum Info: UInt16 {
        case export = 0
        case name = 1
        case description = 2
        case blockSize = 3
    }

    enum Command: UInt16 {
        case read = 0
        case write = 1
        case disconnect = 2
        case flush = 3
        case trim = 4
        case cache = 5
        case writeZeroes = 6
        case blockStatus = 7
    }

    struct CommandFlags: OptionSet {
        let rawValue: UInt16
        static let fua = CommandFlags(rawValue: 1 << 0)
        static let noHole = CommandFlags(rawValue: 1 << 1)
        static let dontFragment = CommandFlags(rawValue: 1 << 2)
        static let requestOne = CommandFlags(rawValue: 1 << 3)
        static let fastZero = CommandFlags(rawValue: 1 << 4)
    }

    enum ChunkType: UInt16 {
        case none = 0
        case offsetData = 1
        case offsetHole = 2
        case blockStatus = 5
        case error = 0x8001
        case errorOffset = 0x8002
    }

    static let replyFlagDone: UInt16 = 1

    /// The error values a reply may carry (`Spec/export.md` §6).
    enum Errno: UInt32, Error {
        case permission = 1
        case io = 5
        case noMemory = 12
        case invalid = 22
        case noSpace = 28
        case overflow = 75
        case notSupported = 95
        case shutdown = 108
    }

    /// `base:allocation` status flags.
    static let stateHole: UInt32 = 1 << 0
    static let stateZero: UInt32 = 1 << 1
    /// `qemu:dirty-bitmap:` status flag: the range changed (`Spec/export.md` §5).
    static let stateDirty: UInt32 = 1 << 0
}
