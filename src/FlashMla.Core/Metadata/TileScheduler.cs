using FlashMla.Core.Tensors;

namespace FlashMla.Core.Metadata;

/// <summary>
/// The split-KV tile scheduler, computed on the host from the sequence lengths. It cuts the batch's
/// KV pages into chunks so that each of <c>numSmParts</c> parts (one decode CTA per row group and
/// part) gets about the same number of pages, plus <see cref="FixedCostPages"/> for each chunk it
/// starts. Long sequences are cut across parts, short ones packed together. The format and the
/// algorithm are the kernel ABI's (native/include/mla_params.h, "TILE-SCHEDULER METADATA"):
/// change neither without changing the header.
/// <para>
/// Output: <c>schedMeta</c> int32 <c>[numSmParts, RecordInts]</c>, one record per part, and
/// <c>numSplits</c> int32 <c>[batch + 1]</c>, the prefix sum of the chunks of each sequence.
/// </para>
/// </summary>
public static class TileScheduler
{
    /// <summary>int32 per part record (<c>MLA_SCHED_INTS</c>).</summary>
    public const int RecordInts = 8;

    /// <summary>Record field: first sequence of the part (<c>MLA_SCHED_BEGIN_SEQ</c>).</summary>
    public const int BeginSeq = 0;

    /// <summary>Record field: first page of the part within <see cref="BeginSeq"/> (<c>MLA_SCHED_BEGIN_BLOCK</c>).</summary>
    public const int BeginBlock = 1;

    /// <summary>Record field: last sequence of the part, inclusive (<c>MLA_SCHED_END_SEQ</c>).</summary>
    public const int EndSeq = 2;

    /// <summary>Record field: one past the last page within <see cref="EndSeq"/> (<c>MLA_SCHED_END_BLOCK</c>).</summary>
    public const int EndBlock = 3;

    /// <summary>Record field: chunk index of the part's first chunk within its first sequence (<c>MLA_SCHED_BEGIN_SPLIT</c>).</summary>
    public const int BeginSplit = 4;

    /// <summary>Cost of starting a chunk, in pages (Q load, softmax setup, output write): <c>MLA_SCHED_FIXED_COST_PAGES</c>.</summary>
    public const int FixedCostPages = 5;

    /// <summary>Query rows (heads x query tokens) per decode CTA: <c>MLA_ROWS_PER_CTA</c>.</summary>
    public const int RowsPerCta = 64;

    /// <summary>Row groups of one sequence: <c>ceil(s_q * h_q / 64)</c>.</summary>
    public static int RowGroups(int queryTokens, int heads) => (queryTokens * heads + RowsPerCta - 1) / RowsPerCta;

    /// <summary>The recommended part count: one decode CTA per SM across all row groups.</summary>
    public static int DefaultNumSmParts(int smCount, int numRowGroups) =>
        Math.Max(1, smCount / Math.Max(1, numRowGroups));

    /// <summary>An upper bound of <c>numSplits[batch]</c> (each part cuts at most one sequence).</summary>
    public static int MaxTotalSplits(int batch, int numSmParts) => batch + numSmParts;

    /// <summary>
    /// Fills <paramref name="schedMeta"/> (<c>numSmParts * RecordInts</c>) and <paramref name="numSplits"/>
    /// (<c>seqLens.Length + 1</c>) from the lengths. Allocates nothing: the spans can be the pinned upload buffer.
    /// Returns the total number of chunks (<c>numSplits[batch]</c>).
    /// </summary>
    public static int Compute(ReadOnlySpan<int> seqLens, int numSmParts, Span<int> schedMeta, Span<int> numSplits)
    {
        int batch = seqLens.Length;
        if (batch < 1) throw new ArgumentException("the batch is empty", nameof(seqLens));
        ArgumentOutOfRangeException.ThrowIfLessThan(numSmParts, 1);
        if (schedMeta.Length != numSmParts * RecordInts)
            throw new ArgumentException($"schedMeta needs {numSmParts * RecordInts} ints, got {schedMeta.Length}", nameof(schedMeta));
        if (numSplits.Length != batch + 1)
            throw new ArgumentException($"numSplits needs {batch + 1} ints, got {numSplits.Length}", nameof(numSplits));

        const int F = FixedCostPages;
        long total = 0;
        for (int s = 0; s < batch; s++)
        {
            if (seqLens[s] < 0) throw new ArgumentException($"sequence {s} has a negative length", nameof(seqLens));
            total += MlaDims.BlocksFor(seqLens[s]) + F;
        }
        long payload = (total + numSmParts - 1) / numSmParts + F;

        schedMeta.Clear();
        // numSplits[i + 1] collects the chunk count of sequence i, then becomes the prefix sum.
        numSplits.Clear();

        int i = 0, j = 0, k = 0; // cursor: sequence, page within it, chunk index within it
        for (int p = 0; p < numSmParts; p++)
        {
            Span<int> record = schedMeta.Slice(p * RecordInts, RecordInts);
            if (i >= batch)
            {
                record[BeginSeq] = batch;
                record[EndSeq] = batch - 1;
                continue;
            }
            record[BeginSeq] = i;
            record[BeginBlock] = j;
            record[BeginSplit] = k;
            long budget = p == numSmParts - 1 ? long.MaxValue / 2 : payload;
            int endSeq = -1, endBlock = 0;
            while (i < batch)
            {
                int pages = MlaDims.BlocksFor(seqLens[i]);
                int rest = pages - j;
                if (rest + F <= budget)
                {
                    budget -= rest + F;
                    endSeq = i;
                    endBlock = pages;
                    numSplits[i + 1] = k + 1;
                    i++;
                    j = 0;
                    k = 0;
                }
                else
                {
                    long take = budget - F; // < rest here
                    if (take > 0)
                    {
                        j += (int)take;
                        endSeq = i;
                        endBlock = j;
                        k++;
                    }
                    break;
                }
            }
            // At a part's start budget = payload >= F + 1, so a non-empty part always takes a page or a whole sequence.
            record[EndSeq] = endSeq;
            record[EndBlock] = endBlock;
        }

        for (int s = 0; s < batch; s++) numSplits[s + 1] += numSplits[s];
        return numSplits[batch];
    }
}
