// decode_narrow_dispatch.cuh -- the two narrow candidates' bodies, by rows_per_seq: the transposed narrow body
// (decode_sm90_narrow.cuh) for at most 16 or 32 query rows, else the exported kernel's body of the same dtype.
// Used by the harness-only candidates (decode_narrow_candidates.cu) and, when the module is built with
// MLA_EXPORT_NARROW (build.sh: EXPORT_NARROW=1), by the exported kernels themselves, so that a device round can
// run the service's checks and bench on the candidates without another build of the service.
#pragma once
#include "mla_config.h"
#include "decode_sm90_tma.cu"
#include "decode_sm90_fp8.cu"
#include "decode_sm90_narrow.cuh"

static_assert(sm90_narrow::Layout<32, true>::kBytes <= MLA_DECODE_FP8_SMEM_BYTES, "fp8 narrow<32> fits the FP8 launch");
static_assert(sm90_narrow::Layout<32, false>::kBytes <= MLA_DECODE_SMEM_BYTES, "bf16 narrow<32> fits the bf16 launch");

// fp8 v3: narrow, else fp8 v1 with the fast dequantization.
__device__ __forceinline__ void decode_fp8_v3_body(const MlaDecodeParams& p) {
    if (p.rows_per_seq <= 16) decode_sm90_narrow_body<16, true>(p);
    else if (p.rows_per_seq <= 32) decode_sm90_narrow_body<32, true>(p);
    else decode_sm90_fp8_wide_body<true>(p);
}

// v18: narrow, else v15.
__device__ __forceinline__ void decode_v18_body(const MlaDecodeParams& p) {
    if (p.rows_per_seq <= 16) decode_sm90_narrow_body<16, false>(p);
    else if (p.rows_per_seq <= 32) decode_sm90_narrow_body<32, false>(p);
    else decode_sm90_tma_body<true>(p);
}
