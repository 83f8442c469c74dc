// tile_scheduler_test.cpp -- host-only property test of the tile scheduler
// (no GPU): random varlen batches and part counts, every schedule validated,
// plus the page balance between parts. Built and run by build.sh with g++.
#include <cstdio>
#include <random>
#include "../host/tile_scheduler.h"

int main() {
    std::mt19937_64 rng(42);
    int failed = 0, cases = 0;
    double worst_imbalance = 0;
    for (int it = 0; it < 20000; ++it) {
        const int batch = 1 + (int)(rng() % (it % 3 == 0 ? 300 : 12));
        const int max_len = (int)(rng() % 5 == 0 ? 60000 : 1 + rng() % 5000);
        std::vector<int32_t> lens(batch);
        for (auto& l : lens) l = (int)(rng() % (max_len + 1)) - (rng() % 50 == 0 ? max_len : 0);  // some zeros
        for (auto& l : lens) l = std::max(l, 0);
        const int parts = 1 + (int)(rng() % (rng() % 4 == 0 ? 500 : 140));
        const TileSchedule s = compute_tile_schedule(lens, parts);
        std::string why;
        ++cases;
        if (!validate_tile_schedule(s, lens, why)) {
            if (++failed < 10) std::printf("FAIL scheduler batch=%d parts=%d: %s\n", batch, parts, why.c_str());
            continue;
        }
        // balance: pages + F per chunk of each part versus the payload
        long long total = 0, worst = 0;
        for (int b = 0; b < batch; ++b) total += (lens[b] + 63) / 64 + MLA_SCHED_FIXED_COST_PAGES;
        for (int p = 0; p < parts; ++p) {
            const int32_t* r = &s.sched_meta[(size_t)p * MLA_SCHED_INTS];
            long long cost = 0;
            for (int b = r[0]; b <= r[2]; ++b) {
                const int nb = (lens[b] + 63) / 64;
                cost += ((b == r[2]) ? r[3] : nb) - ((b == r[0]) ? r[1] : 0) + MLA_SCHED_FIXED_COST_PAGES;
            }
            worst = std::max(worst, cost);
        }
        const double payload = (double)(total + parts - 1) / parts + MLA_SCHED_FIXED_COST_PAGES;
        if (total > 50LL * parts) worst_imbalance = std::max(worst_imbalance, worst / payload);
    }
    std::printf("%s scheduler: %d random schedules, %d failed, worst part cost / payload %.3f\n",
                failed ? "FAIL" : "PASS", cases, failed, worst_imbalance);
    return failed ? 1 : 0;
}
