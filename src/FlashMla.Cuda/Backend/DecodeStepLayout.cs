using FlashMla.Core.Backends;
using FlashMla.Core.Metadata;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// Where one decode step's data lies in its slot's buffers, worked out from the batch alone (so it is tested
/// without a GPU). The upload is <c>[int32 sections][q][new kv]</c> (the int32 part laid out by
/// <see cref="DecodeUploadLayout"/>, q segment after segment), the result <c>[out][lse]</c>; each region starts at a
/// multiple of <see cref="BufferSizes.RegionAlignment"/>. The split-KV scratch depends on the schedule's chunk count.
/// </summary>
internal readonly record struct DecodeStepLayout
{
    public required DecodeUploadLayout Ints { get; init; }
    public required int RowsPerSequence { get; init; }
    public required int RowGroups { get; init; }
    public required int Parts { get; init; }
    public required int NewRows { get; init; }
    public required long QOffset { get; init; }
    public required long KvOffset { get; init; }
    public required long UploadBytes { get; init; }
    public required long OutBytes { get; init; }
    public required long LseOffset { get; init; }
    public required long LseBytes { get; init; }
    public required long ResultBytes { get; init; }

    public static DecodeStepLayout Plan(DecodeBatch batch, int smCount)
    {
        int rowGroups = TileScheduler.RowGroups(batch.QueryTokens, batch.Heads);
        int parts = TileScheduler.DefaultNumSmParts(smCount, rowGroups);
        int newRows = batch.NewKv.IsEmpty ? 0 : batch.BatchSize * batch.QueryTokens;
        var ints = new DecodeUploadLayout(batch.BatchSize, batch.BlockTableStride, parts, newRows);
        long qOffset = BufferSizes.RoundUp(ints.TotalBytes, BufferSizes.RegionAlignment);
        long kvOffset = BufferSizes.RoundUp(qOffset + batch.Q.Length * sizeof(ushort), BufferSizes.RegionAlignment);
        long outBytes = batch.Out.Length * (long)sizeof(ushort);
        long lseOffset = BufferSizes.RoundUp(outBytes, BufferSizes.RegionAlignment);
        long lseBytes = batch.Lse.Length * (long)sizeof(float);
        return new DecodeStepLayout
        {
            Ints = ints,
            RowsPerSequence = batch.QueryTokens * batch.Heads,
            RowGroups = rowGroups,
            Parts = parts,
            NewRows = newRows,
            QOffset = qOffset,
            KvOffset = kvOffset,
            UploadBytes = kvOffset + batch.NewKv.Length * (long)sizeof(ushort),
            OutBytes = outBytes,
            LseOffset = lseOffset,
            LseBytes = lseBytes,
            ResultBytes = lseOffset + lseBytes,
        };
    }

    /// <summary>Bytes of the fp32 partial outputs of <paramref name="totalSplits"/> chunks; the partial lse follow them.</summary>
    public long AccumOutBytes(int totalSplits) =>
        BufferSizes.RoundUp((long)totalSplits * RowsPerSequence * MlaDims.HeadDimV * sizeof(float), BufferSizes.RegionAlignment);

    /// <summary>The split-KV scratch of <paramref name="totalSplits"/> chunks: partial outputs, then partial lse.</summary>
    public long SplitScratchBytes(int totalSplits) => AccumOutBytes(totalSplits) + (long)totalSplits * RowsPerSequence * sizeof(float);
}
