// fp8_host.h -- the FP8 KV token format on the host (mla_params.h, "FP8 KV
// cache"), written from the format's definition and not from the kernels,
// so that the checks compare the GPU's bytes against an independent
// quantizer: float8_e4m3fn by nearest-value search over its 127 positive
// codes (ties to the even code), IEEE fp32 division and multiplication.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include "../include/mla_params.h"

namespace fp8host {

// The value of e4m3fn code c (0x7F / 0xFF: NaN).
inline float e4m3_value(uint8_t c) {
    const int e = (c >> 3) & 0xF, m = c & 7;
    if ((c & 0x7F) == 0x7F) return NAN;
    const float mag = e == 0 ? std::ldexp((float)m, -9) : std::ldexp(1.f + m / 8.f, e - 7);
    return (c & 0x80) ? -mag : mag;
}

// Round to nearest even, finite values past 448 saturate, NaN -> 0x7F.
inline uint8_t e4m3_code(float v) {
    if (std::isnan(v)) return 0x7F;
    const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
    const double a = std::fabs((double)v);
    int best = 0;
    double best_d = a;  // distance to code 0
    for (int c = 1; c <= 0x7E; ++c) {
        const double d = std::fabs(a - (double)e4m3_value((uint8_t)c));
        if (d < best_d || (d == best_d && (c & 1) == 0)) {
            best = c;
            best_d = d;
        }
    }
    return (uint8_t)(sign | best);
}

inline float bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// fp32 -> bf16 bits, round to nearest even (NaN -> a quiet NaN of the same sign).
inline uint16_t bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// One bf16 row of 576 values -> one 656-byte token.
inline void quantize_row(const uint16_t* row, uint8_t* token) {
    for (int t = 0; t < MLA_HEAD_DIM_V / MLA_FP8_TILE; ++t) {
        float amax = 0.f;
        bool nan = false;
        for (int i = 0; i < MLA_FP8_TILE; ++i) {
            const float x = bf16_value(row[t * MLA_FP8_TILE + i]);
            nan |= std::isnan(x);
            amax = std::fmax(amax, std::fabs(x));
        }
        volatile float num = amax;  // volatile: the division happens in fp32, at run time
        float scale = num / 448.f;
        if (nan) {  // the default quiet NaN, 0x7FC00000
            const uint32_t bits = 0x7FC00000u;
            std::memcpy(&scale, &bits, 4);
        }
        for (int i = 0; i < MLA_FP8_TILE; ++i) {
            const float x = bf16_value(row[t * MLA_FP8_TILE + i]);
            volatile float q = x / scale;
            token[t * MLA_FP8_TILE + i] = scale == 0.f ? 0x00 : e4m3_code(q);
        }
        std::memcpy(token + MLA_FP8_SCALE_OFFSET + 4 * t, &scale, 4);
    }
    std::memcpy(token + MLA_FP8_ROPE_OFFSET, row + MLA_HEAD_DIM_V, 2 * (MLA_HEAD_DIM_K - MLA_HEAD_DIM_V));
}

// One 656-byte token -> 576 bf16 bits.
inline void dequantize_token(const uint8_t* token, uint16_t* row) {
    for (int i = 0; i < MLA_HEAD_DIM_V; ++i) {
        float scale;
        std::memcpy(&scale, token + MLA_FP8_SCALE_OFFSET + 4 * (i / MLA_FP8_TILE), 4);
        volatile float v = e4m3_value(token[i]) * scale;
        row[i] = bf16_bits(v);
    }
    std::memcpy(row + MLA_HEAD_DIM_V, token + MLA_FP8_ROPE_OFFSET, 2 * (MLA_HEAD_DIM_K - MLA_HEAD_DIM_V));
}

}  // namespace fp8host
