// decode_fp8_export.cu -- flashmla_decode_splitkv_fp8, the FP8 decode kernel
// of the service ABI (mla_params.h): fp8 v1 (decode_sm90_fp8.cu); with
// MLA_EXPORT_NARROW (build.sh EXPORT_NARROW=1) fp8 v3 (decode_narrow_dispatch.cuh).
#include "mla_config.h"
#ifdef MLA_EXPORT_NARROW
#include "decode_narrow_dispatch.cuh"
#else
#include "decode_sm90_fp8.cu"
#endif

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_fp8(const __grid_constant__ MlaDecodeParams p) {
#ifdef MLA_EXPORT_NARROW
    decode_fp8_v3_body(p);
#else
    decode_sm90_fp8_wide_body<false>(p);
#endif
}
