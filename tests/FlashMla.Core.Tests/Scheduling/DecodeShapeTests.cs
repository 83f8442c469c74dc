using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>The one check of a decode request's numbers, and what it leaves to the loop.</summary>
public class DecodeShapeTests
{
    private static readonly SchedulerOptions Limits = new() { MaxBatchSequences = 4, MaxQueryTokens = 4, MaxHeads = 64 };

    private static string Refusal(Func<DecodeShape> create)
    {
        var error = Assert.Throws<CacheException>(() => create());
        Assert.Equal(CacheError.InvalidArgument, error.Error);
        return error.Message;
    }

    [Fact]
    public void A_good_request_gets_its_numbers_and_the_default_scale_for_zero()
    {
        var shape = DecodeShape.Create(Limits, 3, [7, 9], 2, 16, 0);
        Assert.Equal((3, 2, 2, 16), (shape.Layer, shape.BatchSize, shape.QueryTokens, shape.Heads));
        Assert.Equal([7UL, 9UL], shape.SequenceIds);
        Assert.Equal(MlaDims.DefaultSoftmaxScale, shape.SoftmaxScale);
        Assert.Equal(2L * 2 * 16 * 576 * 2, shape.QueryBytes);
        Assert.Equal(2L * 2 * 576 * 2, shape.NewKvBytes);
        Assert.Equal(0.25f, DecodeShape.Create(Limits, 0, [1], 1, 1, 0.25f).SoftmaxScale);
    }

    [Fact]
    public void Each_bad_number_is_invalid_argument_with_what_was_wrong()
    {
        Assert.Contains("no sequences", Refusal(() => DecodeShape.Create(Limits, 0, [], 1, 1, 0)));
        Assert.Contains("more than the limit of 4", Refusal(() => DecodeShape.Create(Limits, 0, [1, 2, 3, 4, 5], 1, 1, 0)));
        Assert.Contains("s_q must be in 1..4, got 0", Refusal(() => DecodeShape.Create(Limits, 0, [1], 0, 1, 0)));
        Assert.Contains("s_q must be in 1..4, got 5", Refusal(() => DecodeShape.Create(Limits, 0, [1], 5, 1, 0)));
        Assert.Contains("h_q must be in 1..64, got 65", Refusal(() => DecodeShape.Create(Limits, 0, [1], 1, 65, 0)));
        Assert.Contains("layer 4294967295", Refusal(() => DecodeShape.Create(Limits, uint.MaxValue, [1], 1, 1, 0)));
        Assert.Contains("softmax_scale", Refusal(() => DecodeShape.Create(Limits, 0, [1], 1, 1, float.NaN)));
        Assert.Contains("softmax_scale", Refusal(() => DecodeShape.Create(Limits, 0, [1], 1, 1, -1)));
        Assert.Contains("sequence 2 appears twice", Refusal(() => DecodeShape.Create(Limits, 0, [2, 3, 2], 1, 1, 0)));
    }

    private sealed class NarrowBackend(int maxRows) : IAttentionBackend
    {
        private readonly CpuBackend _inner = new(new KvPoolGeometry(1, 4), maxThreads: 1);
        public string Name => "narrow";
        public string DeviceDescription => "test";
        public KvPoolGeometry Geometry => _inner.Geometry;
        public int MaxQueryRowsPerSequence => maxRows;
        public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => _inner.WriteKv(layer, slots, rows);
        public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => _inner.ReadKv(layer, slots, rows);
        public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => _inner.CopyBlocks(copies);
        public void Decode(DecodeBatch batch) => _inner.Decode(batch);
        public void Dispose() => _inner.Dispose();
    }

    [Fact]
    public async Task The_scheduler_bounds_s_q_times_h_q_by_what_its_backend_runs_so_the_edge_refuses_more()
    {
        using var backend = new NarrowBackend(maxRows: 128);
        await using var scheduler = new Scheduler(backend, CacheLimits.Default, Limits with { SequenceLease = TimeSpan.Zero },
            new FlashMlaMetrics(), System.Buffers.ArrayPool<byte>.Shared);

        Assert.Equal(128, scheduler.Options.MaxQueryRowsPerSequence);
        DecodeShape.Create(scheduler.Options, 0, [1], 2, 64, 0);
        Assert.Contains("s_q * h_q = 192", Refusal(() => DecodeShape.Create(scheduler.Options, 0, [1], 3, 64, 0)));
        Assert.Equal(int.MaxValue, Limits.MaxQueryRowsPerSequence); // the given options are not changed
    }

    [Fact]
    public void Work_whose_bytes_do_not_match_its_shape_is_a_bug_of_the_caller_not_a_bad_request()
    {
        var shape = DecodeShape.Create(Limits, 0, [1, 2], 1, 2, 0);
        var work = DecodeWork.Create(shape, new byte[shape.QueryBytes], new byte[shape.NewKvBytes]);
        Assert.True(work.HasNewKv);
        Assert.Throws<ArgumentException>(() => DecodeWork.Create(shape, new byte[shape.QueryBytes - 2], ReadOnlyMemory<byte>.Empty));
        Assert.Throws<ArgumentException>(() => DecodeWork.Create(shape, new byte[shape.QueryBytes], new byte[shape.NewKvBytes + 2]));
    }
}
