using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// KV ingest through the scheduler (<see cref="KvAppendWork"/>, the path of AppendKv on both ports) into an fp8 cache
/// on the CPU backend: bf16 chunks are quantized, chunks already in the stored format land as they are, and a stored
/// chunk is refused by a bf16 cache or when its bytes are not whole rows, changing nothing.
/// </summary>
public sealed class KvIngestFp8Tests
{
    private const int Dk = MlaDims.HeadDimK, RowBytes = Fp8KvFormat.TokenBytes;

    private static CpuBackend Backend(KvDtype dtype) => new(new KvPoolGeometry(2, 16, dtype), maxThreads: 1);

    private static Scheduler Start(CpuBackend backend) =>
        new(backend, new CacheLimits(4096, 64), new SchedulerOptions(), new FlashMlaMetrics(), System.Buffers.ArrayPool<byte>.Shared);

    private static byte[] Bf16Bytes(int rows, int seed)
    {
        var values = new ushort[rows * Dk];
        var rng = new Random(seed);
        for (int i = 0; i < values.Length; i++) values[i] = Bf16.FromFloat((float)rng.NextDouble() * 4 - 2);
        return System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    private static Task<byte[]> ReadStored(Scheduler scheduler, ulong id, int layer) =>
        scheduler.RunAsync(CacheAccess.Sequence(id), cache =>
        {
            int length = cache.Get(id).Lengths[layer];
            var rows = new byte[length * (long)cache.Dtype.BytesPerToken()];
            cache.ReadStored(id, layer, 0, length, rows);
            return rows;
        });

    [Fact]
    public async Task Bf16_chunks_are_quantized_and_stored_chunks_land_as_they_are_in_order()
    {
        using var backend = Backend(KvDtype.Fp8);
        await using var scheduler = Start(backend);
        ulong id = await scheduler.RunAsync(cache => cache.Create());
        var bf16 = Bf16Bytes(70, 1);
        var raw = new byte[40 * RowBytes];
        new Random(2).NextBytes(raw); // the cache does not interpret stored rows

        Assert.Equal(70, await scheduler.AppendAsync(KvAppendWork.Create(id, 1, bf16)));
        Assert.Equal(40, await scheduler.AppendAsync(KvAppendWork.Create(id, 1, raw, stored: true)));

        var quantized = new byte[70 * RowBytes];
        Fp8KvFormat.Quantize(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bf16.AsSpan()), quantized);
        var stored = await ReadStored(scheduler, id, 1);
        Assert.Equal([.. quantized, .. raw], stored);
        Assert.Equal(110, await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Get(id).Lengths[1]));
    }

    [Fact]
    public async Task A_stored_chunk_that_is_not_whole_rows_is_refused_and_changes_nothing()
    {
        using var backend = Backend(KvDtype.Fp8);
        await using var scheduler = Start(backend);
        ulong id = await scheduler.RunAsync(cache => cache.Create());
        await scheduler.AppendAsync(KvAppendWork.Create(id, 0, new byte[3 * RowBytes], stored: true));
        int free = await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Allocator.FreeBlocks);

        var error = await Assert.ThrowsAsync<CacheException>(() => scheduler.AppendAsync(KvAppendWork.Create(id, 0, new byte[2 * Dk * 2], stored: true)));
        Assert.Equal(CacheError.InvalidArgument, error.Error);
        Assert.Contains("656 bytes", error.Message);
        Assert.Equal(3, await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Get(id).Lengths[0]));
        Assert.Equal(free, await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Allocator.FreeBlocks));
    }

    [Fact]
    public async Task A_bf16_cache_takes_stored_chunks_as_bf16_rows()
    {
        // A bf16 pool's stored row is its bf16 row: the same bytes either way.
        using var backend = Backend(KvDtype.Bf16);
        await using var scheduler = Start(backend);
        ulong id = await scheduler.RunAsync(cache => cache.Create());
        var rows = Bf16Bytes(5, 3);
        Assert.Equal(5, await scheduler.AppendAsync(KvAppendWork.Create(id, 0, rows, stored: true)));
        Assert.Equal(rows, await ReadStored(scheduler, id, 0));
    }
}
