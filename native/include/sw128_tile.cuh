// sw128_tile.cuh -- the 128-byte-swizzled 64 x 576 bf16 tile (a Q tile or a
// KV page) of the Hopper decode kernel (decode_sm90_tma.cu), shared with the
// wgmma unit check.
//
// Layout: 9 column blocks of 64 columns; block b holds rows 0..63 at 128
// bytes each (8 KB); 16-byte chunk c (8 columns) of row r sits at chunk
// c ^ (r % 8) of that row (Swizzle<3,4,3>). This is what a 64 x 64 TMA box
// with 128-byte swizzle writes, and what wgmma's SW128 descriptors read:
// K-major (rows = tokens or query rows, columns = K) for Q and K, N-major
// (rows = tokens = K, columns = N) for V. Tiles start on 1 KB boundaries.
#pragma once
#include "mla_config.h"
#include "ptx.h"

namespace mla {

// Byte offset of 16-byte chunk `chunk` (0..71) of row `row` (0..63).
__device__ __forceinline__ uint32_t sw128_off(int row, int chunk) {
    return static_cast<uint32_t>((chunk >> 3) * kSwBlockBytes + row * kSwRowBytes + (((chunk & 7) ^ (row & 7)) << 4));
}

// Copies the first `valid_rows` rows of a 64 x 576 bf16 block (row stride 576
// elements) into a swizzled tile with cp.async; rows >= valid_rows are
// zero-filled and not read. kThreads threads take part (tid = 0 ..
// kThreads-1); 8 consecutive threads fill one 128-byte row (all 32 banks).
// Completion: cp_async_commit / cp_async_wait, then fence_proxy_async_smem
// before the barrier if wgmma reads the tile; or mbarrier_arrive_cp_async.
template <int kThreads = kDecodeThreads>
__device__ __forceinline__ void load_tile_sw128_async(uint32_t smem_tile, const __nv_bfloat16* src, int valid_rows,
                                                      int tid) {
    static_assert((kPage * kRowChunks) % kThreads == 0, "tile copy must split evenly");
#pragma unroll
    for (int i = 0; i < kPage * kRowChunks / kThreads; ++i) {
        const int id = tid + i * kThreads;
        const int row = id / kRowChunks;
        const int chunk = id - row * kRowChunks;
        const bool ok = row < valid_rows;
        const __nv_bfloat16* g = src + (ok ? row * kDimK + chunk * 8 : 0);
        ptx::cp_async_16_zfill(smem_tile + sw128_off(row, chunk), g, ok ? 16u : 0u);
    }
}

}  // namespace mla
