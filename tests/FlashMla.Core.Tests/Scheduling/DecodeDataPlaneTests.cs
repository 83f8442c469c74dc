using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;
using Xunit.Abstractions;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>Tests that read process-wide allocation counters or the shared tensor pool: run alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DataPlaneCollection
{
    public const string Name = "data plane (not parallel)";
}

/// <summary>The scheduler's decode path: pooled outputs, their lifetime, and allocation per step.</summary>
[Collection(DataPlaneCollection.Name)]
public sealed class DecodeDataPlaneTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Context = 64;
    private readonly CpuBackend _backend = new(new KvPoolGeometry(NumLayers: 1, NumBlocks: 80), maxThreads: 1);
    private readonly PinnedTensorPool _buffers = new(maxArrayBytes: 1 << 24, arraysPerSize: 8);
    private Scheduler? _scheduler;
    private ulong[] _ids = [];

    public Task InitializeAsync() => Task.CompletedTask;

    /// <summary>A scheduler over 64 sequences of 64 tokens; a long window makes concurrent requests share a batch.</summary>
    private async Task StartAsync(TimeSpan window)
    {
        _scheduler = new Scheduler(_backend, new CacheLimits(4096, 1024),
            new SchedulerOptions { BatchWindow = window, SequenceLease = TimeSpan.Zero }, new FlashMlaMetrics(), _buffers);
        var rows = DecodeScenarioRows(Context);
        _ids = await _scheduler.RunAsync(cache =>
        {
            var ids = new ulong[64];
            for (int i = 0; i < ids.Length; i++)
            {
                ids[i] = cache.Create();
                cache.Append(ids[i], 0, rows);
            }
            return ids;
        });
    }

    public async Task DisposeAsync()
    {
        if (_scheduler is not null) await _scheduler.DisposeAsync();
        _backend.Dispose();
    }

    private static ushort[] DecodeScenarioRows(int count)
    {
        var random = new Random(5);
        var rows = new ushort[count * MlaDims.HeadDimK];
        for (int i = 0; i < rows.Length; i++) rows[i] = Bf16.FromFloat((float)(random.NextDouble() - 0.5));
        return rows;
    }

    internal static byte[] Query(int b, int hQ, int seed)
    {
        var q = new byte[b * hQ * MlaDims.HeadDimK * 2];
        var random = new Random(seed);
        var values = MemoryMarshal.Cast<byte, ushort>(q.AsSpan());
        for (int i = 0; i < values.Length; i++) values[i] = Bf16.FromFloat((float)(random.NextDouble() - 0.5));
        return q;
    }

    private Task<DecodeResult> Step(ulong[] ids, int hQ, byte[] q) =>
        _scheduler!.DecodeAsync(DecodeWork.Create(DecodeShape.Create(_scheduler!.Options, 0, ids, 1, (ulong)hQ, 0), q, ReadOnlyMemory<byte>.Empty));

    private static byte[] ArrayOf(ReadOnlyMemory<byte> memory) =>
        MemoryMarshal.TryGetArray(memory, out var segment) ? segment.Array! : throw new InvalidOperationException("not array-backed");

    /// <summary>Bytes allocated (whole process, all threads) per decode step of b sequences at h_q heads, steps one after another.</summary>
    private async Task<double> BytesPerStepAsync(int b, int hQ, int steps)
    {
        var ids = _ids[..b];
        var q = Query(b, hQ, 11);
        for (int i = 0; i < 10; i++) (await Step(ids, hQ, q)).Release();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < steps; i++) (await Step(ids, hQ, q)).Release();
        long after = GC.GetTotalAllocatedBytes(precise: true);
        return (after - before) / (double)steps;
    }

    [Fact]
    public async Task Bytes_allocated_per_step_do_not_grow_with_the_tensors()
    {
        await StartAsync(TimeSpan.Zero);
        const int b = 16, steps = 60;
        double small = await BytesPerStepAsync(b, hQ: 16, steps);
        double large = await BytesPerStepAsync(b, hQ: 128, steps);
        long smallTensors = (long)b * 16 * (MlaDims.HeadDimK + MlaDims.HeadDimV) * 2;
        long largeTensors = (long)b * 128 * (MlaDims.HeadDimK + MlaDims.HeadDimV) * 2;
        output.WriteLine($"b={b}: h_q=16 ({smallTensors} tensor bytes) {small:F0} B/step, h_q=128 ({largeTensors} tensor bytes) {large:F0} B/step");
        // Eight times the tensor bytes (several MB more per step) must not show: allow run-to-run noise of a
        // few KB (timers, thread-pool work items) and nothing that scales.
        Assert.True(large - small < 8 * 1024, $"h_q=16: {small:F0} B/step, h_q=128: {large:F0} B/step");
        Assert.True(large < (largeTensors - smallTensors) / 100, $"h_q=128: {large:F0} B/step");
    }

    [Fact]
    public async Task An_unreleased_result_keeps_its_bytes_while_later_batches_run()
    {
        await StartAsync(TimeSpan.Zero);
        var first = await Step(_ids[..4], 8, Query(4, 8, 1));
        var kept = first.Out.ToArray();
        var second = await Step(_ids[..4], 8, Query(4, 8, 2));
        Assert.NotSame(ArrayOf(first.Out), ArrayOf(second.Out));
        Assert.NotEqual(kept, second.Out.ToArray());
        Assert.Equal(kept, first.Out.ToArray());
        first.Release();
        second.Release();
    }

    [Fact]
    public async Task A_merged_batch_returns_its_outputs_to_the_pool_after_the_last_release_only()
    {
        // Two requests of one layer and shape inside the batch window: one backend call, one pair of buffers.
        await StartAsync(TimeSpan.FromMilliseconds(50));
        var one = Step(_ids[..2], 4, Query(2, 4, 3));
        var two = Step(_ids[2..5], 4, Query(3, 4, 4));
        var results = await Task.WhenAll(one, two);
        Assert.All(results, r => Assert.Equal(2, r.Timings.BatchRequests));
        var shared = ArrayOf(results[0].Out);
        Assert.Same(shared, ArrayOf(results[1].Out));
        Assert.Equal(2 * 4 * MlaDims.HeadDimV * 2, results[0].Out.Length);
        Assert.Equal(3 * 4 * MlaDims.HeadDimV * 2, results[1].Out.Length);

        results[0].Release();
        results[0].Release(); // idempotent: must not count as the second holder
        var whileHeld = _buffers.Rent(shared.Length);
        Assert.NotSame(shared, whileHeld);
        _buffers.Return(whileHeld);

        results[1].Release();
        var afterwards = _buffers.Rent(shared.Length);
        Assert.Same(shared, afterwards);
        _buffers.Return(afterwards);
    }

    [Fact]
    public async Task A_step_reads_the_requests_bytes_in_place_and_gives_the_same_output_as_a_merged_one()
    {
        await StartAsync(TimeSpan.FromMilliseconds(50));
        var qa = Query(2, 4, 7);
        var qb = Query(2, 4, 8);
        var alone = await Step(_ids[10..12], 4, qa);
        Assert.Equal(1, alone.Timings.BatchRequests);
        var merged = await Task.WhenAll(Step(_ids[10..12], 4, qa), Step(_ids[12..14], 4, qb));
        Assert.Equal(2, merged[0].Timings.BatchRequests);
        Assert.Equal(alone.Out.ToArray(), merged[0].Out.ToArray());
        Assert.Equal(alone.Lse.ToArray(), merged[0].Lse.ToArray());
        alone.Release();
        foreach (var r in merged) r.Release();
    }
}
