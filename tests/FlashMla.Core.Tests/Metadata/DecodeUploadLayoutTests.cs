using FlashMla.Core.Metadata;

namespace FlashMla.Core.Tests.Metadata;

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
    public void A_layout_needs_at_least_one_sequence_part_and_stride()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeUploadLayout(0, 1, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeUploadLayout(1, 0, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeUploadLayout(1, 1, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeUploadLayout(1, 1, 1, -1));
    }
}
