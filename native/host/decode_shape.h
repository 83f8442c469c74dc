// decode_shape.h -- the shape fields of MlaDecodeParams from a step's batch, one place for the harnesses (the
// device checks and the CPU emulator's) to derive them: rows_per_seq, row groups, scale_log2.
#pragma once
#include "../include/mla_params.h"

inline void set_decode_shape(MlaDecodeParams& p, int batch, int s_q, int h_q, int block_table_stride, int num_sm_parts,
                             int num_blocks, float softmax_scale) {
    p.batch = batch;
    p.s_q = s_q;
    p.h_q = h_q;
    p.rows_per_seq = s_q * h_q;
    p.num_row_groups = (p.rows_per_seq + MLA_ROWS_PER_CTA - 1) / MLA_ROWS_PER_CTA;
    p.block_table_stride = block_table_stride;
    p.num_sm_parts = num_sm_parts;
    p.num_blocks = num_blocks;
    p.softmax_scale = softmax_scale;
    p.scale_log2 = static_cast<float>(static_cast<double>(softmax_scale) * 1.4426950408889634);  // * log2(e)
}
