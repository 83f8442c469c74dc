using CsCheck;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Backends.Cpu;

public sealed class CpuBackendDecodeTests : IDisposable
{
    // Enough blocks for the largest random batch below (6 sequences of up to 7 pages) with room to shuffle.
    private readonly CpuBackend _backend = new(new KvPoolGeometry(NumLayers: 2, NumBlocks: 96));

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void Decode_matches_double_reference_on_random_varlen_batches()
    {
        var lengths = Gen.Frequency((2, (IGen<int>)Gen.OneOf(1, 63, 64, 65, 128, 129)), (1, Gen.Int[2, 400]));
        var cases =
            from heads in Gen.OneOf(1, 8, 16, 64, 128)
            from queryTokens in Gen.Int[1, 4]
            from lens in lengths.Array[1, Math.Clamp(256 / (heads * queryTokens), 1, 6)]
            from scale in Gen.OneOf(MlaDims.DefaultSoftmaxScale, 0.1f, 0.5f)
            from layer in Gen.Int[0, 1]
            from seed in Gen.Int
            select (heads, queryTokens, lens, scale, layer, seed);

        cases.Sample(c =>
        {
            var scenario = DecodeScenario.Create(_backend, c.seed, c.layer, c.lens, c.queryTokens, c.heads, c.scale);
            _backend.Decode(scenario.Batch);
            scenario.AssertMatchesReference();
        }, iter: 40, threads: 1);
    }

    [Theory]
    [InlineData(1, 1)] [InlineData(1, 4)]
    [InlineData(8, 1)] [InlineData(8, 3)]
    [InlineData(16, 1)] [InlineData(16, 2)]
    [InlineData(64, 1)] [InlineData(64, 2)]
    [InlineData(128, 1)] [InlineData(128, 2)]
    public void Decode_matches_double_reference_at_page_edges_for_every_head_count(int heads, int queryTokens)
    {
        int[] lengths = [1, 63, 64, 65, 300];
        var scenario = DecodeScenario.Create(_backend, seed: heads * 10 + queryTokens, layer: 1, lengths, queryTokens, heads, scale: 0.3f);
        _backend.Decode(scenario.Batch);
        scenario.AssertMatchesReference();
    }

    [Fact]
    public void Decode_rows_that_see_no_position_write_zero_and_negative_infinity_lse()
    {
        // Length 1 with s_q 4: query tokens 0..2 see nothing, token 3 sees position 0 alone.
        // Length 0: nothing at all.
        const int heads = 8, queryTokens = 4;
        var scenario = DecodeScenario.Create(_backend, seed: 7, layer: 0, [1, 0, 70], queryTokens, heads, scale: 0.2f);
        _backend.Decode(scenario.Batch);

        var output = scenario.Out;
        var lse = scenario.Lse;
        for (int t = 0; t < queryTokens; t++)
        for (int h = 0; h < heads; h++)
        {
            var row = output.AsSpan(((0 * queryTokens + t) * heads + h) * MlaDims.HeadDimV, MlaDims.HeadDimV);
            float rowLse = lse[(0 * heads + h) * queryTokens + t];
            if (t < 3)
            {
                Assert.All(row.ToArray(), v => Assert.Equal((ushort)0, v));
                Assert.Equal(float.NegativeInfinity, rowLse);
            }
            else
            {
                // Softmax over one position is exactly 1: out is V of position 0, bit for bit.
                Assert.Equal(scenario.Kv[0].AsSpan(0, MlaDims.HeadDimV).ToArray(), row.ToArray());
                Assert.True(float.IsFinite(rowLse));
            }

            var empty = output.AsSpan(((1 * queryTokens + t) * heads + h) * MlaDims.HeadDimV, MlaDims.HeadDimV);
            Assert.All(empty.ToArray(), v => Assert.Equal((ushort)0, v));
            Assert.Equal(float.NegativeInfinity, lse[(1 * heads + h) * queryTokens + t]);
        }
        scenario.AssertMatchesReference();
    }

    [Theory]
    [InlineData(1, 16)]
    [InlineData(2, 64)]
    [InlineData(4, 8)]
    public void Decode_appends_new_kv_rows_before_attending_and_they_read_back(int queryTokens, int heads)
    {
        // The new rows are NaN in the pool before the call: a decode that attends before appending fails.
        var scenario = DecodeScenario.Create(_backend, seed: 11, layer: 1, [4, 64, 65, 129], queryTokens, heads, scale: 0.3f, appendNewKv: true);
        _backend.Decode(scenario.Batch);
        scenario.AssertMatchesReference();

        var readBack = new ushort[scenario.Batch.NewKv.Length];
        _backend.ReadKv(1, scenario.Batch.NewKvSlots.Span, readBack);
        Assert.Equal(scenario.Batch.NewKv.ToArray(), readBack);
    }

    [Fact]
    public void Decode_is_bit_identical_for_any_thread_count()
    {
        int[] lengths = [1, 65, 200, 64, 3];
        ushort[]? expectedOut = null;
        float[]? expectedLse = null;
        foreach (int threads in new[] { 1, 2, 3, 8 })
        {
            using var backend = new CpuBackend(_backend.Geometry, threads);
            var scenario = DecodeScenario.Create(backend, seed: 5, layer: 0, lengths, queryTokens: 2, heads: 64, scale: 0.3f);
            backend.Decode(scenario.Batch);
            expectedOut ??= scenario.Out;
            expectedLse ??= scenario.Lse;
            Assert.Equal(expectedOut, scenario.Out);
            Assert.Equal(expectedLse, scenario.Lse);
        }
    }

    [Theory]
    [InlineData("layer past the end")]
    [InlineData("negative layer")]
    [InlineData("q one element short")]
    [InlineData("out one element short")]
    [InlineData("lse one element short")]
    [InlineData("new kv without its slots")]
    [InlineData("last new slot past the pool")]
    [InlineData("negative new slot")]
    [InlineData("block id past the pool")]
    [InlineData("sequence longer than its block table")]
    public void Decode_rejects_a_bad_batch_and_changes_nothing(string defect)
    {
        var scenario = DecodeScenario.Create(_backend, seed: 3, layer: 1, [70, 5], queryTokens: 2, heads: 8, scale: 0.3f, appendNewKv: true);
        var good = scenario.Batch;
        var slots = good.NewKvSlots.ToArray();
        var table = good.BlockTable.ToArray();
        var bad = defect switch
        {
            "layer past the end" => Copy(good, layer: _backend.Geometry.NumLayers),
            "negative layer" => Copy(good, layer: -1),
            "q one element short" => Copy(good, q: good.Q[0][1..]),
            "out one element short" => Copy(good, output: good.Out[1..]),
            "lse one element short" => Copy(good, lse: good.Lse[1..]),
            "new kv without its slots" => Copy(good, newKvSlots: ReadOnlyMemory<int>.Empty),
            "last new slot past the pool" => Copy(good, newKvSlots: Replace(slots, slots.Length - 1, (int)_backend.Geometry.TotalSlots)),
            "negative new slot" => Copy(good, newKvSlots: Replace(slots, slots.Length - 1, -1)),
            "block id past the pool" => Copy(good, blockTable: Replace(table, 1, _backend.Geometry.NumBlocks)),
            "sequence longer than its block table" => Copy(good, seqLens: new[] { good.BlockTableStride * MlaDims.BlockSize + 1, 5 }),
            _ => throw new ArgumentOutOfRangeException(nameof(defect)),
        };
        var before = DecodeScenario.Snapshot(_backend);

        Assert.ThrowsAny<ArgumentException>(() => _backend.Decode(bad));

        Assert.Equal(before, DecodeScenario.Snapshot(_backend));
        Assert.All(scenario.Out, v => Assert.Equal(DecodeScenario.Bf16NaN, v));
        Assert.All(scenario.Lse, v => Assert.True(float.IsNaN(v)));

        // The same batch without the defect still works: the rejection was about the defect.
        _backend.Decode(good);
        scenario.AssertMatchesReference();
    }

    private static int[] Replace(int[] values, int index, int value)
    {
        var copy = (int[])values.Clone();
        copy[index] = value;
        return copy;
    }

    private static DecodeBatch Copy(DecodeBatch b, int? layer = null, ReadOnlyMemory<ushort>? q = null,
        ReadOnlyMemory<int>? newKvSlots = null, ReadOnlyMemory<int>? seqLens = null, ReadOnlyMemory<int>? blockTable = null,
        Memory<ushort>? output = null, Memory<float>? lse = null) => new()
    {
        Layer = layer ?? b.Layer,
        BatchSize = b.BatchSize,
        QueryTokens = b.QueryTokens,
        Heads = b.Heads,
        SoftmaxScale = b.SoftmaxScale,
        Q = q ?? b.Q,
        NewKv = b.NewKv,
        NewKvSlots = newKvSlots ?? b.NewKvSlots,
        SeqLens = seqLens ?? b.SeqLens,
        BlockTable = blockTable ?? b.BlockTable,
        BlockTableStride = b.BlockTableStride,
        Out = output ?? b.Out,
        Lse = lse ?? b.Lse,
    };
}
