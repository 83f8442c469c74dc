using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.Tests;

public class CudaBackendArgumentsTests
{
    private static readonly KvPoolGeometry Pools = new(NumLayers: 2, NumBlocks: 10);

    [Fact]
    public void Rows_accept_matching_lengths_and_slots_inside_the_pool()
    {
        CudaBackendArguments.Rows(Pools, 1, [0, 639], 2 * MlaDims.HeadDimK);
        CudaBackendArguments.Rows(Pools, 0, [], 0);
    }

    [Fact]
    public void Rows_refuse_a_layer_a_slot_or_a_length_that_does_not_fit()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Rows(Pools, 2, [0], MlaDims.HeadDimK));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Rows(Pools, -1, [0], MlaDims.HeadDimK));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Rows(Pools, 0, [640], MlaDims.HeadDimK));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Rows(Pools, 0, [-1], MlaDims.HeadDimK));
        var e = Assert.Throws<ArgumentException>(() => CudaBackendArguments.Rows(Pools, 0, [1, 2], MlaDims.HeadDimK));
        Assert.Contains("2 slots need 1152 bf16 values, got 576", e.Message);
    }

    [Fact]
    public void Copies_refuse_blocks_outside_the_pool()
    {
        CudaBackendArguments.Copies(Pools, [new BlockCopy(0, 9), new BlockCopy(3, 3)]);
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Copies(Pools, [new BlockCopy(0, 10)]));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.Copies(Pools, [new BlockCopy(-1, 2)]));
    }

    [Fact]
    public void Decode_accepts_512_rows_per_sequence_and_refuses_more()
    {
        CudaBackendArguments.Decode(Pools, Batch(queryTokens: 4, heads: 128));
        var e = Assert.Throws<ArgumentException>(() => CudaBackendArguments.Decode(Pools, Batch(queryTokens: 5, heads: 128)));
        Assert.Contains("s_q * h_q = 640", e.Message);
    }

    [Fact]
    public void Decode_asserts_the_batchs_invariants_before_anything_reaches_the_device()
    {
        var e = Assert.Throws<ArgumentException>(() => CudaBackendArguments.Decode(Pools, Batch(queryTokens: 1, heads: 16, layer: 2)));
        Assert.Contains("layer out of range", e.Message);
        e = Assert.Throws<ArgumentException>(() => CudaBackendArguments.Decode(Pools, Batch(queryTokens: 1, heads: 16, table: [0, -1, -1, 1, 10, 3])));
        Assert.Contains("sequence 1 block 1 is 10", e.Message);
    }

    [Fact]
    public void Copy_waves_keep_the_sequential_meaning_of_chained_copies()
    {
        var waves = new List<(int, int)>();
        var splitter = new BlockCopyWaves();

        splitter.Split([new(1, 2), new(3, 4), new(5, 6)], waves);
        Assert.Equal([(0, 3)], waves);

        // 1 -> 2 then 2 -> 7: the second reads what the first wrote.
        splitter.Split([new(1, 2), new(3, 4), new(2, 7)], waves);
        Assert.Equal([(0, 2), (2, 1)], waves);

        // 1 -> 2 then 3 -> 1: the second overwrites what the first read.
        splitter.Split([new(1, 2), new(3, 1)], waves);
        Assert.Equal([(0, 1), (1, 1)], waves);

        // two writes of block 2: the later must win.
        splitter.Split([new(1, 2), new(3, 2), new(4, 5)], waves);
        Assert.Equal([(0, 1), (1, 2)], waves);

        // shared sources are fine; self-copies never conflict.
        splitter.Split([new(1, 2), new(1, 3), new(4, 4), new(2, 2)], waves);
        Assert.Equal([(0, 4)], waves);

        splitter.Split([], waves);
        Assert.Empty(waves);
    }

    [Fact]
    public void Slot_runs_are_the_longest_stretches_of_consecutive_slots()
    {
        int[] slots = [5, 6, 7, 64, 65, 3, 2, 2];
        Assert.Equal(3, SlotRuns.RunLength(slots, 0));
        Assert.Equal(2, SlotRuns.RunLength(slots, 1));
        Assert.Equal(2, SlotRuns.RunLength(slots, 3));
        Assert.Equal(1, SlotRuns.RunLength(slots, 5));
        Assert.Equal(1, SlotRuns.RunLength(slots, 6));
        Assert.Equal(1, SlotRuns.RunLength(slots, 7));
    }

    private static DecodeBatch Batch(int queryTokens, int heads, int layer = 0, int[]? table = null)
    {
        const int b = 2, stride = 3;
        int rows = b * queryTokens * heads;
        return new DecodeBatch
        {
            Layer = layer,
            BatchSize = b,
            QueryTokens = queryTokens,
            Heads = heads,
            SoftmaxScale = 0.1f,
            Q = new ushort[rows * MlaDims.HeadDimK],
            SeqLens = new[] { 5, 130 },
            BlockTable = table ?? [0, -1, -1, 1, 2, 3],
            BlockTableStride = stride,
            Out = new ushort[rows * MlaDims.HeadDimV],
            Lse = new float[rows],
        };
    }
}
