// wgmma_narrow_check.cuh -- unit check of the narrow wgmma wrappers (ptx.h:
// m64n16k16 / m64n32k16, and their imm-trans-a forms) and of the narrow FP8
// decode's operand layouts (decode_sm90_narrow.cuh, fp8 and bf16 alike), apart
// from the dequantization and the softmax: one CTA of two warpgroups loads a random
// Q [N][576] into the narrow swizzled blocks, a page [64][576] (rows 61..63
// NaN in global memory, zero-filled) and a random P^T [N][64]; warpgroup 0
// computes S^T = K Q^T (36 k-steps, A = the page K-major, B = Q), and
// warpgroup w computes O^T = V^T P^T for V columns 256w .. 256w+255 (A = the
// page read MN-major, B = P^T), exactly as the narrow kernel addresses them.
// The host compares both with float64 products. Harness only, built with the
// narrow candidates (MLA_NARROW_CANDIDATES).
#pragma once
#include <cuda_bf16.h>
#include "../include/mla_config.h"
#include "../include/ptx.h"
#include "../include/sw128_tile.cuh"
#include "../kernels/decode_sm90_narrow.cuh"

namespace check {

template <int N>
__global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    wgmma_narrow_unit(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* pt, float* s_out,
                      float* o_out) {
    using namespace mla;
    using L = sm90_narrow::Layout<N, true>;  // the fp8 layout; the bf16 one places Q and P alike
    extern __shared__ __align__(1024) uint8_t smem_nu[];
    const int tid = threadIdx.x, wg = tid >> 7, wwarp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t sQ = ptx::smem_addr(smem_nu + L::kOffQ), sK = ptx::smem_addr(smem_nu + L::kOffK),
                   sP = ptx::smem_addr(smem_nu + L::kOffP);
    if ((sQ & 1023) != 0) __trap();
    for (int id = tid; id < N * kRowChunks; id += MLA_DECODE_THREADS) {
        const int row = id / kRowChunks, chunk = id - row * kRowChunks;
        ptx::cp_async_16_zfill(sQ + (chunk >> 3) * L::kQBlockBytes + row * kSwRowBytes + (((chunk & 7) ^ (row & 7)) << 4),
                               q + row * kDimK + chunk * 8, 16u);
    }
    load_tile_sw128_async(sK, kv, 61, tid);
    ptx::cp_async_commit();
    for (int id = tid; id < N * 8; id += MLA_DECODE_THREADS) {
        const int row = id >> 3, c = id & 7;
        *reinterpret_cast<uint4*>(smem_nu + L::kOffP + row * kSwRowBytes + ((c ^ (row & 7)) << 4)) =
            reinterpret_cast<const uint4*>(pt)[id];
    }
    ptx::cp_async_wait<0>();
    ptx::fence_proxy_async_smem();
    __syncthreads();

    const int r0 = wwarp * 16 + g;
    if (wg == 0) {
        float s[N / 2];
#pragma unroll
        for (int k = 0; k < N / 2; ++k) s[k] = 0.f;
        ptx::fence_regs(s);
        ptx::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kQkSteps; ++kk)
            ptx::wgmma_m64nNk16_ss<N>(s, ptx::wgmma_desc_sw128(sK + (kk >> 2) * kSwBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                                      ptx::wgmma_desc_sw128(sQ + (kk >> 2) * L::kQBlockBytes + (kk & 3) * 32, 16, kSwAtomBytes),
                                      kk > 0 ? 1 : 0);
        ptx::wgmma_commit();
        ptx::wgmma_wait<0>();
        ptx::fence_regs(s);
#pragma unroll
        for (int k = 0; k < N / 2; ++k)
            s_out[(r0 + ((k & 2) ? 8 : 0)) * N + 8 * (k >> 2) + 2 * t + (k & 1)] = s[k];
    }
    float o[4][N / 2];
#pragma unroll
    for (int mb = 0; mb < 4; ++mb) {
#pragma unroll
        for (int k = 0; k < N / 2; ++k) o[mb][k] = 0.f;
        ptx::fence_regs(o[mb]);
    }
    ptx::wgmma_fence();
#pragma unroll
    for (int mb = 0; mb < 4; ++mb)
#pragma unroll
        for (int kk = 0; kk < kPvSteps; ++kk)
            ptx::wgmma_m64nNk16_ss_ta<N>(
                o[mb], ptx::wgmma_desc_sw128(sK + (4 * wg + mb) * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes),
                ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes), 1);
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int mb = 0; mb < 4; ++mb) {
        ptx::fence_regs(o[mb]);
#pragma unroll
        for (int k = 0; k < N / 2; ++k)
            o_out[((4 * wg + mb) * 64 + r0 + ((k & 2) ? 8 : 0)) * N + 8 * (k >> 2) + 2 * t + (k & 1)] = o[mb][k];
    }
}

}  // namespace check
