// cuda_stub_core.h -- the few CUDA device-API names the kernels use, defined
// over clang's NVPTX builtins, so that check.sh can compile the kernels with
// clang and no CUDA toolkit (CI has none). Only what the kernels call is
// here; a kernel that calls something new fails check.sh until it is added.
// These are not the toolkit's definitions: nothing built with them runs.
#pragma once
#define __host__ __attribute__((host))
#define __device__ __attribute__((device))
#define __global__ __attribute__((global))
#define __shared__ __attribute__((shared))
#define __constant__ __attribute__((constant))
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#define __grid_constant__  // clang 14 does not know it; it only changes how the parameter is passed
#define __align__(n) __attribute__((aligned(n)))
#include <__clang_cuda_builtin_vars.h>
#include <stdint.h>
#include <stddef.h>
#include <math.h>
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
__device__ inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
__device__ inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
__device__ inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
__device__ inline float2 make_float2(float a, float b) { return float2{a, b}; }
// __syncthreads is a clang builtin
__device__ inline int __shfl_xor_sync(unsigned m, int v, int l) { return __nvvm_shfl_sync_bfly_i32(m, v, l, 31); }
__device__ inline unsigned __shfl_xor_sync(unsigned m, unsigned v, int l) { return (unsigned)__nvvm_shfl_sync_bfly_i32(m, (int)v, l, 31); }
__device__ inline float __shfl_xor_sync(unsigned m, float v, int l) { return __nvvm_shfl_sync_bfly_f32(m, v, l, 31); }
__device__ inline int __any_sync(unsigned m, int p) { return __nvvm_vote_any_sync(m, p); }
__device__ inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) { return __nvvm_prmt(x, y, s); }
__device__ inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
__device__ inline float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }
__device__ inline float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
__device__ inline float fabsf(float a) { return __builtin_fabsf(a); }
__device__ inline int min(int a, int b) { return a < b ? a : b; }
__device__ inline int max(int a, int b) { return a > b ? a : b; }
__device__ inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
__device__ inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
__device__ inline float __fdiv_rn(float a, float b) { return a / b; }
__device__ inline float __fmul_rn(float a, float b) { return a * b; }
__device__ inline float __log2f(float a) { return __nvvm_lg2_approx_f(a); }
__device__ inline void __trap() { __builtin_trap(); }
__device__ inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
__device__ inline float expf(float a) { return __nvvm_ex2_approx_f(a * 1.44269504f); }
__device__ inline float logf(float a) { return __nvvm_lg2_approx_f(a) * 0.69314718f; }
__device__ inline float exp2f(float a) { return __nvvm_ex2_approx_f(a); }
