using System.Buffers;

namespace FlashMla.Core.Backends.Cpu;

/// <summary>
/// A decode batch as the CPU backend's worker computes it later: its lengths, block table and q segment list
/// copied into rented arrays (the scheduler reuses its own as soon as Submit returns), everything else the
/// caller's (q bytes and outputs stay valid until the submission completes).
/// </summary>
internal sealed class CpuDecodeStep
{
    private readonly int[] _seqLens;
    private readonly int[] _blockTable;
    private readonly ReadOnlyMemory<ushort>[] _segments;

    private CpuDecodeStep(DecodeBatch batch)
    {
        _seqLens = ArrayPool<int>.Shared.Rent(batch.SeqLens.Length);
        _blockTable = ArrayPool<int>.Shared.Rent(batch.BlockTable.Length);
        _segments = ArrayPool<ReadOnlyMemory<ushort>>.Shared.Rent(batch.Q.Count);
        batch.SeqLens.Span.CopyTo(_seqLens);
        batch.BlockTable.Span.CopyTo(_blockTable);
        for (int i = 0; i < batch.Q.Count; i++) _segments[i] = batch.Q[i];
        Batch = new DecodeBatch
        {
            Layer = batch.Layer, BatchSize = batch.BatchSize, QueryTokens = batch.QueryTokens, Heads = batch.Heads,
            SoftmaxScale = batch.SoftmaxScale,
            Q = new QuerySegments(new ArraySegment<ReadOnlyMemory<ushort>>(_segments, 0, batch.Q.Count)),
            SeqLens = _seqLens.AsMemory(0, batch.SeqLens.Length),
            BlockTable = _blockTable.AsMemory(0, batch.BlockTable.Length),
            BlockTableStride = batch.BlockTableStride,
            Out = batch.Out,
            Lse = batch.Lse,
        };
    }

    /// <summary>The batch to compute: the new rows are already written, so it carries none.</summary>
    public DecodeBatch Batch { get; }

    public static CpuDecodeStep Capture(DecodeBatch batch) => new(batch);

    public void Return()
    {
        ArrayPool<int>.Shared.Return(_seqLens);
        ArrayPool<int>.Shared.Return(_blockTable);
        Array.Clear(_segments); // no hold on the request's bytes from the pool
        ArrayPool<ReadOnlyMemory<ushort>>.Shared.Return(_segments);
    }
}
