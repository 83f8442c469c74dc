using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Cache;

/// <summary>Appends and reads of rows in the pools' stored format, on an fp8 and a bf16 cache.</summary>
public sealed class PagedKvCacheStoredRowsTests
{
    private const int Dk = MlaDims.HeadDimK;

    private static (CpuBackend Backend, PagedKvCache Cache) Open(KvDtype dtype, int blocks = 8)
    {
        var backend = new CpuBackend(new KvPoolGeometry(2, blocks, dtype), maxThreads: 1);
        return (backend, new PagedKvCache(backend, new CacheLimits(MaxSequenceLength: 1000, MaxSequences: 10)));
    }

    [Fact]
    public void An_fp8_cache_appends_bf16_rows_quantized_and_fp8_rows_as_they_are_in_position_order()
    {
        var (backend, cache) = Open(KvDtype.Fp8);
        using var _ = backend;
        var rng = new Random(1);
        ulong id = cache.Create();
        var bf16 = new ushort[70 * Dk];
        for (int i = 0; i < bf16.Length; i++) bf16[i] = Bf16.FromFloat((float)rng.NextDouble() - 0.5f);
        var raw = new byte[10 * 656];
        rng.NextBytes(raw);

        cache.Append(id, 1, bf16);
        cache.AppendStored(id, 1, raw);

        Assert.Equal(KvDtype.Fp8, cache.Dtype);
        Assert.Equal(80, cache.Get(id).Lengths[1]);
        var stored = new byte[80 * 656];
        cache.ReadStored(id, 1, 0, 80, stored);
        var expected = new byte[70 * 656];
        Fp8KvFormat.Quantize(bf16, expected);
        Assert.Equal([.. expected, .. raw], stored);
        var dequantized = new ushort[70 * Dk];
        cache.Read(id, 1, 0, 70, dequantized);
        Assert.Equal(Fp8KvFormat.RoundTrip(bf16), dequantized);
    }

    [Fact]
    public void Stored_rows_of_the_wrong_size_or_past_the_free_blocks_are_refused_and_change_nothing()
    {
        var (backend, cache) = Open(KvDtype.Fp8, blocks: 2);
        using var _ = backend;
        ulong id = cache.Create();
        cache.AppendStored(id, 0, new byte[656]);

        Assert.Equal(CacheError.InvalidArgument, Assert.Throws<CacheException>(() => cache.AppendStored(id, 0, new byte[1152])).Error);
        Assert.Equal(CacheError.InvalidArgument, Assert.Throws<CacheException>(() => cache.AppendStored(id, 0, [])).Error);
        Assert.Equal(CacheError.ResourceExhausted, Assert.Throws<CacheException>(() => cache.AppendStored(id, 0, new byte[200 * 656])).Error);
        Assert.Equal(CacheError.InvalidArgument, Assert.Throws<CacheException>(() => cache.ReadStored(id, 0, 0, 2, new byte[2 * 656])).Error);
        Assert.Equal(1, cache.Get(id).Lengths[0]);
        Assert.Equal(1, cache.Allocator.TotalBlocks - cache.Allocator.FreeBlocks);
    }

    [Fact]
    public void A_bf16_cache_stores_and_reads_its_rows_as_their_bytes()
    {
        var (backend, cache) = Open(KvDtype.Bf16);
        using var _ = backend;
        ulong id = cache.Create();
        var bytes = new byte[3 * 1152];
        new Random(2).NextBytes(bytes);
        cache.AppendStored(id, 0, bytes);

        var back = new byte[bytes.Length];
        cache.ReadStored(id, 0, 0, 3, back);
        Assert.Equal(bytes, back);
        var rows = new ushort[3 * Dk];
        cache.Read(id, 0, 0, 3, rows);
        Assert.Equal(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes).ToArray(), rows);
    }
}
