using System.Runtime.CompilerServices;
using System.Security.Cryptography.X509Certificates;

namespace FlashMla.Server.Security;

/// <summary>Which names of a verified client certificate may name its tenant (option Tls:ClientCertificateTenant).</summary>
public enum ClientCertificateTenantSource
{
    /// <summary>Certificates only open the TLS connection; the tenant comes from the bearer token alone.</summary>
    Off,

    /// <summary>The subject's common names (CN), as most private CAs and cert-manager's Certificate.commonName set them.</summary>
    SubjectCn,

    /// <summary>The DNS names of the subject alternative name extension (a workload's or host's names).</summary>
    DnsSan,
}

/// <summary>
/// The names a client certificate offers for its tenant. Read once per certificate (the data-plane port asks once
/// per connection, Kestrel's port once per call, and Kestrel hands every call of a connection the same certificate
/// object, so the names are kept beside it). The certificate has already been verified by the handshake against
/// Tls:ClientCaFile: that CA vouches for these names, so they need no secrecy and no constant-time comparison.
/// </summary>
public sealed class ClientCertificateNames(ClientCertificateTenantSource source)
{
    private const string CommonNameOid = "2.5.4.3", SubjectAltNameOid = "2.5.29.17";

    private readonly ConditionalWeakTable<X509Certificate2, string[]> _seen = [];

    public ClientCertificateTenantSource Source { get; } = source;

    public bool Enabled => Source != ClientCertificateTenantSource.Off;

    /// <summary>The option's value for each source, as FlashMla:Tls:ClientCertificateTenant spells it.</summary>
    public static bool TryParse(string? value, out ClientCertificateTenantSource source)
    {
        (bool known, source) = value switch
        {
            "off" or "" or null => (true, ClientCertificateTenantSource.Off),
            "subject-cn" => (true, ClientCertificateTenantSource.SubjectCn),
            "dns-san" => (true, ClientCertificateTenantSource.DnsSan),
            _ => (false, ClientCertificateTenantSource.Off),
        };
        return known;
    }

    /// <summary>The names of <paramref name="certificate"/> per <see cref="Source"/>; empty when off, without a certificate, or when it has none.</summary>
    public string[] Of(X509Certificate? certificate)
    {
        if (!Enabled || certificate is null) return [];
        // SslStream hands out an X509Certificate2 already; a plain X509Certificate is read from its bytes.
        return certificate is X509Certificate2 full ? _seen.GetValue(full, Read) : Read(X509CertificateLoader.LoadCertificate(certificate.GetRawCertData()));
    }

    private string[] Read(X509Certificate2 certificate) => Source switch
    {
        ClientCertificateTenantSource.SubjectCn => CommonNames(certificate),
        ClientCertificateTenantSource.DnsSan => DnsNames(certificate),
        _ => [],
    };

    private static string[] CommonNames(X509Certificate2 certificate)
    {
        var names = new List<string>();
        foreach (var rdn in certificate.SubjectName.EnumerateRelativeDistinguishedNames())
        {
            // A multi-valued RDN (CN=x+O=y) is not a plain name: it names no tenant.
            if (rdn.HasMultipleElements || rdn.GetSingleElementType().Value != CommonNameOid) continue;
            if (rdn.GetSingleElementValue() is { Length: > 0 } name) names.Add(name);
        }
        return [.. names];
    }

    private static string[] DnsNames(X509Certificate2 certificate)
    {
        foreach (var extension in certificate.Extensions)
        {
            if (extension.Oid?.Value != SubjectAltNameOid) continue;
            var san = extension as X509SubjectAlternativeNameExtension ?? new X509SubjectAlternativeNameExtension(extension.RawData, extension.Critical);
            return [.. san.EnumerateDnsNames()];
        }
        return [];
    }
}
