// decode_reference.cuh -- the body of the checks' reference MLA decode,
// fp32 throughout, over a pool of bf16 (the service's cache, or FP8's cache
// dequantized by the format's rule) or of fp32 values (the check harness: FP8
// codes times their scales, unrounded; see flashmla_check.cu).
//
// Tile shapes: one warp per query row (b, token i, head h); no tiling and no
// shared memory: for every visible position the warp reads the K row (lane
// takes columns lane + 32j), reduces the dot product with shuffles, and keeps
// a textbook online softmax with expf/logf in natural units. Each lane owns
// output columns lane + 32j, j < 16. Warp roles: all alike. Pipeline: none.
// Slow on purpose: obviously right is its only job.
// Reads the pool `pool` (laid out as kv_pool) instead of p.kv_pool; writes
// fp32 out into p.o_accum as [batch, s_q, h_q, 512] and lse into p.lse.
#pragma once
#include <cuda_bf16.h>
#include "mla_config.h"

__device__ __forceinline__ float reference_value(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float reference_value(float v) { return v; }

template <class T>
__device__ __forceinline__ void decode_reference_rows(const MlaDecodeParams& p, const T* pool) {
    using namespace mla;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long row_global = static_cast<long long>(blockIdx.x) * MLA_REFERENCE_ROWS_PER_CTA + warp;
    if (row_global >= static_cast<long long>(p.batch) * p.rows_per_seq) return;
    const int seq = static_cast<int>(row_global / p.rows_per_seq);
    const int r = static_cast<int>(row_global % p.rows_per_seq);
    const int tok = r / p.h_q, h = r % p.h_q;
    const int len = p.seq_lens[seq];
    const int last = len - p.s_q + tok;  // last visible position

    const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(p.q) + static_cast<size_t>(row_global) * kDimK;
    float qv[kDimK / 32];
#pragma unroll
    for (int j = 0; j < kDimK / 32; ++j) qv[j] = __bfloat162float(q[lane + 32 * j]);

    float acc[kDimV / 32];
#pragma unroll
    for (int j = 0; j < kDimV / 32; ++j) acc[j] = 0.f;
    float m = -INFINITY, l = 0.f;
    const int* bt = p.block_table + static_cast<size_t>(seq) * p.block_table_stride;
    for (int pos = 0; pos <= last; ++pos) {
        const T* kv = pool + (static_cast<size_t>(bt[pos / kPage]) * kPage + pos % kPage) * kDimK;
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < kDimK / 32; ++j) dot += qv[j] * reference_value(kv[lane + 32 * j]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        const float x = dot * p.softmax_scale;
        const float m_new = fmaxf(m, x);
        const float alpha = expf(m - m_new);  // m = -inf on the first position: 0
        const float w = expf(x - m_new);
        l = l * alpha + w;
#pragma unroll
        for (int j = 0; j < kDimV / 32; ++j) acc[j] = acc[j] * alpha + w * reference_value(kv[lane + 32 * j]);
        m = m_new;
    }
    float* out = p.o_accum + static_cast<size_t>(row_global) * kDimV;
#pragma unroll
    for (int j = 0; j < kDimV / 32; ++j) out[lane + 32 * j] = (l > 0.f) ? acc[j] / l : 0.f;
    if (lane == 0) p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + tok] = (l > 0.f) ? m + logf(l) : -INFINITY;
}
