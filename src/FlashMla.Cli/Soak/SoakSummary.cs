namespace FlashMla.Cli.Soak;

/// <summary>
/// The end of a soak: min, max and last of each server figure over the samples, and the least-squares slope of RSS and
/// of the live heap over the last <see cref="SlopeWindowSeconds"/> (the first minutes, while pools and the JIT warm up,
/// left out when the run is longer). Memory is flat when both slopes are within <paramref name="flatMbPer10Min"/>.
/// </summary>
internal sealed record SoakSummary(IReadOnlyList<(string Name, Range3 Range)> Figures, double RssSlopeMbPer10Min, double HeapSlopeMbPer10Min,
    double SlopeFromSeconds, double SlopeToSeconds, double FlatMbPer10Min, long Ok, long Failed, long AbuseCalls)
{
    public const double SlopeWindowSeconds = 20 * 60;

    public bool Flat => Math.Abs(RssSlopeMbPer10Min) <= FlatMbPer10Min && Math.Abs(HeapSlopeMbPer10Min) <= FlatMbPer10Min;

    public static SoakSummary Of(IReadOnlyList<SoakSample> samples, double flatMbPer10Min)
    {
        if (samples.Count == 0) throw new ArgumentException("no samples", nameof(samples));
        var figures = new List<(string, Range3)>
        {
            ("RSS MB", Range3.Of(samples, s => s.Server.RssBytes / SoakSample.MiB)),
            ("GC heap live MB", Range3.Of(samples, s => s.Server.HeapLiveBytes / SoakSample.MiB)),
            ("tensor pool held MB", Range3.Of(samples, s => s.Server.PoolHeldBytes / SoakSample.MiB)),
            ("tensor pool idle MB", Range3.Of(samples, s => s.Server.PoolIdleBytes / SoakSample.MiB)),
            ("page-locked MB", Range3.Of(samples, s => s.Server.PoolPageLockedBytes / SoakSample.MiB)),
            ("connections open", Range3.Of(samples, s => s.Server.Connections)),
        };
        double to = samples[^1].ElapsedSeconds;
        double from = Math.Max(samples[0].ElapsedSeconds, to - SlopeWindowSeconds);
        var window = samples.Where(s => s.ElapsedSeconds >= from).ToList();
        var last = samples[^1];
        return new SoakSummary(figures, SlopePer10Min(window, s => s.Server.RssBytes / SoakSample.MiB),
            SlopePer10Min(window, s => s.Server.HeapLiveBytes / SoakSample.MiB), from, to, flatMbPer10Min, last.Ok, last.FailedTotal, last.AbuseCalls);
    }

    /// <summary>Least-squares slope of <paramref name="value"/> against elapsed time, per 600 s; NaN with fewer than 2 points or a figure missing.</summary>
    public static double SlopePer10Min(IReadOnlyList<SoakSample> samples, Func<SoakSample, double> value)
    {
        var points = samples.Select(s => (X: s.ElapsedSeconds, Y: value(s))).ToList();
        if (points.Count < 2 || points.Any(p => double.IsNaN(p.Y))) return double.NaN;
        double meanX = points.Average(p => p.X), meanY = points.Average(p => p.Y);
        double sxx = points.Sum(p => (p.X - meanX) * (p.X - meanX));
        if (sxx == 0) return double.NaN;
        double sxy = points.Sum(p => (p.X - meanX) * (p.Y - meanY));
        return sxy / sxx * 600;
    }

    public IEnumerable<string> Lines()
    {
        foreach (var (name, range) in Figures) yield return $"{name,-20} min {range.Min,9:F1}  max {range.Max,9:F1}  last {range.Last,9:F1}";
        yield return $"RSS slope {RssSlopeMbPer10Min:F2} MB/10 min, heap slope {HeapSlopeMbPer10Min:F2} MB/10 min " +
            $"(least squares over {SlopeFromSeconds:F0}..{SlopeToSeconds:F0} s): {(Flat ? "flat" : "NOT flat")} (within +-{FlatMbPer10Min} MB/10 min)";
        yield return $"calls ok {Ok}, failed {Failed}; abusive calls {AbuseCalls}";
    }
}

/// <summary>Min, max and last of one figure; NaN where the server does not export it.</summary>
internal readonly record struct Range3(double Min, double Max, double Last)
{
    public static Range3 Of(IReadOnlyList<SoakSample> samples, Func<SoakSample, double> value)
    {
        var values = samples.Select(value).Where(v => !double.IsNaN(v)).ToList();
        return values.Count == 0 ? new Range3(double.NaN, double.NaN, double.NaN) : new Range3(values.Min(), values.Max(), value(samples[^1]));
    }
}
