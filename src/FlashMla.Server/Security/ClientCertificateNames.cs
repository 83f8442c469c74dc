using System.Formats.Asn1;
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

    /// <summary>
    /// The URIs of the subject alternative name extension: the SPIFFE IDs (spiffe://trust-domain/ns/N/sa/S) that
    /// service meshes (Istio, Linkerd) and SPIRE put in workload certificates, compared as written (ordinal).
    /// </summary>
    UriSan,
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
            "uri-san" => (true, ClientCertificateTenantSource.UriSan),
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
        ClientCertificateTenantSource.UriSan => UriNames(certificate),
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
        if (SubjectAltName(certificate) is not { } extension) return [];
        var san = extension as X509SubjectAlternativeNameExtension ?? new X509SubjectAlternativeNameExtension(extension.RawData, extension.Critical);
        return [.. san.EnumerateDnsNames()];
    }

    // GeneralName's uniformResourceIdentifier, [6] IA5String (RFC 5280, section 4.2.1.6).
    private static readonly Asn1Tag UriTag = new(TagClass.ContextSpecific, 6);

    /// <summary>
    /// The URIs of the SAN extension (.NET's X509SubjectAlternativeNameExtension reads DNS names and addresses only).
    /// A SAN that does not parse names nothing: the handshake verified the certificate's signature, not that its
    /// extension is well formed.
    /// </summary>
    private static string[] UriNames(X509Certificate2 certificate)
    {
        if (SubjectAltName(certificate) is not { } extension) return [];
        var names = new List<string>();
        try
        {
            var generalNames = new AsnReader(extension.RawData, AsnEncodingRules.DER).ReadSequence();
            while (generalNames.HasData)
            {
                if (generalNames.PeekTag() == UriTag) names.Add(generalNames.ReadCharacterString(UniversalTagNumber.IA5String, UriTag));
                else generalNames.ReadEncodedValue();
            }
        }
        catch (AsnContentException)
        {
            return [];
        }
        return [.. names.Where(n => n.Length > 0)];
    }

    private static X509Extension? SubjectAltName(X509Certificate2 certificate)
    {
        foreach (var extension in certificate.Extensions)
            if (extension.Oid?.Value == SubjectAltNameOid) return extension;
        return null;
    }
}
