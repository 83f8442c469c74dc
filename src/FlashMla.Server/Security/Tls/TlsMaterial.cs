using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FlashMla.Server.Security.Tls;

/// <summary>
/// What one generation of the PEM files holds: the server's certificate with its key and chain, ready for
/// handshakes, and the CAs client certificates must chain to (null: none asked for). Immutable; a reload
/// makes a new one.
/// </summary>
public sealed class TlsMaterial
{
    private TlsMaterial(SslStreamCertificateContext server, X509Certificate2 leaf, X509Certificate2Collection? clientCas, byte[] fingerprint)
    {
        Server = server;
        Certificate = leaf;
        ClientCas = clientCas;
        Fingerprint = fingerprint;
    }

    public SslStreamCertificateContext Server { get; }

    /// <summary>The server's own certificate (the first in the file).</summary>
    public X509Certificate2 Certificate { get; }

    public X509Certificate2Collection? ClientCas { get; }

    /// <summary>SHA-256 over the bytes of the files it was loaded from: a reload compares it to see whether they changed.</summary>
    public byte[] Fingerprint { get; }

    /// <summary>Loads the files; throws <see cref="TlsMaterialException"/> with a message that names the file and what is wrong with it.</summary>
    public static TlsMaterial Load(TlsOptions options)
    {
        byte[] certificatePem = Read(options.CertificateFile, "Tls:CertificateFile");
        byte[] keyPem = Read(options.KeyFile, "Tls:KeyFile");
        byte[]? caPem = options.ClientCaFile.Length > 0 ? Read(options.ClientCaFile, "Tls:ClientCaFile") : null;
        return FromPem(certificatePem, keyPem, caPem, options);
    }

    /// <summary>The fingerprint of the files as they are now, without loading them; null when one cannot be read (mid-rotation).</summary>
    public static byte[]? FingerprintOf(TlsOptions options)
    {
        try
        {
            return HashOf(Read(options.CertificateFile, "Tls:CertificateFile"), Read(options.KeyFile, "Tls:KeyFile"),
                options.ClientCaFile.Length > 0 ? Read(options.ClientCaFile, "Tls:ClientCaFile") : null);
        }
        catch (TlsMaterialException)
        {
            return null;
        }
    }

    private static TlsMaterial FromPem(byte[] certificatePem, byte[] keyPem, byte[]? caPem, TlsOptions options)
    {
        var chain = new X509Certificate2Collection();
        X509Certificate2 leaf;
        try
        {
            chain.ImportFromPem(PemText(certificatePem));
            if (chain.Count == 0) throw new CryptographicException("no CERTIFICATE block");
            leaf = X509Certificate2.CreateFromPem(PemText(certificatePem), PemText(keyPem));
        }
        catch (Exception ex) when (ex is CryptographicException or ArgumentException) // a key of another certificate: ArgumentException
        {
            throw new TlsMaterialException($"Tls:CertificateFile '{options.CertificateFile}' with Tls:KeyFile '{options.KeyFile}': {ex.Message} " +
                "(expected a PEM certificate, its chain after it, and its unencrypted PEM private key)", ex);
        }
        if (!leaf.HasPrivateKey)
            throw new TlsMaterialException($"Tls:KeyFile '{options.KeyFile}' holds no private key for the certificate in '{options.CertificateFile}'");
        X509Certificate2Collection? cas = null;
        if (caPem is not null)
        {
            cas = [];
            try
            {
                cas.ImportFromPem(PemText(caPem));
            }
            catch (CryptographicException ex)
            {
                throw new TlsMaterialException($"Tls:ClientCaFile '{options.ClientCaFile}': {ex.Message}", ex);
            }
            if (cas.Count == 0) throw new TlsMaterialException($"Tls:ClientCaFile '{options.ClientCaFile}' holds no PEM certificate");
        }
        // The chain after the leaf goes out in every handshake; offline: no fetching of missing intermediates.
        var intermediates = new X509Certificate2Collection();
        for (int i = 1; i < chain.Count; i++) intermediates.Add(chain[i]);
        var context = SslStreamCertificateContext.Create(leaf, intermediates, offline: true);
        return new TlsMaterial(context, leaf, cas, HashOf(certificatePem, keyPem, caPem));
    }

    private static byte[] Read(string path, string option)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TlsMaterialException($"{option} '{path}' cannot be read: {ex.Message}", ex);
        }
    }

    private static string PemText(byte[] bytes) => System.Text.Encoding.ASCII.GetString(bytes);

    private static byte[] HashOf(byte[] certificatePem, byte[] keyPem, byte[]? caPem)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(certificatePem);
        hash.AppendData(keyPem);
        if (caPem is not null) hash.AppendData(caPem);
        return hash.GetHashAndReset();
    }
}

/// <summary>The PEM files of the TLS options cannot be read or do not hold what they should.</summary>
public sealed class TlsMaterialException(string message, Exception? inner = null) : Exception(message, inner);
