// decode_export.cu -- flashmla_decode_splitkv, the decode kernel of the
// service ABI: v15 (decode_sm90_tma.cu: warpgroup roles, pages by TMA on three
// gates). The module holds no other decode implementation; the ones tried
// before and after it (v16 seesaw, v17 L2 prefetch) are in NOTES.md and git.
// For a device round that tries candidates in the service without another
// build of it (build.sh):
//   MLA_EXPORT_NARROW   (EXPORT_NARROW=1)   v18 for at most 32 query rows (decode_narrow_dispatch.cuh)
//   MLA_EXPORT_CLUSTER  (EXPORT_CLUSTER=1)  v19 for more (decode_cluster_dispatch.cuh), and the module says
//                                           so: flashmla_decode_splitkv_cluster_x = 2 (mla_params.h)
#include "mla_config.h"
#ifdef MLA_EXPORT_NARROW
#include "decode_narrow_dispatch.cuh"
#endif
#ifdef MLA_EXPORT_CLUSTER
#include "decode_cluster_dispatch.cuh"
extern "C" __device__ int flashmla_decode_splitkv_cluster_x = 2;
#endif
#include "decode_sm90_tma.cu"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p) {
#if defined(MLA_EXPORT_NARROW) && defined(MLA_EXPORT_CLUSTER)
    if (p.rows_per_seq <= 32) decode_v18_body(p);
    else decode_v19_body(p);
#elif defined(MLA_EXPORT_NARROW)
    decode_v18_body(p);
#elif defined(MLA_EXPORT_CLUSTER)
    decode_v19_body(p);
#else
    decode_sm90_tma_body<true>(p);
#endif
}
