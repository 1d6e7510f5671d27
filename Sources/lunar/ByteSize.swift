import ArgumentParser
import LunarIO

extension ByteSize: ExpressibleByArgument {
    public static var defaultCompletionKind: CompletionKind { .default }
}
