// fp8_kv.cuh -- the FP8 KV token format's device arithmetic (mla_params.h,
// "FP8 KV cache"): quantizing one bf16 row (a warp) and dequantizing eight
// codes. The append kernels, the FP8 decode kernel and the checks' dequantizer
// share these, so the service and its checks use one definition.
#pragma once
#include <cuda_fp16.h>
#include "mla_config.h"
#include "ptx.h"

namespace mla {

constexpr int kFp8TokenBytes = MLA_FP8_TOKEN_BYTES;   // 656
constexpr int kFp8PageBytes = MLA_FP8_PAGE_BYTES;     // 41984
constexpr int kFp8ScaleOffset = MLA_FP8_SCALE_OFFSET; // 512
constexpr int kFp8RopeOffset = MLA_FP8_ROPE_OFFSET;   // 528
constexpr int kFp8Tiles = kDimV / MLA_FP8_TILE;       // 4 scales a token
static_assert(kFp8TokenBytes == kDimV + 4 * kFp8Tiles + 2 * (kDimK - kDimV), "token = codes + scales + rope");
static_assert(kFp8TokenBytes % 16 == 0, "tokens keep 16-byte alignment");

// Eight e4m3 codes (little-endian in `codes`: code 0 in the low byte of .x)
// times `scale`, rounded to bf16: the format's dequantization, value by value
// float(code) * scale in fp32 (round to nearest even), then bf16 (round to
// nearest even). Returns the eight bf16 in memory order.
__device__ __forceinline__ uint4 fp8_dequant8(uint2 codes, float scale) {
    uint32_t out[4];
    const uint32_t w[2] = {codes.x, codes.y};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint16_t pair = static_cast<uint16_t>(w[k >> 1] >> (16 * (k & 1)));
        const uint32_t h2 = ptx::cvt_f16x2_from_e4m3x2(pair);
        const float lo = __half2float(__ushort_as_half(static_cast<unsigned short>(h2 & 0xFFFFu)));
        const float hi = __half2float(__ushort_as_half(static_cast<unsigned short>(h2 >> 16)));
        out[k] = ptx::pack_bf16x2(__fmul_rn(lo, scale), __fmul_rn(hi, scale));
    }
    return make_uint4(out[0], out[1], out[2], out[3]);
}

// Four e4m3 codes (little-endian in w: code 0 in the low byte) as four bf16
// (memory order: .x = codes 0, 1; .y = codes 2, 3) of value code * 2^-120,
// exactly, with integer operations only (no conversion instructions, which run
// at a quarter of the integer rate on sm_90). Why it is exact: an e4m3 code
// s eeee mmm is 2^(e-7) * 1.mmm (or 2^-6 * 0.mmm for e = 0); moving its seven
// exponent-and-mantissa bits into the low exponent bits and the top mantissa
// bits of a bf16 gives 2^(e-127) * 1.mmm (or the bf16 subnormal 2^-126 *
// 0.mmm): the same value times 2^-120 in every case. The NaN codes (0x7F,
// 0xFF) come out finite (+-1.875 * 2^-112): in the format a NaN tile is a NaN
// scale (mla_params.h), which the caller multiplies in. The caller undoes the
// 2^-120 in fp32 (decode_sm90_narrow.cuh).
__device__ __forceinline__ uint2 fp8x4_to_bf16_exp_shifted(uint32_t w) {
    const uint32_t lo = __byte_perm(w, 0u, 0x1404);  // bytes 0, code 0, 0, code 1: each code in the high byte of a half
    const uint32_t hi = __byte_perm(w, 0u, 0x3424);  // bytes 0, code 2, 0, code 3
    return make_uint2((lo & 0x80008000u) | ((lo >> 4) & 0x07F007F0u), (hi & 0x80008000u) | ((hi >> 4) & 0x07F007F0u));
}

// fp8_dequant8 by bit moves and bf16 arithmetic (the wide FP8 decode's fast
// path, fp8 v3): c = code * 2^-120 exactly (fp8x4_to_bf16_exp_shifted), and
// scale * 2^120 split into two bf16, hi + lo (16 of its 24 bits); the result
// is fma(c, hi, c * lo), rounded once to bf16. Within 1 bf16 ulp of
// fp8_dequant8 and without a bias: the first version multiplied by
// bf16(scale) alone, which moved every value of a tile by the same relative
// amount (up to 2^-9) and put lse 1e-2 off the format's reference (the CPU
// emulator found it, native/emu). For a scale that is NaN or 255 or more (a
// tile whose largest magnitude is 114,240 or more, where scale * 2^120 would
// round past bf16's range) it is fp8_dequant8 itself.
__device__ __forceinline__ uint4 fp8_dequant8_fast(uint2 codes, float scale) {
    if (!(scale < 255.f)) return fp8_dequant8(codes, scale);
    const float s = scale * 1.329227995784916e36f;  // * 2^120: exact in fp32
    const uint32_t hi = ptx::pack_bf16x2(s, s);
    const float rest = s - __uint_as_float(hi << 16);  // exact: s and its bf16 rounding share the exponent range
    const uint32_t lo = ptx::pack_bf16x2(rest, rest);
    const uint2 a = fp8x4_to_bf16_exp_shifted(codes.x), b = fp8x4_to_bf16_exp_shifted(codes.y);
    const uint32_t c[4] = {a.x, a.y, b.x, b.y};
    uint32_t r[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = ptx::fma_bf16x2(c[k], hi, ptx::mul_bf16x2(c[k], lo));
    return make_uint4(r[0], r[1], r[2], r[3]);
}

// One warp quantizes one bf16 row of 576 values (16-byte aligned) into the
// 656-byte token at dst (16-byte aligned). Lane l takes values 16l .. 16l+15
// of the latent part, so the eight lanes 8t .. 8t+7 hold tile t and reduce
// its amax among themselves; lanes 0..7 copy the rope.
__device__ __forceinline__ void fp8_quantize_row_warp(const __nv_bfloat16* row, uint8_t* dst, int lane) {
    const uint4* src = reinterpret_cast<const uint4*>(row);
    const uint4 a = src[2 * lane], b = src[2 * lane + 1];
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float x[16];
    float amax = 0.f;
    bool nan = false;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        x[2 * k] = __uint_as_float(w[k] << 16);
        x[2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
    }
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        nan |= x[k] != x[k];
        amax = fmaxf(amax, fabsf(x[k]));
    }
#pragma unroll
    for (int m = 1; m < 8; m <<= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));
        nan |= __shfl_xor_sync(0xffffffffu, nan ? 1 : 0, m) != 0;
    }
    // A tile holding a NaN stores the default quiet NaN (0x7FC00000) as its scale, written
    // explicitly: NaN payloads are not specified through division.
    const float scale = nan ? __int_as_float(0x7fc00000) : __fdiv_rn(amax, 448.f);
    uint32_t q[4] = {0u, 0u, 0u, 0u};
    if (scale != 0.f) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t lo = ptx::cvt_e4m3x2(__fdiv_rn(x[4 * k], scale), __fdiv_rn(x[4 * k + 1], scale));
            const uint32_t hi = ptx::cvt_e4m3x2(__fdiv_rn(x[4 * k + 2], scale), __fdiv_rn(x[4 * k + 3], scale));
            q[k] = lo | (hi << 16);
        }
    }
    reinterpret_cast<uint4*>(dst)[lane] = make_uint4(q[0], q[1], q[2], q[3]);
    if ((lane & 7) == 0) reinterpret_cast<float*>(dst + kFp8ScaleOffset)[lane >> 3] = scale;
    if (lane < 8)
        reinterpret_cast<uint4*>(dst + kFp8RopeOffset)[lane] = src[kDimV / 8 + lane];
}

}  // namespace mla
