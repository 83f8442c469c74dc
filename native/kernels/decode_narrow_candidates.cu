// decode_narrow_candidates.cu -- harness-only candidates (build.sh links this
// file into the check harness, not into the module) built on the transposed
// narrow body (decode_sm90_narrow.cuh) for sequences of at most 16 or 32 query
// rows, each with its exported kernel's body for more rows
// (decode_narrow_dispatch.cuh). Each is one kernel taking its exported
// kernel's launch unchanged (grid.x = row groups of 64: 1 for 32 rows or
// fewer), so it can replace it once it is checked and timed:
//   flashmla_decode_splitkv_fp8_v3   FP8 cache: narrow, else fp8 v1 with the fast dequantization
//   flashmla_decode_splitkv_v18      bf16 cache: narrow, else v15
#include "decode_narrow_dispatch.cuh"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_fp8_v3(const __grid_constant__ MlaDecodeParams p) {
    decode_fp8_v3_body(p);
}

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_v18(const __grid_constant__ MlaDecodeParams p) {
    decode_v18_body(p);
}
