// mla_config.h -- tile constants of the decode kernels, named once.
// The launch-facing numbers (threads, shared-memory bytes, rows per CTA) live
// in mla_params.h; this header derives the tiling from them and checks that
// the two agree.
#pragma once
#include "mla_params.h"

namespace mla {

// ---- problem tile -------------------------------------------------------
constexpr int kDimK = MLA_HEAD_DIM_K;      // 576 q / K columns
constexpr int kDimV = MLA_HEAD_DIM_V;      // 512 V / out columns
constexpr int kPage = MLA_PAGE_TOKENS;     // 64 tokens per page
constexpr int kRows = MLA_ROWS_PER_CTA;    // 64 query rows per CTA

// ---- decode CTA: 256 threads = 2 warpgroups ------------------------------
constexpr int kDecodeThreads = MLA_DECODE_THREADS;
constexpr int kQkSteps = kDimK / 16;                     // 36 k-steps of Q K^T
constexpr int kPvSteps = kPage / 16;                     // 4 k-steps of P V
constexpr int kStages = 2;                               // page buffers

// ---- shared memory (bytes) -----------------------------------------------
// Q tile | kStages pages | P tile (64 x 64 bf16) | 512 bytes of mbarriers and
// per-row values.
constexpr int kRowBytes = kDimK * 2;                     // 1152
constexpr int kRowChunks = kRowBytes / 16;               // 72 16-byte chunks a row
constexpr int kTileBytes = kPage * kRowBytes;            // 73728: one page or the Q tile
constexpr int kSmemQ = 0;
constexpr int kSmemKv = kSmemQ + kTileBytes;             // kStages pages
constexpr int kSmemP = kSmemKv + kStages * kTileBytes;   // P tile, bf16 64 x 64
constexpr int kSmemRed = kSmemP + kRows * kPage * 2;     // 512 B: mbarriers + [64] row factors
constexpr int kSmemBytes = kSmemRed + 512;
static_assert(kSmemBytes == MLA_DECODE_SMEM_BYTES, "MLA_DECODE_SMEM_BYTES out of date");
static_assert(kSmemBytes <= 232448, "over the sm_90 per-block shared-memory limit (227 KB)");
static_assert((kPage * kRowChunks) % kDecodeThreads == 0, "tile copy must split evenly over the CTA");

// Tiles (Q, pages) are stored as kSwBlocks column blocks of 64 columns:
// block b = [64 rows][128 bytes], 128-byte swizzled (chunk c of row r at
// chunk c ^ (r % 8)), exactly the layout a TMA box of 64 x 64 bf16 with
// 128-byte swizzle writes and wgmma's SW128 descriptors read.
constexpr int kSwRowBytes = 128;                           // one swizzle row: 64 bf16
constexpr int kSwBlockBytes = kPage * kSwRowBytes;         // 8192: 64 rows x 64 columns
constexpr int kSwBlocks = kDimK / 64;                      // 9 column blocks per tile
constexpr int kSwAtomBytes = 8 * kSwRowBytes;              // 1024: 8-row swizzle atom (SBO)
constexpr int kWarpGroups = kDecodeThreads / 128;          // 2 consumer warpgroups
constexpr int kWgScoreCols = kPage / kWarpGroups;          // 32 S columns per warpgroup
constexpr int kWgOutCols = kDimV / kWarpGroups;            // 256 O columns per warpgroup
static_assert(kSwBlocks * kSwBlockBytes == kTileBytes, "swizzled tile = one page");
static_assert(kWarpGroups == 2 && kWgScoreCols == 32 && kWgOutCols == 256, "wgmma shapes m64n32 / m64n256");
static_assert(kSmemQ % 1024 == 0 && kSmemKv % 1024 == 0 && kSmemP % 1024 == 0 && kTileBytes % 1024 == 0,
              "wgmma SW128 tiles start on 1 KB swizzle atoms");

// ---- combine --------------------------------------------------------------
constexpr int kCombineWarps = MLA_COMBINE_THREADS / 32;  // 4
constexpr int kCombineMaxWeights = 1024;                 // chunk weights kept in shared memory (more are recomputed)
constexpr int kCombineUnroll = 8;                        // chunks whose loads are in flight at once
static_assert(MLA_COMBINE_ROWS_PER_CTA == 1 && MLA_COMBINE_THREADS * 4 == kDimV, "combine: one row per CTA, a float4 per thread");

// ---- reference ----------------------------------------------------------
static_assert(MLA_REFERENCE_THREADS / 32 == MLA_REFERENCE_ROWS_PER_CTA, "reference: one warp per row");

}  // namespace mla
