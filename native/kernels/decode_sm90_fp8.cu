// decode_sm90_fp8.cu -- split-KV MLA decode for Hopper over the FP8 KV cache
// (mla_params.h, "FP8 KV cache"), first version (fp8 v1): the body, included
// by the exported kernel (decode_fp8_export.cu) and the v3 candidate.
//
// Same launch, scheduler, warpgroup roles, softmax and output as the bf16
// kernel (decode_sm90_tma.cu); what changes is how a page reaches the
// tensor cores. The products stay bf16 x bf16 -> fp32, so every page is
// dequantized into shared memory first:
//   - one thread of warpgroup 1 brings the raw FP8 tokens in with 1-D bulk
//     copies (cp.async.bulk), in units of half a page (32 tokens, 20,992
//     contiguous bytes), into a ring of three unit slots, each with its
//     mbarrier (expect_tx); the ring runs one and a half pages ahead;
//   - all 256 threads dequantize page i (both of its units) into ONE bf16
//     page buffer in the 128-byte-swizzled layout wgmma reads (8-byte code
//     loads, fp32 scale, bf16 stores; rows past the sequence's length are
//     written as zeros, so no NaN reaches P V), fence the generic writes for
//     the async proxy, and meet at a CTA barrier;
//   - warpgroup 0 computes S = Q K^T and the softmax, hands P and alpha to
//     warpgroup 1 and both run P V on their half of O; a CTA barrier frees
//     the page buffer for the next dequantization.
// Shared memory: Q tile 72 KB + bf16 page 72 KB + P tile 8 KB + 512 B +
// raw ring 61.5 KB = 214 KB. There is no room for a second bf16 page beside
// Q, so dequantization and products alternate instead of overlapping: the
// price of v1's simplicity (NOTES.md, fp8 v1).
#pragma once
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"
#include "fp8_kv.cuh"
#include "decode_sm90_softmax.cuh"
#include "decode_chunk.cuh"

namespace sm90_fp8 {

using namespace mla;

constexpr int kUnitTokens = kPage / 2;                        // 32 tokens: one bulk copy
constexpr int kUnitBytes = kUnitTokens * kFp8TokenBytes;      // 20992
constexpr int kRawSlots = 3;
constexpr int kOffQ = 0;
constexpr int kOffPage = kTileBytes;                            // the dequantized page (bf16, swizzled)
constexpr int kOffP = 2 * kTileBytes;                        // P tile, bf16 64 x 64
constexpr int kOffRed = kOffP + kRows * kPage * 2;          // mbarriers + [64] row factors
constexpr int kOffRaw = kOffRed + 512;                      // raw unit ring
constexpr int kSmemUsed = kOffRaw + kRawSlots * kUnitBytes; // 219136
static_assert(MLA_DECODE_FP8_SMEM_BYTES == MLA_DECODE_SMEM_BYTES, "launched with the bf16 kernel's dynamic shared memory");
static_assert(kSmemUsed <= MLA_DECODE_FP8_SMEM_BYTES, "the layout fits the launch's dynamic shared memory");
static_assert(kUnitBytes % 16 == 0 && kOffRaw % 16 == 0, "bulk copies move 16-byte multiples to 16-byte addresses");
constexpr int kRedMbar = 0, kRedRowVals = 192;
constexpr int kBarPReady = 1;
constexpr int kWgThreads = 128;
constexpr int kChunksPerToken = kRowChunks;                   // 72 output chunks of 8 bf16 a token
constexpr int kDequantPerThread = kPage * kChunksPerToken / kDecodeThreads;  // 18
static_assert(kPage * kChunksPerToken % kDecodeThreads == 0, "dequantization splits evenly over the CTA");

}  // namespace sm90_fp8

// The body for rows_per_seq of any size (CTAs of 64 query rows), launched
// as flashmla_decode_splitkv_fp8 (decode_fp8_export.cu); the v3 candidate
// (decode_narrow_candidates.cu) runs it for more than 32 rows.
// kFastDequant: fp8_dequant8_fast instead of fp8_dequant8 (fp8 v3's wide path).
template <bool kFastDequant = false>
__device__ __forceinline__ void decode_sm90_fp8_wide_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_fp8;
    MLA_DYNAMIC_SMEM(smem_fp8);
    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int wtid = tid & 127;
    const int wwarp = (tid >> 5) & 3;
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const DecodePart sched = decode_part(p);

    const int row0 = blockIdx.x * kRows;
    const int valid_q_rows = min(kRows, p.rows_per_seq - row0);

    const uint32_t sQ = ptx::smem_addr(smem_fp8 + kOffQ);
    const uint32_t sK = ptx::smem_addr(smem_fp8 + kOffPage);
    const uint32_t sP = ptx::smem_addr(smem_fp8 + kOffP);
    const uint32_t sRaw = ptx::smem_addr(smem_fp8 + kOffRaw);
    const uint32_t sMbar = ptx::smem_addr(smem_fp8 + kOffRed + kRedMbar);  // raw_full[3], then q_full
    const uint32_t sQFull = sMbar + 8 * kRawSlots;
    float* row_vals = reinterpret_cast<float*>(smem_fp8 + kOffRed + kRedRowVals);
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
        for (int s = 0; s < kRawSlots; ++s) ptx::mbarrier_init(sMbar + 8 * s, 1);
        ptx::mbarrier_init(sQFull, kWgThreads);
        ptx::fence_mbarrier_init();
    }
    __syncthreads();
    const uint8_t* pool = static_cast<const uint8_t*>(p.kv_pool);
    // Units (half pages) counted over the whole CTA's run, so the ring's slot
    // (unit % 3) and mbarrier parity ((unit / 3) & 1) carry across chunks.
    uint32_t unit_base = 0;
    uint32_t q_phase = 0u;

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
        const int units = 2 * n;
        // Unit u of this chunk (half u & 1 of page u / 2) into its ring slot; one thread.
        auto issue_unit = [&](int u) {
            const uint32_t gu = unit_base + u;
            const uint32_t bar = sMbar + 8 * (gu % kRawSlots);
            ptx::mbarrier_arrive_expect_tx(bar, kUnitBytes);
            ptx::bulk_load(sRaw + (gu % kRawSlots) * kUnitBytes,
                           pool + static_cast<size_t>(bt[blk_begin + (u >> 1)]) * kFp8PageBytes + (u & 1) * kUnitBytes,
                           kUnitBytes, bar);
        };

        int last_pos[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) last_pos[i] = (qrow[i] < p.rows_per_seq) ? len - p.s_q + qtok[i] : -1;

        __syncthreads();  // the previous chunk is finished everywhere: Q, ring, page, P, row_vals free

        float o[kWgOutCols / 2];
#pragma unroll
        for (int k = 0; k < kWgOutCols / 2; ++k) o[k] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};
        float row_sum[2] = {0.f, 0.f};
        uint32_t pa[kPage / 4];
#pragma unroll
        for (int k = 0; k < kPage / 4; ++k) pa[k] = 0u;

        if (tid == kWgThreads)
            for (int u = 0; u < min(kRawSlots, units); ++u) issue_unit(u);
        if (wg == 1 && n > 0) {
            load_tile_sw128_async<kWgThreads>(
                sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                valid_q_rows, wtid);
            ptx::mbarrier_arrive_cp_async(sQFull);
        }

        for (int i = 0; i < n; ++i) {
            const int blk = blk_begin + i;
            const int valid_rows = min(len - blk * kPage, kPage);
            // ---- dequantize page i (units 2i, 2i+1) into the bf16 page: all threads ----
            const uint32_t u0 = unit_base + 2 * i;
            ptx::mbarrier_wait_parity(sMbar + 8 * (u0 % kRawSlots), (u0 / kRawSlots) & 1u);
            ptx::mbarrier_wait_parity(sMbar + 8 * ((u0 + 1) % kRawSlots), ((u0 + 1) / kRawSlots) & 1u);
#pragma unroll 6
            for (int k = 0; k < kDequantPerThread; ++k) {
                const int id = tid + k * kDecodeThreads;
                const int tok = id / kChunksPerToken;
                const int c = id - tok * kChunksPerToken;
                const uint32_t src = sRaw + ((u0 + (tok >> 5)) % kRawSlots) * kUnitBytes + (tok & 31) * kFp8TokenBytes;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (tok < valid_rows) {
                    if (c < kDimV / 8) {
                        uint2 codes;
                        float scale;
                        codes = ptx::ld_shared_v2(src + 8 * c);
                        scale = ptx::ld_shared_f32(src + kFp8ScaleOffset + 4 * (c >> 4));
                        v = kFastDequant ? fp8_dequant8_fast(codes, scale) : fp8_dequant8(codes, scale);
                    } else {
                        v = ptx::ld_shared_v4(src + kFp8RopeOffset + 16 * (c - kDimV / 8));
                    }
                }
                ptx::st_shared_v4(sK + sw128_off(tok, c), v.x, v.y, v.z, v.w);
            }
            ptx::fence_proxy_async_smem();  // the page (generic stores) -> wgmma reads
            __syncthreads();                // page ready; units 2i, 2i+1 read by every thread
            if (tid == kWgThreads) {
                if (2 * i + 3 < units) issue_unit(2 * i + 3);
                if (2 * i + 4 < units) issue_unit(2 * i + 4);
            }

            if (wg == 0) {
                if (i == 0) {
                    ptx::mbarrier_wait_parity(sQFull, q_phase);
                    q_phase ^= 1u;
                    ptx::fence_proxy_async_smem();
                }
                float s[kPage / 2];
#pragma unroll
                for (int k = 0; k < kPage / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kQkSteps; ++kk) {
                    const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
                    ptx::wgmma_m64n64k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                            ptx::wgmma_desc_sw128(sK + koff, 16, kSwAtomBytes), kk > 0 ? 1 : 0);
                }
                ptx::wgmma_commit();
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                ptx::fence_regs(o);
                float alpha[2];
                softmax_tile(s, o, pa, row_max, row_sum, alpha, last_pos, blk * kPage + 2 * t, p.scale_log2);
                store_p_tile(sP, pa, trow, t);
                if (t == 0) {
                    row_vals[trow[0]] = alpha[0];
                    row_vals[trow[1]] = alpha[1];
                }
                ptx::fence_proxy_async_smem();  // P -> wg1's wgmma reads
                ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kPvSteps; ++kk) {
                    const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
                    ptx::wgmma_m64n256k16_rs_tb(
                        o, a, ptx::wgmma_desc_sw128(sK + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes), 1);
                }
                ptx::wgmma_commit();
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
                ptx::fence_regs(pa);
            } else {
                ptx::named_bar_sync<kBarPReady, 2 * kWgThreads>();  // P(i), alpha(i) written and fenced
                rescale_rows(o, row_vals[trow[0]], row_vals[trow[1]]);
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kPvSteps; ++kk) {
                    const uint64_t da = ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes);
                    const uint64_t db = ptx::wgmma_desc_sw128(
                        sK + (kWgOutCols / 64) * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes);
                    ptx::wgmma_m64n256k16_ss_tb(o, da, db, 1);
                }
                ptx::wgmma_commit();
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
            }
            __syncthreads();  // P V(i) retired in both warpgroups: the page, P and row_vals are free
        }
        unit_base += units;
        if (wg == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
                row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
            }
        }

        // ---- finish the chunk: wg0 publishes 1/rowsum, both store their half ----
        __syncthreads();
        if (wg == 0 && t == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) row_vals[trow[r]] = (row_sum[r] > 0.f) ? 1.f / row_sum[r] : 0.f;
        }
        __syncthreads();
        const float inv[2] = {row_vals[trow[0]], row_vals[trow[1]]};
        store_chunk(p, o, seq, seq_chunk.split, seq_chunk.final_out, qrow, qtok, inv, row_sum, row_max, wg, t);
    }
}
