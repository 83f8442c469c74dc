// decode_sm90_softmax.cuh -- the pieces of the Hopper decode kernels that do
// not depend on where a page comes from (decode_sm90_tma.cu: bf16 pages by
// TMA; decode_sm90_fp8.cu: FP8 pages dequantized in shared memory): the
// online softmax of one 64 x 64 score tile in the scores warpgroup's wgmma
// accumulator layout, and the chunk's output store.
//
// Register layout (wgmma m64nN accumulators of warpgroup 0): thread (warp w,
// lane 4g + t) holds tile rows trow[0] = 16w + g and trow[1] = 16w + g + 8;
// for each n8 column tile j its four values are (row 0, columns 8j + 2t,
// +1), (row 1, the same columns).
#pragma once
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace mla {

// Masks S (positions past last_pos[r] -> -inf), scales it to log2 units,
// updates the running row max and sum, rescales this warpgroup's O by alpha
// and writes P = exp2(x - max) as bf16 wgmma A fragments into pa. Returns
// alpha (the factor the other warpgroup applies to its O) in alpha[2].
// kCols: the tile's columns (tokens), 64 (a page) or 32 (half a page).
template <int kCols = kPage>
__device__ __forceinline__ void softmax_tile(float (&s)[kCols / 2], float (&o)[kWgOutCols / 2], uint32_t (&pa)[kCols / 4],
                                             float (&row_max)[2], float (&row_sum)[2], float (&alpha)[2],
                                             const int (&last_pos)[2], int pos0, float scale_log2) {
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kCols / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const int pos = pos0 + j * 8 + (e & 1);
            const float x = (pos <= last_pos[r]) ? s[4 * j + e] * scale_log2 : -INFINITY;
            s[4 * j + e] = x;
            tile_max[r] = fmaxf(tile_max[r], x);
        }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float new_max = fmaxf(row_max[r], tile_max[r]);
        base[r] = (new_max == -INFINITY) ? 0.f : new_max;  // a row that saw nothing: exp2 -> 0, not NaN
        alpha[r] = ptx::exp2_approx(row_max[r] - base[r]);
        row_max[r] = new_max;
        row_sum[r] *= alpha[r];
    }
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int j = 0; j < kWgOutCols / 8; ++j) {
            o[4 * j + 0] *= alpha[0];
            o[4 * j + 1] *= alpha[0];
            o[4 * j + 2] *= alpha[1];
            o[4 * j + 3] *= alpha[1];
        }
    }
#pragma unroll
    for (int j = 0; j < kCols / 8; ++j) {
        const float p0 = ptx::exp2_approx(s[4 * j + 0] - base[0]);
        const float p1 = ptx::exp2_approx(s[4 * j + 1] - base[0]);
        const float p2 = ptx::exp2_approx(s[4 * j + 2] - base[1]);
        const float p3 = ptx::exp2_approx(s[4 * j + 3] - base[1]);
        row_sum[0] += p0 + p1;
        row_sum[1] += p2 + p3;
        pa[2 * j] = ptx::pack_bf16x2(p0, p1);
        pa[2 * j + 1] = ptx::pack_bf16x2(p2, p3);
    }
}

// Writes P (the A fragments in pa) into the 64 x 64 bf16 P tile at sP
// (128-byte swizzled, as wgmma's SW128 descriptors read it), for the other
// warpgroup's P V. The caller fences (fence_proxy_async_smem) and publishes.
template <int kCols = kPage>
__device__ __forceinline__ void store_p_tile(uint32_t sP, const uint32_t (&pa)[kCols / 4], const int (&trow)[2], int t) {
#pragma unroll
    for (int j = 0; j < kCols / 8; ++j) {
        ptx::st_shared_b32(sP + sw128_off(trow[0], j) + 4 * t, pa[2 * j]);
        ptx::st_shared_b32(sP + sw128_off(trow[1], j) + 4 * t, pa[2 * j + 1]);
    }
}

// The other warpgroup's half of the rescale: O *= alpha per row, skipped when
// no row of the warp changed its max.
__device__ __forceinline__ void rescale_rows(float (&o)[kWgOutCols / 2], float alpha0, float alpha1) {
    if (__any_sync(0xffffffffu, alpha0 != 1.f || alpha1 != 1.f)) {
#pragma unroll
        for (int j = 0; j < kWgOutCols / 8; ++j) {
            o[4 * j + 0] *= alpha0;
            o[4 * j + 1] *= alpha0;
            o[4 * j + 2] *= alpha1;
            o[4 * j + 3] *= alpha1;
        }
    }
}

// Stores one warpgroup's half (columns wg*256 ..) of the chunk's output for
// its two rows: the final bf16 out and lse when the sequence has one chunk,
// else the fp32 partial and its lse for the combine. inv[r] = 1/rowsum of
// row r (0 for a row that saw nothing); row_sum/row_max are warpgroup 0's.
__device__ __forceinline__ void store_chunk(const MlaDecodeParams& p, const float (&o)[kWgOutCols / 2], int seq,
                                            int split, bool final_out, const int (&qrow)[2], const int (&qtok)[2],
                                            const float (&inv)[2], const float (&row_sum)[2],
                                            const float (&row_max)[2], int wg, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int qr = qrow[r];
        if (qr >= p.rows_per_seq) continue;
        if (final_out) {
            __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) +
                                 (static_cast<size_t>(seq) * p.rows_per_seq + qr) * kDimV + wg * kWgOutCols + 2 * t;
#pragma unroll
            for (int j = 0; j < kWgOutCols / 8; ++j)
                *reinterpret_cast<uint32_t*>(dst + j * 8) =
                    ptx::pack_bf16x2(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
        } else {
            float* dst =
                p.o_accum + (static_cast<size_t>(split) * p.rows_per_seq + qr) * kDimV + wg * kWgOutCols + 2 * t;
#pragma unroll
            for (int j = 0; j < kWgOutCols / 8; ++j)
                *reinterpret_cast<float2*>(dst + j * 8) =
                    make_float2(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
        }
        if (wg == 0 && t == 0) {
            const float sum = row_sum[r];
            const float lse = (sum > 0.f) ? (row_max[r] + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
            if (final_out) {
                const int h = qr - qtok[r] * p.h_q;
                p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + qtok[r]] = lse;
            } else {
                p.lse_accum[static_cast<size_t>(split) * p.rows_per_seq + qr] = lse;
            }
        }
    }
}

}  // namespace mla
