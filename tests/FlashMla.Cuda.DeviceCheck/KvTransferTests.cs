using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>Rows in and out of the device pools, block copies, and that nothing a test wrote was disturbed.</summary>
[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class KvTransferTests(StagedBackend device, ITestOutputHelper output)
{
    [Fact]
    public void Rows_written_come_back_unchanged_and_one_layer_leaves_the_other_alone()
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var steps = device.Steps("write-read");
        int total = backend.Geometry.NumBlocks * MlaDims.BlockSize;
        // 40000 rows (three staging passes): shuffled slots, and a run of consecutive ones.
        int[] slots = steps.Shuffled(total)[..36000].Concat(Enumerable.Range(0, 4000)).Distinct().ToArray();
        ushort[] rows = steps.RandomRows(slots.Length);
        device.Write(1, slots, rows);
        var back = new ushort[rows.Length];
        backend.ReadKv(1, slots, back);
        Assert.Equal(rows, back);

        // Layer 0's writes must not touch layer 1: write it, then read both back.
        int[] other = steps.Shuffled(total)[..5000];
        ushort[] otherRows = steps.RandomRows(other.Length);
        device.Write(0, other, otherRows);
        backend.ReadKv(1, slots, back);
        Assert.Equal(rows, back);
        var otherBack = new ushort[otherRows.Length];
        backend.ReadKv(0, other, otherBack);
        Assert.Equal(otherRows, otherBack);
        output.WriteLine($"{slots.Length} + {other.Length} rows written and read back");
    }

    [Fact]
    public void Block_copies_keep_the_sequential_meaning_of_the_list()
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var mirror = device.Mirror;
        var steps = device.Steps("copy-blocks");
        int[] blocks = steps.Shuffled(backend.Geometry.NumBlocks)[..8];
        for (int l = 0; l < mirror.Layers; l++)
        {
            int[] slots = blocks.SelectMany(b => Enumerable.Range(b * MlaDims.BlockSize, MlaDims.BlockSize)).ToArray();
            ushort[] rows = steps.RandomRows(slots.Length);
            device.Write(l, slots, rows);
        }
        int a = blocks[0], b1 = blocks[1], c = blocks[2], d = blocks[3], e = blocks[4], f = blocks[5];
        // Chained (b1 -> e reads what a -> b1 wrote), overwrite-after-read (f -> a), a self-copy, and a repeated destination.
        BlockCopy[] copies = [new(a, b1), new(c, d), new(b1, e), new(f, a), new(c, c), new(d, blocks[6]), new(a, blocks[6])];
        backend.CopyBlocks(copies);
        foreach (BlockCopy copy in copies) mirror.CopyBlock(copy.Source, copy.Destination);
        for (int l = 0; l < mirror.Layers; l++)
            foreach (int block in blocks[..7])
                Assert.Equal(0, RowsDiffering(backend, mirror, l, Enumerable.Range(block * MlaDims.BlockSize, MlaDims.BlockSize).ToArray()));
    }

    [Fact]
    public void Every_row_the_tests_wrote_reads_back_as_the_host_copy_has_it()
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var mirror = device.Mirror;
        int[] someSlots = device.Steps("intact").Shuffled(backend.Geometry.NumBlocks * MlaDims.BlockSize)[..1000];
        ushort[] someRows = device.Steps("intact rows").RandomRows(someSlots.Length);
        device.Write(0, someSlots, someRows); // so there is something to compare even when this test runs first
        int compared = 0;
        for (int l = 0; l < mirror.Layers; l++)
        {
            int[] slots = Enumerable.Range(0, mirror.Blocks * MlaDims.BlockSize).Where(s => mirror.Written(l, s)).ToArray();
            Assert.Equal(0, RowsDiffering(backend, mirror, l, slots));
            compared += slots.Length;
        }
        output.WriteLine($"{compared} written rows of {mirror.Layers} layers read back");
    }

    private static int RowsDiffering(CudaBackend backend, KvMirror mirror, int layer, int[] slots)
    {
        var back = new ushort[slots.Length * MlaDims.HeadDimK];
        backend.ReadKv(layer, slots, back);
        int bad = 0;
        for (int n = 0; n < slots.Length; n++)
            if (!back.AsSpan(n * MlaDims.HeadDimK, MlaDims.HeadDimK).SequenceEqual(mirror.Row(layer, slots[n]))) bad++;
        return bad;
    }
}

/// <summary>Opening the backend on the device found here.</summary>
[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class OpenTests(ITestOutputHelper output)
{
    [Fact]
    public void The_probe_finds_the_device_and_the_kernels()
    {
        GpuDevice.Require();
        var probe = CudaBackendFactory.Probe(GpuDevice.FatbinPath);
        Assert.True(probe.IsUsable, probe.Reason);
        output.WriteLine(probe.Reason);
    }

    [Fact]
    public void Pools_sized_from_free_memory_get_blocks()
    {
        GpuDevice.Require();
        using var sized = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = GpuDevice.FatbinPath, NumLayers = 61, MemoryFraction = 0.05 });
        Assert.True(sized.Geometry.NumBlocks > 0);
        output.WriteLine($"5% of free memory, 61 layers: {sized.Geometry.NumBlocks} blocks; {sized.DeviceDescription}");
    }
}
