using FlashMla.Core.Metadata;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Metadata;

public class TileSchedulerTests
{
    private const int F = TileScheduler.FixedCostPages;

    [Fact]
    public void Mixed_lengths_on_four_parts_give_the_hand_worked_schedule()
    {
        // Pages [0, 1, 1, 1, 2, 512], total cost 517 + 6 * 5 = 547, payload ceil(547 / 4) + 5 = 142.
        int[] lens = [0, 1, 63, 64, 65, 32768];
        var meta = new int[4 * TileScheduler.RecordInts];
        var splits = new int[lens.Length + 1];

        int total = TileScheduler.Compute(lens, 4, meta, splits);

        Assert.Equal(9, total);
        Assert.Equal([0, 1, 2, 3, 4, 5, 9], splits);
        Assert.Equal([0, 0, 5, 107, 0, 0, 0, 0], meta[0..8]);
        Assert.Equal([5, 107, 5, 244, 1, 0, 0, 0], meta[8..16]);
        Assert.Equal([5, 244, 5, 381, 2, 0, 0, 0], meta[16..24]);
        Assert.Equal([5, 381, 5, 512, 3, 0, 0, 0], meta[24..32]);
    }

    [Fact]
    public void Parts_left_without_work_are_written_empty()
    {
        var meta = new int[4 * TileScheduler.RecordInts];
        var splits = new int[2];

        TileScheduler.Compute([1], 4, meta, splits);

        Assert.Equal([0, 0, 0, 1, 0, 0, 0, 0], meta[0..8]);
        for (int p = 1; p < 4; p++)
            Assert.Equal([1, 0, 0, 0, 0, 0, 0, 0], meta[(p * 8)..(p * 8 + 8)]);
        Assert.Equal([0, 1], splits);
    }

    public static TheoryData<int, int, int> Batches() => new()
    {
        { 1, 1, 1 }, { 1, 132, 2 }, { 2, 7, 3 }, { 3, 132, 4 }, { 17, 33, 5 }, { 64, 132, 6 },
        { 128, 132, 7 }, { 128, 33, 8 }, { 200, 66, 9 }, { 256, 132, 10 }, { 256, 1, 11 }, { 256, 400, 12 },
    };

    [Theory]
    [MemberData(nameof(Batches))]
    public void Every_page_of_every_sequence_is_covered_exactly_once(int batch, int parts, int seed)
    {
        int[] lens = MixedLengths(batch, seed);
        var meta = new int[parts * TileScheduler.RecordInts];
        var splits = new int[batch + 1];

        int total = TileScheduler.Compute(lens, parts, meta, splits);

        var covered = new int[batch][];
        var chunks = new int[batch];
        for (int s = 0; s < batch; s++) covered[s] = new int[MlaDims.BlocksFor(lens[s])];
        for (int p = 0; p < parts; p++)
        {
            int[] r = meta[(p * 8)..(p * 8 + 8)];
            Assert.Equal([0, 0, 0], r[5..8]);
            if (r[TileScheduler.EndSeq] < r[TileScheduler.BeginSeq])
            {
                Assert.Equal([batch, 0, batch - 1, 0, 0], r[0..5]);
                continue;
            }
            for (int s = r[TileScheduler.BeginSeq]; s <= r[TileScheduler.EndSeq]; s++)
            {
                int first = s == r[TileScheduler.BeginSeq] ? r[TileScheduler.BeginBlock] : 0;
                int end = s == r[TileScheduler.EndSeq] ? r[TileScheduler.EndBlock] : covered[s].Length;
                Assert.True(first <= end && end <= covered[s].Length, $"part {p} sequence {s}: pages {first}..{end}");
                if (s == r[TileScheduler.BeginSeq]) Assert.Equal(chunks[s], r[TileScheduler.BeginSplit]);
                else Assert.Equal(0, first);
                for (int page = first; page < end; page++) covered[s][page]++;
                chunks[s]++;
            }
        }

        for (int s = 0; s < batch; s++)
        {
            Assert.All(covered[s], count => Assert.Equal(1, count));
            Assert.True(chunks[s] >= 1, $"sequence {s} is in no part");
            Assert.Equal(chunks[s], splits[s + 1] - splits[s]);
        }
        Assert.Equal(0, splits[0]);
        Assert.Equal(total, splits[batch]);
        Assert.True(total <= TileScheduler.MaxTotalSplits(batch, parts));
    }

    [Theory]
    [MemberData(nameof(Batches))]
    public void No_part_carries_more_than_the_mean_load_plus_one_chunk_start(int batch, int parts, int seed)
    {
        int[] lens = MixedLengths(batch, seed);
        var meta = new int[parts * TileScheduler.RecordInts];
        var splits = new int[batch + 1];
        TileScheduler.Compute(lens, parts, meta, splits);

        long pages = lens.Sum(l => (long)MlaDims.BlocksFor(l));
        var loads = new long[parts];
        for (int p = 0; p < parts; p++)
        {
            int[] r = meta[(p * 8)..(p * 8 + 8)];
            for (int s = r[TileScheduler.BeginSeq]; s <= r[TileScheduler.EndSeq]; s++)
            {
                int first = s == r[TileScheduler.BeginSeq] ? r[TileScheduler.BeginBlock] : 0;
                int end = s == r[TileScheduler.EndSeq] ? r[TileScheduler.EndBlock] : MlaDims.BlocksFor(lens[s]);
                loads[p] += end - first + F;
            }
        }

        // Every chunk costs its pages plus F; the scheduler's payload is ceil(cost / parts) + F,
        // and the mean can only be higher than cost / parts (splits add chunks).
        long cost = pages + (long)F * batch;
        double mean = loads.Average();
        Assert.Equal(pages + (long)F * splits[batch], loads.Sum());
        Assert.True(loads.Max() <= (cost + parts - 1) / parts + F, $"max load {loads.Max()}, payload {(cost + parts - 1) / parts + F}");
        Assert.True(loads.Max() <= mean + F + 1, $"max load {loads.Max()} vs mean {mean:F1}");
    }

    [Fact]
    public void One_long_sequence_is_cut_into_equal_chunks_and_leftover_parts_stay_empty()
    {
        // 512 pages + F = 517, payload ceil(517 / 132) + 5 = 9: each part takes 4 pages (plus F),
        // the 128th takes the last 4 whole, the last 4 parts find nothing left.
        var meta = new int[132 * TileScheduler.RecordInts];
        var splits = new int[2];

        int total = TileScheduler.Compute([32768], 132, meta, splits);

        Assert.Equal(128, total);
        for (int p = 0; p < 128; p++)
            Assert.Equal([0, 4 * p, 0, 4 * p + 4, p], meta[(p * 8)..(p * 8 + 5)]);
        for (int p = 128; p < 132; p++)
            Assert.Equal([1, 0, 0, 0, 0], meta[(p * 8)..(p * 8 + 5)]);
    }

    [Fact]
    public void Default_part_count_gives_one_cta_per_sm_across_row_groups()
    {
        Assert.Equal(132, TileScheduler.DefaultNumSmParts(132, TileScheduler.RowGroups(1, 16)));
        Assert.Equal(132, TileScheduler.DefaultNumSmParts(132, TileScheduler.RowGroups(1, 64)));
        Assert.Equal(66, TileScheduler.DefaultNumSmParts(132, TileScheduler.RowGroups(1, 128)));
        Assert.Equal(33, TileScheduler.DefaultNumSmParts(132, TileScheduler.RowGroups(2, 128)));
        Assert.Equal(1, TileScheduler.DefaultNumSmParts(4, TileScheduler.RowGroups(4, 128)));
        Assert.Equal(3, TileScheduler.RowGroups(3, 50));
    }

    [Fact]
    public void Wrong_sizes_and_negative_lengths_are_refused()
    {
        var meta = new int[2 * TileScheduler.RecordInts];
        Assert.Throws<ArgumentException>(() => TileScheduler.Compute([], 2, meta, new int[1]));
        Assert.Throws<ArgumentException>(() => TileScheduler.Compute([5], 2, new int[15], new int[2]));
        Assert.Throws<ArgumentException>(() => TileScheduler.Compute([5], 2, meta, new int[3]));
        Assert.Throws<ArgumentException>(() => TileScheduler.Compute([5, -1], 2, meta, new int[3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => TileScheduler.Compute([5], 0, Array.Empty<int>(), new int[2]));
    }

    /// <summary>Lengths from the edge cases (0, 1, 63, 64, 65, 32k) and random ones up to 32k.</summary>
    internal static int[] MixedLengths(int batch, int seed)
    {
        int[] edges = [0, 1, 63, 64, 65, 32768, 4096, 127, 128, 129];
        var random = new Random(seed);
        var lens = new int[batch];
        for (int i = 0; i < batch; i++)
            lens[i] = random.Next(3) == 0 ? edges[random.Next(edges.Length)] : random.Next(0, 32769);
        if (batch >= 6)
            for (int i = 0; i < 6; i++) lens[random.Next(batch)] = edges[i];
        return lens;
    }
}
