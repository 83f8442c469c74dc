// decode_sm90_fp8_v2.cu -- FP8 decode, v2 (harness candidate): half-page
// steps so that dequantization overlaps the tensor cores.
//
// v1 (decode_sm90_fp8.cu) has room for one bf16 page beside Q, so it
// dequantizes a page, then multiplies it, in turn: 583 us at b128 s_k 8192
// h_q 16 against the bf16 kernel's 309 (NOTES.md, fp8 v1). v2 splits the same
// 72 KB into two HALF-page buffers (32 tokens x 576 bf16, 36 KB each) and
// walks the chunk in steps of 32 tokens: while the tensor cores run step j on
// one buffer, the threads of both warpgroups dequantize step j+1 into the
// other (wgmma is asynchronous: issue, dequantize, then wait).
//
// Per step j (buffer b = j & 1), warpgroup 0:
//   sync H_READY[b] (step j dequantized); issue S(j) = Q K^T (m64n32);
//   wait for P V0(j-1); sync H_FREE (warpgroup 1's P V1(j-1) retired); its
//   share of step j+1 into buffer b^1; wait S(j); softmax; P and alpha to
//   shared memory; arrive P_READY; issue P V0(j) (P from registers).
// Warpgroup 1:
//   sync P_READY; rescale; issue P V1(j) (P from shared memory); its share of
//   step j+1 into buffer b^1, arrive H_READY[b^1]; wait P V1(j); arrive H_FREE.
// Raw FP8 halves come in by 1-D bulk copies into a ring of three, issued by
// thread 0 three steps ahead, as in v1.
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"
#include "fp8_kv.cuh"
#include "decode_sm90_softmax.cuh"

namespace sm90_fp8_v2 {

using namespace mla;

constexpr int kStepTokens = kPage / 2;                        // 32: a step, a bulk copy, a buffer
constexpr int kUnitBytes = kStepTokens * kFp8TokenBytes;      // 20992
constexpr int kRawSlots = 3;
constexpr int kHalfBlockBytes = kStepTokens * kSwRowBytes;    // 4096: 32 rows x 64 columns
constexpr int kHalfBytes = kSwBlocks * kHalfBlockBytes;       // 36864
constexpr int kOffQ = 0;
constexpr int kOffH = kTileBytes;                             // two half-page buffers
constexpr int kOffP = kOffH + 2 * kHalfBytes;                 // P tile (64 x 32 of a 64 x 64 bf16 tile)
constexpr int kOffRed = kOffP + kRows * kPage * 2;
constexpr int kOffRaw = kOffRed + 512;
constexpr int kSmemUsed = kOffRaw + kRawSlots * kUnitBytes;   // 219136
static_assert(kSmemUsed <= MLA_DECODE_SMEM_BYTES, "launched with the bf16 kernel's dynamic shared memory");
static_assert(kOffH % 1024 == 0 && kHalfBytes % 1024 == 0 && kOffP % 1024 == 0, "SW128 tiles on 1 KB atoms");
constexpr int kRedMbar = 0, kRedRowVals = 192;
constexpr int kBarPReady = 1, kBarHFree = 2, kBarHReady0 = 3;  // H_READY[b] = 3 + b
constexpr int kWgThreads = 128;
constexpr int kShare = kStepTokens * kRowChunks / kDecodeThreads;  // 9 chunks a thread a step
static_assert(kStepTokens * kRowChunks % kDecodeThreads == 0, "a step's dequantization splits evenly");

// Byte offset of 16-byte chunk c (0..71) of row r (0..31) in a half buffer.
__device__ __forceinline__ uint32_t half_off(int r, int c) {
    return static_cast<uint32_t>((c >> 3) * kHalfBlockBytes + r * kSwRowBytes + (((c & 7) ^ (r & 7)) << 4));
}

// This thread's share (chunks tid + 256k) of one step: raw tokens at sRawUnit
// (32 x 656 bytes) -> bf16 rows in the half buffer at sH; rows >= valid are
// zeros. Ends with the proxy fence the wgmma readers need.
__device__ __forceinline__ void dequant_share(uint32_t sRawUnit, uint32_t sH, int valid, int tid) {
#pragma unroll
    for (int k = 0; k < kShare; ++k) {
        const int id = tid + k * kDecodeThreads;
        const int tok = id / kRowChunks;
        const int c = id - tok * kRowChunks;
        const uint32_t src = sRawUnit + tok * kFp8TokenBytes;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (tok < valid) {
            if (c < kDimV / 8) {
                uint2 codes;
                float scale;
                asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(codes.x), "=r"(codes.y) : "r"(src + 8 * c));
                asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(scale) : "r"(src + kFp8ScaleOffset + 4 * (c >> 4)));
                v = fp8_dequant8(codes, scale);
            } else {
                asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                             : "r"(src + kFp8RopeOffset + 16 * (c - kDimV / 8)));
            }
        }
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(sH + half_off(tok, c)), "r"(v.x), "r"(v.y),
                     "r"(v.z), "r"(v.w)
                     : "memory");
    }
    ptx::fence_proxy_async_smem();
}

}  // namespace sm90_fp8_v2

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_fp8_v2(const __grid_constant__ MlaDecodeParams p) {
    using namespace mla;
    using namespace sm90_fp8_v2;
    extern __shared__ __align__(1024) uint8_t smem_f2[];
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

    const uint32_t sQ = ptx::smem_addr(smem_f2 + kOffQ);
    const uint32_t sH = ptx::smem_addr(smem_f2 + kOffH);
    const uint32_t sP = ptx::smem_addr(smem_f2 + kOffP);
    const uint32_t sRaw = ptx::smem_addr(smem_f2 + kOffRaw);
    const uint32_t sMbar = ptx::smem_addr(smem_f2 + kOffRed + kRedMbar);
    const uint32_t sQFull = sMbar + 8 * kRawSlots;
    float* row_vals = reinterpret_cast<float*>(smem_f2 + kOffRed + kRedRowVals);
    if ((sQ & (kSwAtomBytes - 1)) != 0) __trap();
    if (tid == 0) {
        for (int s = 0; s < kRawSlots; ++s) ptx::mbarrier_init(sMbar + 8 * s, 1);
        ptx::mbarrier_init(sQFull, kWgThreads);
        ptx::fence_mbarrier_init();
    }
    __syncthreads();
    const uint8_t* pool = static_cast<const uint8_t*>(p.kv_pool);
    uint32_t unit_base = 0;  // steps of earlier chunks: ring slot and parity carry across chunks
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
        const int steps = 2 * n;
        auto issue_unit = [&](int u) {
            const uint32_t gu = unit_base + u;
            const uint32_t bar = sMbar + 8 * (gu % kRawSlots);
            ptx::mbarrier_arrive_expect_tx(bar, kUnitBytes);
            ptx::bulk_load(sRaw + (gu % kRawSlots) * kUnitBytes,
                           pool + static_cast<size_t>(bt[blk_begin + (u >> 1)]) * kFp8PageBytes + (u & 1) * kUnitBytes,
                           kUnitBytes, bar);
        };
        // Step u's raw unit, waited for, and its valid rows.
        auto raw_unit = [&](int u) {
            const uint32_t gu = unit_base + u;
            ptx::mbarrier_wait_parity(sMbar + 8 * (gu % kRawSlots), (gu / kRawSlots) & 1u);
            return sRaw + (gu % kRawSlots) * kUnitBytes;
        };
        auto step_valid = [&](int u) { return min(max(len - (blk_begin * kPage + u * kStepTokens), 0), kStepTokens); };

        int last_pos[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) last_pos[i] = (qrow[i] < p.rows_per_seq) ? len - p.s_q + qtok[i] : -1;

        __syncthreads();  // the previous chunk is finished everywhere

        float o[kWgOutCols / 2];
#pragma unroll
        for (int k = 0; k < kWgOutCols / 2; ++k) o[k] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY};
        float row_sum[2] = {0.f, 0.f};

        if (tid == 0)
            for (int u = 0; u < min(kRawSlots, steps); ++u) issue_unit(u);
        if (steps > 0) {
            if (wg == 1) {
                load_tile_sw128_async<kWgThreads>(
                    sQ, static_cast<const __nv_bfloat16*>(p.q) + (static_cast<size_t>(seq) * p.rows_per_seq + row0) * kDimK,
                    valid_q_rows, wtid);
                ptx::mbarrier_arrive_cp_async(sQFull);
            }
            // Prologue: step 0 into buffer 0, both warpgroups.
            dequant_share(raw_unit(0), sH, step_valid(0), tid);
            if (wg == 1) ptx::named_bar_arrive<kBarHReady0, 2 * kWgThreads>();
        }

        if (wg == 0) {
            uint32_t pa[kStepTokens / 4];
#pragma unroll
            for (int k = 0; k < kStepTokens / 4; ++k) pa[k] = 0u;
            for (int j = 0; j < steps; ++j) {
                const int b = j & 1;
                const uint32_t sHb = sH + b * kHalfBytes;
                if (b == 0) ptx::named_bar_sync<kBarHReady0, 2 * kWgThreads>();
                else ptx::named_bar_sync<kBarHReady0 + 1, 2 * kWgThreads>();
                if (tid == 0 && j + kRawSlots < steps) issue_unit(j + kRawSlots);  // step j's slot is free now
                if (j == 0) {
                    ptx::mbarrier_wait_parity(sQFull, q_phase);
                    q_phase ^= 1u;
                    ptx::fence_proxy_async_smem();
                }
                float s[kStepTokens / 2];
#pragma unroll
                for (int k = 0; k < kStepTokens / 2; ++k) s[k] = 0.f;
                ptx::fence_regs(s);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kQkSteps; ++kk) {
                    ptx::wgmma_m64n32k16_ss(
                        s, ptx::wgmma_desc_sw128(sQ + (kk >> 2) * kSwBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                        ptx::wgmma_desc_sw128(sHb + (kk >> 2) * kHalfBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                        kk > 0 ? 1 : 0);
                }
                ptx::wgmma_commit();
                ptx::wgmma_wait<1>();  // P V0(j-1) retired (S(j) may run on): pa may be rewritten
                ptx::fence_regs(pa);
                if (j > 0) ptx::named_bar_sync<kBarHFree, 2 * kWgThreads>();  // P V1(j-1) retired: buffer b^1, P free
                if (j + 1 < steps) dequant_share(raw_unit(j + 1), sH + (b ^ 1) * kHalfBytes, step_valid(j + 1), tid);
                ptx::wgmma_wait<0>();
                ptx::fence_regs(s);
                float alpha[2];
                softmax_tile<kStepTokens>(s, o, pa, row_max, row_sum, alpha, last_pos,
                                          blk_begin * kPage + j * kStepTokens + 2 * t, p.scale_log2);
                store_p_tile<kStepTokens>(sP, pa, trow, t);
                if (t == 0) {
                    row_vals[trow[0]] = alpha[0];
                    row_vals[trow[1]] = alpha[1];
                }
                ptx::fence_proxy_async_smem();
                ptx::named_bar_arrive<kBarPReady, 2 * kWgThreads>();
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kStepTokens / 16; ++kk) {
                    const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
                    ptx::wgmma_m64n256k16_rs_tb(
                        o, a, ptx::wgmma_desc_sw128(sHb + kk * 16 * kSwRowBytes, kHalfBlockBytes, kSwAtomBytes), 1);
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
        } else {
            for (int j = 0; j < steps; ++j) {
                const int b = j & 1;
                const uint32_t sHb = sH + b * kHalfBytes;
                ptx::named_bar_sync<kBarPReady, 2 * kWgThreads>();  // P(j), alpha(j); S(j) read buffer b
                rescale_rows(o, row_vals[trow[0]], row_vals[trow[1]]);
                ptx::fence_regs(o);
                ptx::wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kStepTokens / 16; ++kk) {
                    ptx::wgmma_m64n256k16_ss_tb(
                        o, ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes),
                        ptx::wgmma_desc_sw128(sHb + (kWgOutCols / 64) * kHalfBlockBytes + kk * 16 * kSwRowBytes,
                                              kHalfBlockBytes, kSwAtomBytes),
                        1);
                }
                ptx::wgmma_commit();
                if (j + 1 < steps) {
                    dequant_share(raw_unit(j + 1), sH + (b ^ 1) * kHalfBytes, step_valid(j + 1), tid);
                    if (b == 0) ptx::named_bar_arrive<kBarHReady0 + 1, 2 * kWgThreads>();
                    else ptx::named_bar_arrive<kBarHReady0, 2 * kWgThreads>();
                }
                ptx::wgmma_wait<0>();
                ptx::fence_regs(o);
                if (j + 1 < steps) ptx::named_bar_arrive<kBarHFree, 2 * kWgThreads>();
            }
        }
        unit_base += steps;

        __syncthreads();
        if (wg == 0 && t == 0) {
#pragma unroll
            for (int r = 0; r < 2; ++r) row_vals[trow[r]] = (row_sum[r] > 0.f) ? 1.f / row_sum[r] : 0.f;
        }
        __syncthreads();
        const float inv[2] = {row_vals[trow[0]], row_vals[trow[1]]};
        store_chunk(p, o, seq, split_base + split_local, n_split == 1, qrow, qtok, inv, row_sum, row_max, wg, t);
    }
}
