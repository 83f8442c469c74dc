// decode_cluster_candidates.cu -- harness-only candidate (build.sh links this
// file into the check harness when it compiles, not into the module):
//   flashmla_decode_splitkv_v19   v15 in clusters of two CTAs along x: two row
//                                 groups of one part share each page by TMA
//                                 multicast (decode_sm90_tma.cu, kCluster2)
// It takes the exported kernel's launch plus a cluster dimension of (2, 1, 1)
// when num_row_groups is even (cudaLaunchKernelEx's cluster attribute, as the
// C# backend does for a module that exports the cluster width: mla_params.h,
// MLA_DECODE_CLUSTER_WIDTH_SUFFIX). Launched without one (odd row groups, or a
// plain launch) every CTA is its own cluster and it is v15.
#include "decode_cluster_dispatch.cuh"

extern "C" __global__ void __launch_bounds__(MLA_DECODE_THREADS, 1)
    flashmla_decode_splitkv_v19(const __grid_constant__ MlaDecodeParams p) {
    decode_v19_body(p);
}
