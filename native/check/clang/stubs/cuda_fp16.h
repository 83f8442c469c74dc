// The fp16 names the kernels use, for check.sh (see cuda_stub_core.h).
#pragma once
#include "cuda_stub_core.h"
struct __half { unsigned short x; };
__device__ inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
__device__ inline float __half2float(__half h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.x)); return f; }
