using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Backends;

/// <summary>
/// The invariants every backend asserts before it touches memory: lengths against the shape, q segments of whole
/// sequences, and every index the kernels will follow inside the pools.
/// </summary>
public class DecodeBatchTests
{
    private static readonly KvPoolGeometry Pools = new(NumLayers: 2, NumBlocks: 10);

    /// <summary>Two sequences (5 and 130 tokens) of one token and one head each, block table stride 3.</summary>
    private static DecodeBatch Batch(QuerySegments? q = null, int layer = 0, float scale = 0.1f, int[]? table = null, int[]? lens = null,
        int[]? newSlots = null)
    {
        const int b = 2;
        return new DecodeBatch
        {
            Layer = layer, BatchSize = b, QueryTokens = 1, Heads = 1, SoftmaxScale = scale,
            Q = q ?? new ushort[b * MlaDims.HeadDimK],
            NewKv = newSlots is null ? default : new ushort[b * MlaDims.HeadDimK],
            NewKvSlots = newSlots ?? default,
            SeqLens = lens ?? [5, 130],
            BlockTable = table ?? [0, -1, -1, 1, 2, 3],
            BlockTableStride = 3,
            Out = new ushort[b * MlaDims.HeadDimV],
            Lse = new float[b],
        };
    }

    private static string Refusal(DecodeBatch batch) => Assert.Throws<ArgumentException>(() => batch.CheckInvariants(Pools)).Message;

    [Fact]
    public void A_consistent_batch_passes_and_unused_block_table_entries_may_hold_anything()
    {
        Batch().CheckInvariants(Pools);
        Batch(table: [0, 12345, -7, 1, 2, 3]).CheckInvariants(Pools); // sequence 0 uses one block of its three entries
        Batch(newSlots: [0, 639]).CheckInvariants(Pools);
    }

    [Fact]
    public void A_used_block_outside_the_pool_is_refused()
    {
        Assert.Contains("sequence 1 block 1 is 10", Refusal(Batch(table: [0, -1, -1, 1, 10, 3])));
        Assert.Contains("sequence 0 block 0 is -2", Refusal(Batch(table: [-2, 0, 0, 1, 2, 3])));
        Assert.Contains("longer than its block table", Refusal(Batch(lens: [5, 193])));
    }

    [Fact]
    public void A_new_row_slot_outside_the_pool_is_refused()
    {
        Assert.Contains("slot 640", Refusal(Batch(newSlots: [0, 640])));
        Assert.Contains("slot -1", Refusal(Batch(newSlots: [-1, 1])));
    }

    [Fact]
    public void A_layer_outside_the_pools_is_refused()
    {
        Assert.Contains("layer out of range", Refusal(Batch(layer: 2)));
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(0f)]
    [InlineData(-0.1f)]
    [InlineData(float.PositiveInfinity)]
    public void A_softmax_scale_that_is_not_positive_and_finite_is_refused(float scale)
    {
        Assert.Contains("softmax scale", Refusal(Batch(scale: scale)));
    }

    [Fact]
    public void Q_in_segments_of_whole_sequences_passes_and_reads_back_in_batch_order()
    {
        ushort[] first = Enumerable.Repeat((ushort)1, MlaDims.HeadDimK).ToArray();
        ushort[] second = Enumerable.Repeat((ushort)2, MlaDims.HeadDimK).ToArray();
        var q = new QuerySegments([first, second]);
        Batch(q).CheckInvariants(Pools);

        Assert.Equal(2, q.Count);
        Assert.Equal(2L * MlaDims.HeadDimK, q.Length);
        var whole = new ushort[q.Length];
        q.CopyTo(whole);
        Assert.Equal(1, whole[0]);
        Assert.Equal(2, whole[MlaDims.HeadDimK]);

        QuerySegments one = new ushort[2 * MlaDims.HeadDimK];
        Assert.Equal(1, one.Count);
        Assert.Equal(2L * MlaDims.HeadDimK, one.Length);
    }

    [Fact]
    public void Q_segments_that_split_a_sequence_or_miss_one_are_refused()
    {
        ushort[] half = new ushort[MlaDims.HeadDimK / 2];
        ushort[] one = new ushort[MlaDims.HeadDimK];
        Assert.Contains("whole sequences", Refusal(Batch(new QuerySegments([half, half, one]))));
        Assert.Contains("whole sequences", Refusal(Batch(new QuerySegments([one, ReadOnlyMemory<ushort>.Empty, one]))));
        Assert.Contains("q has the wrong length", Refusal(Batch(new QuerySegments([one]))));
        Assert.Contains("q has the wrong length", Refusal(Batch(new ushort[3 * MlaDims.HeadDimK])));
    }
}
