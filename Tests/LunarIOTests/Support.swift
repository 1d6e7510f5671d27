import LunarIO
import LunarTesting

extension IOError.Kind {
    var isMisalignedOffset: Bool { if case .misalignedOffset = self { true } else { false } }
    var isMisalignedLength: Bool { if case .misalignedLength = self { true } else { false } }
    var isMisalignedBuffer: Bool { if case .misalignedBuffer = self { true } else { false } }
    var isBeyondEnd: Bool { if case .beyondEnd = self { true } else { false } }
    var isShortTransfer: Bool { if case .shortTransfer = self { true } else { false } }
    var isDeviceTooSmall: Bool { if case .deviceTooSmall = self { true } else { false } }
    var isQueueFull: Bool { if case .queueFull = self { true } else { false } }
}

/// Runs `body` and returns the IOError it threw, or nil.
func ioError(_ body: () async throws -> Void) async -> IOError? {
    do {
        try await body()
        return nil
    } catch let error as IOError {
        return error
    } catch {
        return nil
    }
}
