using System.Runtime.InteropServices;
using FlashMla.Core.Metadata;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Tests;

/// <summary>The C# mirror of native/include/mla_params.h (MLA_ABI_VERSION 2): sizes and offsets as the header states them.</summary>
public class KernelAbiTests
{
    [Fact]
    public void MlaDecodeParams_is_256_bytes_with_the_header_offsets()
    {
        Assert.Equal(256, Marshal.SizeOf<MlaDecodeParams>());
        (string Field, int Offset)[] expected =
        [
            ("Q", 0), ("KvPool", 8), ("BlockTable", 16), ("SeqLens", 24), ("SchedMeta", 32), ("NumSplits", 40),
            ("Out", 48), ("Lse", 56), ("OAccum", 64), ("LseAccum", 72),
            ("Batch", 80), ("SQ", 84), ("HQ", 88), ("RowsPerSeq", 92), ("NumRowGroups", 96),
            ("BlockTableStride", 100), ("NumSmParts", 104), ("NumBlocks", 108),
            ("SoftmaxScale", 112), ("ScaleLog2", 116), ("KvMapRow0", 120), ("Reserved0", 124), ("KvMap", 128),
        ];
        AssertOffsets<MlaDecodeParams>(expected);
    }

    [Fact]
    public void Tensor_map_encoding_rejects_what_the_kernel_cannot_address_before_calling_the_driver()
    {
        // Checked before cuTensorMapEncodeTiled, so these hold on a machine without a GPU.
        Assert.Throws<ArgumentOutOfRangeException>(() => KvTensorMap.Encode(256, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => KvTensorMap.Encode(256, (long)int.MaxValue + 1));
        Assert.Throws<ArgumentException>(() => KvTensorMap.Encode(8, 64));
    }

    [Fact]
    public void KvAppendParams_is_32_bytes_with_the_header_offsets()
    {
        Assert.Equal(32, Marshal.SizeOf<KvAppendParams>());
        AssertOffsets<KvAppendParams>([("KvPool", 0), ("Rows", 8), ("Slots", 16), ("NumRows", 24), ("NumBlocks", 28)]);
    }

    [Fact]
    public void BlockCopyParams_is_32_bytes_with_the_header_offsets()
    {
        Assert.Equal(32, Marshal.SizeOf<BlockCopyParams>());
        AssertOffsets<BlockCopyParams>([("KvPool", 0), ("Pairs", 8), ("NumPairs", 16), ("NumLayers", 20), ("LayerStrideBlocks", 24), ("NumBlocks", 28)]);
    }

    [Fact]
    public unsafe void Unmanaged_size_equals_marshalled_size_so_the_launch_copies_the_whole_struct()
    {
        // cuLaunchKernel copies sizeof(T) bytes from &params: the blittable size is what counts.
        Assert.Equal(256, sizeof(MlaDecodeParams));
        Assert.Equal(128, sizeof(TensorMapBytes));
        Assert.Equal(32, sizeof(KvAppendParams));
        Assert.Equal(32, sizeof(BlockCopyParams));
    }

    [Fact]
    public void Core_constants_agree_with_the_kernel_abi()
    {
        Assert.Equal(2, MlaKernelAbi.AbiVersion);
        Assert.Equal(MlaKernelAbi.HeadDimK, MlaDims.HeadDimK);
        Assert.Equal(MlaKernelAbi.HeadDimV, MlaDims.HeadDimV);
        Assert.Equal(MlaKernelAbi.PageTokens, MlaDims.BlockSize);
        Assert.Equal(MlaKernelAbi.MaxHeads, MlaDims.MaxHeads);
        Assert.Equal(MlaKernelAbi.SchedInts, TileScheduler.RecordInts);
        Assert.Equal(MlaKernelAbi.SchedFixedCostPages, TileScheduler.FixedCostPages);
        Assert.Equal(MlaKernelAbi.RowsPerCta, TileScheduler.RowsPerCta);
        Assert.Equal((0, 1, 2, 3, 4), (TileScheduler.BeginSeq, TileScheduler.BeginBlock, TileScheduler.EndSeq, TileScheduler.EndBlock, TileScheduler.BeginSplit));
    }

    [Fact]
    public void Kernel_names_and_launch_shapes_are_the_headers()
    {
        Assert.Equal("flashmla_decode_splitkv", MlaKernelAbi.KernelDecode);
        Assert.Equal("flashmla_combine", MlaKernelAbi.KernelCombine);
        Assert.Equal("flashmla_append_kv", MlaKernelAbi.KernelAppend);
        Assert.Equal("flashmla_copy_blocks", MlaKernelAbi.KernelCopy);
        Assert.Equal((256, 229888), (MlaKernelAbi.DecodeThreads, MlaKernelAbi.DecodeSmemBytes));
        Assert.Equal((128, 1), (MlaKernelAbi.CombineThreads, MlaKernelAbi.CombineRowsPerCta));
        Assert.Equal((256, 8), (MlaKernelAbi.AppendThreads, MlaKernelAbi.AppendRowsPerCta));
        Assert.Equal(256, MlaKernelAbi.CopyThreads);
        Assert.Equal(512, MlaKernelAbi.MaxRowsPerSeq);
    }

    private static void AssertOffsets<T>((string Field, int Offset)[] expected)
    {
        var fields = typeof(T).GetFields(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance);
        Assert.Equal(expected.Select(e => e.Field), fields.Select(f => f.Name));
        foreach ((string field, int offset) in expected)
            Assert.True(Marshal.OffsetOf<T>(field).ToInt32() == offset, $"{typeof(T).Name}.{field} at {Marshal.OffsetOf<T>(field)}, header says {offset}");
    }
}
