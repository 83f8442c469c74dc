using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FlashMla.Cli;

/// <summary>
/// A private CA and the certificates it signs, for development, tests and the device round: a server
/// certificate for given names and addresses, and a client certificate for mTLS. ECDSA P-256 keys, PEM files
/// named as a Kubernetes TLS Secret names them (tls.crt, tls.key, ca.crt). Not for production: the CA's key
/// is written beside the certificates.
/// </summary>
internal static class DevCertificates
{
    private const string ServerAuth = "1.3.6.1.5.5.7.3.1", ClientAuth = "1.3.6.1.5.5.7.3.2";

    /// <summary>A self-signed CA, valid from an hour ago for <paramref name="days"/>.</summary>
    public static X509Certificate2 CreateAuthority(string name, int days = 30)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(days));
    }

    /// <summary>A server certificate signed by <paramref name="authority"/> for the DNS names and IP addresses given.</summary>
    public static X509Certificate2 IssueServer(X509Certificate2 authority, IEnumerable<string> dnsNames, IEnumerable<IPAddress> addresses, int days = 30)
    {
        var names = new SubjectAlternativeNameBuilder();
        string? first = null;
        foreach (string dns in dnsNames)
        {
            names.AddDnsName(dns);
            first ??= dns;
        }
        foreach (var address in addresses) names.AddIpAddress(address);
        return Issue(authority, $"CN={first ?? "flashmla"}", ServerAuth, names.Build(), days);
    }

    /// <summary>
    /// A client certificate (mTLS) signed by <paramref name="authority"/>; <paramref name="name"/> is its subject's CN,
    /// <paramref name="dnsNames"/> (if any) its subject alternative names (the server's Tls:ClientCertificateTenant reads either).
    /// </summary>
    public static X509Certificate2 IssueClient(X509Certificate2 authority, string name, int days = 30, IEnumerable<string>? dnsNames = null,
        IEnumerable<string>? uris = null)
    {
        X509Extension? names = null;
        if (dnsNames is not null || uris is not null)
        {
            var builder = new SubjectAlternativeNameBuilder();
            foreach (string dns in dnsNames ?? []) builder.AddDnsName(dns);
            foreach (string uri in uris ?? []) builder.AddUri(new Uri(uri));
            names = builder.Build();
        }
        return Issue(authority, $"CN={name}", ClientAuth, names, days);
    }

    private static X509Certificate2 Issue(X509Certificate2 authority, string subject, string usage, X509Extension? names, int days)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(usage)], critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        if (names is not null) request.CertificateExtensions.Add(names);
        var notAfter = DateTimeOffset.UtcNow.AddDays(days);
        if (notAfter > authority.NotAfter) notAfter = authority.NotAfter;
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F; // a positive serial number
        using var signed = request.Create(authority, DateTimeOffset.UtcNow.AddHours(-1), notAfter, serial);
        return signed.CopyWithPrivateKey(key);
    }

    /// <summary>Writes the certificate (PEM) to <paramref name="certificatePath"/> and, when given, its private key (PKCS#8 PEM) to <paramref name="keyPath"/>.</summary>
    public static void Write(X509Certificate2 certificate, string certificatePath, string? keyPath = null)
    {
        File.WriteAllText(certificatePath, certificate.ExportCertificatePem() + "\n");
        if (keyPath is null) return;
        var key = (AsymmetricAlgorithm?)certificate.GetECDsaPrivateKey() ?? certificate.GetRSAPrivateKey()
            ?? throw new InvalidOperationException("the certificate has no private key");
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem() + "\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(keyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    /// <summary>
    /// A CA, a server certificate and a client certificate in <paramref name="directory"/>: ca.crt, ca.key, tls.crt,
    /// tls.key, client.crt, client.key (the layout of the Secrets in deploy/).
    /// </summary>
    public static DevCertificateFiles WriteSet(string directory, IEnumerable<string> dnsNames, IEnumerable<IPAddress> addresses, string clientName = "flashmla-client")
    {
        Directory.CreateDirectory(directory);
        var files = new DevCertificateFiles(directory);
        using var authority = CreateAuthority("FlashMLA development CA");
        using var server = IssueServer(authority, dnsNames, addresses);
        using var client = IssueClient(authority, clientName);
        Write(authority, files.Ca, Path.Combine(directory, "ca.key"));
        Write(server, files.Certificate, files.Key);
        Write(client, files.ClientCertificate, files.ClientKey);
        return files;
    }
}

/// <summary>Where <see cref="DevCertificates.WriteSet"/> put each file.</summary>
internal sealed record DevCertificateFiles(string Directory)
{
    public string Ca => Path.Combine(Directory, "ca.crt");
    public string Certificate => Path.Combine(Directory, "tls.crt");
    public string Key => Path.Combine(Directory, "tls.key");
    public string ClientCertificate => Path.Combine(Directory, "client.crt");
    public string ClientKey => Path.Combine(Directory, "client.key");
}
