// The bf16 names the kernels use, for check.sh (see cuda_stub_core.h).
#pragma once
#include "cuda_stub_core.h"
#include "cuda_fp16.h"
struct __nv_bfloat16 { unsigned short x; };
__device__ inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
__device__ inline __nv_bfloat16 __float2bfloat16_rn(float f) { unsigned short r; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f)); return __nv_bfloat16{r}; }
__device__ inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
__device__ inline float __bfloat162float(__nv_bfloat16 b) { return __builtin_bit_cast(float, (unsigned)b.x << 16); }
