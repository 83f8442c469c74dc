using FlashMla.Client;
using FlashMla.Client.Transport;

namespace FlashMla.Cli.Soak;

/// <summary>
/// What one soak runs against and how hard. Tokens: none (a server without a token file), one, or two (two tenants:
/// the load runs once per tenant); <see cref="QuotaToken"/> names a tenant with a small sequence quota that only the
/// abusive client uses, to be refused by it.
/// </summary>
internal sealed record SoakSettings(string Address, string DataPlaneAddress, string MetricsAddress, double Minutes, double IntervalSeconds,
    int Batch, int Heads, int Context, int PauseMilliseconds, double AbuseEverySeconds, double FlatMbPer10Min, string Commit, string? Output)
{
    public IReadOnlyList<string?> Tokens { get; init; } = [null];
    public string? QuotaToken { get; init; }

    /// <summary>Which abusive acts run, in turn (0..7, <see cref="SoakAbuse"/>); all by default.</summary>
    public IReadOnlyList<int> AbuseActs { get; init; } = SoakAbuse.AllActs;
    public ClientTlsOptions? Tls { get; init; }

    /// <summary>Longest soak, minutes.</summary>
    public const double MaxMinutes = 7 * 24 * 60;

    /// <summary>Why these settings cannot run, or null.</summary>
    public string? Problem()
    {
        // A week at most: a soak is a measurement with an end (infinity ran for ever and never wrote its report).
        if (!(Minutes > 0 && Minutes <= MaxMinutes)) return $"--minutes must be positive and at most {MaxMinutes} (a week)";
        if (!(IntervalSeconds >= 1)) return "--interval must be at least 1 s";
        if (Batch < 1 || Heads < 1 || Context < 1) return "--batch, --heads and --context must be positive";
        if (PauseMilliseconds < 0) return "--pause-ms must not be negative";
        if (!(AbuseEverySeconds > 0)) return "--abuse-every must be positive";
        if (!(FlatMbPer10Min > 0 && double.IsFinite(FlatMbPer10Min))) return "--flat-mb must be a positive number (infinity would call any growth flat)";
        if (AbuseActs.Count == 0 || AbuseActs.Any(a => a < 0 || a >= SoakAbuse.AllActs.Length)) return $"--abuse-acts must name acts 0..{SoakAbuse.AllActs.Length - 1}";
        foreach (string address in (string[])[Address, DataPlaneAddress, MetricsAddress])
            if (!Uri.TryCreate(address, UriKind.Absolute, out _)) return $"'{address}' is not an absolute address";
        return null;
    }

    public FlashMlaClientOptions ClientOptions(string? token, bool dataPlane) =>
        new() { BearerToken = token, Tls = Tls, DecodeAddress = dataPlane ? DataPlaneAddress : null };
}
