// tile_scheduler.h -- host-side split-KV tile scheduler (the harness's copy;
// the service computes the same in C#). The algorithm and the metadata
// format are specified in include/mla_params.h; this is that text in code.
#pragma once
#include <cstdint>
#include <vector>
#include <algorithm>
#include <string>
#include "../include/mla_params.h"

struct TileSchedule {
    std::vector<int32_t> sched_meta;  // [num_sm_parts * MLA_SCHED_INTS]
    std::vector<int32_t> num_splits;  // [batch + 1]
    int num_sm_parts = 0;
    int total_splits() const { return num_splits.back(); }
};

// Recommended part count: one CTA per SM across all row groups.
inline int default_num_sm_parts(int sm_count, int num_row_groups) {
    return std::max(1, sm_count / std::max(1, num_row_groups));
}

inline TileSchedule compute_tile_schedule(const std::vector<int32_t>& seq_lens, int num_sm_parts) {
    const int batch = (int)seq_lens.size();
    const int F = MLA_SCHED_FIXED_COST_PAGES;
    TileSchedule s;
    s.num_sm_parts = num_sm_parts;
    s.sched_meta.assign((size_t)num_sm_parts * MLA_SCHED_INTS, 0);
    s.num_splits.assign(batch + 1, 0);
    std::vector<int32_t> nb(batch), chunks(batch, 0);
    int64_t total = 0;
    for (int i = 0; i < batch; ++i) {
        nb[i] = (std::max(seq_lens[i], 0) + MLA_PAGE_TOKENS - 1) / MLA_PAGE_TOKENS;
        total += nb[i] + F;
    }
    const int64_t payload = (total + num_sm_parts - 1) / num_sm_parts + F;
    int i = 0, j = 0, k = 0;  // cursor: sequence, page, chunk index within the sequence
    for (int p = 0; p < num_sm_parts; ++p) {
        int32_t* rec = &s.sched_meta[(size_t)p * MLA_SCHED_INTS];
        if (i >= batch) {  // empty part
            rec[MLA_SCHED_BEGIN_SEQ] = batch;
            rec[MLA_SCHED_END_SEQ] = batch - 1;
            continue;
        }
        rec[MLA_SCHED_BEGIN_SEQ] = i;
        rec[MLA_SCHED_BEGIN_BLOCK] = j;
        rec[MLA_SCHED_BEGIN_SPLIT] = k;
        const bool last_part = (p == num_sm_parts - 1);
        int64_t budget = last_part ? INT64_MAX / 2 : payload;
        int end_seq = -1, end_block = 0;
        while (i < batch) {
            const int rest = nb[i] - j;
            if ((int64_t)rest + F <= budget) {
                budget -= rest + F;
                end_seq = i;
                end_block = nb[i];
                chunks[i] = k + 1;
                ++i; j = 0; k = 0;
            } else {
                const int64_t t = budget - F;  // < rest here
                if (t > 0) {
                    j += (int)t;
                    end_seq = i;
                    end_block = j;
                    ++k;
                }
                break;
            }
        }
        // A non-empty part always takes something: at its start budget = payload
        // >= F + 1 (total >= 1), so either the rest fits or t >= 1.
        rec[MLA_SCHED_END_SEQ] = end_seq;
        rec[MLA_SCHED_END_BLOCK] = end_block;
    }
    for (int b = 0; b < batch; ++b) s.num_splits[b + 1] = s.num_splits[b] + chunks[b];
    return s;
}

// Checks a schedule against the format in mla_params.h: every page of every
// sequence in exactly one chunk, the chunks of a sequence in order with
// consecutive indices starting at 0, their count equal to num_splits, and no
// empty chunk of a non-empty sequence. On failure `why` says where.
inline bool validate_tile_schedule(const TileSchedule& s, const std::vector<int32_t>& seq_lens, std::string& why) {
    const int batch = (int)seq_lens.size();
    auto pages = [&](int b) { return (std::max(seq_lens[b], 0) + MLA_PAGE_TOKENS - 1) / MLA_PAGE_TOKENS; };
    if ((int)s.num_splits.size() != batch + 1 || s.num_splits[0] != 0) {
        why = "num_splits size or start";
        return false;
    }
    std::vector<int> next_block(batch, 0), next_chunk(batch, 0);
    for (int p = 0; p < s.num_sm_parts; ++p) {
        const int32_t* rec = &s.sched_meta[(size_t)p * MLA_SCHED_INTS];
        const int b0 = rec[MLA_SCHED_BEGIN_SEQ], b1 = rec[MLA_SCHED_END_SEQ];
        if (b1 < b0) continue;
        if (b0 < 0 || b1 >= batch) {
            why = "part " + std::to_string(p) + " sequence out of range";
            return false;
        }
        for (int b = b0; b <= b1; ++b) {
            const int nb = pages(b);
            const int first = (b == b0) ? rec[MLA_SCHED_BEGIN_BLOCK] : 0;
            const int end = (b == b1) ? rec[MLA_SCHED_END_BLOCK] : nb;
            const int chunk = (b == b0) ? rec[MLA_SCHED_BEGIN_SPLIT] : 0;
            if (first != next_block[b] || chunk != next_chunk[b] || end > nb || end < first ||
                (end == first && nb != 0)) {
                why = "part " + std::to_string(p) + " seq " + std::to_string(b) + " bad range";
                return false;
            }
            next_block[b] = end;
            next_chunk[b] = chunk + 1;
        }
    }
    for (int b = 0; b < batch; ++b) {
        if (next_block[b] != pages(b) || next_chunk[b] < 1 || next_chunk[b] != s.num_splits[b + 1] - s.num_splits[b]) {
            why = "seq " + std::to_string(b) + " not covered";
            return false;
        }
    }
    return true;
}
