// decode_cluster_dispatch.cuh -- v19's body (the harness candidate of decode_cluster_candidates.cu, and the
// exported decode when the module is built with MLA_EXPORT_CLUSTER, build.sh EXPORT_CLUSTER=1): v15 in 2-CTA
// clusters sharing each page by multicast when launched in clusters of two, plain v15 otherwise.
#pragma once
#include "mla_config.h"
#include "decode_sm90_tma.cu"

__device__ __forceinline__ void decode_v19_body(const MlaDecodeParams& p) {
    if (ptx::cluster_nctarank() == 2) decode_sm90_tma_body<true, true>(p);
    else decode_sm90_tma_body<true, false>(p);
}
