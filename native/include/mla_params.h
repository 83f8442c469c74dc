/*
 * mla_params.h -- the launch ABI of the FlashMLA Service kernels.
 *
 * This header is the one contract between the kernels (native/kernels/),
 * the native check harness (native/check/) and the C# CUDA backend
 * (src/FlashMla.Cuda mirrors these structs field by field). It is plain C:
 * it compiles as C, C++ and CUDA, and holds no CUDA types.
 *
 * Changing a field, its order, a constant or a kernel name is an ABI change:
 * bump MLA_ABI_VERSION and change the C# mirror in the same commit.
 *
 * ---------------------------------------------------------------------------
 * HOW THE SERVICE LAUNCHES
 * ---------------------------------------------------------------------------
 *  - Load native/build/flashmla.fatbin with cuModuleLoadData, look the kernels
 *    up by the extern "C" names below (cuModuleGetFunction).
 *  - Every kernel takes exactly ONE parameter: its params struct, by value,
 *    declared `const __grid_constant__ T p`. With cuLaunchKernel pass
 *    kernelParams = { &params } (a pointer to the host copy of the struct);
 *    the driver copies sizeof(T) bytes.
 *  - Launch with the grid, block and dynamic shared memory given by the
 *    MLA_*_ constants below. flashmla_decode_splitkv needs more than 48 KB of
 *    dynamic shared memory: once after loading, call
 *    cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
 *    MLA_DECODE_SMEM_BYTES).
 *  - A decode step is two launches on one stream, in this order:
 *    flashmla_decode_splitkv, then flashmla_combine (always launch the combine:
 *    it returns at once for sequences that were not split).
 *  - All pointers are device pointers, 16-byte aligned (cuMemAlloc gives
 *    256). All tensors are dense, row-major, with exactly the shapes below
 *    (no strides other than block_table_stride).
 *
 * ---------------------------------------------------------------------------
 * TENSORS (one layer; bf16 = 2-byte bfloat16, row-major, last index fastest)
 * ---------------------------------------------------------------------------
 *  kv_pool     bf16  [num_blocks, 64, 576]   page p, token t, column c at
 *                                            element (p*64 + t)*576 + c.
 *                                            K = all 576 columns (512 latent
 *                                            "nope" + 64 rope); V = the first
 *                                            512 columns of the same row.
 *  q           bf16  [batch, s_q, h_q, 576]  query token i, head h of
 *                                            sequence b at row
 *                                            (b*s_q + i)*h_q + h.
 *  block_table int32 [batch, block_table_stride]; entry j of sequence b is the
 *                                            pool page holding tokens
 *                                            64j .. 64j+63. Only the first
 *                                            ceil(seq_lens[b]/64) entries are
 *                                            read.
 *  seq_lens    int32 [batch]                 tokens in the cache of each
 *                                            sequence AFTER this step's rows
 *                                            were appended; >= 0.
 *  out         bf16  [batch, s_q, h_q, 512]  same row order as q.
 *  lse         fp32  [batch, h_q, s_q]       natural log of the softmax
 *                                            denominator sum_j exp(scale *
 *                                            q.k_j) of row (b, i, h).
 *
 *  Causal mask inside the step: query token i (0-based) of a sequence of
 *  length L sees cache positions 0 .. L - s_q + i. If L - s_q + i < 0 the row
 *  sees nothing: out = 0 and lse = -inf. Cache rows at positions >= L are
 *  never read into a result (they may hold anything, NaN included).
 *
 *  Rows of a sequence: the s_q*h_q query rows of sequence b are numbered
 *  r = i*h_q + h (the order of q and out), rows_per_seq = s_q*h_q <= 512 in
 *  this ABI (s_q <= 4 for h_q = 128). A decode CTA takes one ROW GROUP of
 *  MLA_ROWS_PER_CTA = 64 consecutive rows r = 64g .. 64g+63 (the last group
 *  may be partial); num_row_groups = ceil(rows_per_seq / 64).
 *
 *  Split-KV scratch (fp32, written by decode, read by combine):
 *  o_accum     fp32  [total_splits, rows_per_seq, 512]  normalised partial
 *                                            output of one chunk (0 for rows
 *                                            that see nothing in the chunk).
 *  lse_accum   fp32  [total_splits, rows_per_seq]        natural-log lse of
 *                                            one chunk (-inf if it sees
 *                                            nothing).
 *  where total_splits = num_splits[batch] <= batch + num_sm_parts; allocate
 *  (max_batch + num_sm_parts) * 512 * 512 floats for o_accum and
 *  (max_batch + num_sm_parts) * 512 floats for lse_accum to cover any shape
 *  (they need no clearing: every chunk writes all its rows). Chunk k (0-based) of sequence b uses split index num_splits[b] + k.
 *
 * ---------------------------------------------------------------------------
 * TILE-SCHEDULER METADATA (computed on the host; native/host/tile_scheduler.h
 * is the C++ version, the C# core mirrors it)
 * ---------------------------------------------------------------------------
 *  Inputs: seq_lens (host copy), batch, num_sm_parts.
 *  Recommended num_sm_parts = max(1, sm_count / num_row_groups) (132 SMs on
 *  the H100: 132 parts for h_q*s_q <= 64, 33 parts for 128 heads x 2 tokens);
 *  any value >= 1 is correct.
 *
 *  Algorithm (units are 64-token pages; F = MLA_SCHED_FIXED_COST_PAGES is the
 *  fixed cost of starting a chunk: Q load, softmax setup, output write):
 *   1. nb[i] = ceil(seq_lens[i] / 64); total = sum_i (nb[i] + F);
 *      payload = ceil(total / num_sm_parts) + F.
 *   2. Walk the sequences in order with a cursor (sequence i, page j, chunk
 *      index k of sequence i). For each part p = 0 .. num_sm_parts-1, with a
 *      budget of `payload` (unlimited for the last part):
 *        - while sequences remain: if the rest of sequence i, (nb[i]-j) + F,
 *          fits the budget, take it whole (budget -= nb[i]-j+F; sequence i
 *          gets k+1 chunks; move to i+1, j = 0, k = 0);
 *          otherwise take t = budget - F pages if t > 0 (pages j .. j+t-1 as
 *          chunk k; j += t; k += 1) and end the part; if t <= 0 end the part.
 *        - a part that finds no sequence left is empty.
 *      So every part gets about the same number of pages plus F per chunk,
 *      long sequences are cut across parts, short ones are packed together,
 *      and each split costs one more chunk (F) plus a combine.
 *   3. num_splits[0] = 0, num_splits[i+1] = num_splits[i] + chunks of i.
 *
 *  sched_meta int32 [num_sm_parts, MLA_SCHED_INTS]; part p's record:
 *   [0] begin_seq    first sequence of the part
 *   [1] begin_block  first page (index into the sequence's block list) in
 *                    begin_seq
 *   [2] end_seq      last sequence of the part (inclusive)
 *   [3] end_block    one past the last page in end_seq (exclusive)
 *   [4] begin_split  chunk index k of the part's first chunk within
 *                    begin_seq (0 unless the part continues a sequence)
 *   [5..7] 0 (reserved)
 *  An empty part has end_seq < begin_seq (written as begin_seq = batch,
 *  end_seq = batch - 1, the rest 0). Sequences between begin_seq and end_seq
 *  are taken whole (pages 0 .. nb-1); they always start at chunk index 0.
 *  A sequence with 0 pages is taken whole by some part (that part writes its
 *  out = 0, lse = -inf).
 *  num_splits int32 [batch + 1] (prefix sum above). A sequence with exactly
 *  one chunk gets its final out/lse from the decode kernel; a sequence with
 *  more gets fp32 partials in o_accum/lse_accum, merged by flashmla_combine.
 *  Upload sched_meta and num_splits with the block table in one copy.
 * ---------------------------------------------------------------------------
 */
#ifndef FLASHMLA_MLA_PARAMS_H
#define FLASHMLA_MLA_PARAMS_H

#include <stdint.h>

#define MLA_ABI_VERSION 2

/* ---- model dimensions (fixed by MLA) ---- */
#define MLA_HEAD_DIM_K 576 /* q and K columns: 512 latent + 64 rope */
#define MLA_HEAD_DIM_V 512 /* V = first 512 columns of the KV row; out columns */
#define MLA_PAGE_TOKENS 64 /* tokens per KV page (block) */
#define MLA_MAX_H_Q 128
#define MLA_MAX_ROWS_PER_SEQ 512 /* s_q * h_q */
#define MLA_ROWS_PER_CTA 64      /* query rows per decode CTA (a row group) */

/* ---- tile scheduler ---- */
#define MLA_SCHED_INTS 8 /* int32 per part record in sched_meta */
#define MLA_SCHED_BEGIN_SEQ 0
#define MLA_SCHED_BEGIN_BLOCK 1
#define MLA_SCHED_END_SEQ 2
#define MLA_SCHED_END_BLOCK 3
#define MLA_SCHED_BEGIN_SPLIT 4
#define MLA_SCHED_FIXED_COST_PAGES 5

/* ---- exported kernel names (extern "C") and launch shapes ---- */
/* flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p)
 *   grid  (num_row_groups, num_sm_parts, 1); blockIdx.x = row group,
 *         blockIdx.y = part (row groups of one part run side by side and
 *         share the pages through L2)
 *   block (MLA_DECODE_THREADS, 1, 1), dynamic smem MLA_DECODE_SMEM_BYTES */
#define MLA_KERNEL_DECODE "flashmla_decode_splitkv"
/* Cluster launch (additive to ABI 2): a module whose decode kernel wants clusters exports the int
 *   <decode kernel name> MLA_DECODE_CLUSTER_WIDTH_SUFFIX (e.g. flashmla_decode_splitkv_cluster_x) = W;
 *   the host then launches that kernel with a cluster dimension of (W, 1, 1) (cuLaunchKernelEx) whenever
 *   num_row_groups is a multiple of W, and plainly otherwise; without the symbol, always plainly (W = 1).
 *   The kernel reads %cluster_nctarank, so both launches are correct. */
#define MLA_DECODE_CLUSTER_WIDTH_SUFFIX "_cluster_x"
#define MLA_DECODE_THREADS 256
#define MLA_DECODE_SMEM_BYTES 229888 /* Q tile + 2 pages + P tile + 512 B (row max / row factors, mbarriers) */

/* flashmla_combine(const __grid_constant__ MlaDecodeParams p)
 *   grid  (batch, ceil(rows_per_seq / MLA_COMBINE_ROWS_PER_CTA), 1) = (batch, rows_per_seq) since ABI 2
 *   block (MLA_COMBINE_THREADS, 1, 1), dynamic smem 0 */
#define MLA_KERNEL_COMBINE "flashmla_combine"
#define MLA_COMBINE_THREADS 128
#define MLA_COMBINE_ROWS_PER_CTA 1

/* flashmla_decode_reference(const __grid_constant__ MlaDecodeParams p)
 *   The checks' reference: one warp per query row, fp32 throughout. Reads
 *   q, kv_pool, block_table, seq_lens, softmax_scale, scale_log2, batch, s_q,
 *   h_q, rows_per_seq; ignores the scheduler fields. Writes fp32 output into
 *   o_accum as [batch, s_q, h_q, 512] (NOT bf16 into out) and lse into lse.
 *   grid  (ceil(batch * rows_per_seq / MLA_REFERENCE_ROWS_PER_CTA), 1, 1)
 *   block (MLA_REFERENCE_THREADS, 1, 1), dynamic smem 0 */
#define MLA_KERNEL_REFERENCE "flashmla_decode_reference"
#define MLA_REFERENCE_THREADS 128
#define MLA_REFERENCE_ROWS_PER_CTA 4

/* flashmla_append_kv(const __grid_constant__ KvAppendParams p)
 *   grid  (ceil(num_rows / MLA_APPEND_ROWS_PER_CTA), 1, 1)
 *   block (MLA_APPEND_THREADS, 1, 1), dynamic smem 0 */
#define MLA_KERNEL_APPEND "flashmla_append_kv"
#define MLA_APPEND_THREADS 256
#define MLA_APPEND_ROWS_PER_CTA 8

/* flashmla_copy_blocks(const __grid_constant__ BlockCopyParams p)
 *   grid  (num_pairs, num_layers, 1)
 *   block (MLA_COPY_THREADS, 1, 1), dynamic smem 0 */
#define MLA_KERNEL_COPY "flashmla_copy_blocks"
#define MLA_COPY_THREADS 256

/* ---- FP8 KV cache ("FP8 with scale", FlashMLA's format; additive to ABI 2) ----
 * A token is MLA_FP8_TOKEN_BYTES = 656 contiguous bytes: bytes 0..511 the 512
 * latent values as float8_e4m3fn, bytes 512..527 four fp32 scales (scale t
 * covers values 128t .. 128t+127), bytes 528..655 the 64 rope values in bf16,
 * unchanged. A page is 64 tokens (41,984 bytes); a layer's pool is
 * [num_blocks, 64, 656] bytes, token t of page p at byte (p*64 + t)*656.
 * Quantization of a tile of 128 bf16 values x_i (bit for bit the same on the
 * CPU, FlashMla.Core's Fp8KvFormat): amax = max |x_i|; scale = amax / 448
 * (fp32, IEEE division), or the quiet NaN 0x7FC00000 if any x_i is NaN; scale == 0: the tile is stored
 * with scale 0 and all codes 0x00; else q_i = cvt.rn.satfinite.e4m3(x_i /
 * scale) (IEEE fp32 division; round to nearest even, finite values past 448
 * saturate, NaN -> 0x7F). Dequantization: bf16_rn(float(q_i) * scale).
 *
 * flashmla_decode_splitkv_fp8(const __grid_constant__ MlaDecodeParams p)
 *   as flashmla_decode_splitkv (same grid, block, dynamic smem, scheduler,
 *   scratch and combine), with kv_pool = the FP8 pool of one layer; kv_map
 *   and kv_map_row0 are not read (pages come in with 1-D bulk copies).
 * flashmla_append_kv_fp8(const __grid_constant__ KvAppendParams p)
 *   as flashmla_append_kv, rows = bf16 [num_rows, 576], quantized into the
 *   FP8 pool kv_pool at slots.
 * flashmla_append_kv_fp8_raw(const __grid_constant__ KvAppendParams p)
 *   as flashmla_append_kv, rows = already quantized tokens [num_rows, 656]
 *   bytes, copied as they are.
 * flashmla_copy_blocks_fp8(const __grid_constant__ BlockCopyParams p)
 *   as flashmla_copy_blocks, over FP8 pages (41,984 bytes; layer l's pool
 *   starts l * layer_stride_blocks pages after layer 0's). */
#define MLA_FP8_TOKEN_BYTES 656
#define MLA_FP8_SCALE_OFFSET 512  /* byte offset of the four fp32 scales in a token */
#define MLA_FP8_ROPE_OFFSET 528   /* byte offset of the 64 bf16 rope values */
#define MLA_FP8_TILE 128          /* values per scale */
#define MLA_FP8_PAGE_BYTES (MLA_PAGE_TOKENS * MLA_FP8_TOKEN_BYTES) /* 41984 */
#define MLA_KERNEL_DECODE_FP8 "flashmla_decode_splitkv_fp8"
/* The fp8 decode's dynamic smem: the bf16 decode's, as above (its layout uses
 * 219,136 bytes; decode_sm90_fp8.cu asserts that it fits and that the two agree). */
#define MLA_DECODE_FP8_SMEM_BYTES 229888
#define MLA_KERNEL_APPEND_FP8 "flashmla_append_kv_fp8"
#define MLA_KERNEL_APPEND_FP8_RAW "flashmla_append_kv_fp8_raw"
#define MLA_KERNEL_COPY_FP8 "flashmla_copy_blocks_fp8"

/*
 * MlaTensorMap: an opaque 128-byte CUDA tensor map (CUtensorMap), filled on
 * the host by the driver's cuTensorMapEncodeTiled; 64-byte aligned, as the
 * TMA unit requires. Plain bytes here so this header stays free of CUDA types.
 *
 * The decode kernel's map over the KV pools ("kv_map") must be encoded as:
 *   dataType BFLOAT16, rank 2, globalAddress = the allocation holding the
 *   pools (may hold several layers' pools back to back), globalDim =
 *   {576, total_rows} where total_rows = every 576-wide row of that
 *   allocation, globalStrides = {1152} bytes, boxDim = {64, 64},
 *   elementStrides = {1, 1}, interleave NONE, swizzle 128B, L2 promotion
 *   256B, OOB fill NONE. Row kv_map_row0 + page*64 + t of the map is token t
 *   of page `page` of THIS launch's pool (kv_pool), so
 *   kv_pool = globalAddress + kv_map_row0 * 1152 bytes.
 * Kernels that copy pages with TMA (the exported decode since ABI 2) read
 * pages only through kv_map; the others read kv_pool.
 */
#if defined(__cplusplus)
#define MLA_ALIGN64 alignas(64)
#else
#define MLA_ALIGN64 _Alignas(64)
#endif
typedef struct MlaTensorMap {
    MLA_ALIGN64 uint64_t opaque[16];
} MlaTensorMap;

/*
 * MlaDecodeParams: the one parameter of flashmla_decode_splitkv,
 * flashmla_combine and flashmla_decode_reference. 256 bytes, 64-byte aligned:
 * 10 pointers (offsets 0..72), 8 int32 (80..108), 2 float (112, 116), 2 int32
 * (120, 124), the KV tensor map (128..255).
 */
typedef struct MlaDecodeParams {
    /* pointers: all device pointers, 8 bytes each */
    const void* q;              /*   0  bf16 [batch, s_q, h_q, 576] */
    const void* kv_pool;        /*   8  bf16 [num_blocks, 64, 576] (one layer) */
    const int32_t* block_table; /*  16  int32 [batch, block_table_stride] */
    const int32_t* seq_lens;    /*  24  int32 [batch] */
    const int32_t* sched_meta;  /*  32  int32 [num_sm_parts, MLA_SCHED_INTS] */
    const int32_t* num_splits;  /*  40  int32 [batch + 1] */
    void* out;                  /*  48  bf16 [batch, s_q, h_q, 512] */
    float* lse;                 /*  56  fp32 [batch, h_q, s_q] */
    float* o_accum;             /*  64  fp32 [total_splits, rows_per_seq, 512] */
    float* lse_accum;           /*  72  fp32 [total_splits, rows_per_seq] */
    /* int32 */
    int32_t batch;              /*  80  sequences in the launch, >= 1 */
    int32_t s_q;                /*  84  query tokens per sequence, >= 1 */
    int32_t h_q;                /*  88  query heads, 1 .. 128 */
    int32_t rows_per_seq;       /*  92  s_q * h_q, <= 512 */
    int32_t num_row_groups;     /*  96  ceil(rows_per_seq / 64) */
    int32_t block_table_stride; /* 100  int32 elements between block_table rows */
    int32_t num_sm_parts;       /* 104  records in sched_meta; grid.y of decode */
    int32_t num_blocks;         /* 108  pages in kv_pool (informative; not read) */
    /* float */
    float softmax_scale;        /* 112  scale applied to q.k (e.g. 1/sqrt(192)) */
    float scale_log2;           /* 116  softmax_scale * log2(e) = softmax_scale * 1.4426950408889634 */
    /* ABI 2: pages by TMA */
    int32_t kv_map_row0;        /* 120  row of kv_map holding token 0 of page 0 of kv_pool */
    int32_t reserved0;          /* 124  0 */
    MlaTensorMap kv_map;        /* 128  tensor map over the pools (see MlaTensorMap) */
} MlaDecodeParams;

/*
 * KvAppendParams: the one parameter of flashmla_append_kv. 32 bytes.
 * Row n of `rows` goes to pool slot slots[n] = page*64 + offset of ONE
 * layer's pool. A slot < 0 or >= num_blocks*64 is skipped (padding rows).
 * Slots must be distinct within a launch.
 */
typedef struct KvAppendParams {
    void* kv_pool;              /*   0  bf16 [num_blocks, 64, 576] (one layer) */
    const void* rows;           /*   8  bf16 [num_rows, 576] */
    const int32_t* slots;       /*  16  int32 [num_rows] */
    int32_t num_rows;           /*  24 */
    int32_t num_blocks;         /*  28  pages in the pool, for the range check */
} KvAppendParams;

/*
 * BlockCopyParams: the one parameter of flashmla_copy_blocks. 32 bytes.
 * Copies whole pages (64 x 576 bf16) for every pair (src, dst) and every
 * layer l = 0 .. num_layers-1, where layer l's pool starts at element
 *   kv_pool + l * layer_stride_blocks * 64 * 576.
 * With one allocation for all layers, layer_stride_blocks = num_blocks; with
 * one allocation per layer, launch once per layer with num_layers = 1.
 * Pairs with a page outside 0 .. num_blocks-1 are skipped. A page must not
 * be both a source and a destination in one launch.
 */
typedef struct BlockCopyParams {
    void* kv_pool;              /*   0  bf16, layer 0's pool */
    const int32_t* pairs;       /*   8  int32 [num_pairs, 2] = (src page, dst page) */
    int32_t num_pairs;          /*  16 */
    int32_t num_layers;         /*  20 */
    int32_t layer_stride_blocks;/*  24  pages between consecutive layers' pools */
    int32_t num_blocks;         /*  28  pages in one layer's pool */
} BlockCopyParams;

#ifdef __cplusplus
static_assert(sizeof(MlaDecodeParams) == 256, "MlaDecodeParams ABI size");
static_assert(sizeof(KvAppendParams) == 32, "KvAppendParams ABI size");
static_assert(sizeof(BlockCopyParams) == 32, "BlockCopyParams ABI size");
static_assert(__builtin_offsetof(MlaDecodeParams, batch) == 80, "MlaDecodeParams ints start at 80");
static_assert(__builtin_offsetof(MlaDecodeParams, softmax_scale) == 112, "MlaDecodeParams floats start at 112");
static_assert(__builtin_offsetof(MlaDecodeParams, kv_map_row0) == 120, "MlaDecodeParams kv_map_row0 at 120");
static_assert(__builtin_offsetof(MlaDecodeParams, kv_map) == 128, "MlaDecodeParams kv_map at 128");
#else
_Static_assert(sizeof(MlaDecodeParams) == 256, "MlaDecodeParams ABI size");
_Static_assert(sizeof(KvAppendParams) == 32, "KvAppendParams ABI size");
_Static_assert(sizeof(BlockCopyParams) == 32, "BlockCopyParams ABI size");
#endif

#endif /* FLASHMLA_MLA_PARAMS_H */
