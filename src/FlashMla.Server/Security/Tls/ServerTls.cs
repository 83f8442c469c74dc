using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace FlashMla.Server.Security.Tls;

/// <summary>
/// The server side of TLS for both ports: the certificate in use now (swapped by <see cref="Reload"/>, so new
/// handshakes take the new one while open connections keep theirs), the handshake settings built from it, and
/// the data-plane port's handshake. Off (<see cref="Enabled"/> false) both ports speak cleartext.
/// </summary>
public sealed class ServerTls
{
    /// <summary>Time a client has to finish its handshake (Kestrel's default too): a silent peer does not hold a task for ever.</summary>
    public static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);

    private static readonly List<SslApplicationProtocol> H2Only = [SslApplicationProtocol.Http2];
    private volatile TlsMaterial? _material;
    private byte[]? _lastRefused; // the fingerprint of files that failed to load, reported once

    private ServerTls(TlsOptions options, TlsMaterial? material)
    {
        Options = options;
        _material = material;
    }

    /// <summary>Loads the files when TLS is on; throws <see cref="TlsMaterialException"/> when they cannot serve.</summary>
    public static ServerTls Create(TlsOptions options) => new(options, options.Enabled ? TlsMaterial.Load(options) : null);

    public TlsOptions Options { get; }

    public bool Enabled => _material is not null;

    /// <summary>The material handshakes use now; null when TLS is off.</summary>
    public TlsMaterial? Current => _material;

    /// <summary>What the start-up log says of a TLS port: cleartext, or TLS with the certificate and whether clients need one.</summary>
    public string Describe()
    {
        if (_material is not { } m) return "cleartext h2c";
        string clients = m.ClientCas is null ? "no client certificate asked" : $"client certificates required, {m.ClientCas.Count} CA(s)";
        return $"TLS 1.2/1.3, ALPN h2, certificate {m.Certificate.Subject} valid until {m.Certificate.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC, {clients}";
    }

    /// <summary>
    /// Reads the files again and swaps the material in when their bytes changed and load. Returns what happened,
    /// for the log; null when nothing changed or the same bad bytes were reported already. Called by one poller.
    /// </summary>
    public TlsReload? Reload()
    {
        if (_material is not { } current) return null;
        byte[] seen = TlsMaterial.FingerprintOf(Options) ?? []; // unreadable (mid-rotation): a state of its own
        if (seen.AsSpan().SequenceEqual(current.Fingerprint))
        {
            _lastRefused = null;
            return null;
        }
        if (_lastRefused is { } refused && seen.AsSpan().SequenceEqual(refused)) return null;
        try
        {
            var next = TlsMaterial.Load(Options);
            _material = next;
            _lastRefused = null;
            return new TlsReload(true, null, next);
        }
        catch (TlsMaterialException ex)
        {
            // Mid-rotation (the certificate written, its key not yet) or a bad file: keep serving the old one, try again when the bytes change.
            _lastRefused = seen;
            return new TlsReload(false, ex.Message, current);
        }
    }

    /// <summary>
    /// Handshake settings for one connection, from the material in use now: TLS 1.2 or 1.3, ALPN h2 only, the
    /// server's chain, and with a client CA a client certificate required that chains to it. New for every
    /// handshake: SslStream may add to the chain policy it is given.
    /// </summary>
    public SslServerAuthenticationOptions HandshakeOptions()
    {
        var material = _material ?? throw new InvalidOperationException("TLS is off");
        var options = new SslServerAuthenticationOptions
        {
            ServerCertificateContext = material.Server,
            ApplicationProtocols = H2Only,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        };
        if (material.ClientCas is { } cas)
        {
            options.ClientCertificateRequired = true;
            var policy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            policy.CustomTrustStore.AddRange(cas);
            policy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid("1.3.6.1.5.5.7.3.2")); // id-kp-clientAuth, when the certificate names uses
            options.CertificateChainPolicy = policy;
            // Any chain error (untrusted, expired, no certificate at all) refuses the handshake.
            options.RemoteCertificateValidationCallback = static (_, certificate, _, errors) => certificate is not null && errors == SslPolicyErrors.None;
        }
        return options;
    }

    /// <summary>
    /// The transport of one accepted data-plane socket: a NetworkStream over it when TLS is off, else an SslStream
    /// after a handshake (which must finish within <see cref="HandshakeTimeout"/>), over a
    /// <see cref="FlashMla.Http2.TlsRecordBatchingStream"/> (its buffers from <paramref name="buffers"/>) that sends and
    /// receives the TLS records in large pieces. Throws when the handshake fails.
    /// </summary>
    public async Task<Stream> AcceptAsync(Socket socket, CancellationToken cancellationToken, System.Buffers.ArrayPool<byte>? buffers = null)
    {
        var network = new NetworkStream(socket, ownsSocket: false);
        if (_material is null) return network;
        var records = new FlashMla.Http2.TlsRecordBatchingStream(network, buffers);
        var ssl = new SslStream(records, leaveInnerStreamOpen: false);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(HandshakeTimeout);
        try
        {
            await ssl.AuthenticateAsServerAsync(HandshakeOptions(), timeout.Token).ConfigureAwait(false);
            records.StartBatching();
            return ssl;
        }
        catch
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }
}

/// <summary>What a reload did: swapped the material in (Swapped), or kept the old one for <see cref="Problem"/>.</summary>
public sealed record TlsReload(bool Swapped, string? Problem, TlsMaterial InUse);
