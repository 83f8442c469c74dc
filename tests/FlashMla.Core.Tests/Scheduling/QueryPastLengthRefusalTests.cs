using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// The scheduler refuses a step without new rows that would leave a query token seeing no position (a layer shorter
/// than s_q), where the lengths live: that request alone, before anything is reserved, while a request merged into the
/// same batch is served.
/// </summary>
public sealed class QueryPastLengthRefusalTests
{
    [Fact]
    public async Task A_step_without_new_rows_over_a_layer_shorter_than_s_q_fails_alone_and_its_batch_mate_is_served()
    {
        using var backend = new CpuBackend(new KvPoolGeometry(1, 16), maxThreads: 1);
        await using var scheduler = new Scheduler(backend, new CacheLimits(1024, 16),
            new SchedulerOptions { BatchWindow = TimeSpan.FromMilliseconds(50), SequenceLease = TimeSpan.Zero }, new FlashMlaMetrics(),
            System.Buffers.ArrayPool<byte>.Shared);
        var rows = new ushort[3 * MlaDims.HeadDimK];
        var (two, three) = await scheduler.RunAsync(cache =>
        {
            ulong a = cache.Create(), b = cache.Create();
            cache.Append(a, 0, rows.AsSpan(0, 2 * MlaDims.HeadDimK));
            cache.Append(b, 0, rows);
            return (a, b);
        });
        Task<DecodeResult> Step(ulong id) => scheduler.DecodeAsync(DecodeWork.Create(
            DecodeShape.Create(scheduler.Options, 0, [id], queryTokens: 3, heads: 2, 0), DecodeDataPlaneTests.Query(1, 2 * 3, 5),
            ReadOnlyMemory<byte>.Empty));

        var refused = Step(two);
        var served = Step(three);

        var error = await Assert.ThrowsAsync<CacheException>(() => refused);
        Assert.Equal(CacheError.InvalidArgument, error.Error);
        var result = await served;
        Assert.All(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(result.Lse.Span).ToArray(), v => Assert.True(float.IsFinite(v)));
        result.Release();
        int[] lengths = await scheduler.RunAsync(cache => cache.Get(two).Lengths.ToArray());
        Assert.Equal([2], lengths);
    }
}
