// decode_export.cu -- flashmla_decode_splitkv, the decode kernel of the
// service ABI: v15 (decode_sm90_tma.cu: warpgroup roles, pages by TMA on three
// gates). The module holds no other decode implementation; the ones tried
// before and after it (v16 seesaw, v17 L2 prefetch) are in NOTES.md and git.
#include "mla_config.h"
#include "decode_sm90_tma.cu"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p) {
    decode_sm90_tma_body<true>(p);
}
