using System.Security.Cryptography;
using System.Text;
using FlashMla.Core.Cache;
using Grpc.Core;

namespace FlashMla.Server.Security;

/// <summary>
/// The tenants and their tokens, from the token file; or, when none is configured, one anonymous tenant that every
/// call belongs to (authentication off). Tenants are kept for the server's life by name, so a reload changes a
/// tenant's quotas and tokens but never who owns a sequence; a tenant dropped from the file can no longer call, and
/// its sequences stay until freed by their lease. Thread-safe: calls authenticate against an immutable snapshot, which
/// a reload replaces in one write.
/// </summary>
public sealed class TenantDirectory
{
    private readonly object _reloadLock = new();
    private readonly Dictionary<string, Tenant> _byName = new(StringComparer.Ordinal);
    private volatile Credential[] _credentials = [];
    private volatile Dictionary<string, Credential> _certificateNames = new(StringComparer.Ordinal); // replaced whole by a reload
    private volatile Tenant[] _tenants;

    private readonly Caller _anonymousCaller;

    private TenantDirectory(TokenFile? file, ClientCertificateTenantSource certificateSource)
    {
        RequiresTokens = file is not null;
        CertificateNames = new ClientCertificateNames(file is null ? ClientCertificateTenantSource.Off : certificateSource);
        Anonymous = new Tenant(Tenant.AnonymousName, isAdmin: !RequiresTokens);
        _anonymousCaller = new Caller(Anonymous, null);
        _tenants = [Anonymous];
        if (file is not null) Apply(file);
    }

    /// <summary>Authentication off: every call is the anonymous tenant's, which sees the whole cache.</summary>
    public static TenantDirectory Open() => new(null, ClientCertificateTenantSource.Off);

    /// <param name="certificateSource">Which names of a verified client certificate name its tenant (Tls:ClientCertificateTenant); off: tokens only.</param>
    public static TenantDirectory FromFile(TokenFile file, ClientCertificateTenantSource certificateSource = ClientCertificateTenantSource.Off) =>
        new(file ?? throw new ArgumentNullException(nameof(file)), certificateSource);

    /// <summary>Reads the names a client certificate offers for its tenant (none while Tls:ClientCertificateTenant is off): each port asks it.</summary>
    public ClientCertificateNames CertificateNames { get; }

    /// <summary>True when a token file is configured: every call but health checks needs one of its tokens.</summary>
    public bool RequiresTokens { get; }

    /// <summary>The one tenant of a server without a token file.</summary>
    public Tenant Anonymous { get; }

    /// <summary>Every tenant ever loaded, plus anonymous: the bounded set of metric labels.</summary>
    public IReadOnlyList<Tenant> Tenants => _tenants;

    /// <summary>Tokens loaded now.</summary>
    public int TokenCount => _credentials.Length;

    /// <summary>Client certificate names loaded now.</summary>
    public int CertificateNameCount => _certificateNames.Count;

    /// <summary>
    /// The caller a call's <c>authorization</c> value and its client certificate's names (<see cref="CertificateNames"/>;
    /// empty without mTLS or with Tls:ClientCertificateTenant off) name, or UNAUTHENTICATED. Both ports call this from
    /// a call's headers and its connection's certificate, so both keep one rule:
    /// <list type="bullet">
    /// <item>a token alone, or a certificate name alone, is its tenant;</item>
    /// <item>both: they must name the same tenant, else UNAUTHENTICATED. A call that shows two identities is
    /// misconfigured or is borrowing one identity's rights through the other (a token leaked from tenant B used
    /// from a host whose certificate is A's); taking either silently would make the owner of the sequences it creates
    /// depend on a rule of precedence, so it is refused, and the message says why;</item>
    /// <item>a certificate whose names are not in the file (the CA vouches for it, the file does not name it: e.g.
    /// certificates issued to hosts before the file maps them) adds nothing: a valid token still authenticates;</item>
    /// <item>a certificate whose names map to two different tenants is refused as ambiguous, token or not;</item>
    /// <item>an <c>authorization</c> value that is not a valid token is refused even beside a mapped certificate:
    /// a credential shown must be good.</item>
    /// </list>
    /// With authentication off every call is the anonymous tenant's, whatever it carries. A token is compared by its
    /// SHA-256 hash against every token's hash, in constant time and without stopping at a match, so the time taken
    /// says nothing about which tokens exist. Certificate names are not secrets (the handshake verified them against
    /// Tls:ClientCaFile): a dictionary lookup.
    /// </summary>
    public Caller Authenticate(string? authorization, IReadOnlyList<string>? certificateNames = null)
    {
        if (!RequiresTokens) return _anonymousCaller;
        var byCertificate = CertificateNames.Enabled ? CertificateCredential(certificateNames) : null; // off: names name nobody
        if (authorization is null)
        {
            if (byCertificate is not null) return byCertificate.Caller;
            throw Unauthenticated(CertificateNames.Enabled
                ? "the call carries no bearer token (metadata 'authorization: Bearer <token>') and no client certificate whose name the token file maps to a tenant"
                : "the call carries no bearer token (metadata 'authorization: Bearer <token>')");
        }
        var byToken = TokenCredential(authorization);
        if (byCertificate is null) return byToken.Caller;
        if (!ReferenceEquals(byToken.Tenant, byCertificate.Tenant))
            throw Unauthenticated("the bearer token and the client certificate name different tenants");
        return new Caller(byToken.Tenant, byToken, byCertificate);
    }

    private Credential TokenCredential(string authorization)
    {
        const string scheme = "Bearer ";
        if (authorization.Length <= scheme.Length || !authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
            throw Unauthenticated("the call carries no bearer token (metadata 'authorization: Bearer <token>')");
        var token = authorization.AsSpan(scheme.Length).Trim(' ');
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        HashOf(token, hash);
        Credential? match = null;
        foreach (var credential in _credentials)
        {
            if (CryptographicOperations.FixedTimeEquals(hash, credential.Hash) && match is null) match = credential;
        }
        return match ?? throw Unauthenticated("the bearer token is not valid");
    }

    /// <summary>The credential the certificate's names map to; null when none does; UNAUTHENTICATED when they map to two tenants.</summary>
    private Credential? CertificateCredential(IReadOnlyList<string>? names)
    {
        if (names is null || names.Count == 0) return null;
        var map = _certificateNames;
        Credential? found = null;
        foreach (string name in names)
        {
            if (!map.TryGetValue(name, out var credential)) continue;
            if (found is not null && !ReferenceEquals(found.Tenant, credential.Tenant))
                throw Unauthenticated("the client certificate's names map to more than one tenant in the token file");
            found ??= credential;
        }
        return found;
    }

    /// <summary>Takes a newly read token file: tenants' quotas and tokens change, tokens no longer listed are revoked.</summary>
    public void Apply(TokenFile file)
    {
        lock (_reloadLock)
        {
            var credentials = new List<Credential>();
            var certificateNames = new Dictionary<string, Credential>(StringComparer.Ordinal);
            foreach (var entry in file.Tenants)
            {
                if (!_byName.TryGetValue(entry.Name, out var tenant))
                {
                    tenant = new Tenant(entry.Name, entry.Quota, entry.Admin);
                    _byName.Add(entry.Name, tenant);
                }
                tenant.Quota = entry.Quota;
                tenant.IsAdmin = entry.Admin;
                foreach (string token in entry.Tokens)
                {
                    var hash = new byte[SHA256.HashSizeInBytes];
                    HashOf(token, hash);
                    // A token kept across the reload keeps its credential (open streams that showed it go on).
                    var kept = Array.Find(_credentials, c => ReferenceEquals(c.Tenant, tenant) && CryptographicOperations.FixedTimeEquals(c.Hash, hash));
                    credentials.Add(kept ?? new Credential(hash, tenant));
                }
                foreach (string name in entry.CertificateNames)
                {
                    // A name kept for the same tenant keeps its credential; moved to another tenant, it is a new one and the old is revoked.
                    var kept = _certificateNames.TryGetValue(name, out var before) && ReferenceEquals(before.Tenant, tenant) ? before : null;
                    certificateNames[name] = kept ?? new Credential([], tenant, name); // no hash: a name is looked up, not compared as a secret
                }
            }
            var listed = new HashSet<Credential>(credentials);
            listed.UnionWith(certificateNames.Values);
            var previous = _credentials;
            var previousNames = _certificateNames;
            _credentials = [.. credentials];
            _certificateNames = certificateNames;
            foreach (var credential in previous.Concat(previousNames.Values))
                if (!listed.Contains(credential)) credential.Revoke();
            _tenants = [Anonymous, .. _byName.Values];
        }
    }

    private static void HashOf(ReadOnlySpan<char> token, Span<byte> hash)
    {
        Span<byte> utf8 = token.Length <= 256 ? stackalloc byte[Encoding.UTF8.GetMaxByteCount(token.Length)] : new byte[Encoding.UTF8.GetMaxByteCount(token.Length)];
        int n = Encoding.UTF8.GetBytes(token, utf8);
        SHA256.HashData(utf8[..n], hash);
        CryptographicOperations.ZeroMemory(utf8[..n]);
    }

    private static RpcException Unauthenticated(string message) => new(new Status(StatusCode.Unauthenticated, message));
}
