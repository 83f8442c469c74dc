// wgmma_check.cuh -- unit check of the Hopper PTX wrappers (ptx.h) and the
// swizzled tile (sw128_tile.cuh) exactly as the Hopper decode kernels use them, apart
// from the softmax: one CTA of two warpgroups loads a random Q tile and page
// with cp.async, computes S = Q K^T (warpgroup wg: columns 32wg..+31, 36
// wgmma m64n32k16) and O = P V for a random bf16 P (64 x 64, ordinary stores
// into the swizzled P block, fence.proxy.async; warpgroup wg: columns
// 256wg..+255, 4 wgmma m64n256k16 with B N-major), and writes both in fp32.
// The host compares with a float64 product. A decode failure with this check
// passing points at the softmax / pipeline, not at the layouts.
#pragma once
#include <cuda_bf16.h>
#include "../include/mla_config.h"
#include "../include/ptx.h"
#include "../include/sw128_tile.cuh"

namespace check {

__global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    wgmma_unit(const __nv_bfloat16* q, const __nv_bfloat16* kv, const __nv_bfloat16* pin, float* s_out,
               float* o_out) {
    using namespace mla;
    extern __shared__ __align__(1024) uint8_t smem_unit[];
    const int tid = threadIdx.x, wg = tid >> 7, wwarp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const uint32_t sQ = ptx::smem_addr(smem_unit + kSmemQ), sK = ptx::smem_addr(smem_unit + kSmemKv),
                   sP = ptx::smem_addr(smem_unit + kSmemP);
    if ((sQ & 1023) != 0) __trap();
    load_tile_sw128_async(sQ, q, kRows, tid);
    load_tile_sw128_async(sK, kv, 61, tid);  // rows 61..63 zero-filled: the decode kernel's tail page
    ptx::cp_async_commit();
    for (int id = tid; id < kRows * 8; id += MLA_DECODE_THREADS) {
        const int row = id >> 3, c = id & 7;
        const uint4 v = reinterpret_cast<const uint4*>(pin)[id];
        *reinterpret_cast<uint4*>(smem_unit + kSmemP + row * kSwRowBytes + ((c ^ (row & 7)) << 4)) = v;
    }
    ptx::cp_async_wait<0>();
    ptx::fence_proxy_async_smem();
    __syncthreads();

    float s[kWgScoreCols / 2];
#pragma unroll
    for (int n = 0; n < kWgScoreCols / 2; ++n) s[n] = 0.f;
    ptx::fence_regs(s);
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kQkSteps; ++kk) {
        const uint32_t koff = (kk >> 2) * kSwBlockBytes + (kk & 3) * 32;
        ptx::wgmma_m64n32k16_ss(s, ptx::wgmma_desc_sw128(sQ + koff, 16, kSwAtomBytes),
                                ptx::wgmma_desc_sw128(sK + koff + wg * kWgScoreCols * kSwRowBytes, 16, kSwAtomBytes),
                                kk > 0 ? 1 : 0);
    }
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
    ptx::fence_regs(s);
    const int r0 = wwarp * 16 + g;
#pragma unroll
    for (int j = 0; j < kWgScoreCols / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            s_out[(r0 + 8 * (e >> 1)) * kPage + wg * kWgScoreCols + 8 * j + 2 * t + (e & 1)] = s[4 * j + e];

    float o[kWgOutCols / 2];
#pragma unroll
    for (int n = 0; n < kWgOutCols / 2; ++n) o[n] = 0.f;
    ptx::fence_regs(o);
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPvSteps; ++kk)
        ptx::wgmma_m64n256k16_ss_tb(
            o, ptx::wgmma_desc_sw128(sP + kk * 32, 16, kSwAtomBytes),
            ptx::wgmma_desc_sw128(sK + wg * (kWgOutCols / 64) * kSwBlockBytes + kk * 16 * kSwRowBytes, kSwBlockBytes,
                                  kSwAtomBytes),
            1);
    ptx::wgmma_commit();
    ptx::wgmma_wait<0>();
    ptx::fence_regs(o);
#pragma unroll
    for (int j = 0; j < kWgOutCols / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            o_out[(r0 + 8 * (e >> 1)) * kDimV + wg * kWgOutCols + 8 * j + 2 * t + (e & 1)] = o[4 * j + e];
}

}  // namespace check
