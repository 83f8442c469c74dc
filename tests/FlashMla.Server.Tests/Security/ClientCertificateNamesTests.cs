using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Server.Security;

namespace FlashMla.Server.Tests.Security;

/// <summary>The names each Tls:ClientCertificateTenant source reads from a certificate, without a handshake.</summary>
public sealed class ClientCertificateNamesTests
{
    private static X509Certificate2 SelfSigned(X509Extension? san)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=client", key, HashAlgorithmName.SHA256);
        if (san is not null) request.CertificateExtensions.Add(san);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(1));
    }

    [Fact]
    public void Uri_san_reads_the_URIs_in_order_and_skips_the_other_kinds_of_name()
    {
        var builder = new SubjectAlternativeNameBuilder();
        builder.AddDnsName("a.example");
        builder.AddUri(new Uri("spiffe://td/ns/a/sa/x"));
        builder.AddIpAddress(System.Net.IPAddress.Loopback);
        builder.AddEmailAddress("ops@example.com");
        builder.AddUri(new Uri("https://b.example/id"));
        using var certificate = SelfSigned(builder.Build());
        Assert.Equal(["spiffe://td/ns/a/sa/x", "https://b.example/id"], new ClientCertificateNames(ClientCertificateTenantSource.UriSan).Of(certificate));
        Assert.Equal(["a.example"], new ClientCertificateNames(ClientCertificateTenantSource.DnsSan).Of(certificate));
        Assert.Equal(["client"], new ClientCertificateNames(ClientCertificateTenantSource.SubjectCn).Of(certificate));
    }

    [Fact]
    public void A_SAN_extension_that_does_not_parse_or_is_absent_names_nothing()
    {
        using var garbled = SelfSigned(new X509Extension("2.5.29.17", [0x30, 0x05, 0x86, 0x10, 0x61], critical: false));
        using var none = SelfSigned(null);
        var uris = new ClientCertificateNames(ClientCertificateTenantSource.UriSan);
        Assert.Empty(uris.Of(garbled));
        Assert.Empty(uris.Of(none));
        Assert.Empty(new ClientCertificateNames(ClientCertificateTenantSource.Off).Of(none));
    }
}
