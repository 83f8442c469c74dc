// ptx_emu.h -- ptx.h's wrappers with host meanings, over the emulator's
// machine (runtime.h). Same names, same signatures, same contracts as ptx.h:
// included by ptx.h in place of its own body when MLA_EMU is defined.
#pragma once
#include <cstdint>
#include <cmath>
#include <cuda_bf16.h>
#include "runtime.h"
#include "../check/fp8_host.h"

#define MLA_DYNAMIC_SMEM(name) uint8_t* const name = ::emu::dynamic_smem()

namespace ptx {

inline uint32_t smem_addr(const void* p) { return emu::shared_offset(p); }

inline void cp_async_16_zfill(uint32_t dst, const void* src, uint32_t src_bytes) { emu::cp_async_16(dst, src, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait(N); }

// ex2.approx.ftz.f32: the exact 2^x (the hardware's is within 2 ulp), subnormal inputs and results flushed to zero.
inline float exp2_approx(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
    const float y = std::exp2(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}
inline uint32_t pack_bf16x2(float lo, float hi) {
    return static_cast<uint32_t>(__float2bfloat16_rn(lo).x) | (static_cast<uint32_t>(__float2bfloat16_rn(hi).x) << 16);
}
// mul.rn.bf16x2: a product of two bf16 is exact in fp32 unless it leaves fp32's normal range, then rounded once.
inline uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
    const float lo = __uint_as_float(a << 16) * __uint_as_float(b << 16);
    const float hi = __uint_as_float(a & 0xFFFF0000u) * __uint_as_float(b & 0xFFFF0000u);
    return pack_bf16x2(lo, hi);
}
// fma.rn.bf16x2: a * b + c exactly (in double: a product of two bf16 has 16 bits), then one rounding to bf16
// (round to odd into fp32 first, so that the rounding to bf16 is the one rounding of the exact value).
inline uint16_t bf16_rn_from_double(double x) {
    float f = static_cast<float>(x);
    if (std::isfinite(f) && static_cast<double>(f) != x) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if (std::fabs(static_cast<double>(f)) > std::fabs(x)) --u;  // toward zero
        u |= 1u;                                                      // then odd
        std::memcpy(&f, &u, 4);
    }
    return __float2bfloat16_rn(f).x;
}
inline uint32_t fma_bf16x2(uint32_t a, uint32_t b, uint32_t c) {
    auto one = [](uint32_t x, uint32_t y, uint32_t z) {
        const double r = static_cast<double>(__uint_as_float(x << 16)) * __uint_as_float(y << 16) + __uint_as_float(z << 16);
        return static_cast<uint32_t>(bf16_rn_from_double(r));
    };
    return one(a & 0xFFFF, b & 0xFFFF, c & 0xFFFF) | (one(a >> 16, b >> 16, c >> 16) << 16);
}
inline uint4 ld_stream_16(const void* p) {
    uint4 v;
    std::memcpy(&v, p, 16);
    return v;
}

inline uint4 ld_shared_v4(uint32_t addr) {
    uint4 v;
    std::memcpy(&v, emu::smem_at(addr, 16, "ld.shared.v4"), 16);
    return v;
}
inline uint2 ld_shared_v2(uint32_t addr) {
    uint2 v;
    std::memcpy(&v, emu::smem_at(addr, 8, "ld.shared.v2"), 8);
    return v;
}
inline float ld_shared_f32(uint32_t addr) {
    float v;
    std::memcpy(&v, emu::smem_at(addr, 4, "ld.shared.f32"), 4);
    return v;
}
inline void st_shared_v4(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    const uint32_t v[4] = {a, b, c, d};
    std::memcpy(emu::smem_at(addr, 16, "st.shared.v4"), v, 16);
    emu::note_generic_write(addr, 16);
}
inline void st_shared_b32(uint32_t addr, uint32_t v) {
    std::memcpy(emu::smem_at(addr, 4, "st.shared.b32"), &v, 4);
    emu::note_generic_write(addr, 4);
}
inline void st_shared_f32(uint32_t addr, float v) {
    std::memcpy(emu::smem_at(addr, 4, "st.shared.f32"), &v, 4);
    emu::note_generic_write(addr, 4);
}
inline void st_shared_u16(uint32_t addr, uint16_t v) {
    std::memcpy(emu::smem_at(addr, 2, "st.shared.u16"), &v, 2);
    emu::note_generic_write(addr, 2);
}

inline uint16_t cvt_e4m3x2(float lo, float hi) {
    return static_cast<uint16_t>(fp8host::e4m3_code(lo) | (fp8host::e4m3_code(hi) << 8));
}
// Every e4m3 value is a normal f16 (or zero): the f16 bits from the f32 ones.
inline uint16_t e4m3_to_f16_bits(uint8_t c) {
    if ((c & 0x7F) == 0x7F) return static_cast<uint16_t>((c & 0x80) ? 0xFFFF : 0x7FFF);
    const float v = fp8host::e4m3_value(c);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
    if ((u & 0x7FFFFFFFu) == 0) return sign;
    const int e = static_cast<int>((u >> 23) & 0xFF) - 127 + 15;
    return static_cast<uint16_t>(sign | (e << 10) | ((u >> 13) & 0x3FF));
}
inline uint32_t cvt_f16x2_from_e4m3x2(uint16_t a) {
    return static_cast<uint32_t>(e4m3_to_f16_bits(static_cast<uint8_t>(a & 0xFF))) |
           (static_cast<uint32_t>(e4m3_to_f16_bits(static_cast<uint8_t>(a >> 8))) << 16);
}

inline void fence_proxy_async_smem() { emu::fence_proxy_async(); }
inline void wgmma_fence() {}
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() { emu::wgmma_wait(N); }
template <int N>
inline void fence_regs(float (&)[N]) {}
template <int N>
inline void fence_regs(uint32_t (&)[N]) {}

inline uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    uint64_t d = static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4);
    d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16;
    d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32;
    d |= static_cast<uint64_t>(1) << 62;
    return d;
}

inline void wgmma_m64n32k16_ss(float (&d)[16], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 16, 32, a, nullptr, b, acc, false, false); }
inline void wgmma_m64n16k16_ss(float (&d)[8], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 8, 16, a, nullptr, b, acc, false, false); }
inline void wgmma_m64n16k16_ss_ta(float (&d)[8], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 8, 16, a, nullptr, b, acc, true, false); }
inline void wgmma_m64n32k16_ss_ta(float (&d)[16], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 16, 32, a, nullptr, b, acc, true, false); }
template <int N>
inline void wgmma_m64nNk16_ss(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
    static_assert(N == 16 || N == 32, "narrow wgmma: N is 16 or 32");
    emu::wgmma(d, N / 2, N, a, nullptr, b, acc, false, false);
}
template <int N>
inline void wgmma_m64nNk16_ss_ta(float (&d)[N / 2], uint64_t a, uint64_t b, int acc) {
    static_assert(N == 16 || N == 32, "narrow wgmma: N is 16 or 32");
    emu::wgmma(d, N / 2, N, a, nullptr, b, acc, true, false);
}
inline void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 128, 256, a, nullptr, b, acc, false, true); }
inline void wgmma_m64n64k16_ss(float (&d)[32], uint64_t a, uint64_t b, int acc) { emu::wgmma(d, 32, 64, a, nullptr, b, acc, false, false); }
inline void wgmma_m64n256k16_rs_tb(float (&d)[128], const uint32_t (&a)[4], uint64_t b, int acc) {
    emu::wgmma(d, 128, 256, 0, a, b, acc, false, true);
}

inline void mbarrier_init(uint32_t bar, uint32_t count) { emu::mbarrier_init(bar, count); }
inline void mbarrier_arrive_cp_async(uint32_t bar) { emu::cp_async_mbarrier_arrive(bar); }
inline void mbarrier_wait_parity(uint32_t bar, uint32_t parity) { emu::mbarrier_wait_parity(bar, parity); }
template <int kId, int kCount>
inline void named_bar_sync() {
    static_assert(kId > 0 && kId < 16 && kCount % 32 == 0, "named barrier id 1..15, count a multiple of 32");
    emu::bar_sync(kId, kCount, true);
}
template <int kId, int kCount>
inline void named_bar_arrive() {
    static_assert(kId > 0 && kId < 16 && kCount % 32 == 0, "named barrier id 1..15, count a multiple of 32");
    emu::bar_sync(kId, kCount, false);
}
inline void fence_mbarrier_init() {}
inline void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) { emu::mbarrier_expect_tx(bar, bytes); }
inline void prefetch_tensormap(const void*) {}
inline void tma_load_2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) { emu::tma_load_2d(dst, map, x, y, bar); }
inline void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) { emu::bulk_load(dst, src, bytes, bar); }

inline uint32_t cluster_ctarank() { return emu::cluster_ctarank(); }
inline uint32_t cluster_nctarank() { return emu::cluster_nctarank(); }
inline uint32_t mapa_shared(uint32_t addr, uint32_t rank) { return emu::mapa(addr, rank); }
inline void mbarrier_arrive_cluster(uint32_t cluster_addr) { emu::mbarrier_arrive_cluster(cluster_addr); }
inline void mbarrier_wait_parity_cluster(uint32_t bar, uint32_t parity) { emu::mbarrier_wait_parity(bar, parity); }
inline void cluster_sync() {
    emu::cluster_arrive();
    emu::cluster_wait();
}
inline void tma_load_2d_multicast(uint32_t dst, const void* map, int x, int y, uint32_t bar, uint16_t cta_mask) {
    emu::tma_load_2d_multicast(dst, map, x, y, bar, cta_mask);
}

}  // namespace ptx
