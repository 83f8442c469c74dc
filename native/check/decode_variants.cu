// decode_variants.cu -- decode kernels the check harness builds beside the
// service's module, to check and time them in the same run as the exported
// one; none of them is in build/flashmla.fatbin. Same launch as
// flashmla_decode_splitkv (mla_params.h).
//   flashmla_decode_v16_seesaw   the seesaw schedule (decode_sm90_seesaw.cu): correct, not
//                                faster than the exported v15 on the H200 (NOTES.md)
#include "../kernels/decode_sm90_seesaw.cu"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_v16_seesaw(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_seesaw_body(p);
}
