// decode_chunk.cuh -- the tile scheduler's records (mla_params.h, "TILE-SCHEDULER
// METADATA") as every decode body reads them: the CTA's part (blockIdx.y), and
// for each sequence of the part the chunk of pages it takes and where the
// chunk's result goes.
#pragma once
#include "mla_config.h"

namespace mla {

// The part a CTA works on: sequences begin_seq .. end_seq (none when end_seq < begin_seq).
struct DecodePart {
    int begin_seq, begin_block, end_seq, end_block, begin_split;
};

__device__ __forceinline__ DecodePart decode_part(const MlaDecodeParams& p) {
    const int* meta = p.sched_meta + blockIdx.y * MLA_SCHED_INTS;
    return DecodePart{meta[MLA_SCHED_BEGIN_SEQ], meta[MLA_SCHED_BEGIN_BLOCK], meta[MLA_SCHED_END_SEQ],
                      meta[MLA_SCHED_END_BLOCK], meta[MLA_SCHED_BEGIN_SPLIT]};
}

// One sequence's chunk within a part.
struct DecodeChunk {
    int len;         // the sequence's tokens (seq_lens)
    int blk_begin;   // the chunk's first page, as an index into the sequence's block table
    int n;           // pages in the chunk (0 for an empty sequence)
    int split;       // the chunk's split index: its rows of o_accum / lse_accum
    bool final_out;  // the sequence's only chunk: the decode writes out and lse itself
    const int* bt;   // the sequence's block table
};

__device__ __forceinline__ DecodeChunk decode_chunk(const MlaDecodeParams& p, const DecodePart& part, int seq) {
    const int len = p.seq_lens[seq];
    const int nb = (max(len, 0) + kPage - 1) / kPage;
    const int blk_begin = (seq == part.begin_seq) ? part.begin_block : 0;
    const int blk_end = (seq == part.end_seq) ? part.end_block : nb;
    const int split_base = p.num_splits[seq];
    return DecodeChunk{len,
                       blk_begin,
                       max(blk_end - blk_begin, 0),
                       split_base + ((seq == part.begin_seq) ? part.begin_split : 0),
                       p.num_splits[seq + 1] - split_base == 1,
                       p.block_table + static_cast<size_t>(seq) * p.block_table_stride};
}

}  // namespace mla
