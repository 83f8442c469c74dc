// decode_sm90_tma.cu -- split-KV MLA decode for Hopper, the exported one
// (v15; v14 = one gate a page): v5's warpgroup roles with the pages brought
// in by TMA. On the H200 in steady state it stayed faster than the seesaw
// (v16) and than the L2-prefetch variants (v17) tried in issue 16: NOTES.md.
//
// Same tiles, roles, barriers and pipeline depth as v5 (decode_sm90_roles.cu,
// removed in issue 16; in git); what changes is how a page reaches shared memory:
//   - one thread of warpgroup 1 issues nine cp.async.bulk.tensor boxes
//     (64 rows x 64 columns, 128-byte swizzle) per page through the
//     kv_map tensor map of MlaDecodeParams, counted on the stage's kv_full
//     mbarrier with expect_tx (v5: 4,608 16-byte cp.async from 128 threads);
//   - TMA writes are in the async proxy, so warpgroup 0 reads a page with
//     wgmma straight after its mbarrier wait: no fence.proxy.async per page
//     (Q, still copied with cp.async, gets one fence per chunk, on its own
//     q_full mbarrier);
//   - the copy cannot zero-fill rows past a sequence's length, so warpgroup
//     0 zeroes the V columns of those rows in the last page of a sequence
//     (a generic write, then a fence and a warpgroup barrier) before S.
// Warpgroup 1 is left with P V of its half and a single issuing thread.
#pragma once
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"
#include "decode_sm90_softmax.cuh"
#include "decode_chunk.cuh"

namespace sm90_tma {

using namespace mla;

// named barriers (0 = __syncthreads): as v5, plus one inside warpgroup 0
constexpr int kBarPReady = 1, kBarPFree = 2, kBarKvFree0 = 3, kBarZeroed = 5;
constexpr int kWgThreads = 128;
// red area (kSmemRed, 512 bytes): the mbarriers (kv_full: 1 per stage, or 3
// per stage with block gates; then q_full; then kv_empty[2] in a cluster),
// then 64 floats of alpha (per page) or 1/rowsum (at the end of a chunk).
constexpr int kRedMbar = 0, kRedRowVals = 192;
static_assert((2 * kSwBlocks + 1 + 2) * 8 <= kRedRowVals, "mbarriers overlap the row values");
static_assert(kRedRowVals + kRows * 4 <= kWarpGroups * kRows * 4, "red area too small");

}  // namespace sm90_tma

// kBlockGates (v15): three mbarriers per stage (one per 3 column blocks) instead
// of one per page, so S starts on a page's first third while the rest is still
// landing (with TMA a gate costs no proxy fence, unlike v6/v8). S is then three
// commit groups, the gate waits between them.
//
// kCluster2 (v19, issue 16's "2-CTA cluster"): the kernel is launched in
// clusters of two CTAs along x, i.e. two row groups of the same part, which
// read the same pages. Each page then leaves L2 once for both: each CTA's
// issuing thread sends half of the nine boxes with TMA multicast to both CTAs
// (rank 0 the even column blocks, rank 1 the odd ones), and arms its own
// gates for all nine. A stage is refilled only when both CTAs are done with
// it: each CTA's issuer arrives on both CTAs' kv_empty[stage] (count 2) and
// waits on its own. Chunks start and the kernel ends with a cluster barrier,
// so neither CTA sends into a stage the other still reads from the previous
// chunk, nor exits while the other may still reach its shared memory.
template <bool kBlockGates, bool kCluster2 = false>
__device__ __forceinline__ void decode_sm90_tma_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_tma;
    MLA_DYNAMIC_SMEM(smem_tma);
    const int tid = threadIdx.x;
    const int wg = tid >> 7;            // 0: scores + O[:, 0:256]; 1: copies + O[:, 256:512]
    const int wtid = tid & 127;         // thread within the warpgroup
    const int wwarp = (tid >> 5) & 3;   // warp within the warpgroup: tile rows 16*wwarp .. +15
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const DecodePart sched = decode_part(p);

    const int row0 = blockIdx.x * kRows;
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);

    const uint32_t sQ = ptx::smem_addr(smem_tma + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem_tma + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem_tma + kSmemP);
    constexpr int kGateBlocks = kBlockGates ? 3 : kSwBlocks;                    // column blocks per mbarrier
    constexpr int kGates = kSwBlocks / kGateBlocks;                             // mbarriers per stage: 3 or 1
    const uint32_t sMbar = ptx::smem_addr(smem_tma + kSmemRed + kRedMbar);  // kv_full[2][kGates], 8 bytes each
    const uint32_t sQFull = sMbar + 8 * 2 * kGates;                           // q_full
    const uint32_t sEmpty = sQFull + 8;                                       // kv_empty[2] (kCluster2)
    auto gate = [&](int st, int g) { return sMbar + 8 * (st * kGates + g); };
    const uint32_t rank = kCluster2 ? ptx::cluster_ctarank() : 0u;
    float* row_vals = reinterpret_cast<float*>(smem_tma + kSmemRed + kRedRowVals);  // [64]
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
        for (int g = 0; g < 2 * kGates; ++g) ptx::mbarrier_init(sMbar + 8 * g, 1);  // one expect_tx arrival + its bytes
        ptx::mbarrier_init(sQFull, kWgThreads);  // 128 cp.async arrivals (.noinc)
        if (kCluster2)
            for (int st = 0; st < 2; ++st) ptx::mbarrier_init(sEmpty + 8 * st, 2);  // this CTA's and the other's release
        ptx::fence_mbarrier_init();
    }
    if (tid == kWgThreads) ptx::prefetch_tensormap(&p.kv_map);
    __syncthreads();
    uint32_t kv_phase[2] = {0u, 0u};  // warpgroup 0: parity of the next phase to wait for, per stage
    uint32_t q_phase = 0u;            // warpgroup 0: parity of q_full's next phase
    uint32_t empty_phase[2] = {0u, 0u};  // the issuing thread (kCluster2): parity of kv_empty's next phase, per stage
    // Page `blk` of the chunk's sequence into the stage at sPage: nine 64 x 64
    // TMA boxes (one per column block), counted on that stage's kv_full.
    // Issued by one thread of warpgroup 1 (in a cluster: this CTA's half of
    // the boxes, to both CTAs; the gates still expect all nine).
    auto issue_page = [&](int st, const int* bt, int blk) {
        const int y = p.kv_map_row0 + bt[blk] * kPage;
        const uint32_t sPage = sKv + st * kTileBytes;
#pragma unroll
        for (int b = 0; b < kSwBlocks; ++b) {
            if (b % kGateBlocks == 0) ptx::mbarrier_arrive_expect_tx(gate(st, b / kGateBlocks), kGateBlocks * kSwBlockBytes);
            if (!kCluster2)
                ptx::tma_load_2d(sPage + b * kSwBlockBytes, &p.kv_map, b * 64, y, gate(st, b / kGateBlocks));
            else if (static_cast<uint32_t>(b & 1) == rank)
                ptx::tma_load_2d_multicast(sPage + b * kSwBlockBytes, &p.kv_map, b * 64, y, gate(st, b / kGateBlocks), 0x3);
        }
    };
    // Before a stage is refilled (kCluster2): both CTAs are done with it.
    auto wait_stage_free_in_cluster = [&](int st) {
        if (kCluster2) {
            ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, 0));
            ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, 1));
            ptx::mbarrier_wait_parity_cluster(sEmpty + 8 * st, empty_phase[st]);
            empty_phase[st] ^= 1u;
        }
    };

    const int trow[2] = {wwarp * 16 + g, wwarp * 16 + g + 8};
    int qrow[2], qtok[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        qrow[i] = row0 + trow[i];
        qtok[i] = qrow[i] / p.h_q;
    }

    for (int seq = sched.begin_seq; seq <= sched.end_seq; ++seq) {
        const DecodeChunk seq_chunk = decode_chunk(p, sched, seq);
        const int len = seq_chunk.len, blk_begin = seq_chunk.blk_begin, n = seq_chunk.n;
        const int* bt = seq_chunk.bt;

        int last_pos[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) last_pos[i] = (qrow[i] < p.rows_per_seq) ? len - p.s_q + qtok[i] : -1;

        // The previous chunk is finished everywhere: Q, stages, P, row_vals free (in a cluster: in both CTAs,
        // since the other one's first two pages land in this CTA's stages too).
        if (kCluster2) ptx::cluster_sync();
        else __syncthreads();

        float o[kWgOutCols / 2];  // this warpgroup's 64 x 256 half of O
#pragma unroll
        for (int k = 0; k < kWgOutCols / 2; ++k) o[k] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};  // warpgroup 0 only
        float row_sum[2] = {0.f, 0.f};              // warpgroup 0 only

        if (wg == 1) {
            // ======================= values warpgroup =======================
            if (wtid == 0) {
                if (n > 0) issue_page(0, bt, blk_begin);
                if (n > 1) issue_page(1, bt, blk_begin + 1);
            }
            if (n > 0) {
                load_tile_sw128_async<kWgThreads>(
                    sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                    valid_q_rows, wtid);
                ptx::mbarrier_arrive_cp_async(sQFull);
            }
            for (int i = 0; i < n; ++i) {
                const int st = i & 1;
                const uint32_t sPage = sKv + st * kTileBytes;
                ptx::named_bar_sync<kBarPReady, 2 * kWgThreads>();  // P(i), alpha(i) written (and fenced); page i landed
                rescale_rows(o, row_vals[trow[0]], row_vals[trow[1]]);
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
                if (i + 2 < n) {
                    if (st == 0) ptx::named_bar_sync<kBarKvFree0, 2 * kWgThreads>();
                    else ptx::named_bar_sync<kBarKvFree0 + 1, 2 * kWgThreads>();
                    if (wtid == 0) {
                        wait_stage_free_in_cluster(st);
                        issue_page(st, bt, blk_begin + i + 2);
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
                if (i == 0) {
                    ptx::mbarrier_wait_parity(sQFull, q_phase);
                    q_phase ^= 1u;
                    ptx::fence_proxy_async_smem();  // Q: cp.async data (generic proxy) -> wgmma reads
                }
                // TMA data is async-proxy: wgmma reads it after the wait, no fence.
                const uint32_t phase = kv_phase[st];
                kv_phase[st] ^= 1u;
                const int valid_rows = len - blk * kPage;
                // Block gates: S waits block by block, except on a partial page (zeroed below, whole).
                const bool gated = kBlockGates && valid_rows >= kPage;
                if (!gated)
                    for (int g = 0; g < kGates; ++g) ptx::mbarrier_wait_parity(gate(st, g), phase);
                if (valid_rows < kPage) {
                    // The last page of the sequence: rows past the length hold
                    // anything (NaN included). S masks them, but P V would
                    // compute 0 * NaN, so zero their V columns (blocks 0..7).
                    for (int id = wtid; id < (kPage - valid_rows) * (kDimV / 8); id += kWgThreads) {
                        const int row = valid_rows + id / (kDimV / 8);
                        const int chunk = id % (kDimV / 8);
                        ptx::st_shared_v4(sPage + sw128_off(row, chunk), 0u, 0u, 0u, 0u);
                    }
                    ptx::fence_proxy_async_smem();  // zeros (generic) -> wgmma reads of both warpgroups
                    ptx::named_bar_sync<kBarZeroed, kWgThreads>();
                }

                // ---- S = Q K^T, 64 x 64 ----
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                if (kBlockGates) {
                    // One commit group per gate (3 column blocks), each issued after its
                    // gate: the wait sits between groups, never inside one (a wait
                    // between the wgmmas of one group makes ptxas serialise them, C7520).
#pragma unroll
                    for (int g = 0; g < kGates; ++g) {
                        if (gated) ptx::mbarrier_wait_parity(gate(st, g), phase);
                        ptx::wgmma_fence();
#pragma unroll
                        for (int kk = g * kGateBlocks * 4; kk < (g + 1) * kGateBlocks * 4; ++kk) {
                            const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                            ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                    ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                        }
                        ptx::wgmma_commit();
                    }
                } else {
                    ptx::wgmma_fence();
#pragma unroll
                    for (int kk = 0; kk < kQkSteps; ++kk) {
                        const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                        ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                                ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                    }
                    ptx::wgmma_commit();
                }
                if (i > 0) {
                    // P V(i-1) of this warpgroup retired (groups retire in order; S's
                    // 1 or 3 groups may still run): page i-1 is done here.
                    ptx::wgmma_wait<kGates>();
                    ptx::fence_regs(pa);
                    if (i + 1 < n) {
                        if (st == 0) ptx::named_bar_arrive<kBarKvFree0 + 1, 2 * kWgThreads>();
                        else ptx::named_bar_arrive<kBarKvFree0, 2 * kWgThreads>();
                    }
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                ptx::fence_regs(o);

                // ---- mask, scale to log2 units, online softmax, P (registers) ----
                float alpha[2];
                softmax_tile(s, o, pa, row_max, row_sum, alpha, last_pos, blk * kPage + 2 * t, p.scale_log2);
                if (i > 0) ptx::named_bar_sync<kBarPFree, 2 * kWgThreads>();  // wg1 is done with P(i-1)
                store_p_tile(sP, pa, trow, t);
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

        const float inv[2] = {row_vals[trow[0]], row_vals[trow[1]]};
        store_chunk(p, o, seq, seq_chunk.split, seq_chunk.final_out, qrow, qtok, inv, row_sum, row_max, wg, t);
    }
    if (kCluster2) ptx::cluster_sync();  // the other CTA may still reach this one's mbarriers: stay until it is done
}
