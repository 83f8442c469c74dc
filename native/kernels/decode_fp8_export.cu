// decode_fp8_export.cu -- flashmla_decode_splitkv_fp8, the FP8 decode kernel
// of the service ABI (mla_params.h): fp8 v1 (decode_sm90_fp8.cu).
#include "mla_config.h"
#include "decode_sm90_fp8.cu"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_fp8(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_fp8_wide_body<false>(p);
}
