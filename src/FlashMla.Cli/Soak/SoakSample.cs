namespace FlashMla.Cli.Soak;

/// <summary>
/// One line of the soak: seconds since the load started, the server's figures from its /metrics, and the client's
/// counts so far: calls of the ordinary load (ok, failed by code; any failure there is a finding) and of the abusive
/// clients (which expect refusals, so their codes are counted apart).
/// </summary>
internal sealed record SoakSample(double ElapsedSeconds, ServerFigures Server, long Ok, IReadOnlyDictionary<string, long> Failed,
    long AbuseCalls, IReadOnlyDictionary<string, long> AbuseRefused)
{
    public const double MiB = 1024 * 1024;

    public long FailedTotal => Failed.Values.Sum();

    /// <summary>The line printed every interval.</summary>
    public string Line() =>
        $"{ElapsedSeconds,6:F0} s  rss {Mb(Server.RssBytes),7} MB  heap {Mb(Server.HeapLiveBytes),7} MB  pool held {Mb(Server.PoolHeldBytes),6} idle {Mb(Server.PoolIdleBytes),6} MB  " +
        $"page-locked {Mb(Server.PoolPageLockedBytes),6} MB  ok {Ok,9}  failed {Codes(Failed)}  conns {Server.Connections:F0} " +
        $"(grpc {Count(Server.GrpcConnections)}, data plane {Count(Server.DataPlaneConnections)})  abuse {AbuseCalls} [{Codes(AbuseRefused)}]";

    public static string Mb(double bytes) => double.IsNaN(bytes) ? "n/a" : (bytes / MiB).ToString("F1", System.Globalization.CultureInfo.InvariantCulture);

    private static string Count(double value) => double.IsNaN(value) ? "n/a" : value.ToString("F0", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>"0", or "CODE=n CODE=n" in code order.</summary>
    public static string Codes(IReadOnlyDictionary<string, long> counts) =>
        counts.Count == 0 ? "0" : string.Join(" ", counts.OrderBy(c => c.Key, StringComparer.Ordinal).Select(c => $"{c.Key}={c.Value}"));
}
