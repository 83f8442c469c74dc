// The bf16 names the kernels use, for the CPU emulator (cuda_emu.h).
#pragma once
#include <cstdint>
#include <cstring>
#include "cuda_fp16.h"
struct __nv_bfloat16 { unsigned short x; };
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
// Round to nearest even; NaN stays a (quiet) NaN of its sign, as cvt.rn.bf16.f32 does.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40)};
    u += 0x7FFFu + ((u >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t u = (uint32_t)b.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
