// combine.cu -- merges the split-KV partials of each split sequence.
//
// Tile shapes: a CTA takes MLA_COMBINE_ROWS_PER_CTA (16) query rows of one
// sequence; each of its 4 warps takes 4 rows, one row at a time: lanes read
// the chunk lse values (strided over chunks) for the max, then each lane owns
// 16 of the 512 columns (4 float4 at column 4*lane + 128*j, coalesced).
// Warp roles: all warps alike. Pipeline depth: none (a streaming pass).
// Rows of sequences that were not split were written by the decode kernel;
// their CTAs return at once.
//
// out_r = sum_k w_k o_k / sum_k w_k with w_k = exp(lse_k - max_k lse_k);
// lse_r = max + log(sum_k w_k); a row no chunk saw (all lse_k = -inf) gets
// out 0, lse -inf. Chunks with w_k = 0 are not read.
#include "mla_config.h"
#include "ptx.h"

extern "C" __global__ void __launch_bounds__(MLA_COMBINE_THREADS)
    flashmla_combine(const __grid_constant__ MlaDecodeParams p) {
    using namespace mla;
    const int seq = blockIdx.x;
    const int split0 = p.num_splits[seq];
    const int n_split = p.num_splits[seq + 1] - split0;
    if (n_split <= 1) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows = p.rows_per_seq;

    for (int rr = 0; rr < kCombineRowsPerWarp; ++rr) {
        const int r = blockIdx.y * MLA_COMBINE_ROWS_PER_CTA + warp * kCombineRowsPerWarp + rr;
        if (r >= rows) break;
        float mx = -INFINITY;
        for (int k = lane; k < n_split; k += 32)
            mx = fmaxf(mx, p.lse_accum[static_cast<size_t>(split0 + k) * rows + r]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));

        float4 acc[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        float wsum = 0.f;
        if (mx != -INFINITY) {
            for (int k = 0; k < n_split; ++k) {
                const size_t split = static_cast<size_t>(split0 + k);
                const float w = expf(p.lse_accum[split * rows + r] - mx);
                if (w == 0.f) continue;  // warp-uniform: every lane read the same lse
                wsum += w;
                const float4* src = reinterpret_cast<const float4*>(p.o_accum + (split * rows + r) * kDimV);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float4 v = src[lane + 32 * j];
                    acc[j].x += w * v.x;
                    acc[j].y += w * v.y;
                    acc[j].z += w * v.z;
                    acc[j].w += w * v.w;
                }
            }
        }
        const float inv = (wsum > 0.f) ? 1.f / wsum : 0.f;
        __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) + (static_cast<size_t>(seq) * rows + r) * kDimV;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint2 v;
            v.x = ptx::pack_bf16x2(acc[j].x * inv, acc[j].y * inv);
            v.y = ptx::pack_bf16x2(acc[j].z * inv, acc[j].w * inv);
            *reinterpret_cast<uint2*>(dst + 4 * (lane + 32 * j)) = v;
        }
        if (lane == 0) {
            const int tok = r / p.h_q, h = r - tok * p.h_q;
            p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + tok] = (wsum > 0.f) ? mx + logf(wsum) : -INFINITY;
        }
    }
}
