using FlashMla.Cli.Soak;

namespace FlashMla.Server.Tests.Soak;

/// <summary>The soak's summary: min/max/last of each figure, the slopes over the last 20 minutes, and what counts as flat.</summary>
public sealed class SoakSummaryTests
{
    private const double MiB = 1024 * 1024;

    /// <summary>A sample every 10 s for <paramref name="seconds"/>, RSS and heap (in MB) as the functions of time say.</summary>
    private static List<SoakSample> Samples(double seconds, Func<double, double> rssMb, Func<double, double> heapMb)
    {
        var samples = new List<SoakSample>();
        for (double t = 10; t <= seconds; t += 10)
            samples.Add(new SoakSample(t, new ServerFigures(rssMb(t) * MiB, heapMb(t) * MiB, 0, 2 * MiB, 0, 8, 2), (long)t * 100,
                new Dictionary<string, long>(), (long)t / 10, new Dictionary<string, long> { ["Cancelled"] = 1 }));
        return samples;
    }

    [Fact]
    public void A_steady_growth_is_its_slope_per_ten_minutes_and_not_flat()
    {
        // 1 MB a minute: 10 MB per 10 minutes, over a flat limit of 5.
        var summary = SoakSummary.Of(Samples(1800, t => 200 + t / 60, _ => 50), flatMbPer10Min: 5);

        Assert.Equal(10, summary.RssSlopeMbPer10Min, 6);
        Assert.Equal(0, summary.HeapSlopeMbPer10Min, 6);
        Assert.False(summary.Flat);
        Assert.Contains(summary.Lines(), line => line.Contains("NOT flat"));
    }

    [Fact]
    public void Growth_in_the_first_ten_minutes_of_thirty_is_outside_the_slope_window()
    {
        // Warm-up: RSS climbs 100 MB in the first 10 minutes, then stays; the slope looks at 600..1800 s only.
        var summary = SoakSummary.Of(Samples(1800, t => 200 + Math.Min(t, 600) / 6, _ => 50), flatMbPer10Min: 5);

        Assert.Equal(600, summary.SlopeFromSeconds);
        Assert.Equal(1800, summary.SlopeToSeconds);
        Assert.Equal(0, summary.RssSlopeMbPer10Min, 6);
        Assert.True(summary.Flat);
    }

    [Fact]
    public void A_growing_heap_alone_is_not_flat()
    {
        var summary = SoakSummary.Of(Samples(1200, _ => 300, t => 40 + t / 30), flatMbPer10Min: 5);
        Assert.Equal(20, summary.HeapSlopeMbPer10Min, 6);
        Assert.False(summary.Flat);
    }

    [Fact]
    public void Min_max_and_last_of_each_figure_and_the_final_counts()
    {
        var summary = SoakSummary.Of(Samples(60, t => t == 30 ? 500 : 100 + t, _ => 50), flatMbPer10Min: 5);

        var rss = summary.Figures.Single(f => f.Name == "RSS MB").Range;
        Assert.Equal((110, 500, 160), (rss.Min, rss.Max, rss.Last));
        Assert.Equal(10, summary.Figures.Single(f => f.Name == "connections open").Range.Last);
        Assert.Equal(6000, summary.Ok);
        Assert.Equal(6, summary.AbuseCalls);
    }

    [Fact]
    public void A_missing_figure_gives_NaN_ranges_and_slopes_and_is_not_flat()
    {
        var samples = Samples(60, _ => double.NaN, _ => 50);
        var summary = SoakSummary.Of(samples, flatMbPer10Min: 5);

        Assert.True(double.IsNaN(summary.Figures[0].Range.Max));
        Assert.True(double.IsNaN(summary.RssSlopeMbPer10Min));
        Assert.False(summary.Flat);
    }

    [Fact]
    public void One_sample_has_no_slope_and_none_is_refused()
    {
        Assert.True(double.IsNaN(SoakSummary.Of(Samples(10, _ => 1, _ => 1), 5).RssSlopeMbPer10Min));
        Assert.Throws<ArgumentException>(() => SoakSummary.Of([], 5));
    }

    [Fact]
    public void Results_table_has_a_row_per_interval_asked_and_always_the_last()
    {
        var samples = Samples(250, t => 100, _ => 50);
        var settings = new SoakSettings("http://a:1", "http://a:2", "http://a:3", 4, 10, 4, 8, 256, 20, 2, 10, "abc", null);
        string text = SoakReport.Markdown(settings, "cpu", "vm", samples, SoakSummary.Of(samples, 10), churnCycles: 7, everySeconds: 60);

        var rows = text.Split('\n').Where(l => l.StartsWith("| ") && char.IsAsciiDigit(l[2])).Select(l => l.Split('|')[1].Trim()).ToArray();
        Assert.Equal(["10", "70", "130", "190", "250"], rows);
        Assert.Contains("7 connect/call/close cycles", text);
        Assert.Contains("Cancelled=1", text);
    }

    [Theory]
    [InlineData(0, 10, "--minutes")]
    [InlineData(double.PositiveInfinity, 10, "--minutes")]
    [InlineData(double.NaN, 10, "--minutes")]
    [InlineData(7 * 24 * 60 + 1, 10, "--minutes")]
    [InlineData(1, 0.5, "--interval")]
    public void Settings_that_cannot_run_say_which_option(double minutes, double interval, string option)
    {
        var settings = new SoakSettings("http://a:1", "http://a:2", "http://a:3", minutes, interval, 4, 8, 256, 20, 2, 10, "abc", null);
        Assert.Contains(option, settings.Problem());
    }

    [Theory]
    [InlineData(double.PositiveInfinity)]
    [InlineData(double.NaN)]
    [InlineData(0)]
    public void A_flatness_bar_that_is_not_a_positive_number_is_refused(double flatMb)
    {
        var good = new SoakSettings("http://a:1", "http://a:2", "http://a:3", 1, 10, 4, 8, 256, 20, 2, 10, "abc", null);
        Assert.Contains("--flat-mb", (good with { FlatMbPer10Min = flatMb }).Problem());
    }

    [Fact]
    public void An_address_that_is_not_absolute_is_refused_and_good_settings_are_not()
    {
        var good = new SoakSettings("http://a:1", "http://a:2", "http://a:3", 1, 10, 4, 8, 256, 20, 2, 10, "abc", null);
        Assert.Null(good.Problem());
        Assert.Contains("not-a-uri", (good with { DataPlaneAddress = "not-a-uri" }).Problem());
    }

    [Theory]
    [InlineData(new int[0])]
    [InlineData(new[] { 3, 8 })]
    [InlineData(new[] { -1 })]
    public void Abusive_acts_outside_0_to_7_or_none_are_refused(int[] acts)
    {
        var settings = new SoakSettings("http://a:1", "http://a:2", "http://a:3", 1, 10, 4, 8, 256, 20, 2, 10, "abc", null) { AbuseActs = acts };
        Assert.Contains("--abuse-acts", settings.Problem());
    }
}
