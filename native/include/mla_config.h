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

// ---- decode CTA: 8 warps = 2 warpgroups ----------------------------------
// Warp w owns query rows 16*(w/2) .. +15 ("row block") and column half
// w%2: for S = Q K^T the 32 page tokens 32*half .. +31, for O += P V the 256
// output columns 256*half .. +255 (the 64x512 fp32 accumulator split by
// columns, as the two wgmma warpgroups of the next milestone will hold it).
constexpr int kDecodeThreads = MLA_DECODE_THREADS;
constexpr int kDecodeWarps = kDecodeThreads / 32;        // 8
constexpr int kRowBlock = 16;                            // mma M
constexpr int kRowBlocks = kRows / kRowBlock;            // 4
constexpr int kHalves = kDecodeWarps / kRowBlocks;       // 2
constexpr int kScoreCols = kPage / kHalves;              // 32 S columns per warp
constexpr int kOutCols = kDimV / kHalves;                // 256 O columns per warp
constexpr int kScoreTiles = kScoreCols / 8;              // 4 mma n-tiles of S
constexpr int kOutTiles = kOutCols / 8;                  // 32 mma n-tiles of O
constexpr int kQkSteps = kDimK / 16;                     // 36 k-steps of Q K^T
constexpr int kPvSteps = kPage / 16;                     // 4 k-steps of P V
constexpr int kStages = 2;                               // pages in flight (cp.async double buffer)

// ---- shared memory (bytes) -----------------------------------------------
// Tiles of 576 bf16 per row = 72 chunks of 16 bytes; chunk c of row r is
// stored at chunk (c ^ (r & 7)) of that row (XOR swizzle inside each group of
// 8 chunks), so the 8 rows an ldmatrix phase reads hit 8 distinct 16-byte
// bank groups. The P tile (64 x 64 bf16, 8 chunks a row) uses the same rule.
constexpr int kRowBytes = kDimK * 2;                     // 1152
constexpr int kRowChunks = kRowBytes / 16;               // 72
constexpr int kTileBytes = kPage * kRowBytes;            // 73728: one page or the Q tile
constexpr int kPRowBytes = kPage * 2;                    // 128
constexpr int kSmemQ = 0;
constexpr int kSmemKv = kSmemQ + kTileBytes;             // kStages pages
constexpr int kSmemP = kSmemKv + kStages * kTileBytes;   // P tile, bf16 64 x 64
constexpr int kSmemRed = kSmemP + kRows * kPRowBytes;    // 512 B: fp32 [2][64] row max / row sum exchange (v2-v4); mbarriers + [64] row factors (v5)
constexpr int kSmemBytes = kSmemRed + kHalves * kRows * 4;
static_assert(kSmemBytes == MLA_DECODE_SMEM_BYTES, "MLA_DECODE_SMEM_BYTES out of date");
static_assert(kSmemBytes <= 232448, "over the sm_90 per-block shared-memory limit (227 KB)");
static_assert((kPage * kRowChunks) % kDecodeThreads == 0, "page copy must split evenly over the CTA");
constexpr int kCopyChunksPerThread = kPage * kRowChunks / kDecodeThreads;  // 18

// ---- Hopper decode (decode_sm90_*.cu): same CTA, same shared-memory size ---
// Build switch: which decode implementation is exported as
// flashmla_decode_splitkv (kernels/decode_export.cu): 2 = v2 mma.sync
// (decode_splitkv.cu), 5 = v5 wgmma with score / value warpgroup roles
// (decode_sm90_roles.cu), 14 = v14: v5 with pages copied by TMA through
// MlaDecodeParams.kv_map, 15 = v15: v14 with a page on three gates, S starting
// on each third as it lands (both decode_sm90_tma.cu). v1, v3, v4 and v6-v13
// were removed after the first milestone (NOTES.md keeps their results). All
// take the same launch (MLA_DECODE_THREADS, MLA_DECODE_SMEM_BYTES, grid
// (num_row_groups, num_sm_parts)), so the switch is no ABI change. Override
// with -DMLA_DECODE_EXPORT=N (build.sh passes $MLA_DECODE_EXPORT).
#ifndef MLA_DECODE_EXPORT
#define MLA_DECODE_EXPORT 15
#endif
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
