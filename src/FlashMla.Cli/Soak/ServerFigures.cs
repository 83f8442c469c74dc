using System.Globalization;

namespace FlashMla.Cli.Soak;

/// <summary>
/// The server's memory and connection figures of one scrape of its /metrics (Prometheus text): RSS, the GC's live
/// heap, the tensor pool's held, idle (kept for reuse) and page-locked bytes, and the connections open on the gRPC port (Kestrel's meter,
/// the metrics port's own left out) and the data-plane port. A figure the server does not export is NaN.
/// </summary>
internal sealed record ServerFigures(double RssBytes, double HeapLiveBytes, double PoolHeldBytes, double PoolIdleBytes, double PoolPageLockedBytes,
    double GrpcConnections, double DataPlaneConnections)
{
    public double Connections => (double.IsNaN(GrpcConnections) ? 0 : GrpcConnections) + (double.IsNaN(DataPlaneConnections) ? 0 : DataPlaneConnections);

    /// <param name="metricsPort">The metrics port: its connections (the scraper's own) are not counted.</param>
    public static ServerFigures Parse(string text, int metricsPort)
    {
        var samples = PrometheusSample.ParseAll(text);
        return new ServerFigures(
            Sum(samples, "flashmla_process_resident_memory_bytes"),
            Sum(samples, "flashmla_gc_heap_live_bytes"),
            Sum(samples, "flashmla_tensor_pool_bytes", s => s.Label("state") == "held"),
            Sum(samples, "flashmla_tensor_pool_bytes", s => s.Label("state") == "idle"),
            Sum(samples, "flashmla_tensor_pool_bytes", s => s.Label("state") == "page_locked"),
            Sum(samples, "kestrel_active_connections", s => s.Label("server_port") != metricsPort.ToString(CultureInfo.InvariantCulture)),
            Sum(samples, "flashmla_dataplane_connections"));
    }

    /// <summary>The sum of the named series' samples that pass <paramref name="where"/>; NaN when the name has none.</summary>
    private static double Sum(IReadOnlyList<PrometheusSample> samples, string name, Func<PrometheusSample, bool>? where = null)
    {
        double sum = 0;
        bool any = false;
        foreach (var sample in samples)
        {
            if (sample.Name != name) continue;
            any = true; // a name with every sample filtered out is present, with 0
            if (where is null || where(sample)) sum += sample.Value;
        }
        return any ? sum : double.NaN;
    }
}

/// <summary>One sample line of the Prometheus text format: name, labels, value (timestamps are ignored).</summary>
internal sealed record PrometheusSample(string Name, IReadOnlyDictionary<string, string> Labels, double Value)
{
    public string? Label(string name) => Labels.TryGetValue(name, out var value) ? value : null;

    /// <summary>Every sample line; comments, blank lines and lines that are not samples are skipped.</summary>
    public static List<PrometheusSample> ParseAll(string text)
    {
        var result = new List<PrometheusSample>();
        foreach (string raw in text.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (line.Length == 0 || line[0] == '#') continue;
            if (TryParse(line, out var sample)) result.Add(sample);
        }
        return result;
    }

    public static bool TryParse(string line, out PrometheusSample sample)
    {
        sample = null!;
        int i = 0;
        while (i < line.Length && (char.IsAsciiLetterOrDigit(line[i]) || line[i] is '_' or ':')) i++;
        if (i == 0 || char.IsAsciiDigit(line[0])) return false;
        string name = line[..i];
        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        if (i < line.Length && line[i] == '{')
        {
            i++;
            while (i < line.Length && line[i] != '}')
            {
                int eq = line.IndexOf('=', i);
                if (eq < 0 || eq + 1 >= line.Length || line[eq + 1] != '"') return false;
                string key = line[i..eq].Trim();
                var value = new System.Text.StringBuilder();
                int j = eq + 2;
                for (; j < line.Length && line[j] != '"'; j++)
                {
                    if (line[j] == '\\' && j + 1 < line.Length)
                    {
                        j++;
                        value.Append(line[j] == 'n' ? '\n' : line[j]);
                    }
                    else value.Append(line[j]);
                }
                if (j >= line.Length) return false; // unterminated value
                labels[key] = value.ToString();
                i = j + 1;
                if (i < line.Length && line[i] == ',') i++;
            }
            if (i >= line.Length) return false;
            i++;
        }
        var rest = line[i..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (rest.Length == 0 || !TryParseValue(rest[0], out double number)) return false;
        sample = new PrometheusSample(name, labels, number);
        return true;
    }

    private static bool TryParseValue(string text, out double value)
    {
        switch (text)
        {
            case "+Inf": value = double.PositiveInfinity; return true;
            case "-Inf": value = double.NegativeInfinity; return true;
            case "NaN": value = double.NaN; return true;
            default: return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
        }
    }
}
