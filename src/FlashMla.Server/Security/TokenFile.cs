using System.Text.Json;
using System.Text.Json.Serialization;
using FlashMla.Core.Cache;

namespace FlashMla.Server.Security;

/// <summary>
/// The token file (option TokenFile; in Kubernetes a mounted Secret): the tenants, each with its bearer tokens, its
/// quotas and whether it is an admin. JSON:
/// <code>
/// { "tenants": [
///     { "name": "team-a", "tokens": ["...at least 16 characters..."], "maxBlocks": 4096, "maxSequences": 256, "maxRequestsInFlight": 128 },
///     { "name": "ops", "tokens": ["..."], "admin": true },
///     { "name": "team-b", "certificateNames": ["decode-host.team-b.example"] } ] }
/// </code>
/// A tenant may hold several tokens (to rotate: add the new one, move clients over, remove the old one). With
/// Tls:ClientCertificateTenant on, <c>certificateNames</c> lists the names (subject CN or DNS SAN, as that option says)
/// of verified client certificates that are this tenant; a tenant with such names may have no tokens. A quota
/// left out is no limit beyond the server's own. Unknown fields are refused, so a misspelt quota is an error, not
/// silently no limit.
/// </summary>
public sealed record TokenFile(IReadOnlyList<TokenFile.TenantEntry> Tenants)
{
    /// <summary>Shortest token accepted: a bearer token is a password.</summary>
    public const int MinTokenLength = 16;

    /// <summary>Longest certificate name accepted: a DNS name's limit.</summary>
    public const int MaxCertificateNameLength = 253;

    public sealed record TenantEntry(string Name, IReadOnlyList<string> Tokens, bool Admin, TenantQuota Quota)
    {
        /// <summary>Names of client certificates that are this tenant (Tls:ClientCertificateTenant); compared exactly.</summary>
        public IReadOnlyList<string> CertificateNames { get; init; } = [];
    }

    private sealed record FileModel([property: JsonRequired] List<TenantModel> Tenants);

    private sealed record TenantModel(
        [property: JsonRequired] string Name,
        List<string>? Tokens = null,
        bool Admin = false,
        int? MaxBlocks = null,
        int? MaxSequences = null,
        int? MaxRequestsInFlight = null,
        List<string>? CertificateNames = null);

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>Reads and checks the file; every problem (never a token's value) is in the exception's message.</summary>
    public static TokenFile Load(string path) => Parse(File.ReadAllBytes(path), path);

    public static TokenFile Parse(ReadOnlySpan<byte> utf8, string source)
    {
        FileModel? model;
        try
        {
            model = JsonSerializer.Deserialize<FileModel>(utf8, Json);
        }
        catch (JsonException ex)
        {
            // The parser's message names the place (line, path), never the text found there.
            throw new InvalidDataException($"token file {source} is not valid: {ex.Message}");
        }
        if (model?.Tenants is null) throw new InvalidDataException($"token file {source} has no \"tenants\" list");
        var problems = new List<string>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var tokens = new HashSet<string>(StringComparer.Ordinal);
        var certificateNames = new HashSet<string>(StringComparer.Ordinal);
        var entries = new List<TenantEntry>();
        for (int i = 0; i < model.Tenants.Count; i++)
        {
            var t = model.Tenants[i];
            string where = $"tenants[{i}]";
            if (t is null) { problems.Add($"{where} is null"); continue; }
            if (!IsName(t.Name)) problems.Add($"{where}: name '{t.Name}' must be 1..63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit");
            else if (t.Name == Tenant.AnonymousName) problems.Add($"{where}: the name '{Tenant.AnonymousName}' is reserved for calls without authentication");
            else if (!names.Add(t.Name)) problems.Add($"{where}: tenant '{t.Name}' appears twice");
            if ((t.Tokens is null || t.Tokens.Count == 0) && (t.CertificateNames is null || t.CertificateNames.Count == 0))
                problems.Add($"{where} ('{t.Name}') has no tokens (and no certificateNames)");
            for (int k = 0; k < (t.CertificateNames?.Count ?? 0); k++)
            {
                string name = t.CertificateNames![k];
                if (name is null || name.Length is 0 or > MaxCertificateNameLength || !name.All(c => c is >= ' ' and <= '~'))
                    problems.Add($"{where}.certificateNames[{k}] must be 1..{MaxCertificateNameLength} printable ASCII characters");
                else if (!certificateNames.Add(name)) problems.Add($"{where}.certificateNames[{k}] '{name}' appears twice (each certificate name names one tenant)");
            }
            for (int k = 0; k < (t.Tokens?.Count ?? 0); k++)
            {
                string token = t.Tokens![k];
                if (token is null || token.Length < MinTokenLength || !token.All(c => c is > ' ' and <= '~'))
                    problems.Add($"{where}.tokens[{k}] must be at least {MinTokenLength} printable ASCII characters without spaces");
                else if (!tokens.Add(token)) problems.Add($"{where}.tokens[{k}] is also another token's value (each token names one tenant)");
            }
            CheckQuota(problems, where, "maxBlocks", t.MaxBlocks);
            CheckQuota(problems, where, "maxSequences", t.MaxSequences);
            CheckQuota(problems, where, "maxRequestsInFlight", t.MaxRequestsInFlight);
            entries.Add(new TenantEntry(t.Name, t.Tokens ?? [], t.Admin, new TenantQuota(t.MaxBlocks, t.MaxSequences, t.MaxRequestsInFlight))
                { CertificateNames = t.CertificateNames ?? [] });
        }
        if (problems.Count > 0) throw new InvalidDataException($"token file {source} is not valid: " + string.Join("; ", problems));
        return new TokenFile(entries);
    }

    private static void CheckQuota(List<string> problems, string where, string name, int? value)
    {
        if (value is < 1) problems.Add($"{where}: {name} must be at least 1 (leave it out for no limit), got {value}");
    }

    /// <summary>A tenant name is a metric label value and a log field: short, plain, and never the reserved one.</summary>
    private static bool IsName(string? name) =>
        name is { Length: >= 1 and <= 63 } && char.IsAsciiLetterOrDigit(name[0]) && name.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '_' or '-');
}
