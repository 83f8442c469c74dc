// mla_kernels.h -- CUDA declarations of the exported kernels, for C++ hosts
// that link the kernel sources (the check harness). The service does not use
// this: it loads build/flashmla.fatbin by name (see mla_params.h).
#pragma once
#include "mla_params.h"

extern "C" {
__global__ void flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p);
// Each decode implementation under its own name (same launch; not part of the
// service ABI, which has flashmla_decode_splitkv = the one mla_config.h's
// MLA_DECODE_EXPORT selects).
__global__ void flashmla_decode_v2_mma(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_decode_v5_wgmma_roles(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_decode_v14_tma(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_decode_v15_tma_block_gates(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_combine(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_decode_reference(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_append_kv(const __grid_constant__ KvAppendParams p);
__global__ void flashmla_copy_blocks(const __grid_constant__ BlockCopyParams p);
}
