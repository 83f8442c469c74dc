// decode_narrow_candidates.cu -- harness-only candidates (build.sh links this
// file into the check harness, not into the module) built on the transposed
// narrow body (decode_sm90_narrow.cuh) for sequences of at most 16 or 32 query
// rows, each with its exported kernel's body for more rows. Each is one kernel
// taking its exported kernel's launch unchanged (grid.x = row groups of 64: 1
// for 32 rows or fewer), so it can replace it once it is checked and timed:
//   flashmla_decode_splitkv_fp8_v3   FP8 cache: narrow, else fp8 v1 with the fast dequantization
//   flashmla_decode_splitkv_v18      bf16 cache: narrow, else v15
#include "mla_config.h"
#include "decode_sm90_tma.cu"
#include "decode_sm90_fp8.cu"
#include "decode_sm90_narrow.cuh"

static_assert(sm90_narrow::Layout<32, true>::kBytes <= MLA_DECODE_FP8_SMEM_BYTES, "fp8 narrow<32> fits the FP8 launch");
static_assert(sm90_narrow::Layout<32, false>::kBytes <= MLA_DECODE_SMEM_BYTES, "bf16 narrow<32> fits the bf16 launch");

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_fp8_v3(const __grid_constant__ MlaDecodeParams p) {
    if (p.rows_per_seq <= 16) decode_sm90_narrow_body<16, true>(p);
    else if (p.rows_per_seq <= 32) decode_sm90_narrow_body<32, true>(p);
    else decode_sm90_fp8_wide_body<true>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_v18(const __grid_constant__ MlaDecodeParams p) {
    if (p.rows_per_seq <= 16) decode_sm90_narrow_body<16, false>(p);
    else if (p.rows_per_seq <= 32) decode_sm90_narrow_body<32, false>(p);
    else decode_sm90_tma_body<true>(p);
}
