import NIOSSL

/// The server's X.509 identity for `NBD_OPT_STARTTLS` (`Spec/export.md` §7). A server given
/// one requires TLS of every client before anything else.
public struct ExportTLS: Sendable {
    let context: NIOSSLContext

    /// Loads a PEM certificate chain (the server's certificate first) and its PEM private key.
    public init(certificate: String, key: String) throws(ExportError) {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificate)
            guard !chain.isEmpty else { throw ExportError(.tls("\(certificate): no PEM certificate in it")) }
            let privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                                         privateKey: .privateKey(privateKey))
            // TLS 1.2 at least (Spec/export.md §7).
            configuration.minimumTLSVersion = .tlsv12
            context = try NIOSSLContext(configuration: configuration)
        } catch let error as ExportError {
            throw error
        } catch {
            throw ExportError(.tls("cannot use \(certificate) and \(key): \(error)"))
        }
    }
}
