using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FlashMla.Client.Transport;

/// <summary>
/// How the client speaks TLS to https:// addresses (both of the server's ports): which CAs it trusts for the
/// server's certificate, which name it expects the certificate to carry, and the certificate it presents when the
/// server asks for one (mTLS). Files are PEM, the form a Kubernetes Secret mounts.
/// </summary>
public sealed record ClientTlsOptions
{
    /// <summary>PEM bundle of the CAs the server's certificate must chain to, instead of the system's trust store. Null: the system's.</summary>
    public string? CaFile { get; init; }

    /// <summary>
    /// The name the server's certificate must carry, sent as SNI too; null: the address's host. For addresses by IP
    /// (a pod's) whose certificate names the Service instead.
    /// </summary>
    public string? ServerName { get; init; }

    /// <summary>PEM certificate (chain after it) this client presents when the server asks (mTLS); goes with <see cref="ClientKeyFile"/>.</summary>
    public string? ClientCertificateFile { get; init; }

    /// <summary>Unencrypted PEM private key of <see cref="ClientCertificateFile"/>.</summary>
    public string? ClientKeyFile { get; init; }

    internal void Validate()
    {
        if (ClientCertificateFile is null != ClientKeyFile is null)
            throw new ArgumentException("ClientCertificateFile and ClientKeyFile go together: set both or neither");
    }

    /// <summary>The files loaded once, for every connection a handler opens.</summary>
    internal ClientTlsCredentials Load() => new(this);
}

/// <summary>The loaded form of <see cref="ClientTlsOptions"/>: trusted CAs and the client certificate, and the handshake settings built from them.</summary>
internal sealed class ClientTlsCredentials
{
    private static readonly List<SslApplicationProtocol> H2Only = [SslApplicationProtocol.Http2];
    private readonly X509Certificate2Collection? _cas;
    private readonly SslStreamCertificateContext? _clientCertificate;

    public ClientTlsCredentials(ClientTlsOptions options)
    {
        options.Validate();
        ServerName = options.ServerName;
        try
        {
            if (options.CaFile is { } caFile)
            {
                _cas = [];
                _cas.ImportFromPemFile(caFile);
                if (_cas.Count == 0) throw new CryptographicException($"no PEM certificate in {caFile}");
            }
            if (options.ClientCertificateFile is { } certificateFile)
            {
                var chain = new X509Certificate2Collection();
                chain.ImportFromPemFile(certificateFile);
                var leaf = X509Certificate2.CreateFromPemFile(certificateFile, options.ClientKeyFile);
                var intermediates = new X509Certificate2Collection();
                for (int i = 1; i < chain.Count; i++) intermediates.Add(chain[i]);
                _clientCertificate = SslStreamCertificateContext.Create(leaf, intermediates, offline: true);
            }
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException) // a key of another certificate: ArgumentException
        {
            throw new ArgumentException($"client TLS files cannot be loaded: {ex.Message}", nameof(options), ex);
        }
    }

    public string? ServerName { get; }

    /// <summary>Settings of one handshake with <paramref name="host"/> on this library's transport: ALPN h2 only, TLS 1.2 or 1.3.</summary>
    public SslClientAuthenticationOptions ForHost(string host)
    {
        var options = ForSocketsHttpHandler();
        options.TargetHost = ServerName ?? host;
        options.ApplicationProtocols = H2Only;
        options.RemoteCertificateValidationCallback = null; // SslStream checks the name against TargetHost itself
        return options;
    }

    /// <summary>
    /// Settings for SocketsHttpHandler, which sets the target host (the request's) and ALPN itself: a
    /// <see cref="ServerName"/> is then checked here, by the certificate-validation callback.
    /// </summary>
    public SslClientAuthenticationOptions ForSocketsHttpHandler()
    {
        var options = new SslClientAuthenticationOptions
        {
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificateContext = _clientCertificate,
        };
        if (_cas is not null)
        {
            // New for every handshake: SslStream adds the certificates the server sent to the policy's extra store.
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.AddRange(_cas);
            options.CertificateChainPolicy = policy;
        }
        if (ServerName is { } name)
        {
            // SocketsHttpHandler checked the name against the request's host; what counts is the name given here.
            options.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                (errors & ~SslPolicyErrors.RemoteCertificateNameMismatch) == SslPolicyErrors.None &&
                certificate is X509Certificate2 c && c.MatchesHostname(name);
        }
        return options;
    }
}
