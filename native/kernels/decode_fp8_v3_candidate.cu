// decode_fp8_v3_candidate.cu -- flashmla_decode_splitkv_fp8_v3, a harness-only
// candidate (build.sh links it into the check harness, not into the module):
// the transposed narrow body (decode_sm90_fp8_narrow.cuh) for sequences of
// at most 16 or 32 query rows, fp8 v1's body for more. One kernel, so it takes
// the exported FP8 kernel's launch unchanged (grid.x = row groups of 64: 1
// for 32 rows or fewer) and can replace it once it is checked and timed.
#include "mla_config.h"
#include "decode_sm90_fp8.cu"
#include "decode_sm90_fp8_narrow.cuh"

static_assert(sm90_fp8_narrow::Layout<32>::kBytes <= MLA_DECODE_FP8_SMEM_BYTES, "narrow<32> fits the FP8 launch");

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_fp8_v3(const __grid_constant__ MlaDecodeParams p) {
    if (p.rows_per_seq <= 16) decode_sm90_fp8_narrow_body<16>(p);
    else if (p.rows_per_seq <= 32) decode_sm90_fp8_narrow_body<32>(p);
    else decode_sm90_fp8_wide_body(p);
}
