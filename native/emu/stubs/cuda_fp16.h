// The fp16 names the kernels use, for the CPU emulator (cuda_emu.h).
#pragma once
#include <cmath>
#include <cstdint>
struct __half { unsigned short x; };
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
inline float __half2float(__half h) {  // exact: every f16 is an f32
    const int s = h.x >> 15, e = (h.x >> 10) & 0x1F, m = h.x & 0x3FF;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1.f + m / 1024.f, e - 15);
    return s ? -v : v;
}
