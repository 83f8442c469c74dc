using FlashMla.Core.Metadata;

namespace FlashMla.Cuda.Tests;

public class DecodeUploadLayoutTests
{
    [Fact]
    public void Sections_follow_each_other_in_order_at_128_byte_boundaries()
    {
        var layout = new DecodeUploadLayout(batch: 3, blockTableStride: 5, numSmParts: 132, newRows: 6);

        Assert.Equal(0, layout.SeqLensOffset);
        Assert.Equal(32, layout.BlockTableOffset);   // 3 lengths, padded to 32 ints
        Assert.Equal(64, layout.SchedMetaOffset);    // 32 + 15 -> 64
        Assert.Equal(1120, layout.NumSplitsOffset);  // 64 + 132 * 8
        Assert.Equal(1152, layout.SlotsOffset);      // 1120 + 4 -> 1152
        Assert.Equal(1184, layout.TotalInts);        // 1152 + 6 -> 1184
        Assert.Equal(1184 * 4L, layout.TotalBytes);
    }

    [Fact]
    public void Pack_writes_every_section_where_the_layout_says_and_zeroes_the_padding()
    {
        int[] lens = [130, 0, 64];
        int[] table = [7, 3, 9, -1, 42, 0, 0, 0, 0, 0, 11, -1, -1, -1, -1];
        int[] slots = [7 * 64 + 1, 9 * 64, 11 * 64 + 63];
        var layout = new DecodeUploadLayout(3, 5, 4, slots.Length);
        var upload = Enumerable.Repeat(-7, layout.TotalInts + 10).ToArray();

        int totalSplits = layout.Pack(upload, lens, table, slots, numBlocks: 50);

        var meta = new int[4 * TileScheduler.RecordInts];
        var splits = new int[4];
        Assert.Equal(TileScheduler.Compute(lens, 4, meta, splits), totalSplits);
        Assert.Equal(lens, upload[0..3]);
        Assert.Equal(table, upload[32..47]);
        Assert.Equal(meta, upload[64..96]);
        Assert.Equal(splits, upload[96..100]);
        Assert.Equal(slots, upload[128..131]);
        Assert.Equal(160, layout.TotalInts);
        Assert.All(upload[3..32], v => Assert.Equal(0, v));
        Assert.All(upload[47..64], v => Assert.Equal(0, v));
        Assert.All(upload[131..160], v => Assert.Equal(0, v));
        Assert.All(upload[160..], v => Assert.Equal(-7, v)); // past the upload: untouched
    }

    [Fact]
    public void Pack_refuses_a_used_block_outside_the_pool_but_ignores_unused_entries()
    {
        var layout = new DecodeUploadLayout(2, 3, 2, 0);
        var upload = new int[layout.TotalInts];

        // Sequence 1 uses 2 blocks; its third entry is padding and may hold anything.
        layout.Pack(upload, [64, 65], [4, -1, -1, 5, 6, 12345], [], numBlocks: 10);

        var tooBig = Assert.Throws<ArgumentException>(() => layout.Pack(upload, [64, 65], [4, -1, -1, 5, 10, 0], [], numBlocks: 10));
        Assert.Contains("sequence 1 block 1 is 10", tooBig.Message);
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [1, 65], [-2, 0, 0, 5, 6, 0], [], numBlocks: 10));
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [64, 193], [4, 0, 0, 5, 6, 7], [], numBlocks: 10));
    }

    [Fact]
    public void Pack_refuses_a_slot_outside_the_pool()
    {
        var layout = new DecodeUploadLayout(1, 1, 1, 2);
        var upload = new int[layout.TotalInts];

        layout.Pack(upload, [2], [0], [0, 639], numBlocks: 10);
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [2], [0], [0, 640], numBlocks: 10));
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [2], [0], [-1, 1], numBlocks: 10));
    }

    [Fact]
    public void Pack_refuses_inputs_of_the_wrong_size()
    {
        var layout = new DecodeUploadLayout(2, 2, 1, 1);
        var upload = new int[layout.TotalInts];

        Assert.Throws<ArgumentException>(() => layout.Pack(new int[layout.TotalInts - 1], [1, 1], [0, 0, 1, 0], [0], 4));
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [1], [0, 0, 1, 0], [0], 4));
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [1, 1], [0, 0, 1], [0], 4));
        Assert.Throws<ArgumentException>(() => layout.Pack(upload, [1, 1], [0, 0, 1, 0], [], 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeUploadLayout(0, 1, 1, 0));
    }
}
