// decode_sm90_seesaw.cu -- split-KV MLA decode for Hopper (v16): the
// "seesaw" schedule between two warpgroups that share one 64 x 512 output.
// Correct (every check) but not faster than v15 on the H200 (NOTES.md, v16),
// so it is built into the check harness only (check/decode_variants.cu), as
// the starting point for the next try; the service's module exports v15.
//
// One CTA = one row group (64 query rows) x one scheduler part, 256 threads.
// The fp32 output O (64 x 512) fills the register file once, so it is split
// by columns: warpgroup 0 holds O_L = O[:, 0:256], warpgroup 1 O_R =
// O[:, 256:512]. Pages are taken two at a time, page a in buffer 0 and page
// b in buffer 1, and each warpgroup computes the scores of ONE of them:
//
//   warpgroup 0                              warpgroup 1
//   S_a = Q K_a^T                            S_b = Q K_b^T
//   m_a = max(m, rowmax S_a), P_a            (waits for m_a)
//   O_L = O_L*scale_a + P_a V_a[:, L]        O_R *= scale_a; O_R += P_a V_a[:, R]
//   (waits for m_b)                          m_b = max(m_a, rowmax S_b), P_b
//   O_L = O_L*scale_b + P_b V_b[:, L]        O_R = O_R*scale_b + P_b V_b[:, R]
//
// with one running max m per row shared through shared memory, scale_x =
// exp2(m_old - m_new) passed the same way, and each P passed to the other
// warpgroup as a bf16 tile (the A operand of its P V). So the softmax of one
// page overlaps the other warpgroup's products, and there is always a
// second S in flight: the tensor pipe has work while either warpgroup is on
// its CUDA cores. Each warpgroup keeps a partial row sum of its own P's
// (rescaled with every scale); the two are added at the end of a chunk.
//
// Shared memory (MLA_DECODE_SMEM_BYTES, no more than v15 used):
//   Q tile (72 KB) | buffer 0 (72 KB) | buffer 1 (72 KB) | state (8.5 KB)
// Q and pages are 9 column blocks of 64 x 64 bf16, 128-byte swizzled (the
// layout the TMA boxes write and wgmma reads). V = blocks 0..7 of a page;
// block 8 (the rope columns) is read by S only, so once S of a page is
// done, its P tile (64 x 64 bf16, same layout) is stored over block 8.
//
// Pages arrive by TMA (nine 64 x 64 boxes through MlaDecodeParams.kv_map,
// evict-first in L2), each buffer on two mbarrier gates = the two halves in
// which it is freed, so the next page's copy starts on the part that is
// free and S starts on the half that lands first:
//   buffer 0: lo = blocks 0-3 (freed by warpgroup 0's P_a V_a[:, L]),
//             hi = blocks 4-8 (freed by warpgroup 1's P_a V_a[:, R]; block 8 = P_a)
//   buffer 1: x  = blocks 0-3 + 8 (freed by warpgroup 0's P_b V_b[:, L]; block 8 = P_b),
//             y  = blocks 4-7 (freed by warpgroup 1's P_b V_b[:, R])
// The thread that learns a half is free (its warpgroup's wgmma_wait) issues
// the copy of the page two ahead into it. Q comes by cp.async once per chunk.
// (Asking L2 for the next pair ahead, by TMA prefetch or by the load/store
// units, made it 7-13 % slower: NOTES.md.)
//
// Rows past a sequence's length inside its last page hold anything (NaN
// included); S masks them, but P V would compute 0 * NaN, so the warpgroup
// that owns that page zeroes their V columns before its S (generic stores,
// fence, a warpgroup barrier; the other warpgroup reads the page only after
// the barrier that hands it the P tile).
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace sm90_seesaw {

using namespace mla;

constexpr int kWgThreads = 128;
// Named barriers (0 = __syncthreads). Each is one-way between the two
// warpgroups (128 arrive, 128 sync) and used once per page pair, so no
// arrival can run a phase ahead of its sync (see the loop).
constexpr int kBarScaleA = 1;  // wg0 -> wg1: sM = m_a, sScaleA, P_a in buffer 0 block 8 (page a's V tail zeroed)
constexpr int kBarScaleB = 2;  // wg1 -> wg0: sM = m_b, sScaleB
constexpr int kBarPB = 3;      // wg1 -> wg0: P_b in buffer 1 block 8 (page b's V tail zeroed)
constexpr int kBarZero0 = 4;   // inside warpgroup 0: page a's V tail zeroed
constexpr int kBarZero1 = 5;   // inside warpgroup 1: page b's V tail zeroed

// Column-block sets of the four gates (bit b = block b).
constexpr uint32_t kLo = 0x00Fu, kHi = 0x1F0u;  // buffer 0
constexpr uint32_t kX = 0x10Fu, kY = 0x0F0u;    // buffer 1
constexpr int kGateLo = 0, kGateHi = 1, kGateX = 2, kGateY = 3;

// State area: mbarriers (4 gates + q_full), then per-row floats.
constexpr int kSmemState = kSmemKv + kStages * kTileBytes;  // after buffer 1
constexpr int kStMbar = 0;                                   // 5 x 8 bytes
constexpr int kStM = 64;                                     // float [64]: running max (log2 units)
constexpr int kStScaleA = kStM + 256;                        // float [64]
constexpr int kStScaleB = kStScaleA + 256;                   // float [64]
constexpr int kStRowSum = kStScaleB + 256;                   // float [2][64]: each warpgroup's row sum
constexpr int kStBytes = kStRowSum + 512;
static_assert(kStages == 2, "two page buffers");
static_assert(kSmemState + kStBytes <= MLA_DECODE_SMEM_BYTES, "seesaw state over the ABI's shared-memory size");

__device__ __forceinline__ constexpr int popcount9(uint32_t m) {
    return int(m & 1) + int((m >> 1) & 1) + int((m >> 2) & 1) + int((m >> 3) & 1) + int((m >> 4) & 1) +
           int((m >> 5) & 1) + int((m >> 6) & 1) + int((m >> 7) & 1) + int((m >> 8) & 1);
}

// Issues the blocks of `kMask` of page `page` (a pool page index) into the
// buffer at sBuf, counted on `bar`. One thread.
template <uint32_t kMask>
__device__ __forceinline__ void issue_blocks(const MlaDecodeParams& p, uint32_t sBuf, uint32_t bar, int page,
                                             uint64_t policy) {
    const int y = p.kv_map_row0 + page * kPage;
    ptx::mbarrier_arrive_expect_tx(bar, popcount9(kMask) * kSwBlockBytes);
#pragma unroll
    for (int b = 0; b < kSwBlocks; ++b)
        if ((kMask >> b) & 1u) ptx::tma_load_2d_hint(sBuf + b * kSwBlockBytes, &p.kv_map, b * 64, y, bar, policy);
}

// S += Q K^T over the column blocks of kMask (4 k-steps each), one commit group.
template <uint32_t kMask>
__device__ __forceinline__ void issue_scores(float (&s)[kPage / 2], uint32_t sQ, uint32_t sBuf, bool first) {
    ptx::wgmma_fence();
    bool acc = !first;
#pragma unroll
    for (int b = 0; b < kSwBlocks; ++b) {
        if (!((kMask >> b) & 1u)) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t koff = b * kSwBlockBytes + k * 32;
            ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                    ptx::wgmma_desc_sw128(sBuf + koff, 16, kSwAtomBytes), acc ? 1 : 0);
            acc = true;
        }
    }
    ptx::wgmma_commit();
}

// O_half += P V[:, half], P from registers (A fragments), V = blocks 4*half .. +3 of the buffer.
__device__ __forceinline__ void issue_pv_regs(float (&o)[kWgOutCols / 2], const uint32_t (&pa)[kPage / 4],
                                              uint32_t sBuf, int half) {
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPvSteps; ++kk) {
        const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
        ptx::wgmma_m64n256k16_rs_tb(
            o, a, ptx::wgmma_desc_sw128(sBuf + half * 4 * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes),
            1);
    }
    ptx::wgmma_commit();
}

// O_half += P V[:, half], P = the bf16 tile in the buffer's block 8.
__device__ __forceinline__ void issue_pv_smem(float (&o)[kWgOutCols / 2], uint32_t sBuf, int half) {
    ptx::wgmma_fence();
    const uint32_t sP = sBuf + 8 * kSwBlockBytes;
#pragma unroll
    for (int kk = 0; kk < kPvSteps; ++kk)
        ptx::wgmma_m64n256k16_ss_tb(
            o, ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes),
            ptx::wgmma_desc_sw128(sBuf + half * 4 * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes), 1);
    ptx::wgmma_commit();
}

// Zeroes the V columns (blocks 0..7) of rows valid_rows..63 of the page in
// sBuf, fences them for the async proxy and syncs the warpgroup.
template <int kBar>
__device__ __forceinline__ void zero_v_tail(uint32_t sBuf, int valid_rows, int wtid) {
    for (int id = wtid; id < (kPage - valid_rows) * (kDimV / 8); id += kWgThreads) {
        const int row = valid_rows + id / (kDimV / 8);
        const int chunk = id % (kDimV / 8);
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(sBuf + sw128_off(row, chunk)), "r"(0u)
                     : "memory");
    }
    ptx::fence_proxy_async_smem();
    ptx::named_bar_sync<kBar, kWgThreads>();
}

// Scales S to log2 units and masks positions a row may not see (-inf);
// returns the row maxima of this thread's two rows over the quad.
__device__ __forceinline__ void mask_rowmax(float (&s)[kPage / 2], int pos0, const int (&last_pos)[2], float scale_log2,
                                            float (&tile_max)[2]) {
    tile_max[0] = tile_max[1] = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPage / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const int pos = pos0 + j * 8 + (e & 1);
            const float x = (pos <= last_pos[r]) ? s[4 * j + e] * scale_log2 : -INFINITY;
            s[4 * j + e] = x;
            tile_max[r] = fmaxf(tile_max[r], x);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    }
}

// P = exp2(S - base) into bf16 A fragments; adds this thread's part of each row sum.
__device__ __forceinline__ void exp_pack(const float (&s)[kPage / 2], const float (&base)[2], float (&row_sum)[2],
                                         uint32_t (&pa)[kPage / 4]) {
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
}

// Stores the P fragments as the bf16 64 x 64 tile over block 8 of the buffer
// (the A operand of the other warpgroup's P V) and fences it.
__device__ __forceinline__ void store_p(const uint32_t (&pa)[kPage / 4], uint32_t sBuf, const int (&trow)[2], int t) {
    const uint32_t sP = sBuf + 8 * kSwBlockBytes;
#pragma unroll
    for (int j = 0; j < kPage / 8; ++j) {
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[0], j) + 4 * t), "r"(pa[2 * j]) : "memory");
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sP + sw128_off(trow[1], j) + 4 * t), "r"(pa[2 * j + 1])
                     : "memory");
    }
    ptx::fence_proxy_async_smem();
}

// O rows *= f (this thread's two rows), skipped when no row of the warp changes.
__device__ __forceinline__ void rescale(float (&o)[kWgOutCols / 2], const float (&f)[2]) {
    if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f)) {
#pragma unroll
        for (int j = 0; j < kWgOutCols / 8; ++j) {
            o[4 * j + 0] *= f[0];
            o[4 * j + 1] *= f[0];
            o[4 * j + 2] *= f[1];
            o[4 * j + 3] *= f[1];
        }
    }
}

}  // namespace sm90_seesaw

__device__ __forceinline__ void decode_sm90_seesaw_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_seesaw;
    extern __shared__ __align__(1024) uint8_t smem_seesaw[];
    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int wtid = tid & 127;
    const int wwarp = (tid >> 5) & 3;
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const int* meta = p.sched_meta + blockIdx.y * MLA_SCHED_INTS;
    const int begin_seq = meta[MLA_SCHED_BEGIN_SEQ], begin_block = meta[MLA_SCHED_BEGIN_BLOCK];
    const int end_seq = meta[MLA_SCHED_END_SEQ], end_block = meta[MLA_SCHED_END_BLOCK];
    const int begin_split = meta[MLA_SCHED_BEGIN_SPLIT];

    const int row0 = blockIdx.x * kRows;
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);

    const uint32_t sQ = ptx::smem_addr(smem_seesaw + kSmemQ);
    const uint32_t sBuf0 = ptx::smem_addr(smem_seesaw + kSmemKv);
    const uint32_t sBuf1 = sBuf0 + kTileBytes;
    const uint32_t sMbar = ptx::smem_addr(smem_seesaw + kSmemState + kStMbar);
    auto gate = [&](int k) { return sMbar + 8 * k; };
    const uint32_t sQFull = sMbar + 8 * 4;
    float* sM = reinterpret_cast<float*>(smem_seesaw + kSmemState + kStM);
    float* sScaleA = reinterpret_cast<float*>(smem_seesaw + kSmemState + kStScaleA);
    float* sScaleB = reinterpret_cast<float*>(smem_seesaw + kSmemState + kStScaleB);
    float* sRowSum = reinterpret_cast<float*>(smem_seesaw + kSmemState + kStRowSum);
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
        for (int k = 0; k < 4; ++k) ptx::mbarrier_init(gate(k), 1);  // one expect_tx arrival + its bytes
        ptx::mbarrier_init(sQFull, kDecodeThreads);                  // every thread's cp.async arrival (.noinc)
        ptx::fence_mbarrier_init();
        ptx::prefetch_tensormap(&p.kv_map);
    }
    __syncthreads();
    const uint64_t policy = ptx::l2_policy_evict_first();
    uint32_t buf_phase = 0u;  // parity of the next phase of this warpgroup's buffer (wg0: buffer 0, wg1: buffer 1)
    uint32_t q_phase = 0u;

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

        __syncthreads();  // the previous chunk is finished everywhere: Q, buffers, state free
        if (tid == 0 && n > 0) {
            issue_blocks<kLo>(p, sBuf0, gate(kGateLo), bt[blk_begin], policy);
            issue_blocks<kHi>(p, sBuf0, gate(kGateHi), bt[blk_begin], policy);
            if (n > 1) {
                issue_blocks<kX>(p, sBuf1, gate(kGateX), bt[blk_begin + 1], policy);
                issue_blocks<kY>(p, sBuf1, gate(kGateY), bt[blk_begin + 1], policy);
            }
        }
        if (n > 0) {
            load_tile_sw128_async<kDecodeThreads>(
                sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                valid_q_rows, tid);
            ptx::mbarrier_arrive_cp_async(sQFull);
        }

        float o[kWgOutCols / 2];  // this warpgroup's 64 x 256 half of O
#pragma unroll
        for (int k = 0; k < kWgOutCols / 2; ++k) o[k] = 0.f;
        float row_sum[2] = {0.f, 0.f};  // this warpgroup's part (its own pages), scaled to the current max
        uint32_t pf[kPage / 4];         // P of this warpgroup's page as A fragments (kept until its P V retires)
#pragma unroll
        for (int k = 0; k < kPage / 4; ++k) pf[k] = 0u;

        // Each warpgroup runs its own loop over the page pairs: ptxas tracks which
        // accumulators have a wgmma in flight along the control flow, and one loop
        // around both roles would carry warpgroup 0's P_b V_b[:, L] (in flight
        // across its back-edge) into warpgroup 1's code (C7514: every wgmma serialised).
        if (wg == 0) {
            for (int it = 0; 2 * it < n; ++it) {
                const int ia = 2 * it, ib = ia + 1;
                const bool has_b = ib < n;
                if (it == 0) {
                    ptx::mbarrier_wait_parity(sQFull, q_phase);
                    q_phase ^= 1u;
                    ptx::fence_proxy_async_smem();  // Q: cp.async data (generic proxy) -> wgmma reads
                }
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                // ============================ warpgroup 0: page a ============================
                const int blk = blk_begin + ia;
                const int valid_rows = len - blk * kPage;
                if (valid_rows < kPage) {
                    ptx::mbarrier_wait_parity(gate(kGateLo), buf_phase);
                    ptx::mbarrier_wait_parity(gate(kGateHi), buf_phase);
                    zero_v_tail<kBarZero0>(sBuf0, valid_rows, wtid);
                }
                ptx::fence_regs(s);
                ptx::mbarrier_wait_parity(gate(kGateLo), buf_phase);
                issue_scores<kLo>(s, sQ, sBuf0, true);
                ptx::mbarrier_wait_parity(gate(kGateHi), buf_phase);
                issue_scores<kHi>(s, sQ, sBuf0, false);
                buf_phase ^= 1u;
                if (it > 0) {
                    // P_b V_b[:, L] of the previous pair retired (groups retire in order; S's two
                    // may still run): buffer 1's x half is free for this pair's page b.
                    ptx::wgmma_wait<2>();
                    if (has_b && wtid == 0) issue_blocks<kX>(p, sBuf1, gate(kGateX), bt[blk_begin + ib], policy);
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                ptx::fence_regs(o);

                float tile_max[2];
                mask_rowmax(s, blk * kPage + 2 * t, last_pos, p.scale_log2, tile_max);
                float base[2], scale_a[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float m_old = (it == 0) ? -INFINITY : sM[trow[r]];
                    const float m_new = fmaxf(m_old, tile_max[r]);
                    base[r] = (m_new == -INFINITY) ? 0.f : m_new;  // a row that saw nothing: exp2 -> 0, not NaN
                    scale_a[r] = ptx::exp2_approx(m_old - base[r]);
                    tile_max[r] = m_new;
                    row_sum[r] *= scale_a[r];
                }
                __syncwarp();  // the quad's reads of sM are done before lane t == 0 writes
                if (t == 0) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        sM[trow[r]] = tile_max[r];
                        sScaleA[trow[r]] = scale_a[r];
                    }
                }
                rescale(o, scale_a);
                exp_pack(s, base, row_sum, pf);
                store_p(pf, sBuf0, trow, t);
                ptx::named_bar_arrive<kBarScaleA, 2 * kWgThreads>();  // m_a, scale_a, P_a for warpgroup 1

                ptx::fence_regs(o);
                issue_pv_regs(o, pf, sBuf0, 0);  // O_L += P_a V_a[:, L]

                ptx::named_bar_sync<kBarScaleB, 2 * kWgThreads>();  // warpgroup 1 published m_b, scale_b
                float scale_b[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) scale_b[r] = sScaleB[trow[r]];
                ptx::wgmma_wait<0>();  // P_a V_a[:, L] retired: buffer 0's lo half is free
                ptx::fence_regs(o);
                ptx::fence_regs(pf);
                if (ia + 2 < n && wtid == 0) issue_blocks<kLo>(p, sBuf0, gate(kGateLo), bt[blk + 2], policy);
                if (has_b) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) row_sum[r] *= scale_b[r];
                    rescale(o, scale_b);
                    ptx::named_bar_sync<kBarPB, 2 * kWgThreads>();  // P_b in buffer 1 block 8
                    ptx::fence_regs(o);
                    issue_pv_smem(o, sBuf1, 0);  // O_L += P_b V_b[:, L], left in flight
                }
            }
            ptx::wgmma_wait<0>();
        } else {
            for (int it = 0; 2 * it < n; ++it) {
                const int ia = 2 * it, ib = ia + 1;
                const bool has_b = ib < n;
                if (it == 0) {
                    ptx::mbarrier_wait_parity(sQFull, q_phase);
                    q_phase ^= 1u;
                    ptx::fence_proxy_async_smem();  // Q: cp.async data (generic proxy) -> wgmma reads
                }
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                // ============================ warpgroup 1: page b ============================
                const int blk = blk_begin + ib;
                float tile_max[2] = {-INFINITY, -INFINITY};
                if (has_b) {
                    const int valid_rows = len - blk * kPage;
                    if (valid_rows < kPage) {
                        ptx::mbarrier_wait_parity(gate(kGateX), buf_phase);
                        ptx::mbarrier_wait_parity(gate(kGateY), buf_phase);
                        zero_v_tail<kBarZero1>(sBuf1, valid_rows, wtid);
                    }
                    ptx::fence_regs(s);
                    ptx::mbarrier_wait_parity(gate(kGateX), buf_phase);
                    issue_scores<kX>(s, sQ, sBuf1, true);
                    ptx::mbarrier_wait_parity(gate(kGateY), buf_phase);
                    issue_scores<kY>(s, sQ, sBuf1, false);
                    buf_phase ^= 1u;
                }
                ptx::named_bar_sync<kBarScaleA, 2 * kWgThreads>();  // m_a, scale_a, P_a from warpgroup 0
                float m_a[2], scale_a[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    m_a[r] = sM[trow[r]];
                    scale_a[r] = sScaleA[trow[r]];
                    row_sum[r] *= scale_a[r];
                }
                // S_b retires before O_R is touched (no wgmma of this warpgroup in flight while
                // its accumulators are rescaled). It costs nothing: P_a V_a[:, L], which
                // warpgroup 0 issues as it publishes m_a, takes the tensor pipe after S_b anyway.
                // Unconditional (a no-op without S_b): ptxas follows both branches of each
                // `if (has_b)` independently and would see S_b in flight below otherwise.
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                rescale(o, scale_a);
                ptx::fence_regs(o);
                issue_pv_smem(o, sBuf0, 1);  // O_R += P_a V_a[:, R], runs during the softmax of b

                float scale_b[2] = {1.f, 1.f};
                if (has_b) {
                    mask_rowmax(s, blk * kPage + 2 * t, last_pos, p.scale_log2, tile_max);
                    float base[2];
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const float m_new = fmaxf(m_a[r], tile_max[r]);
                        base[r] = (m_new == -INFINITY) ? 0.f : m_new;
                        scale_b[r] = ptx::exp2_approx(m_a[r] - base[r]);
                        tile_max[r] = m_new;
                        row_sum[r] *= scale_b[r];
                    }
                    if (t == 0) {
#pragma unroll
                        for (int r = 0; r < 2; ++r) {
                            sM[trow[r]] = tile_max[r];
                            sScaleB[trow[r]] = scale_b[r];
                        }
                    }
                    ptx::named_bar_arrive<kBarScaleB, 2 * kWgThreads>();
                    exp_pack(s, base, row_sum, pf);
                    store_p(pf, sBuf1, trow, t);
                    ptx::named_bar_arrive<kBarPB, 2 * kWgThreads>();
                } else {
                    if (t == 0) {
#pragma unroll
                        for (int r = 0; r < 2; ++r) sScaleB[trow[r]] = 1.f;  // sM stays m_a
                    }
                    ptx::named_bar_arrive<kBarScaleB, 2 * kWgThreads>();
                }
                ptx::wgmma_wait<0>();  // P_a V_a[:, R] retired: buffer 0's hi half is free
                ptx::fence_regs(o);
                if (ia + 2 < n && wtid == 0) issue_blocks<kHi>(p, sBuf0, gate(kGateHi), bt[blk_begin + ia + 2], policy);
                if (has_b) {
                    rescale(o, scale_b);
                    ptx::fence_regs(o);
                    issue_pv_regs(o, pf, sBuf1, 1);  // O_R += P_b V_b[:, R]
                    ptx::wgmma_wait<0>();            // retired: buffer 1's y half is free
                    ptx::fence_regs(o);
                    ptx::fence_regs(pf);
                    if (ib + 2 < n && wtid == 0) issue_blocks<kY>(p, sBuf1, gate(kGateY), bt[blk + 2], policy);
                }
            }
            ptx::wgmma_wait<0>();
        }

        ptx::fence_regs(o);
        ptx::fence_regs(pf);

        // ---- finish the chunk: total row sums, both warpgroups store their half ----
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
            row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
        }
        if (t == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) sRowSum[wg * kRows + trow[r]] = row_sum[r];
        }
        __syncthreads();  // both warpgroups' products retired; row sums and the final max published

        const bool final_out = (n_split == 1);
        const int split = split_base + split_local;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qr = qrow[r];
            if (qr >= p.rows_per_seq) continue;
            const float sum = sRowSum[trow[r]] + sRowSum[kRows + trow[r]];
            const float inv = (sum > 0.f) ? 1.f / sum : 0.f;
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
                const float lse = (sum > 0.f) ? (sM[trow[r]] + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
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
