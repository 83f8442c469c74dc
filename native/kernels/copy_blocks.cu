// copy_blocks.cu -- copy-on-write page copy: whole 64 x 576 bf16 pages.
//
// Tile shapes: one CTA per (pair, layer); a page is 4608 chunks of 16 bytes,
// 18 per thread of 256, loaded all before any store (18 loads in flight).
// Warp roles: all alike. Pipeline depth: one page per CTA.
// Layer l's pool starts layer_stride_blocks pages after layer l-1's.
#include "mla_config.h"
#include "ptx.h"

extern "C" __global__ void __launch_bounds__(MLA_COPY_THREADS)
    flashmla_copy_blocks(const __grid_constant__ BlockCopyParams p) {
    using namespace mla;
    constexpr int kChunks = kTileBytes / 16;                      // 4608
    constexpr int kPerThread = kChunks / MLA_COPY_THREADS;        // 18
    static_assert(kChunks % MLA_COPY_THREADS == 0, "page copy must split evenly");
    const int pair = blockIdx.x, layer = blockIdx.y;
    const int src_blk = p.pairs[2 * pair], dst_blk = p.pairs[2 * pair + 1];
    if (src_blk < 0 || src_blk >= p.num_blocks || dst_blk < 0 || dst_blk >= p.num_blocks) return;
    const size_t layer_base = static_cast<size_t>(layer) * p.layer_stride_blocks;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.kv_pool) +
                                                      (layer_base + src_blk) * (kPage * kDimK));
    uint4* dst = reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.kv_pool) + (layer_base + dst_blk) * (kPage * kDimK));
    uint4 v[kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) v[i] = src[threadIdx.x + i * MLA_COPY_THREADS];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) dst[threadIdx.x + i * MLA_COPY_THREADS] = v[i];
}
