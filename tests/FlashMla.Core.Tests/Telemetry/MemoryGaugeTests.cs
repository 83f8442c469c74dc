using System.Diagnostics.Metrics;
using FlashMla.Core.Memory;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Tests.Telemetry;

/// <summary>The memory gauges the soak and the dashboards read: the tensor pool by state, RSS and the live heap.</summary>
public sealed class MemoryGaugeTests
{
    [Fact]
    public void Tensor_pool_gauge_reports_held_idle_and_page_locked_bytes_of_the_observed_pool()
    {
        using var factory = new OwnMeterFactory();
        using var metrics = new FlashMlaMetrics(factory);
        var pool = new PinnedTensorPool(1 << 20, 4);
        var held = pool.Rent(300_000);       // 512 KiB array, out
        pool.Return(pool.Rent(5000));         // 8 KiB array, back and idle
        metrics.ObserveTensorPool(pool);

        var byState = Observe(factory, "flashmla.tensor_pool.bytes");

        Assert.Equal(512 * 1024, byState["held"]);
        Assert.Equal(8 * 1024, byState["idle"]);
        Assert.Equal(0, byState["page_locked"]); // no registrar attached: nothing page-locked
        pool.Return(held);
        Assert.Equal(512 * 1024 + 8 * 1024, Observe(factory, "flashmla.tensor_pool.bytes")["idle"]);
    }

    [Fact]
    public void Tensor_pool_gauge_has_no_series_before_a_pool_is_observed()
    {
        using var factory = new OwnMeterFactory();
        using var metrics = new FlashMlaMetrics(factory);
        Assert.Empty(Observe(factory, "flashmla.tensor_pool.bytes"));
    }

    [Fact]
    public void Process_gauges_report_this_process_resident_set_and_live_heap()
    {
        using var factory = new OwnMeterFactory();
        using var metrics = new FlashMlaMetrics(factory);
        var keep = new byte[32 << 20]; // 32 MiB live through a full collection
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        long rss = Observe(factory, "flashmla.process.resident_memory")[""];
        long live = Observe(factory, "flashmla.gc.heap_live")[""];
        long committed = Observe(factory, "flashmla.gc.committed")[""];

        Assert.InRange(rss, Environment.WorkingSet / 2, Environment.WorkingSet * 2);
        Assert.InRange(live, keep.Length, committed);
        GC.KeepAlive(keep);
    }

    /// <summary>One collection of the named observable instrument of this metrics object: value by its "state" tag ("" when untagged).</summary>
    private static Dictionary<string, long> Observe(OwnMeterFactory factory, string instrumentName)
    {
        var values = new Dictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            // This test's meter only: other tests' FlashMlaMetrics publish the same names alongside.
            if (instrument.Meter.Scope == factory && instrument.Name == instrumentName) l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, state) =>
        {
            string key = "";
            foreach (var tag in tags) if (tag.Key == "state") key = (string)tag.Value!;
            values[key] = value;
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return values;
    }

    /// <summary>Meters scoped to this factory, so a listener can tell them from other tests' meters of the same name.</summary>
    private sealed class OwnMeterFactory : IMeterFactory
    {
        private readonly List<Meter> _meters = [];

        public Meter Create(MeterOptions options)
        {
            var meter = new Meter(options.Name, options.Version, options.Tags, scope: this);
            _meters.Add(meter);
            return meter;
        }

        public void Dispose()
        {
            foreach (var meter in _meters) meter.Dispose();
        }
    }
}
