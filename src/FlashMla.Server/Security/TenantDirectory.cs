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
    private volatile Tenant[] _tenants;

    private readonly Caller _anonymousCaller;

    private TenantDirectory(TokenFile? file)
    {
        RequiresTokens = file is not null;
        Anonymous = new Tenant(Tenant.AnonymousName, isAdmin: !RequiresTokens);
        _anonymousCaller = new Caller(Anonymous, null);
        _tenants = [Anonymous];
        if (file is not null) Apply(file);
    }

    /// <summary>Authentication off: every call is the anonymous tenant's, which sees the whole cache.</summary>
    public static TenantDirectory Open() => new(null);

    public static TenantDirectory FromFile(TokenFile file) => new(file ?? throw new ArgumentNullException(nameof(file)));

    /// <summary>True when a token file is configured: every call but health checks needs one of its tokens.</summary>
    public bool RequiresTokens { get; }

    /// <summary>The one tenant of a server without a token file.</summary>
    public Tenant Anonymous { get; }

    /// <summary>Every tenant ever loaded, plus anonymous: the bounded set of metric labels.</summary>
    public IReadOnlyList<Tenant> Tenants => _tenants;

    /// <summary>Tokens loaded now.</summary>
    public int TokenCount => _credentials.Length;

    /// <summary>
    /// The caller an <c>authorization</c> value names, or UNAUTHENTICATED. With authentication off every call is the
    /// anonymous tenant's, whatever it carries. A token is compared by its SHA-256 hash against every token's hash, in
    /// constant time and without stopping at a match, so the time taken says nothing about which tokens exist.
    /// Both ports call this from a call's headers; when client certificates arrive (mTLS), a certificate's subject
    /// naming a tenant is the other way in, decided here beside the token, so that both ports keep one rule.
    /// </summary>
    public Caller Authenticate(string? authorization)
    {
        if (!RequiresTokens) return _anonymousCaller;
        const string scheme = "Bearer ";
        if (authorization is null || authorization.Length <= scheme.Length || !authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
            throw Unauthenticated("the call carries no bearer token (metadata 'authorization: Bearer <token>')");
        var token = authorization.AsSpan(scheme.Length).Trim(' ');
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        HashOf(token, hash);
        Credential? match = null;
        foreach (var credential in _credentials)
        {
            if (CryptographicOperations.FixedTimeEquals(hash, credential.Hash) && match is null) match = credential;
        }
        if (match is null) throw Unauthenticated("the bearer token is not valid");
        return match.Caller;
    }

    /// <summary>Takes a newly read token file: tenants' quotas and tokens change, tokens no longer listed are revoked.</summary>
    public void Apply(TokenFile file)
    {
        lock (_reloadLock)
        {
            var credentials = new List<Credential>();
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
            }
            var listed = new HashSet<Credential>(credentials);
            var previous = _credentials;
            _credentials = [.. credentials];
            foreach (var credential in previous)
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
