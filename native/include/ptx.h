// ptx.h -- every inline-PTX instruction the kernels use, wrapped once.
// Each wrapper names its instruction, its operand constraints and what the
// caller must guarantee. sm_80+ instructions (cp.async, ex2, bf16 packing,
// streaming loads) and sm_90a ones (wgmma, its descriptors and fences,
// fence.proxy.async, mbarriers, TMA) for the Hopper decode kernel
// (decode_sm90_tma.cu).
// Build for sm_90a: -gencode=arch=compute_90a,code=sm_90a.
#pragma once
#if defined(MLA_EMU)
// The CPU emulator (native/emu/) gives every wrapper below a host meaning; the kernels compile unchanged.
#include "../emu/ptx_emu.h"
#else
#include <cstdint>
#include <math.h>
#include <cuda_bf16.h>

// The 1 KB-aligned dynamic shared memory of a kernel, as a uint8_t array `name`
// (a macro so the emulator can give it a host meaning).
#define MLA_DYNAMIC_SMEM(name) extern __shared__ __align__(1024) uint8_t name[]

namespace ptx {

// cvta.to.shared: generic -> 32-bit shared-window address, what every
// shared-memory PTX operand below takes ("r" constraint).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes;
// 16-byte global->shared copy through L2 only (.cg: no L1 allocation).
// dst and src 16-byte aligned. Bytes src_bytes..15 of dst are zero-filled and
// not read: src_bytes = 0 writes 16 zero bytes and reads nothing (src must
// still be a valid-looking address; pass any in-bounds pointer).
// Completion: cp_async_commit() groups it; cp_async_wait<N>() waits.
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}

// cp.async.commit_group: closes the group of this thread's cp.async so far.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// cp.async.wait_group N: waits until at most N of this thread's committed
// groups are pending. Orders this thread only: follow with a barrier before
// other threads read the data.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ex2.approx.ftz.f32: 2^x, about 2 ulp; ex2(-inf) = +0, which the masked
// softmax relies on.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Pack two floats into one b32 of two bf16 (round to nearest even), lo in
// the low half: cvt.rn.bf16x2.f32 d, hi, lo.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// mul.rn.bf16x2 d, a, b: two bf16 products, each rounded to nearest even
// (sm_90; subnormal inputs and results are kept, not flushed).
__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("mul.rn.bf16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// fma.rn.bf16x2 d, a, b, c: two a * b + c, each rounded once to bf16 (nearest
// even; sm_90: subnormals kept).
__device__ __forceinline__ uint32_t fma_bf16x2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// ld.global.nc.L1::no_allocate.v4.u32: 16-byte read-only load that streams
// past L1 (for data read once). Address 16-byte aligned; the data must not be
// written during the kernel.
__device__ __forceinline__ uint4 ld_stream_16(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// ---- shared memory by shared-window address (smem_addr) ----
// ld.shared / st.shared of 2, 4, 8 or 16 bytes at `addr` (aligned to the
// access size). asm volatile keeps them in order with the other volatile asm
// (barriers, fences, wgmma); the stores also clobber memory. A store that a
// wgmma (async proxy) will read needs fence_proxy_async_smem() in the storing
// thread before the barrier that publishes it.
__device__ __forceinline__ uint4 ld_shared_v4(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}
__device__ __forceinline__ uint2 ld_shared_v2(uint32_t addr) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}
__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_shared_f32(uint32_t addr, float v) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
__device__ __forceinline__ void st_shared_u16(uint32_t addr, uint16_t v) {
    asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(v) : "memory");
}

// cvt.rn.satfinite.e4m3x2.f32 d, hi, lo: two floats to two float8_e4m3fn
// codes, lo in the low byte. Round to nearest even; finite values past +-448
// saturate to +-448; NaN becomes a NaN code.
__device__ __forceinline__ uint16_t cvt_e4m3x2(float lo, float hi) {
    uint16_t d;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(d) : "f"(hi), "f"(lo));
    return d;
}

// cvt.rn.f16x2.e4m3x2 d, a: two float8_e4m3fn codes (a's low byte -> d's low
// half) to two f16, exactly (every e4m3 value is an f16 value).
__device__ __forceinline__ uint32_t cvt_f16x2_from_e4m3x2(uint16_t a) {
    uint32_t d;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(d) : "h"(a));
    return d;
}

// ======================= Hopper (sm_90a) ===================================

// fence.proxy.async.shared::cta: orders this thread's earlier generic-proxy
// shared-memory writes (st.shared, cp.async once waited for) before later
// async-proxy accesses (wgmma operand reads). Every writing thread runs it
// after its writes and before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// wgmma.fence.sync.aligned: orders earlier register writes (the accumulator,
// e.g. a softmax rescale) before the next wgmma.mma_async that uses them.
// Warpgroup-wide.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// wgmma.commit_group.sync.aligned: closes the group of wgmma.mma_async issued
// so far by this warpgroup. Warpgroup-wide.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// wgmma.wait_group.sync.aligned N: waits until at most N committed groups are
// pending; afterwards their accumulators may be read and their shared-memory
// operands overwritten. Warpgroup-wide.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// No instruction: pins each register so the compiler neither hoists reads of
// a wgmma accumulator above wgmma_wait nor sinks writes below wgmma_fence.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The same for b32 registers (the A fragments of a register-A wgmma, which
// must stay allocated until the wgmma_wait that retires it).
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// wgmma shared-memory matrix descriptor (64 bits), 128-byte swizzle:
//   bits  0-13 start address >> 4 (shared window, 16-byte aligned)
//   bits 16-29 leading-dimension byte offset >> 4
//   bits 32-45 stride-dimension byte offset >> 4
//   bits 49-51 base offset = 0 (every swizzle atom we point into is
//              1024-byte aligned; the start may move inside an atom along K
//              by multiples of 32 bytes, the hardware applies the XOR to the
//              address bits)
//   bits 62-63 swizzle mode 1 = 128B (Swizzle<3,4,3>: 16-byte chunk c of a
//              128-byte row r is stored at chunk c ^ (r % 8); 8 rows = 1 KB atom)
// K-major operand (rows = M or N, 64 K-elements per 128-byte row): lbo unused
// (pass 16), sbo = bytes between 8-row groups.
// N-major operand (rows = K, 64 N-elements per 128-byte row): lbo = bytes
// between 64-column blocks along N, sbo = bytes between 8-row groups along K.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    uint64_t d = static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4);
    d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16;
    d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32;
    d |= static_cast<uint64_t>(1) << 62;
    return d;
}

// wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 d, desc-a, desc-b, p, 1, 1, 0, 0;
// D(64x32 fp32) = A(64x16, K-major, smem) * B(16x32, K-major, smem) (+ D if
// accumulate != 0; with accumulate == 0 the old D is ignored). Warpgroup-wide:
// all 128 threads of an aligned warpgroup issue it with the same descriptors.
// Accumulator fragment (warp w of the group, g = lane/4, t = lane%4):
//   d[4j+0], d[4j+1] = (row 16w+g,   cols 8j+2t, 8j+2t+1)
//   d[4j+2], d[4j+3] = (row 16w+g+8, cols 8j+2t, 8j+2t+1),  j = 0..N/8-1
// Asynchronous: wgmma_fence() before it when d was written by other
// instructions, wgmma_commit() + wgmma_wait<>() before d is read, and
// fence_regs() on d after the wait so the compiler does not hoist reads.
// Shared memory written by ordinary stores or cp.async needs
// fence_proxy_async_smem() in the writing threads before the barrier.
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}

// The narrow shapes of the transposed decode (decode_sm90_narrow.cuh), where the 64 rows of the
// tile are tokens or V columns and N (16 or 32) is the query rows:
// wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 d, desc-a, desc-b, p, 1, 1, 0, 0;  (8 fp32 a thread)
// and the same with imm-trans-a = 1 (the _ta forms): A is read MN-major, i.e. stored with M contiguous (a page
// [tokens][columns] read as V^T: M = columns, K = tokens); legal for 16-bit types only. Fragment layout, ordering
// and fence rules as wgmma_m64n32k16_ss (j = 0..N/8-1).
__device__ __forceinline__ void wgmma_m64n16k16_ss(float (&d)[8], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}

__device__ __forceinline__ void wgmma_m64n16k16_ss_ta(float (&d)[8], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}

__device__ __forceinline__ void wgmma_m64n32k16_ss_ta(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}

// The narrow products by N (16 or 32): wgmma_m64nNk16_ss<N>(d, ...) and wgmma_m64nNk16_ss_ta<N>(d, ...).
template <int N>
__device__ __forceinline__ void wgmma_m64nNk16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    static_assert(N == 16 || N == 32, "narrow wgmma: N is 16 or 32");
    if constexpr (N == 16) wgmma_m64n16k16_ss(d, desc_a, desc_b, accumulate);
    else wgmma_m64n32k16_ss(d, desc_a, desc_b, accumulate);
}
template <int N>
__device__ __forceinline__ void wgmma_m64nNk16_ss_ta(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    static_assert(N == 16 || N == 32, "narrow wgmma: N is 16 or 32");
    if constexpr (N == 16) wgmma_m64n16k16_ss_ta(d, desc_a, desc_b, accumulate);
    else wgmma_m64n32k16_ss_ta(d, desc_a, desc_b, accumulate);
}

// wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 d, desc-a, desc-b, p, 1, 1, 0, 1;
// D(64x256 fp32) = A(64x16, K-major, smem) * B(16x256, N-major = transposed,
// smem) (+ D if accumulate != 0). imm-trans-b = 1: B is stored with N
// contiguous (a V tile [tokens][columns]); legal for 16-bit types only.
// Same fragment layout, ordering and fence rules as wgmma_m64n32k16_ss
// (j = 0..31, 128 fp32 registers per thread).
__device__ __forceinline__ void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}


// wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 d, desc-a, desc-b, p, 1, 1, 0, 0;
// D(64x64 fp32) = A(64x16, K-major, smem) * B(16x64, K-major, smem) (+ D if
// accumulate != 0). Fragment layout, ordering and fence rules as
// wgmma_m64n32k16_ss (j = 0..7, 32 fp32 registers per thread).
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate)
        : "memory");
}

// wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 d, {a0, a1, a2, a3}, desc-b, p, 1, 1, 1;
// D(64x256 fp32) = A(64x16 bf16, registers) * B(16x256, N-major, smem) (+ D
// if accumulate != 0). A fragment of warp w of the group (g = lane/4,
// t = lane%4), each register two bf16, low half = lower column:
//   a0 = (row 16w+g, k 2t..2t+1)    a1 = (row 16w+g+8, k 2t..2t+1)
//   a2 = (row 16w+g, k 2t+8..2t+9)  a3 = (row 16w+g+8, k 2t+8..2t+9)
// (the mma.sync A layout; an m64nN fp32 accumulator's n8 tiles 2kk, 2kk+1
// repacked give the A fragment of k-step kk). wgmma_fence() after the a
// registers are written; they must stay unchanged until wgmma_wait.
__device__ __forceinline__ void wgmma_m64n256k16_rs_tb(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b,
                                                       int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate)
        : "memory");
}

// mbarrier.init.shared::cta.b64 [bar], count: a phase completes after `count`
// arrivals. One thread initialises; a __syncthreads() publishes it. bar is an
// 8-byte-aligned shared-memory word used only through these wrappers.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// cp.async.mbarrier.arrive.noinc.shared::cta.b64 [bar]: one arrival on bar
// once all of this thread's earlier cp.async copies have landed (.noinc: the
// arrival counts against the count given to mbarrier_init, so a barrier fed
// by T copying threads is initialised with T). Returns at once.
__device__ __forceinline__ void mbarrier_arrive_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// mbarrier.try_wait.parity.shared::cta.b64 in a loop: returns once the phase
// with parity `parity` (0 for the first phase, then alternating) has
// completed. Acquire semantics for this thread: writes made visible by the
// arrivals (cp.async data) can be read after it; follow with
// fence_proxy_async_smem() before wgmma reads them.
__device__ __forceinline__ void mbarrier_wait_parity(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}

// bar.sync id, count: named barrier (id 1..15; 0 is __syncthreads), waits
// until `count` threads (a multiple of 32) have arrived or synced on it;
// orders shared-memory accesses like __syncthreads among them. With
// named_bar_arrive this is a one-way signal: producers arrive, consumers sync.
template <int kId, int kCount>
__device__ __forceinline__ void named_bar_sync() {
    static_assert(kId > 0 && kId < 16 && kCount % 32 == 0, "named barrier id 1..15, count a multiple of 32");
    asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kCount) : "memory");
}

// bar.arrive id, count: counts this thread's warp towards barrier kId without
// waiting; its earlier shared-memory writes are visible to the threads that
// complete a bar.sync on the same barrier phase. Every phase needs exactly
// `count` threads between arrivals and syncs, so arrivals must never run a
// phase ahead of the syncs (the caller's protocol guarantees it).
template <int kId, int kCount>
__device__ __forceinline__ void named_bar_arrive() {
    static_assert(kId > 0 && kId < 16 && kCount % 32 == 0, "named barrier id 1..15, count a multiple of 32");
    asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kCount) : "memory");
}

// ---- TMA (cp.async.bulk.tensor) and transaction-counted mbarriers ----------

// fence.mbarrier_init.release.cluster + fence.proxy.async.shared::cta: makes
// mbarrier_init's writes visible to the async proxy (the TMA unit that
// signals complete_tx on them). The initialising thread runs it once after
// its inits, before the __syncthreads() that publishes them.
__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
}

// mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes: one arrival on
// bar that also adds `bytes` to the transaction count the current phase waits
// for; the phase completes when its arrivals are in AND that many bytes have
// landed (each TMA copy naming bar counts its bytes down). Issue it before
// (or with) the copies of the phase, from the thread that issues them.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// prefetch.tensormap [map]: pulls a tensor map (a __grid_constant__ kernel
// parameter, by its generic address) into the TMA unit's cache ahead of the
// first copy. A hint; any thread, any time.
__device__ __forceinline__ void prefetch_tensormap(const void* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes
//     [dst], [map, {x, y}], [bar];
// One TMA copy of the box at element column x, row y of the 2-D tensor `map`
// (a __grid_constant__ parameter's generic address) into shared memory at
// dst, laid out as the map's swizzle says (128B: dst 1024-byte aligned; box
// row r's 16-byte chunk c lands at chunk c ^ (r % 8) of row r). Counts the
// box's bytes down on bar. Asynchronous: the data is in the async proxy, so a
// wgmma may read it after an mbarrier wait without a proxy fence. A CTA
// launched without clusters is its own cluster, so its shared::cta addresses
// are valid shared::cluster addresses.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
        : "memory");
}

// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], bytes, [bar];
// A 1-D bulk (TMA) copy of `bytes` contiguous global bytes into shared memory
// at dst, counted down on bar (arm it with mbarrier_arrive_expect_tx). dst,
// src and bytes multiples of 16. The data is in the async proxy: a generic
// read (ld.shared) after the mbarrier wait needs no fence.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// ---- clusters (sm_90): CTAs launched together on one GPC, each able to reach the others' shared memory ----

// %cluster_ctarank / %cluster_nctarank: this CTA's rank in its cluster and the cluster's CTA count (1 for a launch
// without clusters).
__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ uint32_t cluster_nctarank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
    return r;
}

// mapa.shared::cluster.u32 d, addr, rank: the shared::cluster address of the word at shared::cta address `addr`
// in the CTA of rank `rank` (what the remote forms below take).
__device__ __forceinline__ uint32_t mapa_shared(uint32_t addr, uint32_t rank) {
    uint32_t d;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(d) : "r"(addr), "r"(rank));
    return d;
}

// mbarrier.arrive.release.cluster.shared::cluster.b64 _, [addr]: one arrival on an mbarrier of any CTA of the
// cluster (addr from mapa_shared). Release at cluster scope: this thread's earlier accesses (and what it
// synchronised with) are ordered before what the waiter does after the phase completes.
__device__ __forceinline__ void mbarrier_arrive_cluster(uint32_t cluster_addr) {
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr) : "memory");
}

// mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 in a loop: mbarrier_wait_parity for a barrier whose
// arrivals come from other CTAs of the cluster (acquire at cluster scope pairs with mbarrier_arrive_cluster).
__device__ __forceinline__ void mbarrier_wait_parity_cluster(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}

// barrier.cluster.arrive.release.aligned + barrier.cluster.wait.acquire.aligned: every thread of every CTA of the
// cluster (whole warps: .aligned). Orders all earlier accesses of the cluster's threads before all later ones, and
// publishes mbarrier_init to the other CTAs (after fence_mbarrier_init). A CTA must also run it before it exits
// while another CTA may still reach its shared memory.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster
//     [dst], [map, {x, y}], [bar], cta_mask;
// tma_load_2d into every CTA of the cluster whose bit is set in cta_mask: the box lands at the same CTA-relative
// offset dst in each and counts its bytes down on the mbarrier at offset bar in each (so every destination arms
// its own barrier for the bytes all issuers send it). dst and bar are this CTA's shared::cta addresses.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const void* map, int x, int y, uint32_t bar,
                                                      uint16_t cta_mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar), "h"(cta_mask)
        : "memory");
}

}  // namespace ptx
#endif  // MLA_EMU
