// Fp8HostVectors.cpp -- prints the vectors Fp8HostVectorsTests.cs pins: four rows quantized and dequantized by the
// native checks' host codec (native/check/fp8_host.h), which the GPU's bytes are checked against bit for bit.
//   g++ -O0 -std=c++17 -I native/check tests/FlashMla.Core.Tests/Tensors/Fp8HostVectors.cpp -o /tmp/fp8v && /tmp/fp8v
// The rows: two of raw random bf16 bit patterns (NaN, infinities and subnormals included), one of hostile tiles
// (+0/-0, the largest bf16, subnormals, ties at scale 1), one of moderate values with an infinity in two tiles. Output per row: the 656 stored bytes, then the 576
// dequantized bf16, in hex.
#include <cstdio>
#include <cstdint>
#include "fp8_host.h"

static uint64_t g_state;
static uint16_t next_bits() {
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint16_t)(g_state >> 48);
}

static void random_row(uint64_t seed, uint16_t* row) {
    g_state = seed;
    for (int i = 0; i < MLA_HEAD_DIM_K; ++i) row[i] = next_bits();
}

static const uint16_t kTies[16] = {
    0x43E0, 0x4188, 0x4198, 0x3F88, 0x3F98, 0x3A80, 0x3AC0, 0x3B20,
    0xC188, 0xBF88, 0xBA80, 0xC3E0, 0x4380, 0x4390, 0x3C00, 0x3B80,
};

static void hostile_row(uint16_t* row) {
    g_state = 3;
    for (int i = 0; i < 128; ++i) row[i] = (i & 1) ? 0x8000 : 0x0000;
    for (int i = 128; i < 256; ++i) row[i] = (uint16_t)((next_bits() & 0x80FF) | 0x7E00);
    row[200] = 0x7F7F;
    for (int i = 256; i < 384; ++i) row[i] = (uint16_t)((i & 0x7F) | ((i & 1) << 15));
    for (int i = 384; i < 512; ++i) row[i] = kTies[i & 15];
    for (int i = 512; i < MLA_HEAD_DIM_K; ++i) row[i] = next_bits();
}

// Moderate random values (|x| < 2), with +inf in tile 0 and -inf in tile 1.
static void infinite_row(uint16_t* row) {
    g_state = 4;
    for (int i = 0; i < MLA_HEAD_DIM_K; ++i) row[i] = (uint16_t)(next_bits() & 0xBFFF);
    row[10] = 0x7F80;
    row[140] = 0xFF80;
}

int main() {
    uint16_t row[MLA_HEAD_DIM_K], back[MLA_HEAD_DIM_K];
    uint8_t token[MLA_FP8_TOKEN_BYTES];
    for (int r = 0; r < 4; ++r) {
        if (r < 2) random_row(r + 1, row);
        else if (r == 2) hostile_row(row);
        else infinite_row(row);
        fp8host::quantize_row(row, token);
        fp8host::dequantize_token(token, back);
        std::printf("row %d stored ", r);
        for (int i = 0; i < MLA_FP8_TOKEN_BYTES; ++i) std::printf("%02x", token[i]);
        std::printf("\nrow %d back ", r);
        for (int i = 0; i < MLA_HEAD_DIM_K; ++i) std::printf("%04x", back[i]);
        std::printf("\n");
    }
    return 0;
}
