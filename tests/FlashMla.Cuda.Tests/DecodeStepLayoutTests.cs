using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.Tests;

/// <summary>Where a decode step's inputs and outputs lie in its slot's buffers, worked out without a GPU.</summary>
public class DecodeStepLayoutTests
{
    private static DecodeBatch Batch(QuerySegments q, bool append, int b = 3, int sQ = 2, int hQ = 16) => new()
    {
        Layer = 0, BatchSize = b, QueryTokens = sQ, Heads = hQ, SoftmaxScale = 0.1f, Q = q,
        NewKv = append ? new ushort[b * sQ * MlaDims.HeadDimK] : default,
        NewKvSlots = append ? new int[b * sQ] : default,
        SeqLens = new int[b], BlockTable = new int[b * 4], BlockTableStride = 4,
        Out = new ushort[b * sQ * hQ * MlaDims.HeadDimV], Lse = new float[b * sQ * hQ],
    };

    [Fact]
    public void Regions_follow_each_other_aligned_and_q_in_segments_takes_the_room_of_q_whole()
    {
        int perSeq = 2 * 16 * MlaDims.HeadDimK;
        var whole = DecodeStepLayout.Plan(Batch(new ushort[3 * perSeq], append: true), smCount: 132);
        var parts = DecodeStepLayout.Plan(Batch(new QuerySegments([new ushort[perSeq], new ushort[2 * perSeq]]), append: true), smCount: 132);

        Assert.Equal(whole, parts);
        Assert.Equal(0, whole.QOffset % 256);
        Assert.True(whole.QOffset >= whole.Ints.TotalBytes);
        Assert.Equal(0, whole.KvOffset % 256);
        Assert.True(whole.KvOffset >= whole.QOffset + 3L * perSeq * 2);
        Assert.Equal(whole.KvOffset + 3L * 2 * MlaDims.KvRowBytes, whole.UploadBytes);
        Assert.Equal(6, whole.NewRows);
        Assert.Equal(3L * 2 * 16 * MlaDims.HeadDimV * 2, whole.OutBytes);
        Assert.Equal(0, whole.LseOffset % 256);
        Assert.True(whole.LseOffset >= whole.OutBytes);
        Assert.Equal(whole.LseOffset + 3L * 2 * 16 * 4, whole.ResultBytes);
    }

    [Fact]
    public void A_step_without_new_rows_uploads_nothing_after_q_and_appends_nothing()
    {
        var layout = DecodeStepLayout.Plan(Batch(new ushort[3 * 2 * 16 * MlaDims.HeadDimK], append: false), smCount: 132);
        Assert.Equal(0, layout.NewRows);
        Assert.Equal(layout.KvOffset, layout.UploadBytes);
        Assert.Equal(0, layout.Ints.NewRows);
    }

    [Fact]
    public void The_split_scratch_holds_fp32_partial_outputs_then_partial_lse_per_chunk()
    {
        var layout = DecodeStepLayout.Plan(Batch(new ushort[3 * 2 * 16 * MlaDims.HeadDimK], append: false), smCount: 132);
        long accum = 7L * 32 * MlaDims.HeadDimV * 4; // 7 chunks of 32 rows (s_q 2 x h_q 16)
        Assert.Equal(accum, layout.AccumOutBytes(7)); // already a multiple of 256
        Assert.Equal(accum + 7L * 32 * 4, layout.SplitScratchBytes(7));
    }
}
