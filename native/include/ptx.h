// ptx.h -- every inline-PTX instruction the kernels use, wrapped once.
// Each wrapper names its instruction, its operand constraints and what the
// caller must guarantee. sm_80+ instructions only in this version (mma.sync,
// ldmatrix, cp.async); the wgmma / cp.async.bulk.tensor / mbarrier wrappers
// of the next milestone go here too.
#pragma once
#include <cstdint>
#include <math.h>
#include <cuda_bf16.h>

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

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 {d0..d3}, [addr];
// Four 8x8 b16 matrices. Lanes 8m..8m+7 give the 16-byte-aligned addresses of
// rows 0..7 of matrix m. Afterwards d[m] of lane l holds row l/4, columns
// 2*(l%4), 2*(l%4)+1 of matrix m (the mma A/B fragment order). Warp-wide,
// all 32 lanes must execute it. Conflict-free when each 8-lane phase hits 8
// distinct 16-byte bank groups.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(addr));
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {d0..d3}, [addr];
// Same addressing as ldmatrix_x4, but each matrix is transposed on the way:
// d[m] of lane l holds rows 2*(l%4), 2*(l%4)+1 of column l/4 of the stored
// matrix m. Used to read a row-major [k][n] tile as an mma B fragment.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&d)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(addr));
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32  D = A*B + C (in place).
// Fragments (g = lane/4, t = lane%4), each b32 register = 2 bf16, low half
// first:
//   A 16x16 row-major: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..),
//                      a3 = (g+8, 2t+8..)
//   B 16x8 (k x n):    b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C/D 16x8 fp32:     c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// Warp-wide.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

}  // namespace ptx
