// tma_check.cuh -- unit check of the TMA wrappers (ptx.h: fence_mbarrier_init,
// mbarrier_arrive_expect_tx, prefetch_tensormap, tma_load_2d) with the tensor
// map the decode kernel uses (mla_params.h, MlaTensorMap): one CTA copies page
// `page` of a small pool as nine 64 x 64 boxes into shared memory, waits on the
// mbarrier's transaction count and writes the shared bytes out as they lie.
// The host checks every 16-byte chunk against the 128-byte swizzle
// (sw128_off): a wrong box, coordinate order, swizzle or byte count fails here
// before it can hide in a decode result.
#pragma once
#include <cuda_bf16.h>
#include "../include/mla_config.h"
#include "../include/ptx.h"
#include "../include/sw128_tile.cuh"

namespace check {

__global__ void __launch_bounds__(128, 1) tma_unit(const __grid_constant__ MlaDecodeParams p, int page, uint4* out) {
    using namespace mla;
    extern __shared__ __align__(1024) uint8_t smem_tma_unit[];
    const uint32_t sPage = ptx::smem_addr(smem_tma_unit), sBar = sPage + kTileBytes;  // mbarrier after the page
    if ((sPage & 1023) != 0) __trap();
    if (threadIdx.x == 0) {
        ptx::mbarrier_init(sBar, 1);
        ptx::fence_mbarrier_init();
        ptx::prefetch_tensormap(&p.kv_map);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        ptx::mbarrier_arrive_expect_tx(sBar, kTileBytes);
        for (int b = 0; b < kSwBlocks; ++b)
            ptx::tma_load_2d(sPage + b * kSwBlockBytes, &p.kv_map, b * 64, p.kv_map_row0 + page * kPage, sBar);
    }
    ptx::mbarrier_wait_parity(sBar, 0);
    const uint4* s = reinterpret_cast<const uint4*>(smem_tma_unit);
    for (int i = threadIdx.x; i < kTileBytes / 16; i += blockDim.x) out[i] = s[i];
}

}  // namespace check
