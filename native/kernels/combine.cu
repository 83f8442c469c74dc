// combine.cu -- merges the split-KV partials of each split sequence.
//
// Tile shapes: a CTA takes ONE query row of one sequence (grid (batch,
// rows_per_seq)); its 128 threads own 4 of the 512 columns each (one float4
// of every chunk's partial row, coalesced). First the CTA turns the chunks'
// lse values into weights in shared memory (max by a block reduction, then
// w_k = exp(lse_k - max)); then each thread sums its float4 over the chunks,
// kCombineUnroll chunks at a time so that many loads are in flight.
// Why one row per CTA: a sequence of a small batch is cut into up to one
// chunk per SM part (64-132 chunks), and a CTA that walked 16 rows x 64
// chunks one load at a time spent ~100 us on a 2 MB merge (v14 bench, b1).
// Rows of sequences that were not split were written by the decode kernel;
// their CTAs return at once.
//
// out_r = sum_k w_k o_k / sum_k w_k with w_k = exp(lse_k - max_k lse_k);
// lse_r = max + log(sum_k w_k); a row no chunk saw (all lse_k = -inf) gets
// out 0, lse -inf. Chunks with w_k = 0 add 0 (their partial is 0, finite).
#include "mla_config.h"
#include "ptx.h"

extern "C" __global__ void __launch_bounds__(MLA_COMBINE_THREADS)
    flashmla_combine(const __grid_constant__ MlaDecodeParams p) {
    using namespace mla;
    const int seq = blockIdx.x, r = blockIdx.y;
    const int split0 = p.num_splits[seq];
    const int n_split = p.num_splits[seq + 1] - split0;
    if (n_split <= 1 || r >= p.rows_per_seq) return;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int rows = p.rows_per_seq;
    __shared__ float s_w[kCombineMaxWeights];
    __shared__ float s_red[kCombineWarps];

    // ---- max over the chunks' lse ----
    float mx = -INFINITY;
    for (int k = tid; k < n_split; k += MLA_COMBINE_THREADS)
        mx = fmaxf(mx, p.lse_accum[static_cast<size_t>(split0 + k) * rows + r]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane == 0) s_red[warp] = mx;
    __syncthreads();
    mx = s_red[0];
#pragma unroll
    for (int w = 1; w < kCombineWarps; ++w) mx = fmaxf(mx, s_red[w]);

    // ---- weights (the first kCombineMaxWeights in shared memory; any beyond are computed in the loop) ----
    const int n_cached = min(n_split, kCombineMaxWeights);
    for (int k = tid; k < n_cached; k += MLA_COMBINE_THREADS)
        s_w[k] = (mx == -INFINITY) ? 0.f : expf(p.lse_accum[static_cast<size_t>(split0 + k) * rows + r] - mx);
    __syncthreads();
    auto weight = [&](int k) {
        return k < n_cached ? s_w[k]
                            : ((mx == -INFINITY) ? 0.f : expf(p.lse_accum[static_cast<size_t>(split0 + k) * rows + r] - mx));
    };

    // ---- weighted sum of this thread's 4 columns ----
    const float* base = p.o_accum + (static_cast<size_t>(split0) * rows + r) * kDimV + 4 * tid;
    const size_t split_stride = static_cast<size_t>(rows) * kDimV;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float wsum = 0.f;
    int k = 0;
    for (; k + kCombineUnroll <= n_split; k += kCombineUnroll) {
        float4 v[kCombineUnroll];
#pragma unroll
        for (int u = 0; u < kCombineUnroll; ++u) v[u] = *reinterpret_cast<const float4*>(base + (k + u) * split_stride);
#pragma unroll
        for (int u = 0; u < kCombineUnroll; ++u) {
            const float w = weight(k + u);
            wsum += w;
            acc.x += w * v[u].x;
            acc.y += w * v[u].y;
            acc.z += w * v[u].z;
            acc.w += w * v[u].w;
        }
    }
    for (; k < n_split; ++k) {
        const float4 v = *reinterpret_cast<const float4*>(base + k * split_stride);
        const float w = weight(k);
        wsum += w;
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
    }
    const float inv = (wsum > 0.f) ? 1.f / wsum : 0.f;
    __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) + (static_cast<size_t>(seq) * rows + r) * kDimV + 4 * tid;
    uint2 packed;
    packed.x = ptx::pack_bf16x2(acc.x * inv, acc.y * inv);
    packed.y = ptx::pack_bf16x2(acc.z * inv, acc.w * inv);
    *reinterpret_cast<uint2*>(dst) = packed;
    if (tid == 0) {
        const int tok = r / p.h_q, h = r - tok * p.h_q;
        p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + tok] = (wsum > 0.f) ? mx + logf(wsum) : -INFINITY;
    }
}
