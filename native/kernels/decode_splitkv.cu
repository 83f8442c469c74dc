// decode_splitkv.cu -- v2: split-KV MLA decode over the paged bf16 latent cache
// with mma.sync (flashmla_decode_v2_mma; exported when MLA_DECODE_EXPORT = 2).
//
// Tile shapes: a CTA owns one row group (64 query rows = heads x query tokens
// of one sequence) and walks the chunk list of its scheduler part
// (sched_meta, see mla_params.h), one 64-token page at a time.
//   Q tile   64 x 576 bf16 in shared memory, loaded once per sequence chunk.
//   page     64 x 576 bf16 in shared memory, K = all columns, V = first 512.
//   S        64 x 64 fp32  (each warp 16 x 32) = Q K^T, mma.sync m16n8k16.
//   P        64 x 64 bf16 in shared memory (exchanged between the two warps
//            that share a row block).
//   O        64 x 512 fp32 in registers (each warp 16 x 256) += P V.
// Warp roles: 8 warps, no producer/consumer split yet. Warp w: row block
// w/2 (16 rows), column half w%2 (32 of the page's tokens for S, 256 of the
// output columns for O). All threads issue the cp.async page copies. Warps
// whose 16 rows are all padding (h_q*s_q < 64) skip the matrix work and only
// copy and synchronise; the row-block-major order puts the busy warps of a
// small row group on different SM sub-partitions (warp w runs on w%4).
// Pipeline depth: 2 pages (cp.async double buffer): page j+1 is in flight
// while page j is multiplied. The Hopper versions (wgmma) are
// decode_sm90_roles.cu and decode_sm90_tma.cu.
//
// Masking: page rows at positions >= seq_len are zero-filled by the copy
// (never read from global), so K and V there are 0 and never NaN; scores of
// positions a row must not see (causal inside the step, past the length) are
// set to -inf before exp2, so their P is exactly 0.
#include "mla_config.h"
#include "ptx.h"

namespace {

using namespace mla;

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled 64 x 576 tile.
__device__ __forceinline__ uint32_t tile_off(int row, int chunk) {
    return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}
// Byte offset of 16-byte chunk `chunk` of row `row` in the swizzled 64 x 64 P tile.
__device__ __forceinline__ uint32_t p_off(int row, int chunk) {
    return static_cast<uint32_t>(row * kPRowBytes + ((chunk ^ (row & 7)) << 4));
}

// Copies the first `valid_rows` rows of a 64 x 576 bf16 block (row stride 576
// elements) into a swizzled shared tile with cp.async; rows >= valid_rows are
// zero-filled and not read. All kDecodeThreads threads take part.
__device__ __forceinline__ void load_tile_async(uint32_t smem_tile, const __nv_bfloat16* src, int valid_rows,
                                                int tid) {
#pragma unroll
    for (int i = 0; i < kCopyChunksPerThread; ++i) {
        const int id = tid + i * kDecodeThreads;
        const int row = id / kRowChunks;
        const int chunk = id - row * kRowChunks;
        const bool ok = row < valid_rows;
        const __nv_bfloat16* g = src + (ok ? row * kDimK + chunk * 8 : 0);
        ptx::cp_async_16_zfill(smem_tile + tile_off(row, chunk), g, ok ? 16u : 0u);
    }
}

__device__ __forceinline__ const __nv_bfloat16* page_ptr(const MlaDecodeParams& p, const int* bt, int blk) {
    const size_t page = static_cast<size_t>(bt[blk]);
    return static_cast<const __nv_bfloat16*>(p.kv_pool) + page * (kPage * kDimK);
}

}  // namespace

// The kernel body; flashmla_decode_v2_mma below and, when mla_config.h's
// MLA_DECODE_EXPORT selects it, flashmla_decode_splitkv (decode_export.cu)
// are thin wrappers around it.
__device__ __forceinline__ void decode_v2_mma_body(const MlaDecodeParams& p) {
    using namespace mla;
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int rb = warp / kHalves;    // row block: tile rows 16*rb .. +15
    const int half = warp % kHalves;  // column half
    const int g = lane >> 2, t = lane & 3;

    const int* meta = p.sched_meta + blockIdx.y * MLA_SCHED_INTS;
    const int begin_seq = meta[MLA_SCHED_BEGIN_SEQ], begin_block = meta[MLA_SCHED_BEGIN_BLOCK];
    const int end_seq = meta[MLA_SCHED_END_SEQ], end_block = meta[MLA_SCHED_END_BLOCK];
    const int begin_split = meta[MLA_SCHED_BEGIN_SPLIT];

    const int row0 = blockIdx.x * kRows;  // first row (of the sequence) of this row group
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);
    const bool busy = rb * kRowBlock < valid_q_rows;  // warp-uniform: this row block holds a real row

    const uint32_t sQ = ptx::smem_addr(smem + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem + kSmemP);
    float* red = reinterpret_cast<float*>(smem + kSmemRed);  // [kHalves][kRows]

    // This thread's two accumulator rows (mma rows g and g+8 of its row block).
    const int trow[2] = {rb * kRowBlock + g, rb * kRowBlock + g + 8};  // rows within the tile
    int qrow[2], qtok[2];                                              // row within the sequence, query token
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        qrow[i] = row0 + trow[i];
        qtok[i] = qrow[i] / p.h_q;
    }

    // Per-lane ldmatrix source rows and chunk selectors (see ptx.h):
    // A operand (Q, P): matrices (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi), (rows 8-15, k hi).
    const int a_row = rb * kRowBlock + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_khi = lane >> 4;
    // B operand of Q K^T (K rows = tokens): (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi).
    const int k_row = half * kScoreCols + (lane & 7) + (lane >> 4) * 8;
    const int k_khi = (lane >> 3) & 1;
    // B operand of P V, read transposed (V rows = tokens = k):
    // (k 0-7, n lo), (k 8-15, n lo), (k 0-7, n hi), (k 8-15, n hi).
    const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int v_nhi = lane >> 4;

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

        // Every thread is done with the previous chunk's tiles before they are overwritten.
        ptx::cp_async_wait<0>();
        __syncthreads();
        if (blk_begin < blk_end) {
            load_tile_async(sQ, static_cast<const __nv_bfloat16*>(p.q) +
                                    (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                            valid_q_rows, tid);
            load_tile_async(sKv, page_ptr(p, bt, blk_begin), min(kPage, len - blk_begin * kPage), tid);
        }
        ptx::cp_async_commit();

        float o[kOutTiles][4];
#pragma unroll
        for (int n = 0; n < kOutTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};  // running max of scale*log2e*score
        float row_sum[2] = {0.f, 0.f};              // this thread's share of the running sum

        for (int blk = blk_begin; blk < blk_end; ++blk) {
            const int stage = (blk - blk_begin) & 1;
            ptx::cp_async_wait<0>();
            __syncthreads();  // page blk visible to all; everyone done with page blk-1's stage
            if (blk + 1 < blk_end)
                load_tile_async(sKv + (stage ^ 1) * kTileBytes, page_ptr(p, bt, blk + 1),
                                min(kPage, len - (blk + 1) * kPage), tid);
            ptx::cp_async_commit();
            const uint32_t sPage = sKv + stage * kTileBytes;
            if (!busy) {  // padding rows only: keep the CTA's barrier count, skip the math
                __syncthreads();
                __syncthreads();
                continue;
            }

            // ---- S = Q K^T: 16 rows x 32 tokens per warp ----
            float s[kScoreTiles][4];
#pragma unroll
            for (int n = 0; n < kScoreTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll 2
            for (int kk = 0; kk < kQkSteps; ++kk) {
                uint32_t a[4];
                ptx::ldmatrix_x4(a, sQ + tile_off(a_row, 2 * kk + a_khi));
#pragma unroll
                for (int np = 0; np < kScoreTiles / 2; ++np) {
                    uint32_t b[4];
                    ptx::ldmatrix_x4(b, sPage + tile_off(k_row + np * 16, 2 * kk + k_khi));
                    ptx::mma_bf16_16816(s[2 * np], a, b[0], b[1]);
                    ptx::mma_bf16_16816(s[2 * np + 1], a, b[2], b[3]);
                }
            }

            // ---- mask, scale to log2 units, row max over the whole page ----
            const int pos0 = blk * kPage + half * kScoreCols + 2 * t;
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = e >> 1;
                    const int pos = pos0 + n * 8 + (e & 1);
                    const float x = (pos <= last_pos[i]) ? s[n][e] * p.scale_log2 : -INFINITY;
                    s[n][e] = x;
                    tile_max[i] = fmaxf(tile_max[i], x);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
                tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
            }
            if (t == 0) {
                red[half * kRows + trow[0]] = tile_max[0];
                red[half * kRows + trow[1]] = tile_max[1];
            }
            __syncthreads();  // the other half's maxima are visible

            float alpha[2], base[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float other = red[(half ^ 1) * kRows + trow[i]];
                const float new_max = fmaxf(row_max[i], fmaxf(tile_max[i], other));
                // A row that has seen nothing yet keeps max -inf; subtract 0
                // then, so exp2(-inf - base) = 0 instead of NaN.
                base[i] = (new_max == -INFINITY) ? 0.f : new_max;
                alpha[i] = ptx::exp2_approx(row_max[i] - base[i]);
                row_max[i] = new_max;
                row_sum[i] *= alpha[i];
            }
#pragma unroll
            for (int n = 0; n < kOutTiles; ++n) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }

            // ---- P = exp2(x - max), written to shared memory as bf16 ----
#pragma unroll
            for (int n = 0; n < kScoreTiles; ++n) {
                const float p0 = ptx::exp2_approx(s[n][0] - base[0]);
                const float p1 = ptx::exp2_approx(s[n][1] - base[0]);
                const float p2 = ptx::exp2_approx(s[n][2] - base[1]);
                const float p3 = ptx::exp2_approx(s[n][3] - base[1]);
                row_sum[0] += p0 + p1;
                row_sum[1] += p2 + p3;
                const int chunk = half * (kScoreCols / 8) + n;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + p_off(trow[0], chunk) + 4 * t),
                             "r"(ptx::pack_bf16x2(p0, p1))
                             : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + p_off(trow[1], chunk) + 4 * t),
                             "r"(ptx::pack_bf16x2(p2, p3))
                             : "memory");
            }
            __syncthreads();  // the whole P row block (both halves) is visible

            // ---- O += P V: 16 rows x 256 columns per warp ----
#pragma unroll
            for (int kk = 0; kk < kPvSteps; ++kk) {
                uint32_t a[4];
                ptx::ldmatrix_x4(a, sP + p_off(a_row, 2 * kk + a_khi));
#pragma unroll
                for (int np = 0; np < kOutTiles / 2; ++np) {
                    uint32_t b[4];
                    ptx::ldmatrix_x4_trans(
                        b, sPage + tile_off(kk * 16 + v_row, half * (kOutCols / 8) + np * 2 + v_nhi));
                    ptx::mma_bf16_16816(o[2 * np], a, b[0], b[1]);
                    ptx::mma_bf16_16816(o[2 * np + 1], a, b[2], b[3]);
                }
            }
        }

        // ---- finish the chunk: total row sums, normalise, store ----
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
            row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
        }
        __syncthreads();  // everyone is past the last read of `red`
        if (t == 0) {
            red[half * kRows + trow[0]] = row_sum[0];
            red[half * kRows + trow[1]] = row_sum[1];
        }
        __syncthreads();

        const bool final_out = (n_split == 1);
        const int split = split_base + split_local;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = qrow[i];
            if (r >= p.rows_per_seq) continue;
            const float sum = row_sum[i] + red[(half ^ 1) * kRows + trow[i]];
            const float inv = (sum > 0.f) ? 1.f / sum : 0.f;
            const float lse = (sum > 0.f) ? (row_max[i] + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
            if (final_out) {
                __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) +
                                     (static_cast<size_t>(seq) * p.rows_per_seq + r) * kDimV + half * kOutCols + 2 * t;
#pragma unroll
                for (int n = 0; n < kOutTiles; ++n) {
                    const uint32_t v = ptx::pack_bf16x2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
                    *reinterpret_cast<uint32_t*>(dst + n * 8) = v;
                }
                if (half == 0 && t == 0) {
                    const int h = r - qtok[i] * p.h_q;
                    p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + qtok[i]] = lse;
                }
            } else {
                float* dst = p.o_accum + (static_cast<size_t>(split) * p.rows_per_seq + r) * kDimV + half * kOutCols + 2 * t;
#pragma unroll
                for (int n = 0; n < kOutTiles; ++n)
                    *reinterpret_cast<float2*>(dst + n * 8) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
                if (half == 0 && t == 0) p.lse_accum[static_cast<size_t>(split) * p.rows_per_seq + r] = lse;
            }
        }
    }
    ptx::cp_async_wait<0>();
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v2_mma(const __grid_constant__ MlaDecodeParams p) {
    decode_v2_mma_body(p);
}
