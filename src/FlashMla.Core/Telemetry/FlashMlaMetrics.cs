using System.Diagnostics;
using System.Diagnostics.Metrics;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;

namespace FlashMla.Core.Telemetry;

/// <summary>
/// The service's metrics, on one <see cref="Meter"/> named <see cref="MeterName"/>. The server exports
/// them on <c>/metrics</c> through OpenTelemetry's Prometheus exporter, which turns dots into
/// underscores, adds <c>_total</c> to counters and the unit (<c>_seconds</c>, <c>_bytes</c>) to names.
/// The Prometheus names are listed in the README; the dashboards and alert rules use them, and a test
/// scrapes a live server to check that each of them is exported.
/// </summary>
public sealed class FlashMlaMetrics : IDisposable
{
    public const string MeterName = "FlashMla";

    private readonly Meter _meter;
    private CacheGaugeSnapshot _gauges = new(0, 0, 0, Serving: true);
    private volatile Func<IReadOnlyList<Tenant>> _tenants = () => [];
    private volatile PinnedTensorPool? _tensorPool;

    public FlashMlaMetrics(IMeterFactory? factory = null)
    {
        _meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        DecodeRequests = _meter.CreateCounter<long>("flashmla.decode.requests", "{request}", "Decode requests served successfully.");
        DecodeQueryTokens = _meter.CreateCounter<long>("flashmla.decode.tokens", "{token}", "Query tokens decoded (b * s_q per request).");
        DecodeKvTokens = _meter.CreateCounter<long>("flashmla.decode.kv_tokens", "{token}", "KV tokens attended over (sum of sequence lengths per request).");
        DecodeBytes = _meter.CreateCounter<long>("flashmla.decode.moved", "By", "Bytes the attention moved: KV read (at the cache dtype's bytes a token: 1152 bf16, 656 fp8) + q + out.");
        DecodeFlops = _meter.CreateCounter<double>("flashmla.decode.flops", "{flop}", "Floating-point operations of the attention: 2 * s_q * h_q * (576 + 512) * kv tokens.");
        DecodeBatches = _meter.CreateCounter<long>("flashmla.decode.batches", "{batch}", "Backend decode calls (one per merged batch).");
        BatchSequences = _meter.CreateHistogram<int>("flashmla.decode.batch_sequences", "{sequence}", "Sequences per backend decode call.",
            advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] });
        QueueWait = _meter.CreateHistogram<double>("flashmla.decode.queue_wait", "s", "Time from a request's arrival at the scheduler to the start of its batch.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        KernelTime = _meter.CreateHistogram<double>("flashmla.decode.kernel_time", "s", "Device time of one decode batch's kernels alone (append, split-KV decode, combine), from device events; recorded only by backends that measure it (CUDA).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        ComputeTime = _meter.CreateHistogram<double>("flashmla.decode.compute_time", "s", "Backend time of one decode batch (append, attention, copies), from submission to completion; with batches in flight it includes waiting behind the batch ahead.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        SequencesReclaimed = _meter.CreateCounter<long>("flashmla.sequences.reclaimed", "{sequence}", "Sequences freed because their lease ran out.");
        RequestsFailed = _meter.CreateCounter<long>("flashmla.requests.failed", "{request}", "Requests refused or failed, by gRPC status code and method.");
        DataPlaneConnections = _meter.CreateUpDownCounter<long>("flashmla.dataplane.connections", "{connection}", "Client connections open on the data-plane port.");
        DataPlaneConnectionsRefused = _meter.CreateCounter<long>("flashmla.dataplane.connections_refused", "{connection}",
            "Connections the data-plane port closed as it accepted them, MaxConnectionsPerPort being open (the gRPC port's: kestrel_rejected_connections).");
        DataPlaneCalls = _meter.CreateCounter<long>("flashmla.dataplane.calls", "{call}", "Calls served on the data-plane port, by method and gRPC status code.");
        AppendedRows = _meter.CreateCounter<long>("flashmla.kv.appended_rows", "{row}", "KV rows written into the cache (prefill uploads and decode appends).");
        _meter.CreateObservableGauge("flashmla.kv.blocks_used", () => _gauges.UsedBlocks, "{block}", "KV blocks in use.");
        _meter.CreateObservableGauge("flashmla.kv.blocks_free", () => _gauges.FreeBlocks, "{block}", "KV blocks on the free list.");
        _meter.CreateObservableGauge("flashmla.kv.blocks_total", () => _gauges.TotalBlocks, "{block}", "KV blocks in the cache.");
        _meter.CreateObservableGauge("flashmla.sequences.active", () => _gauges.Sequences, "{sequence}", "Live sequences.");
        _meter.CreateObservableGauge("flashmla.serving", () => _gauges.Serving ? 1 : 0, "{state}", "1 while the service is SERVING, 0 when NOT_SERVING (draining or device lost).");
        // By tenant: the label's values are the token file's tenants and "anonymous", never anything a client sends.
        _meter.CreateObservableGauge("flashmla.tenant.blocks_held", () => PerTenant(BlocksHeldOf), "{block}", "KV blocks each tenant holds.");
        _meter.CreateObservableGauge("flashmla.tenant.sequences", () => PerTenant(SequencesOf), "{sequence}", "Live sequences of each tenant.");
        _meter.CreateObservableGauge("flashmla.tenant.requests_in_flight", () => PerTenant(RequestsInFlightOf), "{request}", "Requests each tenant has in flight.");
        _meter.CreateObservableCounter("flashmla.tenant.decode_requests", () => PerTenant(DecodeRequestsOf), "{request}", "Decode requests served, by tenant.");
        // The process's memory, read at each scrape, so that a leak shows on the dashboards and in the soak (scripts/soak.sh):
        // RSS, what the GC found live at its last collection, what it has committed, and the tensor pool by state.
        _meter.CreateObservableGauge("flashmla.process.resident_memory", () => Environment.WorkingSet, "By", "Resident set size of the server process.");
        _meter.CreateObservableGauge("flashmla.gc.heap_live", () => LiveHeapBytes(), "By", "Managed heap bytes found live by the last garbage collection (heap size less fragmentation).");
        _meter.CreateObservableGauge("flashmla.gc.committed", () => GC.GetGCMemoryInfo().TotalCommittedBytes, "By", "Memory the garbage collector has committed, as of its last collection.");
        _meter.CreateObservableGauge("flashmla.tensor_pool.bytes", () => TensorPoolBytes(), "By",
            "Bytes of the host's tensor pool, by state: held (rented by requests and responses now), idle (kept for reuse), page_locked (registered with the device; a subset of both).");
        _meter.CreateObservableCounter("flashmla.tenant.quota_refusals", () => QuotaRefusals(), "{request}", "Requests refused by one of a tenant's quotas, by tenant and quota (blocks, sequences, requests_in_flight).");
    }

    private static readonly double[] LatencyBuckets =
        [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

    public Counter<long> DecodeRequests { get; }
    public Counter<long> DecodeQueryTokens { get; }
    public Counter<long> DecodeKvTokens { get; }
    public Counter<long> DecodeBytes { get; }
    public Counter<double> DecodeFlops { get; }
    public Counter<long> DecodeBatches { get; }
    public Histogram<int> BatchSequences { get; }
    public Histogram<double> QueueWait { get; }
    public Histogram<double> ComputeTime { get; }
    public Histogram<double> KernelTime { get; }
    public Counter<long> SequencesReclaimed { get; }
    public Counter<long> RequestsFailed { get; }
    public Counter<long> AppendedRows { get; }
    public UpDownCounter<long> DataPlaneConnections { get; }
    public Counter<long> DataPlaneConnectionsRefused { get; }
    public Counter<long> DataPlaneCalls { get; }

    /// <summary>Where the by-tenant instruments find the tenants (the server's tenant directory).</summary>
    public void ObserveTenants(Func<IReadOnlyList<Tenant>> tenants) => _tenants = tenants ?? throw new ArgumentNullException(nameof(tenants));

    /// <summary>Where the tensor-pool gauge reads its bytes (the server's one pool); nothing is exported before.</summary>
    public void ObserveTensorPool(PinnedTensorPool pool) => _tensorPool = pool ?? throw new ArgumentNullException(nameof(pool));

    private static long LiveHeapBytes()
    {
        var info = GC.GetGCMemoryInfo();
        return info.HeapSizeBytes - info.FragmentedBytes;
    }

    private IEnumerable<Measurement<long>> TensorPoolBytes()
    {
        if (_tensorPool is not { } pool) yield break;
        // Three fixed label values: the series set never grows.
        yield return new Measurement<long>(pool.HeldBytes, new TagList { { "state", "held" } });
        yield return new Measurement<long>(pool.IdleBytes, new TagList { { "state", "idle" } });
        yield return new Measurement<long>(pool.RegisteredBytes, new TagList { { "state", "page_locked" } });
    }

    private static long BlocksHeldOf(Tenant t) => t.BlocksHeld;
    private static long SequencesOf(Tenant t) => t.Sequences;
    private static long RequestsInFlightOf(Tenant t) => t.RequestsInFlight;
    private static long DecodeRequestsOf(Tenant t) => t.DecodeRequests;

    private IEnumerable<Measurement<long>> PerTenant(Func<Tenant, long> value)
    {
        foreach (var tenant in _tenants()) yield return new Measurement<long>(value(tenant), new TagList { { "tenant", tenant.Name } });
    }

    private IEnumerable<Measurement<long>> QuotaRefusals()
    {
        foreach (var tenant in _tenants())
        {
            yield return new Measurement<long>(tenant.QuotaRefusals(TenantQuotaKind.Blocks), new TagList { { "tenant", tenant.Name }, { "quota", "blocks" } });
            yield return new Measurement<long>(tenant.QuotaRefusals(TenantQuotaKind.Sequences), new TagList { { "tenant", tenant.Name }, { "quota", "sequences" } });
            yield return new Measurement<long>(tenant.QuotaRefusals(TenantQuotaKind.RequestsInFlight), new TagList { { "tenant", tenant.Name }, { "quota", "requests_in_flight" } });
        }
    }

    /// <summary>Published by the scheduler loop after each mutation; read by the gauges' callbacks.</summary>
    public void PublishCache(CacheGaugeSnapshot snapshot) => Volatile.Write(ref _gauges, snapshot);

    public void Dispose() => _meter.Dispose();
}

/// <summary>An immutable view of the cache for the gauges (written by one thread, read by the exporter).</summary>
public sealed record CacheGaugeSnapshot(int TotalBlocks, int FreeBlocks, int Sequences, bool Serving)
{
    public int UsedBlocks => TotalBlocks - FreeBlocks;
}
