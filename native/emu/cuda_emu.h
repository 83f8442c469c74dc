// cuda_emu.h -- the CUDA names the kernels use, given host meanings, so that
// the kernels compile with the host C++ compiler and run on the CPU emulator
// (runtime.h): threads are fibers of one CTA at a time, shared memory is a
// buffer, barriers, shuffles and wgmma are rendezvous of the fibers that take
// part. Force-included (-include) ahead of every kernel; ptx.h switches to
// ptx_emu.h under MLA_EMU. Only what the kernels call is here: a kernel that
// calls something new fails to compile until it is added.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define MLA_EMU 1
#define __host__
#define __device__
#define __global__
#define __shared__ static  // one CTA runs at a time: a static is shared by its fibers
#define __constant__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

namespace emu {
struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};
const Dim3& thread_idx();
const Dim3& block_idx();
const Dim3& block_dim();
const Dim3& grid_dim();
void syncthreads();
uint32_t shfl_xor_bits(unsigned mask, uint32_t v, int lane_mask);
int any_sync(unsigned mask, int pred);
[[noreturn]] void trap();
uint32_t shared_offset(const void* p);
uint8_t* dynamic_smem();
}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }

inline void __syncthreads() { emu::syncthreads(); }
inline unsigned __shfl_xor_sync(unsigned m, unsigned v, int l) { return emu::shfl_xor_bits(m, v, l); }
inline int __shfl_xor_sync(unsigned m, int v, int l) { return (int)emu::shfl_xor_bits(m, (uint32_t)v, l); }
inline float __shfl_xor_sync(unsigned m, float v, int l) { return __uint_as_float(emu::shfl_xor_bits(m, __float_as_uint(v), l)); }
inline int __any_sync(unsigned m, int p) { return emu::any_sync(m, p); }
inline void __trap() { emu::trap(); }
inline size_t __cvta_generic_to_shared(const void* p) { return emu::shared_offset(p); }

// prmt.b32 d, x, y, s (default mode): byte n of d is byte (s >> 4n) & 7 of the 8 bytes {y:x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t b = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) r |= (unsigned)((b >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
    return r;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float __fdiv_rn(float a, float b) { volatile float q = a / b; return q; }
inline float __fmul_rn(float a, float b) { volatile float q = a * b; return q; }
inline float __log2f(float a) { return std::log2(a); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fabsf(float a) { return std::fabs(a); }
inline float expf(float a) { return std::exp(a); }
inline float logf(float a) { return std::log(a); }
inline float exp2f(float a) { return std::exp2(a); }
