// decode_sm90_narrow.cuh -- split-KV MLA decode for sequences of at most
// N = 16 or 32 query rows (h_q * s_q <= N), transposed ("narrow"), over the
// FP8 KV cache (kFp8: fp8 v3) or the bf16 one (v18); the candidate kernels
// are in decode_narrow_candidates.cu.
//
// Why transposed: the wide kernels put the query rows on wgmma's M = 64, so
// at h_q 16 three quarters of every product is padding. Here the 64 rows of
// each product are tokens or V columns and the query rows are wgmma's N:
//   S^T [64 tokens][N] = K [64][576] Q^T      (A = the page, K-major; B = Q)
//   O^T [512][N]      += V^T [512][64] P^T    (A = the page read MN-major,
//                                               imm-trans-a; B = P^T)
// so a page costs 4x fewer tensor-core cycles at h_q 16 (2x at 32). The two
// warpgroups split S's k-steps and swap their partial sums through shared
// memory (both then run the same softmax on the same S); warpgroup w owns V
// columns 256w .. 256w+255.
//
// FP8 (why it needs this most: an FP8 page is 41 KB of HBM instead of 73.7,
// so the padded products and the dequantization bound fp8 v1 at 0.53x the
// bf16 kernel). Dequantization without conversions: a code becomes the bf16
// code * 2^-120 by moving bits (fp8x4_to_bf16_exp_shifted), and the
// per-128-column scales are applied in fp32 around the products:
//   - S: the page's K' = K / scale * 2^-120. Each query row of Q's 512
//     latent columns is pre-scaled by 2^e (e chosen from the row's largest
//     magnitude, so K' * Q' stays far from fp32's subnormals and Q' stays
//     finite), and each 128-column tile of K gets its own accumulator:
//     S = 2^(120-e) * sum_tile scale[token][tile] * acc_tile + acc_rope.
//     Warpgroup 0 runs tiles 0, 1 (k-steps 0..15), warpgroup 1 tiles 2, 3
//     and the rope (16..35).
//   - V: O^T for the columns of tile q uses P''_q = P * scale[token][q] /
//     smax_q * 2^120, smax_q the largest scale of tile q over the tokens seen
//     so far (so P'' <= 2^120, a bf16), and the accumulator holds O / smax_q:
//     when smax_q grows, the accumulator is multiplied by old / new, as the
//     softmax's alpha does for its running max. Warpgroup w writes the P''
//     of its own two tiles.
//   Pipeline: one thread brings whole raw pages (41,984 bytes, one bulk copy
//   each) into a ring of two; per page, all 256 threads dequantize it into
//   one bf16 page (the 128-byte-swizzled layout of the other kernels, rows
//   past the length as zeros and their scales as 0), then both products run
//   on it. The ring keeps the next page in flight while a page is
//   dequantized and multiplied, so HBM stays busy as long as the compute of
//   a page (about 1,700-2,000 cycles predicted) stays under its share of HBM
//   time (about 2,250 cycles at 4.5 TB/s over 132 SMs).
//   Results differ from v1's in rounding only: S and O are computed from the
//   exact code values with the scales in fp32 (v1 rounds code * scale to
//   bf16 first), and P V uses P'' rounded to bf16. NaN codes inside a
//   finite-scale tile read as finite values (see fp8x4_to_bf16_exp_shifted);
//   the quantizer never writes them.
//
// bf16: pages by TMA (nine 64 x 64 boxes through kv_map, as v15) straight
// into a ring of two bf16 pages, one mbarrier each; V rows past the length
// are zeroed in shared memory (the pool may hold NaN there); warpgroup 0 runs
// k-steps 0..17 of S, warpgroup 1 18..35; each warpgroup writes its own copy
// of P. The page after next is asked for as soon as a page's products retire,
// so two pages are in flight while one is waited for.
#pragma once
#include "mla_config.h"
#include "ptx.h"
#include "sw128_tile.cuh"
#include "fp8_kv.cuh"
#include "decode_chunk.cuh"

namespace sm90_narrow {

using namespace mla;

// Shared memory of the narrow kernel for N query rows.
template <int N, bool kFp8>
struct Layout {
    static constexpr int kQBlockBytes = N * kSwRowBytes;             // one 64-column block of Q: N rows of 128 bytes
    static constexpr int kPBytes = N * kSwRowBytes;                  // one P^T: N rows of 64 tokens (bf16)
    static constexpr int kPages = kFp8 ? 1 : 2;                      // bf16 pages: the dequantized one, or the TMA ring
    static constexpr int kPMats = kFp8 ? 4 : 2;                      // P''^T [warpgroup][2 tiles], or P^T [warpgroup]
    static constexpr int kOffQ = 0;                                  // Q, 9 swizzled blocks
    static constexpr int kOffK = kOffQ + kSwBlocks * kQBlockBytes;   // bf16 page(s), swizzled
    static constexpr int kOffP = kOffK + kPages * kTileBytes;
    static constexpr int kOffX = kOffP + kPMats * kPBytes;           // S partials [warpgroup][N/2 registers][128 threads]
    static constexpr int kOffMisc = kOffX + 2 * (N / 2) * 128 * 4;   // barriers and small tables (kMisc* below)
    static constexpr int kOffRaw = kOffMisc + 2560;                  // fp8: the raw page ring
    static constexpr int kBytes = kOffRaw + (kFp8 ? 2 * kFp8PageBytes : 0);
    static_assert(kOffK % 1024 == 0 && kOffP % 1024 == 0 && kPBytes % 1024 == 0 && kQBlockBytes % 1024 == 0,
                  "wgmma SW128 operands start on 1 KB swizzle atoms");
    static_assert(kOffRaw % 16 == 0 && kFp8PageBytes % 16 == 0, "bulk copies move 16-byte multiples to 16-byte addresses");
    static_assert(kBytes <= (kFp8 ? MLA_DECODE_FP8_SMEM_BYTES : MLA_DECODE_SMEM_BYTES), "the layout fits the launch's dynamic shared memory");
};
// Offsets inside the misc block.
constexpr int kMiscMbar = 0;         // page_full[2]: the raw ring (fp8) or the bf16 ring
constexpr int kMiscTileMax = 64;     // fp8: [8 warps][4 tiles] fp32: the page's largest scale per tile, per warp
constexpr int kMiscQFactor = 256;    // fp8: [32] fp32: 2^(120 - e) per query row
constexpr int kMiscColRed = 512;     // [2 warpgroups][4 warps][32] fp32: per-column reductions
constexpr int kMiscScale = 1536;     // fp8: [64 tokens] float4: the page's scales (0 past the length)
static_assert(kMiscScale + 64 * 16 == 2560, "misc block size");

constexpr float kTwo120 = 1.329227995784916e36f;  // 2^120

template <int kId>
__device__ __forceinline__ void wg_bar(int wg) {
    // One named barrier per warpgroup (ids kId, kId + 1), 128 threads.
    if (wg == 0) ptx::named_bar_sync<kId, 128>();
    else ptx::named_bar_sync<kId + 1, 128>();
}

}  // namespace sm90_narrow

// The body for one CTA (256 threads, blockIdx.x == 0: all rows fit one CTA,
// blockIdx.y = the scheduler part), launched like every decode kernel of its
// dtype.
template <int N, bool kFp8>
__device__ __forceinline__ void decode_sm90_narrow_body(const MlaDecodeParams& p) {
    using namespace mla;
    using namespace sm90_narrow;
    using L = Layout<N, kFp8>;
    constexpr int kR = N / 2;  // accumulator registers of one m64nN tile a thread
    constexpr int kC = N / 4;  // query columns a thread holds: 8j + 2t + x, j < N/8, x < 2
    MLA_DYNAMIC_SMEM(smem_narrow);
    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int wtid = tid & 127;
    const int wwarp = (tid >> 5) & 3;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;

    const DecodePart sched = decode_part(p);
    const int rows = p.rows_per_seq;  // <= N (the caller dispatches on it)

    uint8_t* misc = smem_narrow + L::kOffMisc;
    const uint32_t sQ = ptx::smem_addr(smem_narrow + L::kOffQ);
    const uint32_t sKBase = ptx::smem_addr(smem_narrow + L::kOffK);
    const uint32_t sP = ptx::smem_addr(smem_narrow + L::kOffP);
    const uint32_t sX = ptx::smem_addr(smem_narrow + L::kOffX);
    const uint32_t sRaw = ptx::smem_addr(smem_narrow + L::kOffRaw);
    const uint32_t sMbar = ptx::smem_addr(misc + kMiscMbar);
    float* tile_max_s = reinterpret_cast<float*>(misc + kMiscTileMax);
    float* qfactor_s = reinterpret_cast<float*>(misc + kMiscQFactor);
    float* colred_s = reinterpret_cast<float*>(misc + kMiscColRed);
    float* scale_s = reinterpret_cast<float*>(misc + kMiscScale);
    if ((sQ & 1023) != 0) __trap();
    if (tid == 0) {
        ptx::mbarrier_init(sMbar, 1);
        ptx::mbarrier_init(sMbar + 8, 1);
        ptx::fence_mbarrier_init();
        if constexpr (!kFp8) ptx::prefetch_tensormap(&p.kv_map);
    }
    __syncthreads();
    const uint8_t* pool = static_cast<const uint8_t*>(p.kv_pool);
    // Pages counted over the CTA's whole run, so the ring slot (page & 1) and
    // the mbarrier parity ((page >> 1) & 1) carry across chunks.
    uint32_t page_base = 0;

    // This thread's accumulator positions: rows (tokens of S^T, V columns of
    // O^T) r0 = 16 wwarp + g and r1 = r0 + 8; register k holds row
    // (k & 2 ? r1 : r0) and query column col_of(ck(k)).
    const int r0 = wwarp * 16 + g, r1 = r0 + 8;
    auto col_of = [&](int c) { return 8 * (c >> 1) + 2 * t + (c & 1); };  // c < kC
    auto ck = [](int k) { return 2 * (k >> 2) + (k & 1); };
    const int my_tiles = 2 * wg;  // fp8: V tiles 2wg, 2wg+1 are this warpgroup's

    for (int seq = sched.begin_seq; seq <= sched.end_seq; ++seq) {
        const DecodeChunk seq_chunk = decode_chunk(p, sched, seq);
        const int len = seq_chunk.len, blk_begin = seq_chunk.blk_begin, n = seq_chunk.n;
        const int* bt = seq_chunk.bt;
        auto issue_page = [&](int i) {  // page i of this chunk into its ring slot; one thread
            const uint32_t gp = page_base + i;
            const uint32_t bar = sMbar + 8 * (gp & 1u);
            if constexpr (kFp8) {
                ptx::mbarrier_arrive_expect_tx(bar, kFp8PageBytes);
                ptx::bulk_load(sRaw + (gp & 1u) * kFp8PageBytes,
                               pool + static_cast<size_t>(bt[blk_begin + i]) * kFp8PageBytes, kFp8PageBytes, bar);
            } else {
                const int y = p.kv_map_row0 + bt[blk_begin + i] * kPage;
                ptx::mbarrier_arrive_expect_tx(bar, kTileBytes);
#pragma unroll
                for (int b = 0; b < kSwBlocks; ++b)
                    ptx::tma_load_2d(sKBase + (gp & 1u) * kTileBytes + b * kSwBlockBytes, &p.kv_map, b * 64, y, bar);
            }
        };

        __syncthreads();  // the previous chunk is finished everywhere: every buffer is free
        if (tid == 0)
            for (int i = 0; i < min(2, n); ++i) issue_page(i);

        // ---- Q: N rows (rows >= rows_per_seq zero) into 9 swizzled blocks of N rows ----
        if (n > 0) {
            const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(p.q) + static_cast<size_t>(seq) * rows * kDimK;
            for (int id = tid; id < N * kRowChunks; id += kDecodeThreads) {
                const int row = id / kRowChunks, chunk = id - row * kRowChunks;
                const bool ok = row < rows;
                const uint32_t dst = sQ + (chunk >> 3) * L::kQBlockBytes + row * kSwRowBytes + (((chunk & 7) ^ (row & 7)) << 4);
                ptx::cp_async_16_zfill(dst, q + (ok ? row * kDimK + chunk * 8 : 0), ok ? 16u : 0u);
            }
            ptx::cp_async_commit();
            ptx::cp_async_wait<0>();
            __syncthreads();
            if constexpr (kFp8) {
                // Pre-scale each row's 512 latent columns by 2^e: kTpr threads a row,
                // each kCpt of its 64 latent chunks. e = 253 - (largest exponent
                // field), clamped to 0..120: the largest |q'| is below 2^127 (finite
                // in bf16), and products with K' (>= 2^-126 for normal codes) stay
                // normal in fp32. Scaling by a power of two is exact.
                constexpr int kTpr = kDecodeThreads / N;  // 8 or 16 threads a row (consecutive lanes)
                constexpr int kCpt = 64 / kTpr;           // 8 or 4 chunks a thread
                const int row = tid / kTpr, part = tid % kTpr;
                uint4 v[kCpt];
                uint32_t big = 0;
#pragma unroll
                for (int k = 0; k < kCpt; ++k) {
                    const int chunk = part * kCpt + k;
                    const uint32_t a = sQ + (chunk >> 3) * L::kQBlockBytes + row * kSwRowBytes + (((chunk & 7) ^ (row & 7)) << 4);
                    v[k] = ptx::ld_shared_v4(a);
                    const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
                    for (int m = 0; m < 4; ++m) big = max(big, max(w[m] & 0x7FFFu, (w[m] >> 16) & 0x7FFFu));
                }
#pragma unroll
                for (int m = 1; m < kTpr; m <<= 1) big = max(big, __shfl_xor_sync(0xffffffffu, big, m));
                const int e = min(120, max(0, 253 - static_cast<int>(big >> 7)));
                const float up = __int_as_float((127 + e) << 23);
#pragma unroll
                for (int k = 0; k < kCpt; ++k) {
                    const int chunk = part * kCpt + k;
                    const uint32_t a = sQ + (chunk >> 3) * L::kQBlockBytes + row * kSwRowBytes + (((chunk & 7) ^ (row & 7)) << 4);
                    const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
                    uint32_t o[4];
#pragma unroll
                    for (int m = 0; m < 4; ++m)
                        o[m] = ptx::pack_bf16x2(__uint_as_float(w[m] << 16) * up, __uint_as_float(w[m] & 0xFFFF0000u) * up);
                    ptx::st_shared_v4(a, o[0], o[1], o[2], o[3]);
                }
                if (part == 0) qfactor_s[row] = __int_as_float((127 + 120 - e) << 23);
            }
            ptx::fence_proxy_async_smem();  // Q (cp.async and generic stores) -> wgmma reads
            __syncthreads();
        }

        // ---- per-column state (every thread holds kC query columns, the same in both warpgroups) ----
        int last_pos[kC];
        float qf[kC], col_max[kC], col_sum[kC];
#pragma unroll
        for (int c = 0; c < kC; ++c) {
            const int col = col_of(c);
            last_pos[c] = (col < rows) ? len - p.s_q + col / p.h_q : -1;
            qf[c] = (kFp8 && n > 0) ? qfactor_s[col] : 1.f;
            col_max[c] = -INFINITY;
            col_sum[c] = 0.f;
        }
        float smax[2] = {kFp8 ? 0.f : 1.f, kFp8 ? 0.f : 1.f};  // fp8: running largest scale of this warpgroup's V tiles
        float o[4][kR];  // O^T (fp8: / smax) for V blocks 4wg .. 4wg+3 (64 columns each)
#pragma unroll
        for (int mb = 0; mb < 4; ++mb)
#pragma unroll
            for (int k = 0; k < kR; ++k) o[mb][k] = 0.f;

        for (int i = 0; i < n; ++i) {
            const int blk = blk_begin + i;
            const int valid = min(len - blk * kPage, kPage);
            const uint32_t gp = page_base + i;
            const uint32_t slot = gp & 1u;
            const uint32_t sK = sKBase + (kFp8 ? 0u : slot * kTileBytes);
            __syncthreads();  // the previous page's products are retired in both warpgroups
            if constexpr (!kFp8) {
                if (tid == 0 && i >= 1 && i + 1 < n) issue_page(i + 1);  // into the slot page i-1 just left
            }
            ptx::mbarrier_wait_parity(sMbar + 8 * slot, (gp >> 1) & 1u);

            if constexpr (kFp8) {
                // ---- dequantize: thread (token tid/4, tile tid%4): 128 codes, its scale, 2 rope chunks ----
                const int tok = tid >> 2, q = tid & 3;
                const uint32_t src = sRaw + slot * kFp8PageBytes + tok * kFp8TokenBytes;
                float sc = 0.f;
                if (tok < valid) {
                    sc = ptx::ld_shared_f32(src + kFp8ScaleOffset + 4 * q);
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        uint4 w;
                        w = ptx::ld_shared_v4(src + q * 128 + 16 * k);
                        const uint2 a = fp8x4_to_bf16_exp_shifted(w.x), b = fp8x4_to_bf16_exp_shifted(w.y);
                        const uint2 c = fp8x4_to_bf16_exp_shifted(w.z), d = fp8x4_to_bf16_exp_shifted(w.w);
                        ptx::st_shared_v4(sK + sw128_off(tok, q * 16 + 2 * k), a.x, a.y, b.x, b.y);
                        ptx::st_shared_v4(sK + sw128_off(tok, q * 16 + 2 * k + 1), c.x, c.y, d.x, d.y);
                    }
#pragma unroll
                    for (int x = 0; x < 2; ++x) {
                        uint4 w;
                        w = ptx::ld_shared_v4(src + kFp8RopeOffset + 16 * (2 * q + x));
                        ptx::st_shared_v4(sK + sw128_off(tok, kDimV / 8 + 2 * q + x), w.x, w.y, w.z, w.w);
                    }
                } else {  // past the length: zeros (the raw bytes may be anything, NaN included)
#pragma unroll
                    for (int k = 0; k < 16; ++k)
                        ptx::st_shared_v4(sK + sw128_off(tok, q * 16 + k), 0u, 0u, 0u, 0u);
#pragma unroll
                    for (int x = 0; x < 2; ++x)
                        ptx::st_shared_v4(sK + sw128_off(tok, kDimV / 8 + 2 * q + x), 0u, 0u, 0u, 0u);
                }
                scale_s[tok * 4 + q] = sc;
                // The page's largest scale per tile: lanes 4k + q hold tile q of 8 tokens.
                float mx = sc;
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                if (lane < 4) tile_max_s[warp * 4 + lane] = mx;
                ptx::fence_proxy_async_smem();  // the bf16 page (generic stores) -> wgmma reads
                __syncthreads();                // page, scales and tile maxima ready; the raw slot is read
                if (tid == 0 && i + 2 < n) issue_page(i + 2);
            } else if (valid < kPage) {
                // The tail page: V rows past the length may hold anything (NaN included) and 0 * NaN is NaN,
                // so they are zeroed (K rows are masked in S and need nothing).
                for (int id = tid; id < (kPage - valid) * (kDimV / 8); id += kDecodeThreads) {
                    const int row = valid + id / (kDimV / 8), chunk = id % (kDimV / 8);
                    ptx::st_shared_v4(sK + sw128_off(row, chunk), 0u, 0u, 0u, 0u);
                }
                ptx::fence_proxy_async_smem();
                __syncthreads();
            }

            // ---- S^T partials. fp8: warpgroup 0 tiles 0, 1; warpgroup 1 tiles 2, 3 and the rope.
            //      bf16: warpgroup 0 k-steps 0..17, warpgroup 1 18..35. ----
            constexpr int kAcc = kFp8 ? 3 : 1;
            float acc[kAcc][kR];
#pragma unroll
            for (int a = 0; a < kAcc; ++a) {
#pragma unroll
                for (int k = 0; k < kR; ++k) acc[a][k] = 0.f;
                ptx::fence_regs(acc[a]);
            }
            ptx::wgmma_fence();
            auto s_step = [&](float (&d)[kR], int kk, int accumulate) {
                ptx::wgmma_m64nNk16_ss<N>(d, ptx::wgmma_desc_sw128(sK + (kk >> 2) * kSwBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                                          ptx::wgmma_desc_sw128(sQ + (kk >> 2) * L::kQBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                                          accumulate);
            };
            if constexpr (kFp8) {
                if (wg == 0) {
#pragma unroll
                    for (int kk = 0; kk < 16; ++kk) s_step(acc[kk >> 3], kk, (kk & 7) ? 1 : 0);
                } else {
#pragma unroll
                    for (int kk = 16; kk < kQkSteps; ++kk)
                        s_step(acc[kk < 32 ? (kk - 16) >> 3 : 2], kk, (kk == 16 || kk == 24 || kk == 32) ? 0 : 1);
                }
            } else {
                if (wg == 0) {
#pragma unroll
                    for (int kk = 0; kk < kQkSteps / 2; ++kk) s_step(acc[0], kk, kk > 0 ? 1 : 0);
                } else {
#pragma unroll
                    for (int kk = kQkSteps / 2; kk < kQkSteps; ++kk) s_step(acc[0], kk, kk > kQkSteps / 2 ? 1 : 0);
                }
            }
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
#pragma unroll
            for (int a = 0; a < kAcc; ++a) ptx::fence_regs(acc[a]);

            float4 sc0 = make_float4(1.f, 1.f, 1.f, 1.f), sc1 = sc0;
            if constexpr (kFp8) {
                sc0 = reinterpret_cast<const float4*>(scale_s)[r0];
                sc1 = reinterpret_cast<const float4*>(scale_s)[r1];
            }
            float s[kR];
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                float part;
                if constexpr (kFp8) {
                    const float4 sc = (k & 2) ? sc1 : sc0;
                    part = (wg == 0) ? qf[ck(k)] * (sc.x * acc[0][k] + sc.y * acc[1][k])
                                     : qf[ck(k)] * (sc.z * acc[0][k] + sc.w * acc[1][k]) + acc[kAcc - 1][k];
                } else {
                    part = acc[0][k];
                }
                s[k] = part;
                ptx::st_shared_f32(sX + ((wg * kR + k) * 128 + wtid) * 4, part);
            }
            __syncthreads();  // both partials written
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                float other;
                other = ptx::ld_shared_f32(sX + (((1 - wg) * kR + k) * 128 + wtid) * 4);
                s[k] += other;  // a + b == b + a: both warpgroups hold the same S
            }

            // ---- softmax over tokens, per query column ----
            float cm[kC];
#pragma unroll
            for (int c = 0; c < kC; ++c) cm[c] = -INFINITY;
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                const int pos = blk * kPage + ((k & 2) ? r1 : r0);
                const float x = (pos <= last_pos[ck(k)]) ? s[k] * p.scale_log2 : -INFINITY;
                s[k] = x;
                cm[ck(k)] = fmaxf(cm[ck(k)], x);
            }
#pragma unroll
            for (int c = 0; c < kC; ++c) {
                cm[c] = fmaxf(cm[c], __shfl_xor_sync(0xffffffffu, cm[c], 4));
                cm[c] = fmaxf(cm[c], __shfl_xor_sync(0xffffffffu, cm[c], 8));
                cm[c] = fmaxf(cm[c], __shfl_xor_sync(0xffffffffu, cm[c], 16));
                if (g == 0) colred_s[(wg * 4 + wwarp) * 32 + col_of(c)] = cm[c];
            }
            wg_bar<2>(wg);
            float alpha[kC], base[kC];
#pragma unroll
            for (int c = 0; c < kC; ++c) {
                const int col = col_of(c);
                float m = colred_s[(wg * 4) * 32 + col];
#pragma unroll
                for (int w = 1; w < 4; ++w) m = fmaxf(m, colred_s[(wg * 4 + w) * 32 + col]);
                const float new_max = fmaxf(col_max[c], m);
                base[c] = (new_max == -INFINITY) ? 0.f : new_max;  // a column that saw nothing: exp2 -> 0, not NaN
                alpha[c] = ptx::exp2_approx(col_max[c] - base[c]);
                col_max[c] = new_max;
                col_sum[c] *= alpha[c];
            }
            float pv[kR];
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                pv[k] = ptx::exp2_approx(s[k] - base[ck(k)]);
                col_sum[ck(k)] += pv[k];
            }

            // ---- rescale O^T; write this warpgroup's P^T (fp8: P''^T of its two V tiles) ----
            float ratio[2] = {1.f, 1.f}, f[2][2] = {{1.f, 1.f}, {1.f, 1.f}};  // fp8: f[row][u] = scale / smax * 2^120
            if constexpr (kFp8) {
                const float row_sc[2][2] = {{wg ? sc0.z : sc0.x, wg ? sc0.w : sc0.y},
                                            {wg ? sc1.z : sc1.x, wg ? sc1.w : sc1.y}};  // [row][u]: tiles 2wg + u
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const int tq = my_tiles + u;
                    float pm = tile_max_s[tq];
#pragma unroll
                    for (int w = 1; w < 8; ++w) pm = fmaxf(pm, tile_max_s[w * 4 + tq]);
                    const float sn = fmaxf(smax[u], pm);
                    ratio[u] = (sn > 0.f) ? smax[u] / sn : 1.f;
                    // The quotient first: 2^120 / sn alone overflows for tiny scales.
#pragma unroll
                    for (int rr = 0; rr < 2; ++rr) f[rr][u] = (sn > 0.f) ? (row_sc[rr][u] / sn) * kTwo120 : 0.f;
                    smax[u] = sn;
                }
            }
#pragma unroll
            for (int mb = 0; mb < 4; ++mb)
#pragma unroll
                for (int k = 0; k < kR; ++k) o[mb][k] *= alpha[ck(k)] * ratio[mb >> 1];
            constexpr int kOwnP = kFp8 ? 2 : 1;  // P matrices this warpgroup writes
#pragma unroll
            for (int u = 0; u < kOwnP; ++u) {
                const uint32_t pt = sP + (kOwnP * wg + u) * L::kPBytes;
#pragma unroll
                for (int k = 0; k < kR; ++k) {
                    const int rr = (k & 2) ? 1 : 0;
                    const int r = rr ? r1 : r0;
                    const int col = col_of(ck(k));
                    const float val = kFp8 ? pv[k] * f[rr][u] : pv[k];
                    const uint16_t b = __bfloat16_as_ushort(__float2bfloat16_rn(val));
                    ptx::st_shared_u16(pt + col * kSwRowBytes + (((r >> 3) ^ (col & 7)) << 4) + (r & 7) * 2, b);
                }
            }
            ptx::fence_proxy_async_smem();  // P (generic stores) -> this warpgroup's wgmma reads
            wg_bar<4>(wg);

            // ---- O^T += V^T P^T for this warpgroup's 4 blocks of 64 V columns ----
#pragma unroll
            for (int mb = 0; mb < 4; ++mb) ptx::fence_regs(o[mb]);
            ptx::wgmma_fence();
#pragma unroll
            for (int mb = 0; mb < 4; ++mb) {
                const int vb = 4 * wg + mb;  // V block: columns 64 vb ..
                const uint32_t pt = sP + (kOwnP * wg + (kFp8 ? (mb >> 1) : 0)) * L::kPBytes;
#pragma unroll
                for (int kk = 0; kk < kPvSteps; ++kk)
                    ptx::wgmma_m64nNk16_ss_ta<N>(o[mb],
                                                 ptx::wgmma_desc_sw128(sK + vb * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes),
                                                 ptx::wgmma_desc_sw128(pt + kk * 32, 16, kSwAtomBytes), 1);
            }
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
#pragma unroll
            for (int mb = 0; mb < 4; ++mb) ptx::fence_regs(o[mb]);
        }
        page_base += n;

        // ---- finish the chunk: column sums across the warpgroup, then the stores ----
        float inv[kC], sum[kC];
#pragma unroll
        for (int c = 0; c < kC; ++c) {
            float l = col_sum[c];
            l += __shfl_xor_sync(0xffffffffu, l, 4);
            l += __shfl_xor_sync(0xffffffffu, l, 8);
            l += __shfl_xor_sync(0xffffffffu, l, 16);
            if (g == 0) colred_s[(wg * 4 + wwarp) * 32 + col_of(c)] = l;
        }
        wg_bar<2>(wg);
#pragma unroll
        for (int c = 0; c < kC; ++c) {
            const int col = col_of(c);
            float l = 0.f;
#pragma unroll
            for (int w = 0; w < 4; ++w) l += colred_s[(wg * 4 + w) * 32 + col];
            sum[c] = l;
            inv[c] = (l > 0.f) ? 1.f / l : 0.f;
        }
        const bool final_out = seq_chunk.final_out;
        const int split = seq_chunk.split;
#pragma unroll
        for (int mb = 0; mb < 4; ++mb) {
            const float sm = smax[mb >> 1];
#pragma unroll
            for (int k = 0; k < kR; ++k) {
                const int col = col_of(ck(k));
                if (col >= rows) continue;
                const int dim = (4 * wg + mb) * 64 + ((k & 2) ? r1 : r0);
                const float val = o[mb][k] * sm * inv[ck(k)];
                if (final_out)
                    static_cast<__nv_bfloat16*>(p.out)[(static_cast<size_t>(seq) * rows + col) * kDimV + dim] = __float2bfloat16_rn(val);
                else
                    p.o_accum[(static_cast<size_t>(split) * rows + col) * kDimV + dim] = val;
            }
        }
        if (wg == 0 && wwarp == 0 && g == 0) {
#pragma unroll
            for (int c = 0; c < kC; ++c) {
                const int col = col_of(c);
                if (col >= rows) continue;
                const float lse = (sum[c] > 0.f) ? (col_max[c] + __log2f(sum[c])) * 0.69314718055994531f : -INFINITY;
                if (final_out) {
                    const int qtok = col / p.h_q, h = col - qtok * p.h_q;
                    p.lse[(static_cast<size_t>(seq) * p.h_q + h) * p.s_q + qtok] = lse;
                } else {
                    p.lse_accum[static_cast<size_t>(split) * rows + col] = lse;
                }
            }
        }
    }
}
