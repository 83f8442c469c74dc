using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>What the scheduler does when the backend fails: a plain fault fails the request, a sticky one stops serving.</summary>
public sealed class SchedulerFaultTests
{
    /// <summary>A CPU backend that throws the given fault from the next call of the chosen kind.</summary>
    private sealed class FaultingBackend(BackendFaultException? onDecode = null, BackendFaultException? onWrite = null) : IAttentionBackend
    {
        private readonly CpuBackend _inner = new(new KvPoolGeometry(2, 16), maxThreads: 1);
        public string Name => "faulting";
        public string DeviceDescription => "test";
        public KvPoolGeometry Geometry => _inner.Geometry;
        public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
        {
            if (onWrite is not null) throw onWrite;
            _inner.WriteKv(layer, slots, rows);
        }
        public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => _inner.ReadKv(layer, slots, rows);
        public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => _inner.CopyBlocks(copies);
        public void Decode(DecodeBatch batch)
        {
            if (onDecode is not null) throw onDecode;
            _inner.Decode(batch);
        }
        public void Dispose() => _inner.Dispose();
    }

    private static async Task<(Scheduler, ulong)> StartWithOneSequence(IAttentionBackend backend)
    {
        var scheduler = new Scheduler(backend, CacheLimits.Default, new SchedulerOptions { BatchWindow = TimeSpan.Zero }, new FlashMlaMetrics(),
            System.Buffers.ArrayPool<byte>.Shared);
        ulong id = await scheduler.RunAsync(cache => cache.Create());
        return (scheduler, id);
    }

    private static DecodeWork Step(ulong id) =>
        DecodeWork.Create(DecodeShape.Create(new SchedulerOptions(), 0, [id], 1, 1, 0), new byte[576 * 2], new byte[576 * 2]);

    [Fact]
    public async Task A_sticky_decode_fault_fails_the_request_unavailable_and_stops_serving()
    {
        var (scheduler, id) = await StartWithOneSequence(new FaultingBackend(onDecode: new BackendFaultException("CUDA_ERROR_ILLEGAL_ADDRESS", isSticky: true)));
        await using var _ = scheduler;

        var error = await Assert.ThrowsAsync<CacheException>(() => scheduler.DecodeAsync(Step(id)));
        Assert.Equal(CacheError.Unavailable, error.Error);
        Assert.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", error.Message);
        Assert.False(scheduler.IsServing);
        Assert.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", scheduler.FaultReason);
        var next = await Assert.ThrowsAsync<CacheException>(() => scheduler.RunAsync(cache => cache.Create()));
        Assert.Equal(CacheError.Unavailable, next.Error);
    }

    [Fact]
    public async Task A_plain_decode_fault_fails_the_request_alone_and_rolls_back_its_pages()
    {
        var (scheduler, id) = await StartWithOneSequence(new FaultingBackend(onDecode: new BackendFaultException("launch failed", isSticky: false)));
        await using var _ = scheduler;

        var error = await Assert.ThrowsAsync<CacheException>(() => scheduler.DecodeAsync(Step(id)));
        Assert.Equal(CacheError.Internal, error.Error);
        Assert.True(scheduler.IsServing);
        var stats = await scheduler.GetStatsAsync();
        Assert.Equal(stats.TotalBlocks, stats.FreeBlocks); // the block reserved for the new row went back
        Assert.Equal(0, await scheduler.RunAsync(cache => cache.Get(id).Lengths[0]));
    }

    [Fact]
    public async Task A_sticky_fault_in_a_cache_write_also_stops_serving()
    {
        var (scheduler, id) = await StartWithOneSequence(new FaultingBackend(onWrite: new BackendFaultException("CUDA_ERROR_ECC_UNCORRECTABLE", isSticky: true)));
        await using var _ = scheduler;

        var error = await Assert.ThrowsAsync<CacheException>(() => scheduler.RunAsync(cache =>
        {
            cache.Append(id, 0, new ushort[576]);
            return true;
        }));
        Assert.Equal(CacheError.Unavailable, error.Error);
        Assert.False(scheduler.IsServing);
    }
}
