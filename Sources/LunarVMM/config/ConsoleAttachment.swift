import Glibc
import LunarIO

/// The VM's serial console on this side: standard output (raw terminal input, with the Ctrl-A
/// escapes, when standard input is a terminal), a host file, a Unix socket, or nothing.
public final class ConsoleAttachment: @unchecked Sendable {
    /// Where output goes unless a socket takes it; -1 for none.
    public let outputFD: Int32
    private let socket: ConsoleSocket?
    /// Standard input is a terminal: raw mode and the Ctrl-A escapes are on.
    public let interactive: Bool
    private var saved: termios?
    /// Wakes the watcher thread: "s" from a signal handler (stop), "q" to end it.
    private var wake: [Int32] = [-1, -1]
    private var ownsOutput = false

    public init(_ console: VMConfig.Console) throws(VMConfigError) {
        switch console {
        case .terminal:
            outputFD = STDOUT_FILENO
            interactive = isatty(STDIN_FILENO) == 1
            socket = nil
        case .none:
            outputFD = -1
            interactive = false
            socket = nil
        case .socket(let path):
            outputFD = -1
            interactive = false
            socket = try ConsoleSocket(path: path)
        case .file(let path):
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw VMConfigError(.hostFile(path: path, reason: String(cString: strerror(errno)))) }
            outputFD = fd
            ownsOutput = true
            interactive = false
            socket = nil
        }
    }

    deinit {
        if ownsOutput { close(outputFD) }
        socket?.close()
    }

    /// One byte from the guest's UART, written at once (a console is watched live).
    public var output: @Sendable (UInt8) -> Void {
        if let socket { return { socket.emit($0) } }
        let fd = outputFD
        return { byte in
            guard fd >= 0 else { return }
            var b = byte
            while write(fd, &b, 1) < 0 && errno == EINTR {} // EPIPE and the like: the byte is dropped
        }
    }

    /// Raw mode and the Ctrl-A escapes (on a terminal), SIGINT/SIGTERM/SIGHUP: `stop` and
    /// `input` (what is typed, for the guest's UART) are called on a watcher thread.
    public func attach(stop: @escaping @Sendable () -> Void, input: @escaping @Sendable ([UInt8]) -> Void) {
        // A reader of the console that goes away must not kill the VMM before it closes the
        // volume: the guest's output is then dropped.
        _ = signal(SIGPIPE, SIG_IGN)
        guard pipe(&wake) == 0 else { return }
        consoleWakeFD = wake[1]
        for s in [SIGINT, SIGTERM, SIGHUP] {
            _ = signal(s) { _ in
                var b = UInt8(ascii: "s")
                _ = write(consoleWakeFD, &b, 1)
            }
        }
        if interactive {
            var t = termios()
            if tcgetattr(STDIN_FILENO, &t) == 0 {
                saved = t
                // Raw input, output processing kept (a guest printing "\n" still starts a new line).
                t.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
                t.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
                t.c_cflag |= tcflag_t(CS8)
                _ = tcsetattr(STDIN_FILENO, TCSANOW, &t)
            }
        }
        let readWake = wake[0], interactive = self.interactive, socket = self.socket
        let watcher = startThread {
            var terminalOpen = interactive
            var escape = false
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                // [wake, terminal?, listening socket?, socket client?]
                var fds = [pollfd(fd: readWake, events: Int16(POLLIN), revents: 0)]
                if terminalOpen { fds.append(pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)) }
                let client = socket?.client ?? -1
                if let socket { fds.append(pollfd(fd: socket.listenFD, events: Int16(POLLIN), revents: 0)) }
                if client >= 0 { fds.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0)) }
                if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue } else { return } }
                if fds[0].revents != 0 {
                    let n = read(readWake, &buffer, 1)
                    if n <= 0 || buffer[0] == UInt8(ascii: "q") { return }
                    stop()
                }
                if let socket {
                    let at = terminalOpen ? 2 : 1
                    if client >= 0, fds[at + 1].revents != 0 {
                        // Raw bytes: the socket's client has its own way out (it hangs up).
                        let n = read(client, &buffer, buffer.count)
                        if n > 0 { input(Array(buffer[0..<n])) } else if n == 0 || (errno != EAGAIN && errno != EINTR) { socket.dropClient() }
                    }
                    if fds[at].revents != 0 { socket.accept() }
                }
                if terminalOpen, fds[1].revents != 0 {
                    let n = read(STDIN_FILENO, &buffer, buffer.count)
                    if n <= 0 { terminalOpen = false; continue }
                    var typed: [UInt8] = []
                    defer { if !typed.isEmpty { input(typed) } }
                    for byte in buffer[0..<n] {
                        if escape {
                            escape = false
                            switch byte {
                            case UInt8(ascii: "x"), UInt8(ascii: "X"):
                                stop()
                            case UInt8(ascii: "h"), UInt8(ascii: "?"):
                                let help = "\r\nC-a x    stop the VM and exit\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n"
                                _ = help.withCString { write(STDERR_FILENO, $0, strlen($0)) }
                            case 0x01:
                                typed.append(0x01)
                            default:
                                break
                            }
                        } else if byte == 0x01 {
                            escape = true
                        } else {
                            typed.append(byte)
                        }
                    }
                }
            }
        }
        if case .success(let thread) = watcher { pthread_detach(thread) }
    }

    /// Restores the terminal and ends the watcher.
    public func detach() {
        if var t = saved {
            _ = tcsetattr(STDIN_FILENO, TCSANOW, &t)
            saved = nil
        }
        for s in [SIGINT, SIGTERM, SIGHUP] { _ = signal(s, SIG_DFL) }
        if wake[1] >= 0 {
            var b = UInt8(ascii: "q")
            _ = write(wake[1], &b, 1)
        }
        socket?.close()
    }
}

/// Where the signal handlers of `ConsoleAttachment` write (a handler cannot capture).
private nonisolated(unsafe) var consoleWakeFD: Int32 = -1
