// decode_export.cu -- flashmla_decode_splitkv, the decode kernel of the
// service ABI: a thin wrapper around the implementation that mla_config.h's
// MLA_DECODE_EXPORT selects. Every implementation kept also has its own kernel
// (flashmla_decode_v2_mma, _v5_wgmma_roles, _v14_tma, _v15_tma_block_gates),
// same launch, for same-run comparison; the service only uses this one. (v1,
// v3, v4 and v6-v13 were removed once v15 met the first milestone: NOTES.md.)
#include "mla_config.h"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p) {
#if MLA_DECODE_EXPORT == 2
    decode_v2_mma_body(p);
#elif MLA_DECODE_EXPORT == 5
    decode_sm90_roles_body(p);
#elif MLA_DECODE_EXPORT == 14
    decode_sm90_tma_body<false>(p);
#elif MLA_DECODE_EXPORT == 15
    decode_sm90_tma_body<true>(p);
#else
#error "MLA_DECODE_EXPORT must be 2, 5, 14 or 15"
#endif
}
