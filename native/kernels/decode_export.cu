// decode_export.cu -- flashmla_decode_splitkv, the decode kernel of the
// service ABI: v15 (decode_sm90_tma.cu: warpgroup roles, pages by TMA on three
// gates). The module holds no other decode implementation; the ones tried
// before and after it (v16 seesaw, v17 L2 prefetch) are in NOTES.md and git.
// Built with MLA_EXPORT_NARROW (build.sh EXPORT_NARROW=1, for a device round
// that tries the candidate in the service): v18 (decode_narrow_dispatch.cuh).
#include "mla_config.h"
#ifdef MLA_EXPORT_NARROW
#include "decode_narrow_dispatch.cuh"
#else
#include "decode_sm90_tma.cu"
#endif

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p) {
#ifdef MLA_EXPORT_NARROW
    decode_v18_body(p);
#else
    decode_sm90_tma_body<true>(p);
#endif
}
