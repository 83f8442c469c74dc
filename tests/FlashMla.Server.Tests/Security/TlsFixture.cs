using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Cli;
using FlashMla.Client.Transport;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// A development CA with a server and a client certificate in a folder of their own (deleted at disposal), the
/// server options that point FlashMla:Tls at them, and a raw TLS handshake for inspecting what a port offers.
/// </summary>
public sealed class TlsFixture : IDisposable
{
    public TlsFixture()
    {
        Directory = Path.Combine(Path.GetTempPath(), "flashmla-tls-" + Guid.NewGuid().ToString("N"));
        Files = DevCertificates.WriteSet(Directory, ["localhost"], [IPAddress.Loopback]);
    }

    public string Directory { get; }
    internal DevCertificateFiles Files { get; }

    /// <summary>Server options: TLS with these files; with <paramref name="mutual"/> client certificates from this CA are required.</summary>
    public (string Name, object Value)[] ServerOptions(bool mutual = false, double reloadSeconds = 10)
    {
        var options = new List<(string, object)>
        {
            ("Tls:CertificateFile", Files.Certificate), ("Tls:KeyFile", Files.Key), ("Tls:ReloadIntervalSeconds", reloadSeconds),
        };
        if (mutual) options.Add(("Tls:ClientCaFile", Files.Ca));
        return [.. options];
    }

    /// <summary>The client's settings: trust this CA, and present the client certificate when <paramref name="withClientCertificate"/>.</summary>
    public ClientTlsOptions Client(bool withClientCertificate = false) => new()
    {
        CaFile = Files.Ca,
        ClientCertificateFile = withClientCertificate ? Files.ClientCertificate : null,
        ClientKeyFile = withClientCertificate ? Files.ClientKey : null,
    };

    /// <summary>
    /// A client certificate of this CA with subject CN <paramref name="commonName"/> (and DNS SANs, if given), written
    /// beside the others; the client's settings that present it.
    /// </summary>
    public ClientTlsOptions ClientWithCertificate(string commonName, params string[] dnsNames)
    {
        using var authority = X509Certificate2.CreateFromPemFile(Files.Ca, Path.Combine(Directory, "ca.key"));
        using var client = DevCertificates.IssueClient(authority, commonName, dnsNames: dnsNames.Length > 0 ? dnsNames : null);
        string stem = Path.Combine(Directory, "client-" + Guid.NewGuid().ToString("N"));
        DevCertificates.Write(client, stem + ".crt", stem + ".key");
        return new ClientTlsOptions { CaFile = Files.Ca, ClientCertificateFile = stem + ".crt", ClientKeyFile = stem + ".key" };
    }

    /// <summary>A client certificate with <paramref name="commonName"/> and URIs (SPIFFE IDs) and DNS names in its SAN.</summary>
    public ClientTlsOptions ClientWithUris(string commonName, string[] uris, params string[] dnsNames)
    {
        using var authority = X509Certificate2.CreateFromPemFile(Files.Ca, Path.Combine(Directory, "ca.key"));
        using var client = DevCertificates.IssueClient(authority, commonName, dnsNames: dnsNames, uris: uris);
        string stem = Path.Combine(Directory, "client-" + Guid.NewGuid().ToString("N"));
        DevCertificates.Write(client, stem + ".crt", stem + ".key");
        return new ClientTlsOptions { CaFile = Files.Ca, ClientCertificateFile = stem + ".crt", ClientKeyFile = stem + ".key" };
    }

    public X509Certificate2 ServerCertificate() => X509CertificateLoader.LoadCertificateFromFile(Files.Certificate);

    /// <summary>
    /// A TLS handshake with the port at <paramref name="address"/> offering h2 and http/1.1, trusting this CA only; the
    /// stream is returned open (dispose it).
    /// </summary>
    public async Task<SslStream> HandshakeAsync(string address, X509Certificate2? clientCertificate = null)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, new Uri(address).Port);
        var ssl = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false);
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.Add(X509CertificateLoader.LoadCertificateFromFile(Files.Ca));
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            // A full handshake every time: a resumed session reports the certificate of the session it resumes.
            AllowTlsResume = false,
            ApplicationProtocols = [SslApplicationProtocol.Http2, SslApplicationProtocol.Http11],
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateChainPolicy = policy,
            ClientCertificateContext = clientCertificate is null ? null : SslStreamCertificateContext.Create(clientCertificate, null),
        }).WaitAsync(TimeSpan.FromSeconds(10));
        return ssl;
    }

    /// <summary>Replaces the server's certificate and key with a new pair from the same CA, as a renewal (cert-manager's) does.</summary>
    internal X509Certificate2 RotateServerCertificate()
    {
        using var authority = X509Certificate2.CreateFromPemFile(Files.Ca, Path.Combine(Directory, "ca.key"));
        var next = DevCertificates.IssueServer(authority, ["localhost"], [IPAddress.Loopback]);
        // The key first, then the certificate, each moved over whole: between the two moves the pair does not match,
        // which the server must survive (it keeps the old pair until both files agree).
        DevCertificates.Write(next, Files.Certificate + ".new", Files.Key + ".new");
        File.Move(Files.Key + ".new", Files.Key, overwrite: true);
        Thread.Sleep(300);
        File.Move(Files.Certificate + ".new", Files.Certificate, overwrite: true);
        return next;
    }

    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}
