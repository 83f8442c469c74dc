// decode_export.cu -- flashmla_decode_splitkv, the decode kernel of the
// service ABI: a thin wrapper around the implementation that mla_config.h's
// MLA_DECODE_EXPORT selects. Every implementation also has its own kernel
// (flashmla_decode_v2_mma, _v3_wgmma, _v4_wgmma_overlap, _v5_wgmma_roles,
// _v6_wgmma_pieces, _v7_wgmma_roles_fence, _v8_wgmma_roles_pieces, _v9_wgmma_early_free,
// _v10_wgmma_early_pv, _v11_wgmma_late_ready, _v12_wgmma_late_ready_full,
// _v13_wgmma_ready_after_s, _v14_tma, _v15_tma_block_gates),
// same launch, for same-run comparison; the service only uses this one.
#include "mla_config.h"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p) {
#if MLA_DECODE_EXPORT == 2
    decode_v2_mma_body(p);
#elif MLA_DECODE_EXPORT == 3
    decode_sm90_body<false>(p);
#elif MLA_DECODE_EXPORT == 4
    decode_sm90_body<true>(p);
#elif MLA_DECODE_EXPORT == 5
    decode_sm90_roles_body(p);
#elif MLA_DECODE_EXPORT == 6
    decode_sm90_pieces_body(p);
#elif MLA_DECODE_EXPORT == 7
    decode_sm90_roles_v7_body<false, true, false, false>(p);
#elif MLA_DECODE_EXPORT == 8
    decode_sm90_roles_v7_body<true, true, false, false>(p);
#elif MLA_DECODE_EXPORT == 9
    decode_sm90_roles_v7_body<false, false, true, false>(p);
#elif MLA_DECODE_EXPORT == 10
    decode_sm90_roles_v7_body<false, false, true, true>(p);
#elif MLA_DECODE_EXPORT == 11
    decode_sm90_roles_v7_body<false, false, false, false, true, true>(p);
#elif MLA_DECODE_EXPORT == 12
    decode_sm90_v12_body(p);
#elif MLA_DECODE_EXPORT == 13
    decode_sm90_roles_v7_body<false, false, false, false, true, true, true>(p);
#elif MLA_DECODE_EXPORT == 14
    decode_sm90_tma_body<false>(p);
#elif MLA_DECODE_EXPORT == 15
    decode_sm90_tma_body<true>(p);
#else
#error "MLA_DECODE_EXPORT must be 2 .. 15"
#endif
}
