using System.Globalization;
using System.Text;

namespace FlashMla.Cli.Soak;

/// <summary>The soak's results as markdown: how it ran, a row per sample (or per <c>everySeconds</c>), the summary.</summary>
internal static class SoakReport
{
    public static string Markdown(SoakSettings s, string server, string machine, IReadOnlyList<SoakSample> samples, SoakSummary summary,
        long churnCycles, double everySeconds)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"## soak, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"Server: {server}; gRPC {s.Address}, data plane {s.DataPlaneAddress}, metrics {s.MetricsAddress}. Client machine: {machine}. Commit {s.Commit}.");
        text.AppendLine(CultureInfo.InvariantCulture,
            $"Load: {s.Minutes} min, {s.Tokens.Count} tenant(s){(s.QuotaToken is null ? "" : " + a quota tenant")}, b={s.Batch}, h_q={s.Heads}, s_k={s.Context}, " +
            $"{s.PauseMilliseconds} ms pause between calls per task, an abusive act every {s.AbuseEverySeconds} s; {churnCycles} connect/call/close cycles.");
        text.AppendLine();
        text.AppendLine("| elapsed s | RSS MB | GC heap live MB | pool held MB | pool idle MB | page-locked MB | calls ok | failed (by code) | connections open | abusive calls [outcomes] |");
        text.AppendLine("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |");
        double next = 0;
        for (int i = 0; i < samples.Count; i++)
        {
            var row = samples[i];
            if (row.ElapsedSeconds + 0.5 < next && i != samples.Count - 1) continue;
            next = row.ElapsedSeconds + everySeconds;
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {row.ElapsedSeconds:F0} | {SoakSample.Mb(row.Server.RssBytes)} | {SoakSample.Mb(row.Server.HeapLiveBytes)} | {SoakSample.Mb(row.Server.PoolHeldBytes)} | {SoakSample.Mb(row.Server.PoolIdleBytes)} | " +
                $"{SoakSample.Mb(row.Server.PoolPageLockedBytes)} | {row.Ok} | {SoakSample.Codes(row.Failed)} | {row.Server.Connections:F0} | {row.AbuseCalls} [{SoakSample.Codes(row.AbuseRefused)}] |");
        }
        text.AppendLine();
        text.AppendLine("Summary:");
        text.AppendLine();
        text.AppendLine("```");
        foreach (string line in summary.Lines()) text.AppendLine(line);
        text.AppendLine("```");
        text.AppendLine();
        return text.ToString();
    }
}
