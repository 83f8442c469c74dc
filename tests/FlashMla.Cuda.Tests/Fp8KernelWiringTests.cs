using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Tests;

/// <summary>How the CUDA backend wires an fp8 cache, checked without a GPU: kernel names by dtype, pool sizes, stored-row checks.</summary>
public class Fp8KernelWiringTests
{
    [Fact]
    public void The_fp8_kernels_are_the_issue_17_abi_names_with_the_bf16_launch_shapes()
    {
        Assert.Equal("flashmla_decode_splitkv_fp8", MlaKernelAbi.KernelDecodeFp8);
        Assert.Equal("flashmla_append_kv_fp8", MlaKernelAbi.KernelAppendFp8);
        Assert.Equal("flashmla_append_kv_fp8_raw", MlaKernelAbi.KernelAppendFp8Raw);
        Assert.Equal("flashmla_copy_blocks_fp8", MlaKernelAbi.KernelCopyFp8);
        Assert.Equal(229888, MlaKernelAbi.DecodeFp8SmemBytes);
        Assert.Equal(Fp8KvFormat.TokenBytes, MlaKernelAbi.Fp8TokenBytes);
    }

    [Fact]
    public void A_bf16_cache_looks_up_only_the_bf16_kernels_and_an_fp8_cache_only_the_fp8_ones()
    {
        var bf16 = MlaKernels.KernelNames.For(KvDtype.Bf16);
        Assert.Equal((MlaKernelAbi.KernelDecode, MlaKernelAbi.DecodeSmemBytes, MlaKernelAbi.KernelAppend, MlaKernelAbi.KernelAppend, MlaKernelAbi.KernelCopy),
            (bf16.Decode, bf16.DecodeSmemBytes, bf16.Append, bf16.AppendStored, bf16.Copy));
        var fp8 = MlaKernels.KernelNames.For(KvDtype.Fp8);
        Assert.Equal((MlaKernelAbi.KernelDecodeFp8, MlaKernelAbi.DecodeFp8SmemBytes, MlaKernelAbi.KernelAppendFp8, MlaKernelAbi.KernelAppendFp8Raw, MlaKernelAbi.KernelCopyFp8),
            (fp8.Decode, fp8.DecodeSmemBytes, fp8.Append, fp8.AppendStored, fp8.Copy));
    }

    [Fact]
    public void The_same_device_memory_holds_1152_over_656_times_the_blocks_in_fp8()
    {
        const long free = 100L << 30;
        int bf16 = CudaBackendFactory.BlockCountFromMemory(free, 0.9, 61, 512L << 20);
        int fp8 = CudaBackendFactory.BlockCountFromMemory(free, 0.9, 61, 512L << 20, KvDtype.Fp8);
        long usable = (long)Math.Floor(free * 0.9) - (512L << 20);
        Assert.Equal(usable / (61 * 73_728L), bf16);
        Assert.Equal(usable / (61 * 41_984L), fp8);
        Assert.InRange(fp8 / (double)bf16, 1.755, 1.757);
    }

    [Fact]
    public void Stored_rows_are_checked_against_the_pools_bytes_per_token()
    {
        var fp8 = new KvPoolGeometry(2, 4, KvDtype.Fp8);
        CudaBackendArguments.StoredRows(fp8, 1, [0, 255], 2 * 656);
        Assert.Throws<ArgumentException>(() => CudaBackendArguments.StoredRows(fp8, 1, [0, 255], 2 * 1152));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.StoredRows(fp8, 1, [256], 656));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendArguments.StoredRows(fp8, 2, [0], 656));
        CudaBackendArguments.StoredRows(new KvPoolGeometry(2, 4), 0, [3], 1152);
    }

    [Fact]
    public void An_undefined_kv_dtype_is_refused_by_the_options()
    {
        var options = new CudaBackendOptions { FatbinPath = "x.fatbin", NumLayers = 1, KvDtype = (KvDtype)7 };
        Assert.Contains("KvDtype", Assert.Throws<ArgumentException>(options.Validate).Message);
        new CudaBackendOptions { FatbinPath = "x.fatbin", NumLayers = 1, KvDtype = KvDtype.Fp8 }.Validate();
    }
}
