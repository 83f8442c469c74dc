namespace FlashMla.Cuda.Interop;

/// <summary>
/// The tensor map the decode kernel copies KV pages through (TMA), encoded as native/include/mla_params.h
/// prescribes for <c>MlaDecodeParams.kv_map</c>: bf16 rows of 576 columns, 64 x 64 boxes, 128-byte swizzle
/// (the layout the kernel's wgmma descriptors read).
/// </summary>
internal static class KvTensorMap
{
    // cuda.h: CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, _INTERLEAVE_NONE, _SWIZZLE_128B, _L2_PROMOTION_L2_256B, _FLOAT_OOB_FILL_NONE.
    private const int DataTypeBfloat16 = 9;
    private const int InterleaveNone = 0;
    private const int Swizzle128B = 3;
    private const int L2Promotion256B = 3;
    private const int OobFillNone = 0;

    /// <summary>Box edge in elements and rows: one 64-column block of one page.</summary>
    public const int Box = 64;

    /// <summary>
    /// Encodes a map over <paramref name="totalRows"/> rows of 576 bf16 starting at the device address
    /// <paramref name="allocation"/> (16-byte aligned; every cuMemAlloc is). The kernel addresses rows with
    /// 32-bit signed coordinates, so at most <see cref="int.MaxValue"/> rows.
    /// </summary>
    public static unsafe TensorMapBytes Encode(ulong allocation, long totalRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(totalRows, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(totalRows, int.MaxValue);
        if (allocation % 16 != 0) throw new ArgumentException("a tensor map's base must be 16-byte aligned", nameof(allocation));
        TensorMapBytes map = default;
        ulong* dims = stackalloc ulong[2] { (ulong)MlaKernelAbi.HeadDimK, (ulong)totalRows };
        ulong* strides = stackalloc ulong[1] { (ulong)MlaKernelAbi.HeadDimK * 2 };
        uint* box = stackalloc uint[2] { Box, Box };
        uint* elementStrides = stackalloc uint[2] { 1, 1 };
        CudaException.Check(CudaDriver.cuTensorMapEncodeTiled(&map, DataTypeBfloat16, 2, allocation, dims, strides, box,
            elementStrides, InterleaveNone, Swizzle128B, L2Promotion256B, OobFillNone), "cuTensorMapEncodeTiled(KV pools)");
        return map;
    }
}
