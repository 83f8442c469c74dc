// decode_reference.cu -- flashmla_decode_reference, the checks' reference MLA
// decode over the bf16 pool kv_pool (decode_reference.cuh: fp32 throughout,
// one warp per query row, obviously right is its only job).
#include "decode_reference.cuh"

extern "C" __global__ void __launch_bounds__(MLA_REFERENCE_THREADS)
    flashmla_decode_reference(const __grid_constant__ MlaDecodeParams p) {
    decode_reference_rows(p, static_cast<const __nv_bfloat16*>(p.kv_pool));
}
