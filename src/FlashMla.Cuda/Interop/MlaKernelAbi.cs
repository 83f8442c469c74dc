using System.Runtime.InteropServices;

namespace FlashMla.Cuda.Interop;

/// <summary>
/// The launch ABI of the native kernels, mirrored from native/include/mla_params.h
/// (<c>MLA_ABI_VERSION</c> 2): kernel names, launch shapes and the params structs each kernel takes
/// by value as its only parameter. Field order, sizes and offsets must match the header exactly;
/// FlashMla.Cuda.Tests pins them.
/// </summary>
internal static class MlaKernelAbi
{
    public const int AbiVersion = 2;

    public const int HeadDimK = 576;
    public const int HeadDimV = 512;
    public const int PageTokens = 64;
    public const int MaxHeads = 128;
    public const int MaxRowsPerSeq = 512;
    public const int RowsPerCta = 64;

    public const int SchedInts = 8;
    public const int SchedFixedCostPages = 5;

    public const string KernelDecode = "flashmla_decode_splitkv";
    /// <summary>
    /// <c>MLA_DECODE_CLUSTER_WIDTH_SUFFIX</c>: a module whose decode kernel wants clusters exports the int
    /// <c>&lt;kernel name&gt;_cluster_x</c>; the decode is then launched in clusters of that many CTAs along x
    /// whenever the row groups divide by it (<see cref="Backend.DecodeLaunch"/>).
    /// </summary>
    public const string DecodeClusterWidthSuffix = "_cluster_x";
    public const int DecodeThreads = 256;
    public const int DecodeSmemBytes = 229888;

    public const string KernelCombine = "flashmla_combine";
    public const int CombineThreads = 128;
    public const int CombineRowsPerCta = 1;

    public const string KernelReference = "flashmla_decode_reference";
    public const int ReferenceThreads = 128;
    public const int ReferenceRowsPerCta = 4;

    public const string KernelAppend = "flashmla_append_kv";
    public const int AppendThreads = 256;
    public const int AppendRowsPerCta = 8;

    public const string KernelCopy = "flashmla_copy_blocks";
    public const int CopyThreads = 256;

    // The fp8 cache (FlashMLA's "FP8 with scale" rows, 656 bytes a token, pools [num_blocks, 64, 656] bytes): the same
    // params structs, grids and blocks as the bf16 kernels above; KvMap and KvMapRow0 are unused (0).

    /// <summary>Decode over fp8 pages; the combine is the bf16 one.</summary>
    public const string KernelDecodeFp8 = "flashmla_decode_splitkv_fp8";
    /// <summary><c>MLA_DECODE_FP8_SMEM_BYTES</c>: the bf16 decode's dynamic shared memory (its layout uses 219,136 bytes of it).</summary>
    public const int DecodeFp8SmemBytes = 229888;

    /// <summary>Quantizes bf16 rows <c>[num_rows, 576]</c> into their slots of an fp8 pool.</summary>
    public const string KernelAppendFp8 = "flashmla_append_kv_fp8";

    /// <summary>Copies rows already in the fp8 format, <c>[num_rows, 656]</c> bytes, into their slots as they are.</summary>
    public const string KernelAppendFp8Raw = "flashmla_append_kv_fp8_raw";

    /// <summary>Copies whole fp8 pages (41,984 bytes).</summary>
    public const string KernelCopyFp8 = "flashmla_copy_blocks_fp8";

    public const int Fp8TokenBytes = 656;

    /// <summary>log2(e), for <see cref="MlaDecodeParams.ScaleLog2"/>.</summary>
    public const float Log2E = 1.4426950408889634f;
}

/// <summary>
/// <c>MlaDecodeParams</c>: the one parameter of the decode, combine and reference kernels. 256 bytes; the header
/// aligns it to 64 for the tensor map, which only matters on the device side (the launch copies the bytes).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct MlaDecodeParams
{
    public ulong Q;               //   0 bf16 [batch, s_q, h_q, 576]
    public ulong KvPool;          //   8 bf16 [num_blocks, 64, 576] (fp8 decode: bytes [num_blocks, 64, 656]), one layer
    public ulong BlockTable;      //  16 int32 [batch, block_table_stride]
    public ulong SeqLens;         //  24 int32 [batch]
    public ulong SchedMeta;       //  32 int32 [num_sm_parts, 8]
    public ulong NumSplits;       //  40 int32 [batch + 1]
    public ulong Out;             //  48 bf16 [batch, s_q, h_q, 512]
    public ulong Lse;             //  56 fp32 [batch, h_q, s_q]
    public ulong OAccum;          //  64 fp32 [total_splits, rows_per_seq, 512]
    public ulong LseAccum;        //  72 fp32 [total_splits, rows_per_seq]
    public int Batch;             //  80
    public int SQ;                //  84
    public int HQ;                //  88
    public int RowsPerSeq;        //  92
    public int NumRowGroups;      //  96
    public int BlockTableStride;  // 100
    public int NumSmParts;        // 104
    public int NumBlocks;         // 108
    public float SoftmaxScale;    // 112
    public float ScaleLog2;       // 116
    public int KvMapRow0;         // 120 row of KvMap holding token 0 of page 0 of KvPool
    public int Reserved0;         // 124 0
    public TensorMapBytes KvMap;  // 128 CUtensorMap over the pools (KvTensorMap.Encode)
}

/// <summary><c>MlaTensorMap</c>: the 128 opaque bytes of a <c>CUtensorMap</c>, as the driver encodes them.</summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
internal unsafe struct TensorMapBytes
{
    public fixed ulong Words[16];
}

/// <summary><c>KvAppendParams</c>: the one parameter of <c>flashmla_append_kv</c> (and <c>_fp8</c>, <c>_fp8_raw</c>). 32 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvAppendParams
{
    public ulong KvPool;          //  0 bf16 [num_blocks, 64, 576] (fp8 kernels: bytes [num_blocks, 64, 656]), one layer
    public ulong Rows;            //  8 bf16 [num_rows, 576] (fp8 raw append: bytes [num_rows, 656])
    public ulong Slots;           // 16 int32 [num_rows]
    public int NumRows;           // 24
    public int NumBlocks;         // 28
}

/// <summary><c>BlockCopyParams</c>: the one parameter of <c>flashmla_copy_blocks</c> (and <c>_fp8</c>, pages of 41,984 bytes). 32 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct BlockCopyParams
{
    public ulong KvPool;            //  0 bf16, layer 0's pool
    public ulong Pairs;             //  8 int32 [num_pairs, 2] = (src page, dst page)
    public int NumPairs;            // 16
    public int NumLayers;           // 20
    public int LayerStrideBlocks;   // 24
    public int NumBlocks;           // 28
}
