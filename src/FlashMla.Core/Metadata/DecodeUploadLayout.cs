using System.Diagnostics;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Metadata;

/// <summary>
/// The int32 half of a decode step's upload, packed so that one host-to-device copy carries
/// everything the kernels index by:
/// <code>
/// [seq_lens: b] [block_table: b * stride] [sched_meta: parts * 8] [num_splits: b + 1] [slots: new rows]
/// </code>
/// Each section starts at a multiple of <see cref="AlignInts"/> ints (128 bytes; the kernel ABI asks
/// for 16-byte aligned pointers), so a device pointer to a section is
/// <c>base + 4 * offset</c>. Padding is zero. <c>slots</c> (the pool slots of this step's new KV rows,
/// for the append kernel) is empty when the step appends nothing.
/// </summary>
public readonly record struct DecodeUploadLayout
{
    /// <summary>Section alignment in ints.</summary>
    public const int AlignInts = 32;

    public DecodeUploadLayout(int batch, int blockTableStride, int numSmParts, int newRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockTableStride, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(numSmParts, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(newRows);
        Batch = batch;
        BlockTableStride = blockTableStride;
        NumSmParts = numSmParts;
        NewRows = newRows;
        BlockTableOffset = Align(batch);
        SchedMetaOffset = Align(checked(BlockTableOffset + batch * blockTableStride));
        NumSplitsOffset = Align(checked(SchedMetaOffset + numSmParts * TileScheduler.RecordInts));
        SlotsOffset = Align(checked(NumSplitsOffset + batch + 1));
        TotalInts = Align(checked(SlotsOffset + newRows));
    }

    public int Batch { get; }
    public int BlockTableStride { get; }
    public int NumSmParts { get; }
    public int NewRows { get; }

    public int SeqLensOffset => 0;
    public int BlockTableOffset { get; }
    public int SchedMetaOffset { get; }
    public int NumSplitsOffset { get; }
    public int SlotsOffset { get; }

    /// <summary>Ints of the whole upload, a multiple of <see cref="AlignInts"/>.</summary>
    public int TotalInts { get; }

    public long TotalBytes => TotalInts * 4L;

    /// <summary>
    /// Writes every section into <paramref name="destination"/> (at least <see cref="TotalInts"/> long)
    /// and computes the tile schedule in place. The lengths, block ids and slots must already have passed
    /// <see cref="Backends.DecodeBatch.CheckInvariants"/> against the pools (every block id a sequence uses in
    /// <c>0 .. numBlocks-1</c>, every slot in <c>0 .. numBlocks*64-1</c>); here they are only asserted.
    /// Returns the total number of chunks (<c>num_splits[b]</c>): more than <see cref="Batch"/> means some
    /// sequence is split and the combine kernel must run.
    /// </summary>
    public int Pack(Span<int> destination, ReadOnlySpan<int> seqLens, ReadOnlySpan<int> blockTable, ReadOnlySpan<int> slots, int numBlocks)
    {
        Debug.Assert(destination.Length >= TotalInts, "the destination is shorter than the upload");
        Debug.Assert(seqLens.Length == Batch && blockTable.Length == Batch * BlockTableStride && slots.Length == NewRows,
            "the sections do not match the layout");
        Debug.Assert(AllInsidePools(seqLens, blockTable, slots, numBlocks), "a block id or slot is outside the pools");

        Span<int> upload = destination[..TotalInts];
        upload.Clear();
        seqLens.CopyTo(upload[SeqLensOffset..]);
        blockTable.CopyTo(upload[BlockTableOffset..]);
        slots.CopyTo(upload[SlotsOffset..]);
        return TileScheduler.Compute(
            seqLens,
            NumSmParts,
            upload.Slice(SchedMetaOffset, NumSmParts * TileScheduler.RecordInts),
            upload.Slice(NumSplitsOffset, Batch + 1));
    }

    private bool AllInsidePools(ReadOnlySpan<int> seqLens, ReadOnlySpan<int> blockTable, ReadOnlySpan<int> slots, int numBlocks)
    {
        for (int s = 0; s < Batch; s++)
        {
            int used = MlaDims.BlocksFor(seqLens[s]);
            if (seqLens[s] < 0 || used > BlockTableStride) return false;
            foreach (int block in blockTable.Slice(s * BlockTableStride, used))
                if ((uint)block >= (uint)numBlocks) return false;
        }
        foreach (int slot in slots)
            if ((ulong)slot >= (ulong)numBlocks * MlaDims.BlockSize) return false;
        return true;
    }

    private static int Align(int ints) => checked((ints + AlignInts - 1) / AlignInts * AlignInts);
}
