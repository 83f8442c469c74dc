// fp8_kv.cu -- the FP8 KV cache's write kernels (mla_params.h, "FP8 KV
// cache"): quantizing appends, raw appends and copy-on-write page copies.
//
// Tile shapes: appends take one warp per row, MLA_APPEND_ROWS_PER_CTA (8)
// rows per CTA of 8 warps, as flashmla_append_kv; the page copy one CTA per
// (pair, layer), a 41,984-byte page in 16-byte chunks loaded all before any
// store. Warp roles: all alike. Pipeline depth: none. Slots outside the pool
// (negative for padding) are skipped.
#include "fp8_kv.cuh"

extern "C" __global__ void __launch_bounds__(MLA_APPEND_THREADS)
    flashmla_append_kv_fp8(const __grid_constant__ KvAppendParams p) {
    using namespace mla;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * MLA_APPEND_ROWS_PER_CTA + warp;
    if (n >= p.num_rows) return;
    const int slot = p.slots[n];
    if (slot < 0 || slot >= p.num_blocks * kPage) return;
    fp8_quantize_row_warp(static_cast<const __nv_bfloat16*>(p.rows) + static_cast<size_t>(n) * kDimK,
                          static_cast<uint8_t*>(p.kv_pool) + static_cast<size_t>(slot) * kFp8TokenBytes, lane);
}

extern "C" __global__ void __launch_bounds__(MLA_APPEND_THREADS)
    flashmla_append_kv_fp8_raw(const __grid_constant__ KvAppendParams p) {
    using namespace mla;
    constexpr int kChunks = kFp8TokenBytes / 16;  // 41
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * MLA_APPEND_ROWS_PER_CTA + warp;
    if (n >= p.num_rows) return;
    const int slot = p.slots[n];
    if (slot < 0 || slot >= p.num_blocks * kPage) return;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.rows) + static_cast<size_t>(n) * kFp8TokenBytes);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<uint8_t*>(p.kv_pool) + static_cast<size_t>(slot) * kFp8TokenBytes);
    for (int c = lane; c < kChunks; c += 32) dst[c] = src[c];
}

extern "C" __global__ void __launch_bounds__(MLA_COPY_THREADS)
    flashmla_copy_blocks_fp8(const __grid_constant__ BlockCopyParams p) {
    using namespace mla;
    constexpr int kChunks = kFp8PageBytes / 16;                                  // 2624
    constexpr int kPerThread = (kChunks + MLA_COPY_THREADS - 1) / MLA_COPY_THREADS;  // 11
    const int pair = blockIdx.x, layer = blockIdx.y;
    const int src_blk = p.pairs[2 * pair], dst_blk = p.pairs[2 * pair + 1];
    if (src_blk < 0 || src_blk >= p.num_blocks || dst_blk < 0 || dst_blk >= p.num_blocks) return;
    const size_t layer_base = static_cast<size_t>(layer) * p.layer_stride_blocks;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.kv_pool) + (layer_base + src_blk) * kFp8PageBytes);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<uint8_t*>(p.kv_pool) + (layer_base + dst_blk) * kFp8PageBytes);
    uint4 v[kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int c = threadIdx.x + i * MLA_COPY_THREADS;
        if (c < kChunks) v[i] = src[c];
    }
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int c = threadIdx.x + i * MLA_COPY_THREADS;
        if (c < kChunks) dst[c] = v[i];
    }
}
