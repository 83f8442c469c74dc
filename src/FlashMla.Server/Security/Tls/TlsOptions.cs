namespace FlashMla.Server.Security.Tls;

/// <summary>
/// TLS of the gRPC and data-plane ports, section "FlashMla:Tls" (environment FlashMla__Tls__Name). Without a
/// certificate both ports speak cleartext HTTP/2 (h2c), the default for loopback and tests; with one, both speak
/// TLS 1.2 or 1.3 with ALPN h2 only. The metrics port stays cleartext either way (README, "TLS").
/// </summary>
public sealed class TlsOptions
{
    /// <summary>PEM certificate of the server, its chain after it (a Kubernetes TLS Secret's tls.crt). Empty: no TLS.</summary>
    public string CertificateFile { get; set; } = "";

    /// <summary>PEM private key of that certificate (tls.key): PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.</summary>
    public string KeyFile { get; set; } = "";

    /// <summary>PEM bundle of the CAs that sign client certificates (ca.crt). Set: every client must present a certificate that chains to one of them (mTLS).</summary>
    public string ClientCaFile { get; set; } = "";

    /// <summary>
    /// How often the three files are read again, seconds: when their bytes change, new handshakes use the new
    /// certificate (open connections keep theirs). 0 reads them once, at start-up.
    /// </summary>
    public double ReloadIntervalSeconds { get; set; } = 10;

    /// <summary>
    /// Which names of a verified client certificate name its tenant, looked up in the token file's
    /// <c>certificateNames</c>: <c>off</c> (the default: the tenant comes from the bearer token alone),
    /// <c>subject-cn</c> (the subject's common name), <c>dns-san</c> (the subject alternative name's DNS names) or
    /// <c>uri-san</c> (its URIs: SPIFFE IDs of a service mesh).
    /// Needs <see cref="ClientCaFile"/> (only a verified certificate may name a tenant) and a token file. The same
    /// rule on both ports; with a bearer token as well, both must name the same tenant (TenantDirectory.Authenticate).
    /// </summary>
    public string ClientCertificateTenant { get; set; } = "off";

    public Security.ClientCertificateTenantSource ClientCertificateTenantSource =>
        Security.ClientCertificateNames.TryParse(ClientCertificateTenant, out var source) ? source : Security.ClientCertificateTenantSource.Off;

    public bool Enabled => CertificateFile.Length > 0;

    public IEnumerable<string> Validate()
    {
        if (CertificateFile.Length > 0 != KeyFile.Length > 0)
            yield return "Tls:CertificateFile and Tls:KeyFile go together: set both (TLS) or neither (cleartext)";
        if (ClientCaFile.Length > 0 && CertificateFile.Length == 0)
            yield return "Tls:ClientCaFile needs Tls:CertificateFile and Tls:KeyFile (client certificates are asked for in a TLS handshake)";
        if (ReloadIntervalSeconds is < 0 or > 86_400) yield return $"Tls:ReloadIntervalSeconds must be 0..86400, got {ReloadIntervalSeconds}";
        if (!Security.ClientCertificateNames.TryParse(ClientCertificateTenant, out var source))
            yield return $"Tls:ClientCertificateTenant must be off, subject-cn, dns-san or uri-san, got '{ClientCertificateTenant}'";
        else if (source != Security.ClientCertificateTenantSource.Off && ClientCaFile.Length == 0)
            yield return "Tls:ClientCertificateTenant needs Tls:ClientCaFile (only a certificate the handshake verified may name a tenant)";
    }
}
