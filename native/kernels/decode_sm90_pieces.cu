// decode_sm90_pieces.cu -- split-KV MLA decode for Hopper, v5's warpgroup
// roles with pages copied and consumed block by block (v6).
//
// Tile shapes: as decode_sm90_roles.cu (v5): one row group of 64 query rows
// per CTA; Q tile and pages 128-byte swizzled, 9 column blocks of 64 x 64
// (sw128_tile.cuh). Warp roles as v5:
//   warpgroup 0, "scores": S = Q K^T (64 x 64, 36 wgmma m64n64k16), the
//     online softmax, P in registers as the A operand of O[:, 0:256] += P V,
//     P + the rescale factors to shared memory.
//   warpgroup 1, "values": O[:, 256:512] += P V with P from shared memory.
// Pipeline depth: 2 page stages (Q + 2 pages + P = 224 KB), as v5, but a
// page is 9 pieces (its column blocks), each completing on its own mbarrier
// (kv_full[stage][block], 128 cp.async arrivals a phase), and each piece is
// copied as soon as the data it replaces is dead, by the warpgroup that
// knows it:
//   block 8 (rope, read by S only): warpgroup 0, once S(j) retired;
//   blocks 4..7 (V of O[:, 256:512]): warpgroup 1, once its P V(j) retired;
//   blocks 0..3 (V of O[:, 0:256]): warpgroup 0, once its P V(j) retired
//     (it learns that from wgmma.wait_group 1 after issuing S(j+1), and
//     issues the copy while S(j+1) runs, when it would wait anyway).
// S = Q K^T takes the blocks in the order they are freed and copied (8, 4..7,
// 0..3) and waits for each block's mbarrier just before its 4 wgmma, so it
// starts on the first piece that landed instead of waiting for the page.
// No named barrier guards the stages any more (v5's KV_FREE): warpgroup 1 no
// longer waits for warpgroup 0 before copying.
//
// Synchronisation inside a chunk (arrive = one-way signal, sync = wait):
//   kv_full[s][b]  mbarrier, 128 arrivals (.noinc) per page copied into block b
//                  of stage s; warpgroup 0 waits with the stage's phase parity
//                  (all 9 blocks of a stage are in the same phase).
//   P_READY        named barrier: wg0 arrives after writing P(j) and alpha(j)
//                  (so S(j) has retired and page j had landed), wg1 syncs
//                  before its rescale and P V(j).
//   P_FREE         wg1 arrives after its P V(j) retired (if a page j+1
//                  follows), wg0 syncs before writing P(j+1).
// Chunk start: warpgroup 1 copies Q and page 0, warpgroup 0 page 1; chunk
// ends are full __syncthreads(); every copy issued in a chunk is consumed in
// it, so the mbarrier phases stay paired with the per-stage parity.
//
// Masking: as v5 (rows past the length zero-filled by the copy, invisible
// scores set to -inf before exp2).
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace sm90_pieces {

using namespace mla;

constexpr int kBarPReady = 4, kBarPFree = 5;  // named barriers (0 = __syncthreads)
constexpr int kWgThreads = 128;
// red area (kSmemRed, 512 bytes): 2 x 9 mbarriers (144 bytes), then at byte
// 256 64 floats of alpha (per page) or 1/rowsum (at the end of a chunk).
constexpr int kRedMbar = 0, kRedRowVals = 256;
static_assert(kRedMbar + 2 * kSwBlocks * 8 <= kRedRowVals, "mbarriers overlap the row values");
static_assert(kRedRowVals + kRows * 4 <= kWarpGroups * kRows * 4, "red area too small");

// The order in which S = Q K^T takes the column blocks of a page: the order
// in which they are freed and copied (block 8 first, then 4..7, then 0..3).
__device__ __forceinline__ constexpr int s_block(int i) { return i == 0 ? 8 : (i <= 4 ? i + 3 : i - 5); }

// Pool page `page`'s first element.
__device__ __forceinline__ const __nv_bfloat16* pool_page(const MlaDecodeParams& p, int page) {
    return static_cast<const __nv_bfloat16*>(p.kv_pool) + static_cast<size_t>(page) * (kPage * kDimK);
}
__device__ __forceinline__ const __nv_bfloat16* page_ptr(const MlaDecodeParams& p, const int* bt, int blk) {
    return pool_page(p, bt[blk]);
}

// Copies blocks kFirst .. kLast of a page (src, `valid` rows; the rest
// zero-filled) into the tile at sTile; each block's cp.async of this thread
// arrive on that block's mbarrier (sBar = the stage's first mbarrier). A
// warpgroup's 128 threads call it.
template <int kFirst, int kLast>
__device__ __forceinline__ void copy_page_blocks(uint32_t sTile, uint32_t sBar, const __nv_bfloat16* src, int valid,
                                                 int wtid) {
#pragma unroll
    for (int b = kFirst; b <= kLast; ++b) {
        load_block_sw128_async<kWgThreads>(sTile, src, b, valid, wtid);
        ptx::mbarrier_arrive_cp_async(sBar + 8 * b);
    }
}

// How many rows of page `blk` of a sequence of `len` tokens are valid (the rest are zero-filled).
__device__ __forceinline__ int valid_rows_of(int len, int blk) { return min(kPage, len - blk * kPage); }

// A whole page in S's block order (chunk start).
__device__ __forceinline__ void copy_page_all(uint32_t sTile, uint32_t sBar, const __nv_bfloat16* src, int valid,
                                              int wtid) {
    copy_page_blocks<8, 8>(sTile, sBar, src, valid, wtid);
    copy_page_blocks<4, 7>(sTile, sBar, src, valid, wtid);
    copy_page_blocks<0, 3>(sTile, sBar, src, valid, wtid);
}

}  // namespace sm90_pieces

__device__ __forceinline__ void decode_sm90_pieces_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_pieces;
    extern __shared__ __align__(1024) uint8_t smem_pieces[];
    const int tid = threadIdx.x;
    const int wg = tid >> 7;            // 0: scores + O[:, 0:256]; 1: values O[:, 256:512]
    const int wtid = tid & 127;         // thread within the warpgroup
    const int wwarp = (tid >> 5) & 3;   // warp within the warpgroup: tile rows 16*wwarp .. +15
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const int* meta = p.sched_meta + blockIdx.y * MLA_SCHED_INTS;
    const int begin_seq = meta[MLA_SCHED_BEGIN_SEQ], begin_block = meta[MLA_SCHED_BEGIN_BLOCK];
    const int end_seq = meta[MLA_SCHED_END_SEQ], end_block = meta[MLA_SCHED_END_BLOCK];
    const int begin_split = meta[MLA_SCHED_BEGIN_SPLIT];

    const int row0 = blockIdx.x * kRows;
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);

    const uint32_t sQ = ptx::smem_addr(smem_pieces + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem_pieces + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem_pieces + kSmemP);
    const uint32_t sMbar = ptx::smem_addr(smem_pieces + kSmemRed + kRedMbar);  // kv_full[2][9], 8 bytes each
    float* row_vals = reinterpret_cast<float*>(smem_pieces + kSmemRed + kRedRowVals);  // [64]
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
#pragma unroll
        for (int k = 0; k < 2 * kSwBlocks; ++k) ptx::mbarrier_init(sMbar + 8 * k, kWgThreads);
    }
    __syncthreads();
    uint32_t kv_phase = 0u;  // warpgroup 0: bit s = parity of the next phase of stage s to wait for

    const int trow[2] = {wwarp * 16 + g, wwarp * 16 + g + 8};
    int qrow[2], qtok[2];
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
        const int n = max(blk_end - blk_begin, 0);
        const int split_local = (seq == begin_seq) ? begin_split : 0;
        const int split_base = p.num_splits[seq];
        const int n_split = p.num_splits[seq + 1] - split_base;
        const int* bt = p.block_table + static_cast<size_t>(seq) * p.block_table_stride;

        int last_pos[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) last_pos[i] = (qrow[i] < p.rows_per_seq) ? len - p.s_q + qtok[i] : -1;

        __syncthreads();  // the previous chunk is finished everywhere: Q, stages, P, row_vals free

        float o[kWgOutCols / 2];  // this warpgroup's 64 x 256 half of O
#pragma unroll
        for (int k = 0; k < kWgOutCols / 2; ++k) o[k] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};  // warpgroup 0 only
        float row_sum[2] = {0.f, 0.f};              // warpgroup 0 only

        if (wg == 1) {
            // ======================= values warpgroup =======================
            if (n > 0) {
                // Q first: the arrivals on page 0's mbarriers cover it too.
                load_tile_sw128_async<kWgThreads>(
                    sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                    valid_q_rows, wtid);
                copy_page_all(sKv, sMbar, sm90_pieces::page_ptr(p, bt, blk_begin), valid_rows_of(len, blk_begin),
                              wtid);
            }
            for (int i = 0; i < n; ++i) {
                const int st = i & 1;
                const uint32_t sPage = sKv + st * kTileBytes;
                const int blk2 = blk_begin + min(i + 2, n - 1);  // page i+2 (copied below if it exists)
                const int pg2 = bt[blk2];                          // read early: off the copy's path
                ptx::named_bar_sync<kBarPReady, 2 * kWgThreads>();  // P(i), alpha(i) written; page i landed
                ptx::fence_proxy_async_smem();
                const float alpha0 = row_vals[trow[0]], alpha1 = row_vals[trow[1]];
                if (__any_sync(0xffffffffu, alpha0 != 1.f || alpha1 != 1.f)) {
#pragma unroll
                    for (int j = 0; j < kWgOutCols / 8; ++j) {
                        o[4 * j + 0] *= alpha0;
                        o[4 * j + 1] *= alpha0;
                        o[4 * j + 2] *= alpha1;
                        o[4 * j + 3] *= alpha1;
                    }
                }
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kPvSteps; ++kk) {
                    const uint64_t da = ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes);
                    const uint64_t db = ptx::wgmma_desc_sw128(
                        sPage + (kWgOutCols / 64) * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes);
                    ptx::wgmma_m64n256k16_ss_tb(o, da, db, 1);
                }
                ptx::wgmma_commit();
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
                if (i + 1 < n) ptx::named_bar_arrive<kBarPFree, 2 * kWgThreads>();  // done with P(i), alpha(i)
                // Blocks 4..7 of this stage are dead (S(i) retired before P_READY, our P V(i) just now):
                if (i + 2 < n)
                    copy_page_blocks<4, 7>(sPage, sMbar + 8 * kSwBlocks * st, pool_page(p, pg2),
                                           valid_rows_of(len, blk2), wtid);
            }
        } else {
            // ======================= scores warpgroup =======================
            if (n > 1)
                copy_page_all(sKv + kTileBytes, sMbar + 8 * kSwBlocks, sm90_pieces::page_ptr(p, bt, blk_begin + 1),
                              valid_rows_of(len, blk_begin + 1), wtid);
            // P of the page in flight as wgmma A fragments: n8 tile j of S,
            // rows g (pa[2j]) and g+8 (pa[2j+1]), columns 8j+2t, +1. Kept
            // allocated (fence_regs) until the P V that reads it retires.
            uint32_t pa[kPage / 4];
#pragma unroll
            for (int k = 0; k < kPage / 4; ++k) pa[k] = 0u;
            for (int i = 0; i < n; ++i) {
                const int st = i & 1;
                const int blk = blk_begin + i;
                const uint32_t sPage = sKv + st * kTileBytes;
                const uint32_t sBar = sMbar + 8 * kSwBlocks * st;
                const uint32_t par = (kv_phase >> st) & 1u;
                kv_phase ^= 1u << st;
                // Pages i+1 and i+2 (copied below if they exist), read early: off the copies' paths.
                const int pg1 = bt[blk_begin + min(i + 1, n - 1)];
                const int pg2 = bt[blk_begin + min(i + 2, n - 1)];

                // ---- S = Q K^T, 64 x 64, each block as soon as it landed ----
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                ptx::wgmma_fence();
#pragma unroll
                for (int bi = 0; bi < kSwBlocks; ++bi) {
                    const int b = s_block(bi);
                    ptx::mbarrier_wait_parity(sBar + 8 * b, par);
                    ptx::fence_proxy_async_smem();  // cp.async data (generic proxy) -> wgmma reads
                    ptx::wgmma_fence();
#pragma unroll
                    for (int k4 = 0; k4 < 4; ++k4) {
                        const uint32_t koff = b * kSwBlockBytes + k4 * 32;
                        ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes),
                                                (bi > 0 || k4 > 0) ? 1 : 0);
                    }
                }
                ptx::wgmma_commit();
                if (i > 0) {
                    ptx::wgmma_wait<1>();  // P V(i-1) of this warpgroup retired: blocks 0..3 of page i-1 are dead
                    ptx::fence_regs(pa);
                    if (i + 1 < n)  // page i+1 goes into page i-1's stage; copy while S(i) runs
                        copy_page_blocks<0, 3>(sKv + (st ^ 1) * kTileBytes, sMbar + 8 * kSwBlocks * (st ^ 1),
                                               pool_page(p, pg1), valid_rows_of(len, blk + 1), wtid);
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                ptx::fence_regs(o);

                // ---- mask, scale to log2 units, row max (a quad holds a row) ----
                const int pos0 = blk * kPage + 2 * t;
                float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int j = 0; j < kPage / 8; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int r = e >> 1;
                        const int pos = pos0 + j * 8 + (e & 1);
                        const float x = (pos <= last_pos[r]) ? s[4 * j + e] * p.scale_log2 : -INFINITY;
                        s[4 * j + e] = x;
                        tile_max[r] = fmaxf(tile_max[r], x);
                    }
                }
                float alpha[2], base[2];
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
                // ---- P = exp2(x - max): registers (A fragments) and shared memory ----
#pragma unroll
                for (int j = 0; j < kPage / 8; ++j) {
                    const float p0 = ptx::exp2_approx(s[4 * j + 0] - base[0]);
                    const float p1 = ptx::exp2_approx(s[4 * j + 1] - base[0]);
                    const float p2 = ptx::exp2_approx(s[4 * j + 2] - base[1]);
                    const float p3 = ptx::exp2_approx(s[4 * j + 3] - base[1]);
                    row_sum[0] += p0 + p1;
                    row_sum[1] += p2 + p3;
                    pa[2 * j] = ptx::pack_bf16x2(p0, p1);
                    pa[2 * j + 1] = ptx::pack_bf16x2(p2, p3);
                }
                if (i > 0) ptx::named_bar_sync<kBarPFree, 2 * kWgThreads>();  // wg1 is done with P(i-1)
#pragma unroll
                for (int j = 0; j < kPage / 8; ++j) {
                    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[0], j) + 4 * t), "r"(pa[2 * j])
                                 : "memory");
                    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[1], j) + 4 * t),
                                 "r"(pa[2 * j + 1])
                                 : "memory");
                }
                if (t == 0) {
                    row_vals[trow[0]] = alpha[0];
                    row_vals[trow[1]] = alpha[1];
                }
                ptx::fence_proxy_async_smem();  // P (ordinary stores) -> wg1's wgmma reads
                ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();

                // ---- O[:, 0:256] += P V[:, 0:256], P from registers; left in flight ----
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kPvSteps; ++kk) {
                    const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
                    const uint64_t db =
                        ptx::wgmma_desc_sw128(sPage + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes);
                    ptx::wgmma_m64n256k16_rs_tb(o, a, db, 1);
                }
                ptx::wgmma_commit();
                // Block 8 (rope) of this stage is dead since S(i) retired: page i+2's rope goes in now.
                if (i + 2 < n)
                    copy_page_blocks<8, 8>(sPage, sBar, pool_page(p, pg2), valid_rows_of(len, blk + 2), wtid);
            }
            ptx::wgmma_wait<0>();
            ptx::fence_regs(o);
            ptx::fence_regs(pa);
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
            }
        }

        // ---- finish the chunk: wg0 publishes 1/rowsum, both store their half ----
        __syncthreads();  // both warpgroups' products retired; row_vals (alpha) no longer read
        if (wg == 0 && t == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) row_vals[trow[r]] = (row_sum[r] > 0.f) ? 1.f / row_sum[r] : 0.f;
        }
        __syncthreads();

        const bool final_out = (n_split == 1);
        const int split = split_base + split_local;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qr = qrow[r];
            if (qr >= p.rows_per_seq) continue;
            const float inv = row_vals[trow[r]];
            if (final_out) {
                __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) +
                                     (static_cast<size_t>(seq) * p.rows_per_seq + qr) * kDimV + wg * kWgOutCols + 2 * t;
#pragma unroll
                for (int j = 0; j < kWgOutCols / 8; ++j)
                    *reinterpret_cast<uint32_t*>(dst + j * 8) =
                        ptx::pack_bf16x2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
            } else {
                float* dst = p.o_accum + (static_cast<size_t>(split) * p.rows_per_seq + qr) * kDimV + wg * kWgOutCols +
                             2 * t;
#pragma unroll
                for (int j = 0; j < kWgOutCols / 8; ++j)
                    *reinterpret_cast<float2*>(dst + j * 8) =
                        make_float2(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
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
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v6_wgmma_pieces(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_pieces_body(p);
}
