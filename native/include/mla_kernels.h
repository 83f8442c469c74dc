// mla_kernels.h -- CUDA declarations of the exported kernels, for C++ hosts
// that link the kernel sources (the check harness). The service does not use
// this: it loads build/flashmla.fatbin by name (see mla_params.h).
#pragma once
#include "mla_params.h"

extern "C" {
__global__ void flashmla_decode_splitkv(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_combine(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_decode_reference(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_append_kv(const __grid_constant__ KvAppendParams p);
__global__ void flashmla_copy_blocks(const __grid_constant__ BlockCopyParams p);
__global__ void flashmla_decode_splitkv_fp8(const __grid_constant__ MlaDecodeParams p);
__global__ void flashmla_append_kv_fp8(const __grid_constant__ KvAppendParams p);
__global__ void flashmla_append_kv_fp8_raw(const __grid_constant__ KvAppendParams p);
__global__ void flashmla_copy_blocks_fp8(const __grid_constant__ BlockCopyParams p);
}
