// decode_sm90_roles_v7.cu -- split-KV MLA decode for Hopper: v5's warpgroup
// roles with the values warpgroup's proxy fence moved off its copies (v7).
//
// Tile shapes, warp roles, pipeline depth (2 page stages) and the
// synchronisation protocol are v5's (decode_sm90_roles.cu, read its header
// first). One change, in warpgroup 1 ("values"): v5 ran fence.proxy.async
// right after P_READY(j), which is after it had issued page j+1's cp.async
// copies at the end of iteration j-1. If the fence waits for the thread's
// own outstanding cp.async (the v6 outcome in NOTES.md points that way),
// v5's P V(j) on the right half waited for page j+1 to land, a page early,
// and with it P_FREE and the next copy. v7 orders it the other way round:
// after its P V(j) retired, warpgroup 1 waits for page j+1's mbarrier
// itself (it tracks the stage parities as warpgroup 0 does), fences then (no
// copy of its own is in flight: page j+1 was its last), and only then copies
// page j+2; P_READY(j+1) is then followed by the products without a fence
// (P was fenced by its writers, warpgroup 0, before P_READY). At a chunk's
// start warpgroup 1 waits for page 0 and fences once after issuing Q and
// pages 0 and 1 (a one-off cost per chunk).
//
// v8 (kPieces = true) adds v6's per-block gating on top: a page completes on
// 9 mbarriers, one per 64 x 64 column block (copied in order 0..8 by
// warpgroup 1, as v7 copies the page), and warpgroup 0 waits for block b
// (and fences) just before S's 4 wgmma on it, so S starts on the first block
// that landed. Warpgroup 0 issues no copies, so its fences have none of its
// own in flight; warpgroup 1 waits for all 9 and fences once.
//
// v11 (kLateReady + kSplitGates) lets the tensor pipe run warpgroup 1's
// P V(j) while warpgroup 0 does the softmax of page j+1, instead of idling
// through it: warpgroup 0 signals P_READY(j) only after it has issued S(j+1),
// so warpgroup 1's P V(j) queues behind S(j+1) and runs during softmax(j+1).
// That retires P V(j) later, and with two whole-page stages page j+2 (which
// S(j+2) needs right after softmax(j+1)) could only start copying then. So a
// page lands on two mbarriers per stage: gate A = column blocks 0-3 and 8
// (read by warpgroup 0 alone: S, and P V on O[:, 0:256]), copied by warpgroup
// 1 as soon as warpgroup 0 frees the stage (KV_FREE, unchanged), while its own
// P V(j) on blocks 4-7 still runs; gate B = blocks 4-7, copied once that P V
// retired. S takes gate A's 20 k-steps first, then waits for gate B.
// v12 runs v11's body in CTAs whose row group is full (64 query rows: the
// compute-bound shapes) and v5's (decode_sm90_roles.cu) in the others.
// v13 (kReadyAfterS) is v11 with P_READY(j) after S(j+1) retired: if the two
// warpgroups' wgmma share the tensor pipe instead of queueing, v11's P V_R(j)
// slows S(j+1) down rather than filling softmax(j+1); v13 cannot.
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace sm90_roles_v7 {

using namespace mla;

constexpr int kBarPReady = 1, kBarPFree = 2, kBarKvFree0 = 3;  // named barriers (0 = __syncthreads)
constexpr int kWgThreads = 128;
// red area (kSmemRed, 512 bytes): 2 x 9 mbarriers (v7 uses the first of
// each stage's 9), then at byte 256 64 floats of alpha (per page) or 1/rowsum
// (at the end of a chunk).
constexpr int kRedMbar = 0, kRedRowVals = 256;
static_assert(kRedMbar + 2 * kSwBlocks * 8 <= kRedRowVals, "mbarriers overlap the row values");
static_assert(kRedRowVals + kRows * 4 <= kWarpGroups * kRows * 4, "red area too small");

// Copies a page (src, `valid` rows, the rest zero-filled) into the tile at
// sTile and arrives on its mbarrier(s) (sBar = the stage's first): v7 one
// barrier for the page, v8 one per column block. A warpgroup calls it.
template <bool kPieces>
__device__ __forceinline__ void copy_page(uint32_t sTile, uint32_t sBar, const __nv_bfloat16* src, int valid,
                                          int wtid) {
    if constexpr (kPieces) {
#pragma unroll
        for (int b = 0; b < kSwBlocks; ++b) {
            load_block_sw128_async<kWgThreads>(sTile, src, b, valid, wtid);
            ptx::mbarrier_arrive_cp_async(sBar + 8 * b);
        }
    } else {
        load_tile_sw128_async<kWgThreads>(sTile, src, valid, wtid);
        ptx::mbarrier_arrive_cp_async(sBar);
    }
}

// v11: one gate of a page (part 0 = column blocks 0-3 and 8 on the stage's
// first mbarrier, part 1 = blocks 4-7 on its second); a warpgroup calls it.
template <int kPart>
__device__ __forceinline__ void copy_page_part(uint32_t sTile, uint32_t sBar, const __nv_bfloat16* src, int valid,
                                               int wtid) {
    if constexpr (kPart == 0) {
#pragma unroll
        for (int b = 0; b < 4; ++b) load_block_sw128_async<kWgThreads>(sTile, src, b, valid, wtid);
        load_block_sw128_async<kWgThreads>(sTile, src, kSwBlocks - 1, valid, wtid);
        ptx::mbarrier_arrive_cp_async(sBar);
    } else {
#pragma unroll
        for (int b = 4; b < 8; ++b) load_block_sw128_async<kWgThreads>(sTile, src, b, valid, wtid);
        ptx::mbarrier_arrive_cp_async(sBar + 8);
    }
}

// Waits until the page in the stage whose first mbarrier is sBar has landed.
template <bool kPieces>
__device__ __forceinline__ void wait_page(uint32_t sBar, uint32_t parity) {
    if constexpr (kPieces) {
#pragma unroll
        for (int b = 0; b < kSwBlocks; ++b) ptx::mbarrier_wait_parity(sBar + 8 * b, parity);
    } else {
        ptx::mbarrier_wait_parity(sBar, parity);
    }
}

__device__ __forceinline__ const __nv_bfloat16* page_ptr(const MlaDecodeParams& p, const int* bt, int blk) {
    const size_t page = static_cast<size_t>(bt[blk]);
    return static_cast<const __nv_bfloat16*>(p.kv_pool) + page * (kPage * kDimK);
}

}  // namespace sm90_roles_v7

// kPieces: per-block mbarriers (v8). kWg1FenceFirst: warpgroup 1 waits for
// page j+1 and fences before copying page j+2 (v7, v8); false = v5's fence
// after P_READY. kEarlyFree (v9, v10): warpgroup 0 retires its P V(j-1) with
// wgmma.wait_group 0 before waiting for page j and frees page j-1's stage at
// once, instead of after issuing S(j) (which needs page j landed: in v5 the
// copy of page j+1 could not start before page j had landed, so only about
// one page was ever in flight). kEarlyPv (v10): warpgroup 0 issues its P V(j)
// before storing P(j) for warpgroup 1 (the stores read the A registers of
// the product in flight, which PTX allows; only writes are forbidden).
// kLateReady (v11): P_READY(j) arrives after S(j+1) is issued (after P V(j)
// for the last page). kSplitGates (v11): pages on two gates, see the header.
// kReadyAfterS (v13): that P_READY(j) arrives only once S(j+1) retired, so
// P V_R(j) cannot share the tensor pipe with S(j+1), only with softmax(j+1).
template <bool kPieces, bool kWg1FenceFirst, bool kEarlyFree, bool kEarlyPv, bool kLateReady = false,
          bool kSplitGates = false, bool kReadyAfterS = false>
__device__ __forceinline__ void decode_sm90_roles_v7_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_roles_v7;
    static_assert(!kSplitGates || (!kPieces && !kWg1FenceFirst), "v11's gates replace v8's pieces and v7's fence");
    static_assert(!kLateReady || (kSplitGates && !kEarlyFree && !kEarlyPv),
                  "a late P_READY needs the split gates (page copy window) and v5's order in warpgroup 0");
    static_assert(!kReadyAfterS || kLateReady, "v13 is v11 with P_READY later still");
    extern __shared__ __align__(1024) uint8_t smem_roles7[];
    const int tid = threadIdx.x;
    const int wg = tid >> 7;            // 0: scores + O[:, 0:256]; 1: copies + O[:, 256:512]
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

    const uint32_t sQ = ptx::smem_addr(smem_roles7 + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem_roles7 + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem_roles7 + kSmemP);
    const uint32_t sMbar = ptx::smem_addr(smem_roles7 + kSmemRed + kRedMbar);  // kv_full[2][9], 8 bytes each
    constexpr uint32_t kStageBars = 8 * kSwBlocks;  // bytes between the stages' first mbarriers
    float* row_vals = reinterpret_cast<float*>(smem_roles7 + kSmemRed + kRedRowVals);  // [64]
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
#pragma unroll
        for (int k = 0; k < 2 * kSwBlocks; ++k) ptx::mbarrier_init(sMbar + 8 * k, kWgThreads);
    }
    __syncthreads();
    uint32_t kv_phase = 0u;  // both warpgroups: bit s = parity of the next phase of stage s to wait for

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
                load_tile_sw128_async<kWgThreads>(
                    sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                    valid_q_rows, wtid);
                if constexpr (kSplitGates) {  // Q is covered by gate A of page 0
                    copy_page_part<0>(sKv, sMbar, sm90_roles_v7::page_ptr(p, bt, blk_begin),
                                      min(kPage, len - blk_begin * kPage), wtid);
                    copy_page_part<1>(sKv, sMbar, sm90_roles_v7::page_ptr(p, bt, blk_begin),
                                      min(kPage, len - blk_begin * kPage), wtid);
                } else {
                    copy_page<kPieces>(sKv, sMbar, sm90_roles_v7::page_ptr(p, bt, blk_begin),
                                       min(kPage, len - blk_begin * kPage), wtid);
                }
            }
            if (n > 1) {
                if constexpr (kSplitGates) {
                    copy_page_part<0>(sKv + kTileBytes, sMbar + kStageBars, sm90_roles_v7::page_ptr(p, bt, blk_begin + 1),
                                      min(kPage, len - (blk_begin + 1) * kPage), wtid);
                    copy_page_part<1>(sKv + kTileBytes, sMbar + kStageBars, sm90_roles_v7::page_ptr(p, bt, blk_begin + 1),
                                      min(kPage, len - (blk_begin + 1) * kPage), wtid);
                } else {
                    copy_page<kPieces>(sKv + kTileBytes, sMbar + kStageBars,
                                       sm90_roles_v7::page_ptr(p, bt, blk_begin + 1),
                                       min(kPage, len - (blk_begin + 1) * kPage), wtid);
                }
            }
            if (kWg1FenceFirst && n > 0) {  // page 0 landed and fenced before its first product (once per chunk)
                wait_page<kPieces>(sMbar, kv_phase & 1u);
                kv_phase ^= 1u;
                ptx::fence_proxy_async_smem();
            }
            for (int i = 0; i < n; ++i) {
                const int st = i & 1;
                const uint32_t sPage = sKv + st * kTileBytes;
                // P(i), alpha(i) written (P fenced by its writers); page i landed and fenced by us already
                ptx::named_bar_sync<kBarPReady, 2 * kWgThreads>();
                if constexpr (!kWg1FenceFirst) ptx::fence_proxy_async_smem();  // v5: page i (and P) -> wgmma reads
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
                if constexpr (kSplitGates) {
                    // Gate A of page i+2 (blocks 0-3, 8: warpgroup 0's alone) while our P V(i) reads blocks 4-7.
                    if (i + 2 < n) {
                        if (st == 0) ptx::named_bar_sync<kBarKvFree0, 2 * kWgThreads>();
                        else ptx::named_bar_sync<kBarKvFree0 + 1, 2 * kWgThreads>();
                        copy_page_part<0>(sPage, sMbar + kStageBars * st, sm90_roles_v7::page_ptr(p, bt, blk_begin + i + 2),
                                          min(kPage, len - (blk_begin + i + 2) * kPage), wtid);
                    }
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
                if (i + 1 < n) {
                    ptx::named_bar_arrive<kBarPFree, 2 * kWgThreads>();  // done with P(i), alpha(i)
                    if constexpr (kWg1FenceFirst) {
                        // Page i+1 (our last copy) landed: fence now, while no copy of ours is in flight.
                        wait_page<kPieces>(sMbar + kStageBars * (st ^ 1), (kv_phase >> (st ^ 1)) & 1u);
                        kv_phase ^= 1u << (st ^ 1);
                        ptx::fence_proxy_async_smem();
                    }
                }
                if (i + 2 < n) {
                    if constexpr (kSplitGates) {  // gate B: blocks 4-7, free now that our P V(i) retired
                        copy_page_part<1>(sPage, sMbar + kStageBars * st, sm90_roles_v7::page_ptr(p, bt, blk_begin + i + 2),
                                          min(kPage, len - (blk_begin + i + 2) * kPage), wtid);
                    } else {
                        if (st == 0) ptx::named_bar_sync<kBarKvFree0, 2 * kWgThreads>();
                        else ptx::named_bar_sync<kBarKvFree0 + 1, 2 * kWgThreads>();
                        copy_page<kPieces>(sPage, sMbar + kStageBars * st,
                                           sm90_roles_v7::page_ptr(p, bt, blk_begin + i + 2),
                                           min(kPage, len - (blk_begin + i + 2) * kPage), wtid);
                    }
                }
            }
        } else {
            // ======================= scores warpgroup =======================
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
                const uint32_t sBar = sMbar + kStageBars * st;
                const uint32_t par = (kv_phase >> st) & 1u;
                kv_phase ^= 1u << st;
                if constexpr (kEarlyFree) {
                    if (i > 0) {
                        ptx::wgmma_wait<0>();  // P V(i-1) of this warpgroup retired: page i-1 is done here
                        ptx::fence_regs(pa);
                        ptx::fence_regs(o);
                        if (i + 1 < n) {
                            if (st == 0) ptx::named_bar_arrive<kBarKvFree0 + 1, 2 * kWgThreads>();
                            else ptx::named_bar_arrive<kBarKvFree0, 2 * kWgThreads>();
                        }
                    }
                }
                if constexpr (!kPieces) {
                    ptx::mbarrier_wait_parity(sBar, par);  // v11: gate A (blocks 0-3, 8; Q with page 0)
                    ptx::fence_proxy_async_smem();  // cp.async data (generic proxy) -> wgmma reads
                }

                // ---- S = Q K^T, 64 x 64 ----
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                ptx::wgmma_fence();
                if constexpr (kSplitGates) {
                    // Gate A's blocks 0-3 and 8 (20 k-steps), then gate B's blocks 4-7 (16 k-steps).
#pragma unroll
                    for (int kk = 0; kk < 20; ++kk) {
                        const int b = (kk >> 2) == 4 ? kSwBlocks - 1 : (kk >> 2);
                        const uint32_t koff = b * kSwBlockBytes + (kk & 3) * 32;
                        ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                    }
                    ptx::mbarrier_wait_parity(sBar + 8, par);
                    ptx::fence_proxy_async_smem();
                    ptx::wgmma_fence();
#pragma unroll
                    for (int kk = 16; kk < 32; ++kk) {
                        const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                        ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), 1);
                    }
                } else {
#pragma unroll
                    for (int kk = 0; kk < kQkSteps; ++kk) {
                        if constexpr (kPieces) {
                            if ((kk & 3) == 0) {  // column block kk/4: wait for it alone
                                ptx::mbarrier_wait_parity(sBar + 8 * (kk >> 2), par);
                                ptx::fence_proxy_async_smem();
                                ptx::wgmma_fence();
                            }
                        }
                        const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                        ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                    }
                }
                ptx::wgmma_commit();
                // v11: P(i-1) was stored last iteration; publish it now, so warpgroup 1's P V(i-1) runs behind S(i).
                if (kLateReady && !kReadyAfterS && i > 0) ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();
                if (!kEarlyFree && i > 0) {
                    ptx::wgmma_wait<1>();  // P V(i-1) of this warpgroup retired: page i-1 is done here
                    ptx::fence_regs(pa);
                    if (i + 1 < n) {
                        if (st == 0) ptx::named_bar_arrive<kBarKvFree0 + 1, 2 * kWgThreads>();
                        else ptx::named_bar_arrive<kBarKvFree0, 2 * kWgThreads>();
                    }
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                ptx::fence_regs(o);
                if (kReadyAfterS && i > 0) ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();  // v13: S(i) retired

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
                if constexpr (kEarlyPv) {
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
                if constexpr (!kLateReady) ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();

                if constexpr (!kEarlyPv) {
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
                }
                if (kLateReady && i + 1 == n) ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();  // the last page's P
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
    flashmla_decode_v7_wgmma_roles_fence(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<false, true, false, false>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v8_wgmma_roles_pieces(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<true, true, false, false>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v9_wgmma_early_free(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<false, false, true, false>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v10_wgmma_early_pv(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<false, false, true, true>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v11_wgmma_late_ready(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<false, false, false, false, true, true>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v13_wgmma_ready_after_s(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_v7_body<false, false, false, false, true, true, true>(p);
}

// v12: v11 where the row group is full (the compute-bound shapes), v5 where
// it is partly padding (h_q * s_q < 64: memory-bound, nothing to overlap).
__device__ __forceinline__ void decode_sm90_v12_body(const MlaDecodeParams& p) {
    if (p.rows_per_seq - static_cast<int>(blockIdx.x) * mla::kRows >= mla::kRows)
        decode_sm90_roles_v7_body<false, false, false, false, true, true>(p);
    else
        decode_sm90_roles_body(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v12_wgmma_late_ready_full(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_v12_body(p);
}
