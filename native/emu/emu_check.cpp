// emu_check.cpp -- the decode kernels on the CPU emulator (runtime.h), against
// a float64 reference: what CI can check of the kernels without a GPU.
//
//   emu_check [--kernel NAME]... [--seeds N] [--case SUBSTRING] [--random N] [--no-unit] [--list]
//
// Each case builds a paged cache the way the device checks do (flashmla_check):
// shuffled block tables, the pool NaN everywhere but the valid rows (so a read
// past a length poisons the result), the pool some pages into its allocation
// (kv_map_row0), outputs and split scratch poisoned with NaN, guard bytes
// around every output; runs the decode kernel and flashmla_combine on the
// emulator with the tile scheduler's parts; and compares out and lse with the
// reference over the bf16 cache (FP8 kernels: over the dequantized cache).
// Each case runs under several scheduling seeds (the order of threads and the
// moments copies land). One line per case and seed, then a summary; exit 0
// only if all passed. Small shapes only: the emulator runs a page of a CTA in
// milliseconds, not nanoseconds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>
#include <sys/wait.h>
#include <unistd.h>

#include "../kernels/flashmla_module.cu"
#include "../kernels/decode_narrow_candidates.cu"
#include "../kernels/decode_cluster_candidates.cu"
#include "../host/tile_scheduler.h"
#include "../host/decode_shape.h"
#include "../check/fp8_host.h"

namespace {

using namespace mla;

struct KernelEntry {
    const char* name;
    void (*fn)(MlaDecodeParams);
    bool fp8;
    unsigned cluster = 1;  // CTAs per cluster along x when the row groups divide by it (else a plain launch)
};
// The exported decode's cluster width, as a host reads it from the module (mla_params.h: a module built with
// EXPORT_CLUSTER=1 exports flashmla_decode_splitkv_cluster_x).
#ifdef MLA_EXPORT_CLUSTER
const unsigned kExportedDecodeCluster = static_cast<unsigned>(flashmla_decode_splitkv_cluster_x);
#else
constexpr unsigned kExportedDecodeCluster = 1;
#endif
const KernelEntry kKernels[] = {
    {"flashmla_decode_splitkv", flashmla_decode_splitkv, false, kExportedDecodeCluster},
    {"flashmla_decode_splitkv_fp8", flashmla_decode_splitkv_fp8, true},
    {"flashmla_decode_splitkv_v18", flashmla_decode_splitkv_v18, false},
    {"flashmla_decode_splitkv_fp8_v3", flashmla_decode_splitkv_fp8_v3, true},
    {"flashmla_decode_splitkv_v19", flashmla_decode_splitkv_v19, false, 2},
};

constexpr double kSoftmaxScale = 0.07216878364870322;  // 1 / sqrt(192)
constexpr size_t kGuard = 4096;
constexpr uint8_t kGuardByte = 0xA5;

// A host buffer with guard bytes on both sides, checked after the launches.
struct Guarded {
    std::vector<uint8_t> raw;
    size_t bytes = 0;
    uint8_t* data() { return raw.data() + kGuard; }
    explicit Guarded(size_t n, uint8_t fill) : raw(n + 2 * kGuard + 64, kGuardByte), bytes(n) {
        std::memset(data(), fill, n);
    }
    bool guards_intact() const {
        for (size_t i = 0; i < kGuard; ++i)
            if (raw[i] != kGuardByte || raw[kGuard + bytes + i] != kGuardByte) return false;
        return true;
    }
};

struct Case {
    std::string name;
    int h_q, s_q;
    std::vector<int> lens;
    int parts;
};

uint16_t bf16_bits(float f) { return fp8host::bf16_bits(f); }
float bf16_value(uint16_t b) { return fp8host::bf16_value(b); }

struct Result {
    bool ok;
    std::string line;
};

Result run_case(const KernelEntry& k, const Case& c, uint64_t data_seed, uint64_t sched_seed) {
    const int batch = static_cast<int>(c.lens.size());
    const int rows = c.s_q * c.h_q;
    const int groups = (rows + MLA_ROWS_PER_CTA - 1) / MLA_ROWS_PER_CTA;
    std::mt19937_64 rng(data_seed);
    std::normal_distribution<float> normal(0.f, 1.f);

    std::vector<int> nb(batch);
    int max_nb = 0, total_pages = 0;
    for (int b = 0; b < batch; ++b) {
        nb[b] = (std::max(c.lens[b], 0) + kPage - 1) / kPage;
        max_nb = std::max(max_nb, nb[b]);
        total_pages += nb[b];
    }
    const int stride = max_nb + 3;
    const int num_blocks = total_pages + 3;
    std::vector<int> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> bt(static_cast<size_t>(batch) * stride, perm[total_pages]);  // unused entries: a NaN page
    for (int b = 0, n = 0; b < batch; ++b)
        for (int j = 0; j < nb[b]; ++j) bt[static_cast<size_t>(b) * stride + j] = perm[n++];

    // bf16 pool, `lead` NaN pages into its allocation; NaN everywhere but the valid rows.
    const int lead = static_cast<int>(data_seed % 3);
    const size_t page_elems = static_cast<size_t>(kPage) * kDimK;
    std::vector<uint16_t> alloc((lead + num_blocks + 1) * page_elems, 0xFFFF);
    uint16_t* pool = alloc.data() + lead * page_elems;
    auto row_of = [&](int b, int pos) {
        return (static_cast<size_t>(bt[static_cast<size_t>(b) * stride + pos / kPage]) * kPage + pos % kPage) * kDimK;
    };
    for (int b = 0; b < batch; ++b)
        for (int pos = 0; pos < c.lens[b]; ++pos)
            for (int j = 0; j < kDimK; ++j) pool[row_of(b, pos) + j] = bf16_bits(normal(rng));
    std::vector<uint16_t> q(static_cast<size_t>(batch) * rows * kDimK);
    for (auto& v : q) v = bf16_bits(normal(rng));

    // FP8: the valid rows quantized (the rest 0xFF: NaN codes and scales), and the dequantized cache for the reference.
    std::vector<uint8_t> fp8(k.fp8 ? static_cast<size_t>(num_blocks + 1) * kFp8PageBytes : 0, 0xFF);
    std::vector<uint16_t> deq;
    if (k.fp8) {
        deq.assign((num_blocks + 1) * page_elems, 0xFFFF);
        for (int b = 0; b < batch; ++b)
            for (int pos = 0; pos < c.lens[b]; ++pos) {
                const size_t r = row_of(b, pos);
                const size_t slot = r / kDimK;
                uint8_t* tok = fp8.data() + slot * kFp8TokenBytes;
                fp8host::quantize_row(pool + r, tok);
                for (int j = 0; j < kDimV; ++j) {
                    float sc;
                    std::memcpy(&sc, tok + kFp8ScaleOffset + 4 * (j / MLA_FP8_TILE), 4);
                    volatile float prod = fp8host::e4m3_value(tok[j]) * sc;
                    deq[r + j] = bf16_bits(prod);
                }
                for (int j = kDimV; j < kDimK; ++j) deq[r + j] = pool[r + j];
            }
    }

    const TileSchedule sched = compute_tile_schedule(c.lens, c.parts);
    std::string why;
    if (!validate_tile_schedule(sched, c.lens, why)) return {false, "schedule: " + why};
    const int total_splits = sched.total_splits();

    const size_t out_elems = static_cast<size_t>(batch) * rows * kDimV;
    Guarded out(out_elems * 2, 0xFF), lse(static_cast<size_t>(batch) * rows * 4, 0xFF);
    Guarded oacc(static_cast<size_t>(std::max(total_splits, 1)) * rows * kDimV * 4, 0xFF);
    Guarded lacc(static_cast<size_t>(std::max(total_splits, 1)) * rows * 4, 0xFF);

    MlaDecodeParams P{};
    P.q = q.data();
    P.kv_pool = k.fp8 ? static_cast<const void*>(fp8.data()) : pool;
    P.block_table = bt.data();
    P.seq_lens = c.lens.data();
    P.sched_meta = sched.sched_meta.data();
    P.num_splits = sched.num_splits.data();
    P.out = out.data();
    P.lse = reinterpret_cast<float*>(lse.data());
    P.o_accum = reinterpret_cast<float*>(oacc.data());
    P.lse_accum = reinterpret_cast<float*>(lacc.data());
    set_decode_shape(P, batch, c.s_q, c.h_q, stride, c.parts, num_blocks, static_cast<float>(kSoftmaxScale));
    P.kv_map_row0 = lead * kPage;
    if (!k.fp8)
        emu::encode_tensor_map_2d(&P.kv_map, alloc.data(), kDimK, static_cast<uint64_t>(lead + num_blocks + 1) * kPage,
                                  kDimK * 2, 64, 64, 2, 128);

    emu::Options opt;
    opt.seed = sched_seed;
    emu::configure(opt);
    const auto t0 = std::chrono::steady_clock::now();
    const unsigned cluster = groups % k.cluster == 0 ? k.cluster : 1;
    emu::launch(k.name, emu::Dim3{static_cast<unsigned>(groups), static_cast<unsigned>(c.parts), 1},
                emu::Dim3{MLA_DECODE_THREADS, 1, 1}, MLA_DECODE_SMEM_BYTES, [&] { k.fn(P); }, cluster);
    emu::launch("flashmla_combine", emu::Dim3{static_cast<unsigned>(batch), static_cast<unsigned>(rows), 1},
                emu::Dim3{MLA_COMBINE_THREADS, 1, 1}, 0, [&] { flashmla_combine(P); });
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool guards = out.guards_intact() && lse.guards_intact() && oacc.guards_intact() && lacc.guards_intact();

    // ---- float64 references: over the cache the kernel reads (FP8: dequantized to bf16, the format's rule), and
    //      for FP8 over the exact code x scale values (reported: where a kernel rounds differently from the format) ----
    const uint16_t* o16 = reinterpret_cast<const uint16_t*>(out.data());
    const float* l32 = reinterpret_cast<const float*>(lse.data());
    struct Cmp {
        double num = 0, den = 0, lse_err = 0;
        long nan_out = 0, bad_lse = 0, bad_empty = 0;
        double rel() const { return den > 0 ? std::sqrt(num / den) : std::sqrt(num); }
        bool ok() const { return nan_out == 0 && bad_lse == 0 && bad_empty == 0 && rel() < 1e-2; }
    };
    std::vector<double> kv_row(kDimK);
    auto kv_value = [&](bool exact, int b, int pos) -> const std::vector<double>& {
        const size_t r = row_of(b, pos);
        if (!exact) {
            const uint16_t* src = (k.fp8 ? deq.data() : pool) + r;
            for (int j = 0; j < kDimK; ++j) kv_row[j] = bf16_value(src[j]);
        } else {
            const uint8_t* tok = fp8.data() + (r / kDimK) * kFp8TokenBytes;
            for (int j = 0; j < kDimV; ++j) {
                float sc;
                std::memcpy(&sc, tok + kFp8ScaleOffset + 4 * (j / MLA_FP8_TILE), 4);
                kv_row[j] = static_cast<double>(fp8host::e4m3_value(tok[j])) * sc;
            }
            for (int j = kDimV; j < kDimK; ++j) kv_row[j] = bf16_value(pool[r + j]);
        }
        return kv_row;
    };
    auto compare = [&](bool exact) {
        Cmp m;
        std::vector<double> sc, acc(kDimV);
        for (int b = 0; b < batch; ++b)
            for (int r = 0; r < rows; ++r) {
                const int tok = r / c.h_q, h = r % c.h_q;
                const int last = c.lens[b] - c.s_q + tok;
                const uint16_t* qr = q.data() + (static_cast<size_t>(b) * rows + r) * kDimK;
                sc.assign(std::max(last + 1, 0), 0.0);
                double mx = -INFINITY;
                for (int pos = 0; pos <= last; ++pos) {
                    const std::vector<double>& kv = kv_value(exact, b, pos);
                    double dot = 0;
                    for (int j = 0; j < kDimK; ++j) dot += static_cast<double>(bf16_value(qr[j])) * kv[j];
                    sc[pos] = dot * kSoftmaxScale;
                    mx = std::max(mx, sc[pos]);
                }
                double l = 0;
                std::fill(acc.begin(), acc.end(), 0.0);
                for (int pos = 0; pos <= last; ++pos) {
                    const double w = std::exp(sc[pos] - mx);
                    l += w;
                    const std::vector<double>& kv = kv_value(exact, b, pos);
                    for (int j = 0; j < kDimV; ++j) acc[j] += w * kv[j];
                }
                const bool empty = last < 0;
                const float kl = l32[(static_cast<size_t>(b) * c.h_q + h) * c.s_q + tok];
                if (empty) {
                    if (!(std::isinf(kl) && kl < 0)) ++m.bad_lse;
                } else {
                    const double rl = mx + std::log(l);
                    const double d = std::fabs(kl - rl);
                    if (!(d <= 1e-3 + 1e-4 * std::fabs(rl))) ++m.bad_lse;
                    if (std::isfinite(d)) m.lse_err = std::max(m.lse_err, d);
                }
                for (int j = 0; j < kDimV; ++j) {
                    const float kv = bf16_value(o16[(static_cast<size_t>(b) * rows + r) * kDimV + j]);
                    const double rv = empty ? 0.0 : acc[j] / l;
                    if (std::isnan(kv)) {
                        ++m.nan_out;
                        continue;
                    }
                    if (empty && kv != 0.f) ++m.bad_empty;
                    m.num += (kv - rv) * (kv - rv);
                    m.den += rv * rv;
                }
            }
        return m;
    };
    // As flashmla_check: an FP8 kernel passes when it matches either reference (see its comment there).
    const Cmp spec = compare(false);
    const Cmp exact = k.fp8 ? compare(true) : spec;
    const Cmp& cm = (!spec.ok() && exact.ok()) ? exact : spec;
    double num = cm.num, den = cm.den, lse_err = cm.lse_err;
    const long nan_out = cm.nan_out, bad_lse = cm.bad_lse, bad_empty = cm.bad_empty;
    char exact_note[128] = "";
    if (k.fp8)
        std::snprintf(exact_note, sizeof exact_note, " matches=%s [format: rel=%.2e lse_err=%.1e; exact: rel=%.2e lse_err=%.1e]",
                      spec.ok() ? "format" : exact.ok() ? "exact" : "neither", spec.rel(), spec.lse_err, exact.rel(), exact.lse_err);
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    const bool ok = guards && nan_out == 0 && bad_lse == 0 && bad_empty == 0 && rel < 1e-2;
    char line[512];
    std::snprintf(line, sizeof line,
                  "%-4s %-31s %-16s seed=%-3llu b=%-2d s_q=%d h_q=%-3d parts=%-2d splits=%-3d%s rel=%.2e lse_err=%.1e%s%s%s%s%s (%.1fs)",
                  ok ? "PASS" : "FAIL", k.name, c.name.c_str(), static_cast<unsigned long long>(sched_seed), batch, c.s_q,
                  c.h_q, c.parts, total_splits, cluster > 1 ? " cluster=2" : "", rel, lse_err, exact_note, guards ? "" : " GUARD_BYTES_OVERWRITTEN",
                  nan_out ? (" NaN_OUT=" + std::to_string(nan_out)).c_str() : "",
                  bad_lse ? (" bad_lse=" + std::to_string(bad_lse)).c_str() : "",
                  bad_empty ? (" bad_empty=" + std::to_string(bad_empty)).c_str() : "", secs);
    return {ok, line};
}

// fp8_dequant8_fast against fp8_dequant8 (the format's rule) on every code but the two NaN codes and 64 scales
// (NaN, zero and subnormal ones included): at most 1 bf16 ulp apart, NaN where the other is NaN. Run on the host: both are device functions the emulator compiles as host code.
Result dequant_fast_unit() {
    std::mt19937_64 rng(7);
    std::vector<float> scales = {0.f, 1.f, 1.f / 448.f, 1e-38f, 1e-40f, 3e-45f, 254.9f, 255.f, 1e10f, NAN, 0.75f};
    std::uniform_real_distribution<float> ue(-40.f, 8.f);
    while (scales.size() < 64) scales.push_back(std::exp2(ue(rng)) * (1.f + static_cast<float>(rng() % 1000) / 1000.f));
    auto ordinal = [](uint16_t x) { return (x & 0x8000) ? -static_cast<int>(x & 0x7FFF) : static_cast<int>(x & 0x7FFF); };
    int worst = 0;
    long differ = 0, total = 0;
    for (float sc : scales)
        for (uint32_t c0 = 0; c0 < 256; c0 += 8) {
            const uint2 codes = make_uint2(c0 | ((c0 + 1) << 8) | ((c0 + 2) << 16) | ((c0 + 3) << 24),
                                           (c0 + 4) | ((c0 + 5) << 8) | ((c0 + 6) << 16) | ((c0 + 7) << 24));
            const uint4 f = mla::fp8_dequant8_fast(codes, sc), e = mla::fp8_dequant8(codes, sc);
            uint16_t fa[8], ea[8];
            std::memcpy(fa, &f, 16);
            std::memcpy(ea, &e, 16);
            for (int i = 0; i < 8; ++i, ++total) {
                if (((c0 + i) & 0x7F) == 0x7F) {  // NaN codes: the bit moves read them as +-480 (documented in fp8_kv.cuh)
                    --total;
                    continue;
                }
                const bool na = (fa[i] & 0x7FFF) > 0x7F80, nb = (ea[i] & 0x7FFF) > 0x7F80;
                const int ulps = (na || nb) ? (na == nb ? 0 : 1 << 20) : std::abs(ordinal(fa[i]) - ordinal(ea[i]));
                worst = std::max(worst, ulps);
                differ += ulps != 0;
            }
        }
    char line[200];
    std::snprintf(line, sizeof line, "%-4s unit fp8_dequant8_fast vs fp8_dequant8: %ld of %ld values differ, worst %d bf16 ulps (bar 1)",
                  worst <= 1 ? "PASS" : "FAIL", differ, total, worst);
    return {worst <= 1, line};
}

// The write kernels (append, FP8 quantizing and raw append, page copies) on the emulator against the host: pools
// poisoned, padding and out-of-range slots that must be skipped, FP8 rows of every kind (huge, tiny, zero, NaN,
// subnormal, exactly 448) byte for byte against the host's quantizer (fp8_host.h; the emulator's cvt.e4m3 is the
// host's nearest-code search, so this checks the kernel's scale, NaN and layout logic, not the conversion).
Result write_kernels_unit() {
    std::mt19937_64 rng(99);
    std::normal_distribution<float> nd(0.f, 1.f);
    constexpr int kBlocks = 6, kRows = 40;
    std::string why;
    auto random_row = [&](int r) {
        std::vector<uint16_t> row(kDimK);
        for (int i = 0; i < kDimK; ++i) {
            float v = nd(rng);
            switch ((r * 4 + i / MLA_FP8_TILE) % 8) {
                case 1: v *= 1e3f; break;
                case 2: v *= 1e-3f; break;
                case 3: v = 0.f; break;
                case 4: if (i % MLA_FP8_TILE == 5) v = NAN; break;
                case 5: v *= 1e36f; break;
                case 6: v *= 1e-37f; break;
                case 7: if (i % MLA_FP8_TILE == 0) v = 448.f; break;
                default: break;
            }
            row[i] = bf16_bits(v);
        }
        return row;
    };
    std::vector<uint16_t> rows;
    for (int r = 0; r < kRows; ++r) {
        const auto row = random_row(r);
        rows.insert(rows.end(), row.begin(), row.end());
    }
    std::vector<int32_t> slots(kRows);
    std::vector<int> perm(kBlocks * kPage);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int r = 0; r < kRows; ++r) slots[r] = perm[r];
    slots[3] = -1;                 // padding: skipped
    slots[7] = kBlocks * kPage;    // one past the pool: skipped
    KvAppendParams ap{};
    ap.rows = rows.data();
    ap.slots = slots.data();
    ap.num_rows = kRows;
    ap.num_blocks = kBlocks;
    auto grid = [](int n) { return emu::Dim3{static_cast<unsigned>((n + MLA_APPEND_ROWS_PER_CTA - 1) / MLA_APPEND_ROWS_PER_CTA), 1, 1}; };
    emu::configure(emu::Options{});

    // bf16 append: the rows at their slots, nothing else touched (one guard page past the pool).
    std::vector<uint16_t> pool((kBlocks + 1) * static_cast<size_t>(kPage) * kDimK, 0xFFFF);
    ap.kv_pool = pool.data();
    emu::launch("flashmla_append_kv", grid(kRows), emu::Dim3{MLA_APPEND_THREADS, 1, 1}, 0, [&] { flashmla_append_kv(ap); });
    for (int slot = 0; slot < (kBlocks + 1) * kPage && why.empty(); ++slot) {
        const int r = static_cast<int>(std::find(slots.begin(), slots.end(), slot) - slots.begin());
        for (int j = 0; j < kDimK; ++j) {
            const uint16_t want = (r < kRows && slot < kBlocks * kPage) ? rows[static_cast<size_t>(r) * kDimK + j] : 0xFFFF;
            if (pool[static_cast<size_t>(slot) * kDimK + j] != want) { why = "append: slot " + std::to_string(slot); break; }
        }
    }

    // FP8 quantizing append, against the host quantizer byte for byte.
    std::vector<uint8_t> fp8((kBlocks + 1) * static_cast<size_t>(kFp8PageBytes), 0xA5), expect(fp8);
    for (int r = 0; r < kRows; ++r)
        if (slots[r] >= 0 && slots[r] < kBlocks * kPage)
            fp8host::quantize_row(rows.data() + static_cast<size_t>(r) * kDimK, expect.data() + static_cast<size_t>(slots[r]) * kFp8TokenBytes);
    ap.kv_pool = fp8.data();
    emu::launch("flashmla_append_kv_fp8", grid(kRows), emu::Dim3{MLA_APPEND_THREADS, 1, 1}, 0, [&] { flashmla_append_kv_fp8(ap); });
    if (why.empty() && fp8 != expect) {
        size_t i = 0;
        while (fp8[i] == expect[i]) ++i;
        why = "fp8 append: byte " + std::to_string(i % kFp8TokenBytes) + " of slot " + std::to_string(i / kFp8TokenBytes);
    }

    // Raw FP8 rows: copied as they are.
    std::vector<uint8_t> raw(static_cast<size_t>(kRows) * kFp8TokenBytes);
    for (auto& b : raw) b = static_cast<uint8_t>(rng());
    std::vector<uint8_t> rawpool((kBlocks + 1) * static_cast<size_t>(kFp8PageBytes), 0x5A), rawexpect(rawpool);
    for (int r = 0; r < kRows; ++r)
        if (slots[r] >= 0 && slots[r] < kBlocks * kPage)
            std::memcpy(rawexpect.data() + static_cast<size_t>(slots[r]) * kFp8TokenBytes, raw.data() + static_cast<size_t>(r) * kFp8TokenBytes, kFp8TokenBytes);
    ap.rows = raw.data();
    ap.kv_pool = rawpool.data();
    emu::launch("flashmla_append_kv_fp8_raw", grid(kRows), emu::Dim3{MLA_APPEND_THREADS, 1, 1}, 0, [&] { flashmla_append_kv_fp8_raw(ap); });
    if (why.empty() && rawpool != rawexpect) why = "raw fp8 append";

    // Page copies over two layers with a layer stride larger than the pool, an invalid pair skipped: bf16 and FP8.
    const std::vector<int32_t> pairs = {0, 1, 2, 3, 4, kBlocks, -1, 5};
    BlockCopyParams cp{};
    cp.pairs = pairs.data();
    cp.num_pairs = static_cast<int>(pairs.size() / 2);
    cp.num_layers = 2;
    cp.layer_stride_blocks = kBlocks + 2;
    cp.num_blocks = kBlocks;
    for (int f = 0; f < 2 && why.empty(); ++f) {
        const size_t page = f ? kFp8PageBytes : static_cast<size_t>(kPage) * kDimK * 2;
        std::vector<uint8_t> layers(2 * (kBlocks + 2) * page);
        for (auto& b : layers) b = static_cast<uint8_t>(rng());
        std::vector<uint8_t> want(layers);
        for (int l = 0; l < 2; ++l)
            for (size_t k = 0; k + 1 < pairs.size(); k += 2)
                if (pairs[k] >= 0 && pairs[k] < kBlocks && pairs[k + 1] >= 0 && pairs[k + 1] < kBlocks)
                    std::memcpy(want.data() + (l * (kBlocks + 2) + pairs[k + 1]) * page, layers.data() + (l * (kBlocks + 2) + pairs[k]) * page, page);
        cp.kv_pool = layers.data();
        const char* name = f ? "flashmla_copy_blocks_fp8" : "flashmla_copy_blocks";
        emu::launch(name, emu::Dim3{static_cast<unsigned>(cp.num_pairs), 2, 1}, emu::Dim3{MLA_COPY_THREADS, 1, 1}, 0,
                    [&] { f ? flashmla_copy_blocks_fp8(cp) : flashmla_copy_blocks(cp); });
        if (layers != want) why = std::string(name) + ": pages differ";
    }
    char line[200];
    std::snprintf(line, sizeof line, "%-4s unit write kernels (append, fp8 append vs the host quantizer, raw fp8 append, page copies)%s%s",
                  why.empty() ? "PASS" : "FAIL", why.empty() ? "" : ": ", why.c_str());
    return {why.empty(), line};
}

std::vector<Case> cases() {
    return {
        {"mixed_h16", 16, 1, {1, 63, 64, 65, 2, 129, 300}, 5},
        {"h8_sq2", 8, 2, {1, 2, 64, 65, 200}, 3},
        {"h32", 32, 1, {65, 130, 7, 64}, 4},
        {"h3_sq4", 3, 4, {3, 4, 70, 1}, 2},
        {"h16_sq2", 16, 2, {1, 100, 257}, 6},
        {"zero_length", 16, 1, {0, 5, 64, 0}, 3},
        {"one_part", 16, 1, {63, 64, 65, 129}, 1},
        {"many_parts", 32, 1, {300, 2}, 12},
        {"h1", 1, 1, {33, 190}, 2},
        {"wide_h64", 64, 1, {65, 200}, 3},
        {"wide_h128_sq2", 128, 2, {64, 65, 3}, 2},
        {"odd_h57_sq3", 57, 3, {1, 65, 128, 3}, 3},
        {"h100_sq4", 100, 4, {3, 4, 70}, 2},
        // even row groups (v19 runs in clusters of two): several chunks per part, empty sequences, empty parts
        {"h128_chunks", 128, 1, {1, 0, 63, 64, 65, 300, 2}, 3},
        {"h64_sq2_parts", 64, 2, {129, 5, 0, 256}, 9},
        {"h128_sq2_one_part", 128, 2, {200, 65, 1}, 1},
    };
}

// Random small cases, as the device checks' sweep: any h_q 1..128, s_q up to 4 (h_q * s_q <= 512), 1..6
// sequences of 0..400 tokens (a tenth of 0..3, a tenth around a page), 1..12 parts.
std::vector<Case> random_cases(int count) {
    std::mt19937_64 rng(2026);
    std::vector<Case> out;
    for (int i = 0; i < count; ++i) {
        Case c;
        c.name = "random_" + std::to_string(i);
        c.h_q = 1 + static_cast<int>(rng() % 128);
        c.s_q = 1 + static_cast<int>(rng() % std::min(4, MLA_MAX_ROWS_PER_SEQ / c.h_q));
        const int batch = 1 + static_cast<int>(rng() % 6);
        for (int b = 0; b < batch; ++b) {
            const int kind = static_cast<int>(rng() % 10);
            c.lens.push_back(kind == 0 ? static_cast<int>(rng() % 4) : kind == 1 ? 60 + static_cast<int>(rng() % 9) : 1 + static_cast<int>(rng() % 400));
        }
        c.parts = 1 + static_cast<int>(rng() % 12);
        out.push_back(c);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> names;
    int seeds = 2;
    bool unit = true;
    int random = 6;
    std::string filter;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--kernel" && i + 1 < argc) names.push_back(argv[++i]);
        else if (a == "--seeds" && i + 1 < argc) seeds = std::max(1, std::atoi(argv[++i]));
        else if (a == "--case" && i + 1 < argc) filter = argv[++i];
        else if (a == "--no-unit") unit = false;
        else if (a == "--random" && i + 1 < argc) random = std::max(0, std::atoi(argv[++i]));
        else if (a == "--list") {
            for (const auto& k : kKernels) std::printf("%s\n", k.name);
            return 0;
        } else {
            std::fprintf(stderr, "usage: %s [--kernel NAME]... [--seeds N] [--case SUBSTRING] [--random N] [--no-unit] [--list]\n", argv[0]);
            return 2;
        }
    }
    std::vector<const KernelEntry*> run;
    for (const auto& k : kKernels)
        if (names.empty() || std::find(names.begin(), names.end(), k.name) != names.end()) run.push_back(&k);
    if (run.size() != (names.empty() ? std::size(kKernels) : names.size())) {
        std::fprintf(stderr, "unknown kernel name (see --list)\n");
        return 2;
    }
    int passed = 0, failed = 0;
    if (unit)
        for (const Result& u : {dequant_fast_unit(), write_kernels_unit()}) {
            std::printf("%s\n", u.line.c_str());
            (u.ok ? passed : failed)++;
        }
    uint64_t data_seed = 11;
    std::vector<Case> all = cases();
    for (const Case& c : random_cases(random)) all.push_back(c);
    for (const KernelEntry* k : run)
        for (const Case& c : all) {
            ++data_seed;
            if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
            for (int s = 1; s <= seeds; ++s) {
                // Each case in a child process: an emulator error (exit 2) or a crash ends that case only.
                std::fflush(stdout);
                const pid_t pid = fork();
                if (pid == 0) {
                    const Result r = run_case(*k, c, data_seed, data_seed * 100 + s);
                    std::printf("%s\n", r.line.c_str());
                    std::fflush(stdout);
                    std::_Exit(r.ok ? 0 : 1);
                }
                int status = 0;
                waitpid(pid, &status, 0);
                const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                if (WIFEXITED(status) && WEXITSTATUS(status) == 2)
                    std::printf("FAIL %-31s %-16s seed=%d: emulator error (above)\n", k->name, c.name.c_str(), s);
                else if (!WIFEXITED(status))
                    std::printf("FAIL %-31s %-16s seed=%d: crashed (signal %d)\n", k->name, c.name.c_str(), s, WTERMSIG(status));
                (ok ? passed : failed)++;
            }
        }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
