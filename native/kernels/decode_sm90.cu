// decode_sm90.cu -- split-KV MLA decode for Hopper: wgmma on both products.
//
// Tile shapes: a CTA owns one row group (64 query rows = heads x query tokens
// of one sequence) and walks the chunk list of its scheduler part
// (sched_meta, see mla_params.h), one 64-token page at a time.
//   Q tile   64 x 576 bf16 in shared memory, 9 column blocks of 64 x 64,
//            128-byte swizzled (sw128_tile.cuh), loaded once per chunk.
//   page     64 x 576 bf16, same layout: K = all columns (K-major B operand
//            of S = Q K^T), V = column blocks 0..7 (N-major B operand of P V).
//   S        64 x 64 fp32: warpgroup wg computes columns 32wg .. +31 with 36
//            wgmma m64n32k16 (A = Q, B = K, both from shared memory).
//   P        64 x 64 bf16 in shared memory (one 128-byte-swizzled block): each
//            warpgroup writes its 32 columns, both read all 64 as wgmma A.
//   O        64 x 512 fp32 in registers, split by columns: warpgroup wg holds
//            columns 256wg .. +255 (128 registers a thread) and adds P V with
//            4 wgmma m64n256k16 (B = V read N-major straight from the page).
// Warp roles: 2 warpgroups (8 warps), both consumers; all 256 threads issue
// the cp.async page copies (16 bytes each, 18 a thread a page). The kernel
// keeps the v2 launch (256 threads, MLA_DECODE_SMEM_BYTES, grid (row groups,
// parts): one CTA per SM, persistent over its part's chunk list).
// Pipeline depth: 2 pages (Q + 2 pages + P fill the 227 KB): page j+1 is
// copied while page j is multiplied.
//
// Why cp.async and not TMA: a tensor map cannot be passed through the
// one-struct ABI (MlaDecodeParams) and the C# side cannot build one; plain
// cp.async.bulk copies bytes contiguously, and a page row (1152 bytes) is not
// a layout wgmma can read. cp.async writes the swizzled layout directly.
//
// Masking: page rows at positions >= seq_len are zero-filled by the copy
// (never read from global), so K and V there are 0 and never NaN; scores of
// positions a row must not see (causal inside the step, past the length) are
// set to -inf before exp2, so their P is exactly 0.
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace sm90 {

using namespace mla;

__device__ __forceinline__ const __nv_bfloat16* page_ptr(const MlaDecodeParams& p, const int* bt, int blk) {
    const size_t page = static_cast<size_t>(bt[blk]);
    return static_cast<const __nv_bfloat16*>(p.kv_pool) + page * (kPage * kDimK);
}

}  // namespace sm90

// kOverlap = false (v3): each warpgroup waits for its P V product at the end
// of every page, and the next page's copy is issued at the top of the loop.
// kOverlap = true (v4): the P V product of page j stays in flight while the
// threads pass the next barrier and issue S = Q K^T of page j+1 behind it on
// the tensor pipe; wgmma.wait_group 1 then retires P V(j) alone, a barrier
// frees page j's stage, and only then is page j+2 copied into it. So the
// tensor pipe does not drain at the page boundary. Both skip the O rescale
// when no row max of the warp moved (alpha == 1 for all its rows).
template <bool kOverlap>
__device__ __forceinline__ void decode_sm90_body(const MlaDecodeParams& p) {
    using namespace mla;
    extern __shared__ __align__(1024) uint8_t smem_sm90[];
    const int tid = threadIdx.x;
    const int wg = tid >> 7;                 // warpgroup: S columns 32wg.., O columns 256wg..
    const int wwarp = (tid >> 5) & 3;        // warp within the warpgroup: tile rows 16*wwarp .. +15
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const int* meta = p.sched_meta + blockIdx.y * MLA_SCHED_INTS;
    const int begin_seq = meta[MLA_SCHED_BEGIN_SEQ], begin_block = meta[MLA_SCHED_BEGIN_BLOCK];
    const int end_seq = meta[MLA_SCHED_END_SEQ], end_block = meta[MLA_SCHED_END_BLOCK];
    const int begin_split = meta[MLA_SCHED_BEGIN_SPLIT];

    const int row0 = blockIdx.x * kRows;  // first row (of the sequence) of this row group
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);

    const uint32_t sQ = ptx::smem_addr(smem_sm90 + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem_sm90 + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem_sm90 + kSmemP);
    float* red = reinterpret_cast<float*>(smem_sm90 + kSmemRed);  // [kWarpGroups][kRows]
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();            // the swizzle atoms must be 1 KB aligned

    // This thread's two accumulator rows (fragment rows g and g+8 of its warp).
    const int trow[2] = {wwarp * 16 + g, wwarp * 16 + g + 8};  // rows within the tile
    int qrow[2], qtok[2];                                      // row within the sequence, query token
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        qrow[i] = row0 + trow[i];
        qtok[i] = qrow[i] / p.h_q;
    }

    for (int seq = begin_seq; seq <= end_seq; ++seq) {
        const int len = p.seq_lens[seq];
        const int nb = (max(len, 0) + kPage - 1) / kPage;
        const int blk_begin = (seq == begin_seq) ? begin_block : 0;
        const int blk_end = (seq == end_seq) ? end_block : nb;
        const int split_local = (seq == begin_seq) ? begin_split : 0;
        const int split_base = p.num_splits[seq];
        const int n_split = p.num_splits[seq + 1] - split_base;
        const int* bt = p.block_table + static_cast<size_t>(seq) * p.block_table_stride;

        // Last visible cache position of each of this thread's rows; padding
        // rows of a partial row group see nothing (and are never stored).
        int last_pos[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) last_pos[i] = (qrow[i] < p.rows_per_seq) ? len - p.s_q + qtok[i] : -1;

        // Every thread (and every wgmma, waited for below) is done with the
        // previous chunk's tiles before they are overwritten.
        ptx::cp_async_wait<0>();
        __syncthreads();
        if (blk_begin < blk_end) {
            load_tile_sw128_async(sQ, static_cast<const __nv_bfloat16*>(p.q) +
                                          (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                                  valid_q_rows, tid);
            load_tile_sw128_async(sKv, sm90::page_ptr(p, bt, blk_begin), min(kPage, len - blk_begin * kPage), tid);
        }
        ptx::cp_async_commit();

        float o[kWgOutCols / 2];  // 64 x 256 fp32 per warpgroup: 128 per thread
#pragma unroll
        for (int n = 0; n < kWgOutCols / 2; ++n) o[n] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};  // running max of scale*log2e*score
        float row_sum[2] = {0.f, 0.f};              // this thread's share of the running sum

        for (int blk = blk_begin; blk < blk_end; ++blk) {
            const int stage = (blk - blk_begin) & 1;
            ptx::cp_async_wait<0>();
            ptx::fence_proxy_async_smem();  // the copied page (and Q) become visible to wgmma
            __syncthreads();                // page blk visible to all; (v3) page blk-1's stage free
            if (!kOverlap) {
                if (blk + 1 < blk_end)
                    load_tile_sw128_async(sKv + (stage ^ 1) * kTileBytes, sm90::page_ptr(p, bt, blk + 1),
                                          min(kPage, len - (blk + 1) * kPage), tid);
                ptx::cp_async_commit();
            }
            const uint32_t sPage = sKv + stage * kTileBytes;

            // ---- S = Q K^T: 64 rows x 32 tokens per warpgroup, 36 k-steps ----
            float s[kWgScoreCols / 2];
#pragma unroll
            for (int n = 0; n < kWgScoreCols / 2; ++n) s[n] = 0.f;
            ptx::fence_regs(s);
            ptx::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kQkSteps; ++kk) {
                const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;  // column block, 16 columns
                const uint64_t da = ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes);
                const uint64_t db =
                    ptx::wgmma_desc_sw128(sPage + koff + wg * kWgScoreCols * kSwRowBytes, 16, kSwAtomBytes);
                ptx::wgmma_m64n32k16_ss(s, da, db, kk > 0 ? 1 : 0);
            }
            ptx::wgmma_commit();
            if (kOverlap) {
                ptx::wgmma_wait<1>();  // this warpgroup's P V of page blk-1 is done (S may still run)
                __syncthreads();       // ... and the other's: page blk-1's stage and P are free
                if (blk + 1 < blk_end)
                    load_tile_sw128_async(sKv + (stage ^ 1) * kTileBytes, sm90::page_ptr(p, bt, blk + 1),
                                          min(kPage, len - (blk + 1) * kPage), tid);
                ptx::cp_async_commit();
            }
            ptx::wgmma_wait<0>();
            ptx::fence_regs(s);
            if (kOverlap) ptx::fence_regs(o);  // P V(blk-1) has landed in o

            // ---- mask, scale to log2 units, row max over the whole page ----
            const int pos0 = blk * kPage + wg * kWgScoreCols + 2 * t;
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < kWgScoreCols / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = e >> 1;
                    const int pos = pos0 + j * 8 + (e & 1);
                    const float x = (pos <= last_pos[i]) ? s[4 * j + e] * p.scale_log2 : -INFINITY;
                    s[4 * j + e] = x;
                    tile_max[i] = fmaxf(tile_max[i], x);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
                tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
            }
            if (t == 0) {
                red[wg * kRows + trow[0]] = tile_max[0];
                red[wg * kRows + trow[1]] = tile_max[1];
            }
            __syncthreads();  // the other warpgroup's maxima are visible

            float alpha[2], base[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float other = red[(wg ^ 1) * kRows + trow[i]];
                const float new_max = fmaxf(row_max[i], fmaxf(tile_max[i], other));
                // A row that has seen nothing yet keeps max -inf; subtract 0
                // then, so exp2(-inf - base) = 0 instead of NaN.
                base[i] = (new_max == -INFINITY) ? 0.f : new_max;
                alpha[i] = ptx::exp2_approx(row_max[i] - base[i]);
                row_max[i] = new_max;
                row_sum[i] *= alpha[i];
            }
            // Warp-uniform skip: once the maxima settle, alpha is exactly 1
            // (ex2(0) = 1) and the 128 multiplies would change nothing.
            if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
                for (int j = 0; j < kWgOutCols / 8; ++j) {
                    o[4 * j + 0] *= alpha[0];
                    o[4 * j + 1] *= alpha[0];
                    o[4 * j + 2] *= alpha[1];
                    o[4 * j + 3] *= alpha[1];
                }
            }

            // ---- P = exp2(x - max) as bf16 into the swizzled P block ----
            // Row r, columns 32wg + 8j + 2t, +1: chunk 4wg + j, bytes 4t..4t+3.
#pragma unroll
            for (int j = 0; j < kWgScoreCols / 8; ++j) {
                const float p0 = ptx::exp2_approx(s[4 * j + 0] - base[0]);
                const float p1 = ptx::exp2_approx(s[4 * j + 1] - base[0]);
                const float p2 = ptx::exp2_approx(s[4 * j + 2] - base[1]);
                const float p3 = ptx::exp2_approx(s[4 * j + 3] - base[1]);
                row_sum[0] += p0 + p1;
                row_sum[1] += p2 + p3;
                const int chunk = wg * (kWgScoreCols / 8) + j;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[0], chunk) + 4 * t),
                             "r"(ptx::pack_bf16x2(p0, p1))
                             : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[1], chunk) + 4 * t),
                             "r"(ptx::pack_bf16x2(p2, p3))
                             : "memory");
            }
            ptx::fence_proxy_async_smem();  // P (ordinary stores) becomes visible to wgmma
            __syncthreads();                // both halves of P written

            // ---- O += P V: 64 rows x 256 columns per warpgroup, 4 k-steps ----
            ptx::fence_regs(o);
            ptx::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kPvSteps; ++kk) {
                const uint64_t da = ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes);
                const uint64_t db = ptx::wgmma_desc_sw128(
                    sPage + wg * (kWgOutCols / 64) * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes);
                ptx::wgmma_m64n256k16_ss_tb(o, da, db, 1);
            }
            ptx::wgmma_commit();
            if (!kOverlap) {
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
            }
        }
        if (kOverlap) {
            ptx::wgmma_wait<0>();  // the chunk's last P V
            ptx::fence_regs(o);
        }

        // ---- finish the chunk: total row sums, normalise, store ----
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
            row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
        }
        __syncthreads();  // everyone is past the last read of `red`
        if (t == 0) {
            red[wg * kRows + trow[0]] = row_sum[0];
            red[wg * kRows + trow[1]] = row_sum[1];
        }
        __syncthreads();

        const bool final_out = (n_split == 1);
        const int split = split_base + split_local;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = qrow[i];
            if (r >= p.rows_per_seq) continue;
            const float sum = row_sum[i] + red[(wg ^ 1) * kRows + trow[i]];
            const float inv = (sum > 0.f) ? 1.f / sum : 0.f;
            const float lse = (sum > 0.f) ? (row_max[i] + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
            if (final_out) {
                __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) +
                                     (static_cast<size_t>(seq) * p.rows_per_seq + r) * kDimV + wg * kWgOutCols + 2 * t;
#pragma unroll
                for (int j = 0; j < kWgOutCols / 8; ++j) {
                    const uint32_t v = ptx::pack_bf16x2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
                    *reinterpret_cast<uint32_t*>(dst + j * 8) = v;
                }
                if (wg == 0 && t == 0) {
                    const int h = r - qtok[i] * p.h_q;
                    p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + qtok[i]] = lse;
                }
            } else {
                float* dst = p.o_accum + (static_cast<size_t>(split) * p.rows_per_seq + r) * kDimV + wg * kWgOutCols +
                             2 * t;
#pragma unroll
                for (int j = 0; j < kWgOutCols / 8; ++j)
                    *reinterpret_cast<float2*>(dst + j * 8) =
                        make_float2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
                if (wg == 0 && t == 0) p.lse_accum[static_cast<size_t>(split) * p.rows_per_seq + r] = lse;
            }
        }
    }
    ptx::cp_async_wait<0>();
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v3_wgmma(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_body<false>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v4_wgmma_overlap(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_body<true>(p);
}
