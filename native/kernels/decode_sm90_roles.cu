// decode_sm90_roles.cu -- split-KV MLA decode for Hopper, warpgroups with
// different jobs (v5).
//
// Tile shapes: as v3 (removed; NOTES.md) (one row group of 64 query rows per CTA,
// 128-byte-swizzled Q tile and pages, sw128_tile.cuh), but the two
// warpgroups split the work by role instead of by columns of S:
//   warpgroup 0, "scores": S = Q K^T, the whole 64 x 64 (36 wgmma m64n64k16,
//     A = Q, B = K from shared memory), the online softmax (a quad holds a
//     whole row: no cross-warpgroup max exchange), P kept in registers as the
//     A operand of O[:, 0:256] += P V[:, 0:256] (4 wgmma m64n256k16, A from
//     registers), and P (bf16) + the rescale factors written to shared memory.
//   warpgroup 1, "values": the page copies (cp.async by its 128 threads,
//     completion on an mbarrier per stage), and O[:, 256:512] += P V[:, 256:]
//     (4 wgmma m64n256k16, A = P from shared memory) after rescaling its half.
// So the tensor pipe runs S of page j+1 while the value warpgroup's P V of
// page j is queued, and warpgroup 1's 128 accumulator registers never wait
// on a softmax of their own.
// Pipeline depth: 2 page stages (Q + 2 pages + P = 224 KB). Page j+2 is
// copied into page j's stage once warpgroup 0 has retired S(j) and its
// P V(j) (it learns the latter from wgmma.wait_group 1 after issuing S(j+1))
// and warpgroup 1 its own P V(j).
//
// Synchronisation inside a chunk (arrive = one-way signal, sync = wait):
//   kv_full[s]  mbarrier, 128 cp.async arrivals (.noinc) per page copied into
//               stage s; warpgroup 0 waits with the stage's phase parity.
//   P_READY     named barrier: wg0 arrives after writing P(j) and alpha(j),
//               wg1 syncs before its rescale and P V(j).
//   P_FREE      wg1 arrives after its P V(j) retired (if a page j+1 follows),
//               wg0 syncs before writing P(j+1).
//   KV_FREE[s]  wg0 arrives when it is done with page j (if page j+2
//               exists), wg1 syncs before copying page j+2 into stage s.
// Every arrive has exactly one matching sync in the same chunk, so nothing
// carries over; chunk boundaries are full __syncthreads().
//
// Masking: as v3 (rows past the length zero-filled by the copy,
// invisible scores set to -inf before exp2).
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"

namespace sm90_roles {

using namespace mla;

constexpr int kBarPReady = 1, kBarPFree = 2, kBarKvFree0 = 3;  // named barriers (0 = __syncthreads)
constexpr int kWgThreads = 128;
// red area (kSmemRed, 512 bytes): two mbarriers, then 64 floats of alpha
// (per page) or 1/rowsum (at the end of a chunk).
constexpr int kRedMbar = 0, kRedRowVals = 64;
static_assert(kRedRowVals + kRows * 4 <= kWarpGroups * kRows * 4, "red area too small");

__device__ __forceinline__ const __nv_bfloat16* page_ptr(const MlaDecodeParams& p, const int* bt, int blk) {
    const size_t page = static_cast<size_t>(bt[blk]);
    return static_cast<const __nv_bfloat16*>(p.kv_pool) + page * (kPage * kDimK);
}

}  // namespace sm90_roles

__device__ __forceinline__ void decode_sm90_roles_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_roles;
    extern __shared__ __align__(1024) uint8_t smem_roles[];
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

    const uint32_t sQ = ptx::smem_addr(smem_roles + kSmemQ);
    const uint32_t sKv = ptx::smem_addr(smem_roles + kSmemKv);
    const uint32_t sP = ptx::smem_addr(smem_roles + kSmemP);
    const uint32_t sMbar = ptx::smem_addr(smem_roles + kSmemRed + kRedMbar);  // kv_full[2], 8 bytes each
    float* row_vals = reinterpret_cast<float*>(smem_roles + kSmemRed + kRedRowVals);  // [64]
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
        ptx::mbarrier_init(sMbar, kWgThreads);
        ptx::mbarrier_init(sMbar + 8, kWgThreads);
    }
    __syncthreads();
    uint32_t kv_phase[2] = {0u, 0u};  // warpgroup 0: parity of the next phase to wait for, per stage

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
                load_tile_sw128_async<kWgThreads>(sKv, sm90_roles::page_ptr(p, bt, blk_begin),
                                                  min(kPage, len - blk_begin * kPage), wtid);
                ptx::mbarrier_arrive_cp_async(sMbar);
            }
            if (n > 1) {
                load_tile_sw128_async<kWgThreads>(sKv + kTileBytes, sm90_roles::page_ptr(p, bt, blk_begin + 1),
                                                  min(kPage, len - (blk_begin + 1) * kPage), wtid);
                ptx::mbarrier_arrive_cp_async(sMbar + 8);
            }
            for (int i = 0; i < n; ++i) {
                const int st = i & 1;
                const uint32_t sPage = sKv + st * kTileBytes;
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
                if (i + 2 < n) {
                    if (st == 0) ptx::named_bar_sync<kBarKvFree0, 2 * kWgThreads>();
                    else ptx::named_bar_sync<kBarKvFree0 + 1, 2 * kWgThreads>();
                    load_tile_sw128_async<kWgThreads>(sPage, sm90_roles::page_ptr(p, bt, blk_begin + i + 2),
                                                      min(kPage, len - (blk_begin + i + 2) * kPage), wtid);
                    ptx::mbarrier_arrive_cp_async(sMbar + 8 * st);
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
                ptx::mbarrier_wait_parity(sMbar + 8 * st, kv_phase[st]);
                kv_phase[st] ^= 1u;
                ptx::fence_proxy_async_smem();  // cp.async data (generic proxy) -> wgmma reads

                // ---- S = Q K^T, 64 x 64 ----
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kQkSteps; ++kk) {
                    const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                    ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                            ptx::wgmma_desc_sw128(sPage + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                }
                ptx::wgmma_commit();
                if (i > 0) {
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
    flashmla_decode_v5_wgmma_roles(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_roles_body(p);
}
