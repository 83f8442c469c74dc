using System.Globalization;
using System.Text.RegularExpressions;

namespace FlashMla.Server.Tests;

/// <summary>
/// One scrape of a test server's /metrics, read as Prometheus text. The exporter answers a scrape within 300 ms of the
/// one before with that one's text (its ScrapeResponseCacheDurationMilliseconds): a value that must come back to what an
/// earlier scrape showed is only proven there once a scrape in between showed it change.
/// </summary>
public sealed partial class PrometheusScrape
{
    private readonly string[] _lines;

    private PrometheusScrape(string text) => _lines = text.Split('\n');

    public static async Task<PrometheusScrape> TakeAsync(TestServer server)
    {
        using var http = new HttpClient();
        return new PrometheusScrape(await http.GetStringAsync(server.MetricsAddress + "/metrics"));
    }

    /// <summary>The sum of the samples of <paramref name="metric"/> whose labels include all of <paramref name="labels"/> (0 when none).</summary>
    public double Sum(string metric, params (string Name, string Value)[] labels)
    {
        double sum = 0;
        foreach (string line in _lines)
        {
            var match = Sample().Match(line);
            if (!match.Success || match.Groups["name"].Value != metric) continue;
            var present = new Dictionary<string, string>();
            foreach (Match label in Label().Matches(match.Groups["labels"].Value)) present[label.Groups[1].Value] = label.Groups[2].Value;
            if (labels.All(l => present.TryGetValue(l.Name, out var v) && v == l.Value))
                sum += double.Parse(match.Groups["value"].Value, CultureInfo.InvariantCulture);
        }
        return sum;
    }

    [GeneratedRegex("^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\\{(?<labels>.*)\\})? (?<value>\\S+)")]
    private static partial Regex Sample();

    [GeneratedRegex("([a-zA-Z_][a-zA-Z0-9_]*)=\"((?:[^\"\\\\]|\\\\.)*)\"")]
    private static partial Regex Label();
}
