// append_kv.cu -- scatters new latent KV rows into their pool slots.
//
// Tile shapes: one warp per row of 576 bf16 (72 chunks of 16 bytes: each
// lane copies chunks lane, lane+32, lane+64 < 72); MLA_APPEND_ROWS_PER_CTA
// (8) rows per CTA of 8 warps. Warp roles: all alike. Pipeline depth: none.
// slot = page*64 + offset in ONE layer's pool; slots outside the pool
// (negative for padding) are skipped.
#include "mla_config.h"
#include "ptx.h"

extern "C" __global__ void __launch_bounds__(MLA_APPEND_THREADS)
    flashmla_append_kv(const __grid_constant__ KvAppendParams p) {
    using namespace mla;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * MLA_APPEND_ROWS_PER_CTA + warp;
    if (n >= p.num_rows) return;
    const int slot = p.slots[n];
    if (slot < 0 || slot >= p.num_blocks * kPage) return;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.rows) +
                                                      static_cast<size_t>(n) * kDimK);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.kv_pool) + static_cast<size_t>(slot) * kDimK);
    for (int c = lane; c < kRowChunks; c += 32) dst[c] = src[c];
}
