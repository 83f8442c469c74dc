// bench.cuh -- the decode bench of flashmla_check (--bench), included into
// its anonymous namespace after the check helpers (dalloc, launch_decode_step,
// g_dev, the fills).
//
// Steady state (issue 16): every step is one CUDA graph of decode + combine
// (launch_decode_step: two plain launches, as the service does), one graph
// per input set, three sets replayed in turn so that no set sits in
// L2. Per shape: replays until the clock has settled (at least --warmup-s
// seconds and 300 replays before the shape's first timed block, --rewarm-s
// and 100 replays after each switch of kernel), then timed blocks of at
// least --reps replays and --time-s seconds, each
// replay timed on its own (an event between consecutive graph launches);
// kernels interleaved round by round (--rounds, order reversed every other
// round); the figure is the median of all timed replays. SM clock and board
// power (nvidia-smi) are read when a kernel's first timed block starts and its last
// ends. Both ceilings are measured in the same run, after a warm-up of their
// own: HBM read (the harness's read-only kernel over 4 GiB) and the bf16
// matrix rate (cuBLAS 8192^3). --quick: the old short mode (no settling, one
// round of 60), a quick check only.
#include "nvml_probe.h"

// ------------------------------------------------------------------ bench --

float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

struct BenchConfig {
    double warmup_s = 1.0, rewarm_s = 0.2, time_s = 0.25;
    int rounds = 2, reps = 200, max_reps = 4000;
    bool quick = false;
};
BenchConfig g_bench;
std::vector<int> g_bench_shapes;  // indices into bench_grid(); empty = all
NvmlProbe g_nvml;

struct Ceilings {
    double hbm_read_gbs = 0, d2d_gbs = 0, cublas_tflops = 0;
    NvmlProbe::Reading cublas_clock;
};

double host_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Ceilings measure_ceilings() {
    Ceilings c;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto time_ms = [&](auto&& op) {
        CK(cudaEventRecord(e0));
        op();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        return ms;
    };
    {  // HBM read: 4 GiB streamed once per run
        const size_t bytes = 4ull << 30;
        uint4* buf = dalloc<uint4>(bytes / 16);
        uint4* sink = dalloc<uint4>(1);
        check::fill_normal_bf16<<<4096, 256>>>(reinterpret_cast<bf16*>(buf), bytes / 2, 7, 1.f);
        std::vector<float> t;
        for (int i = 0; i < 23; ++i) {
            const float ms = time_ms([&] { check::hbm_read<<<g_dev.sm_count * 4, 1024>>>(buf, bytes / 16, sink); });
            if (i >= 3) t.push_back(ms);
        }
        c.hbm_read_gbs = bytes / (median(t) * 1e-3) / 1e9;
        t.clear();
        const size_t half = bytes / 2;
        for (int i = 0; i < 8; ++i) {
            const float ms = time_ms(
                [&] { CK(cudaMemcpyAsync(reinterpret_cast<char*>(buf) + half, buf, half, cudaMemcpyDeviceToDevice)); });
            if (i >= 2) t.push_back(ms);
        }
        c.d2d_gbs = 2.0 * half / (median(t) * 1e-3) / 1e9;  // bytes read + written
        CK(cudaFree(buf));
        CK(cudaFree(sink));
    }
    {  // cuBLAS bf16 8192^3, fp32 accumulate, random data; settled like the decode shapes
        const int n = 8192;
        bf16 *a = dalloc<bf16>((size_t)n * n), *b = dalloc<bf16>((size_t)n * n), *d = dalloc<bf16>((size_t)n * n);
        check::fill_normal_bf16<<<4096, 256>>>(a, (size_t)n * n, 11, 1.f);
        check::fill_normal_bf16<<<4096, 256>>>(b, (size_t)n * n, 12, 1.f);
        cublasHandle_t h;
        CB(cublasCreate(&h));
        const float alpha = 1.f, beta = 0.f;
        auto gemm = [&] {
            CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, d,
                            CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
        const double t_end = host_seconds() + (g_bench.quick ? 0.0 : g_bench.warmup_s);
        do {
            for (int i = 0; i < 8; ++i) gemm();
            CK(cudaDeviceSynchronize());
        } while (host_seconds() < t_end);
        std::vector<float> t;
        for (int i = 0; i < 30; ++i) t.push_back(time_ms(gemm));
        c.cublas_clock = g_nvml.read();
        c.cublas_tflops = 2.0 * n * n * (double)n / (median(t) * 1e-3) / 1e12;
        CB(cublasDestroy(h));
        CK(cudaFree(a));
        CK(cudaFree(b));
        CK(cudaFree(d));
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return c;
}

struct BenchShape {
    std::string name;
    int b, s_k, h_q, s_q;
    bool varlen;
    double flashmla_us = 0;  // FlashMLA's fastest release on the lent H200 (issue 16's table), 0 if none
};

// Issue 16's targets: FlashMLA's fastest release per shape (of b31bfe7,
// 9c5dfab, 9241ae3), timed like for like on the lent H200 on 2026-12-03
// (graphs of decode + combine, same inputs, median), microseconds.
struct FlashMlaTime {
    int b, s_k, h_q, s_q;
    bool varlen;
    double us;
};
const FlashMlaTime kFlashMlaH200[] = {
    {128, 8192, 16, 1, false, 292.2},  {128, 4096, 16, 1, false, 153.4}, {128, 8192, 128, 1, false, 487.9},
    {128, 8192, 128, 2, false, 888.9}, {128, 4096, 64, 2, true, 273.4},  {128, 4096, 16, 2, false, 155.4},
    {128, 4096, 32, 1, false, 155.6},  {128, 4096, 32, 2, false, 164.2}, {128, 4096, 64, 1, false, 164.0},
    {128, 4096, 64, 2, false, 243.6},  {128, 4096, 128, 1, false, 242.2}, {128, 4096, 128, 2, false, 453.9},
    {128, 8192, 16, 2, false, 300.2},  {128, 8192, 32, 1, false, 298.4}, {128, 8192, 32, 2, false, 304.7},
    {128, 8192, 64, 1, false, 304.8},  {128, 8192, 64, 2, false, 481.4}, {128, 4096, 16, 1, true, 167.3},
    {128, 4096, 16, 2, true, 177.5},   {128, 4096, 32, 1, true, 167.7},  {128, 4096, 32, 2, true, 183.1},
    {128, 4096, 64, 1, true, 182.1},   {128, 4096, 128, 1, true, 263.4}, {128, 4096, 128, 2, true, 481.4},
    {128, 8192, 16, 1, true, 329.4},   {128, 8192, 16, 2, true, 313.3},  {128, 8192, 32, 1, true, 315.7},
    {128, 8192, 32, 2, true, 325.3},   {128, 8192, 64, 1, true, 337.3},  {128, 8192, 64, 2, true, 520.7},
    {128, 8192, 128, 1, true, 479.2},  {128, 8192, 128, 2, true, 863.9}, {1, 4096, 16, 1, false, 18.2},
    {1, 4096, 128, 1, false, 20.8},    {1, 32768, 16, 1, false, 31.1},   {1, 32768, 128, 1, false, 37.5},
    {8, 4096, 16, 1, false, 27.0},     {8, 4096, 128, 1, false, 36.2},   {8, 32768, 16, 1, false, 89.9},
    {8, 32768, 128, 1, false, 130.7},  {32, 4096, 16, 1, false, 53.0},   {32, 4096, 128, 1, false, 78.2},
    {32, 32768, 16, 1, false, 299.8},  {32, 32768, 128, 1, false, 487.7},
};

// The issue-16 grid, 44 shapes, in the order of its table: DESIGN.md's five
// first (--shape 0..4), then batch 128 at s_k 4096 / 8192, h_q 16..128, s_q
// 1 / 2, fixed and varlen, then batch 1, 8, 32 at s_k 4096 / 32768.
std::vector<BenchShape> bench_grid() {
    std::vector<BenchShape> v = {
        {"", 128, 8192, 16, 1, false}, {"", 128, 4096, 16, 1, false}, {"", 128, 8192, 128, 1, false},
        {"", 128, 8192, 128, 2, false}, {"", 128, 4096, 64, 2, true},
    };
    auto listed = [&](int b, int sk, int h, int sq, bool vl) {
        for (const BenchShape& x : v)
            if (x.b == b && x.s_k == sk && x.h_q == h && x.s_q == sq && x.varlen == vl) return true;
        return false;
    };
    for (int vl = 0; vl < 2; ++vl)
        for (int sk : {4096, 8192})
            for (int h : {16, 32, 64, 128})
                for (int sq : {1, 2})
                    if (!listed(128, sk, h, sq, vl != 0)) v.push_back({"", 128, sk, h, sq, vl != 0});
    for (int b : {1, 8, 32})
        for (int sk : {4096, 32768})
            for (int h : {16, 128}) v.push_back({"", b, sk, h, 1, false});
    for (BenchShape& x : v) {
        char n[96];
        std::snprintf(n, sizeof n, "b%d s_k %d h_q %d s_q %d%s", x.b, x.s_k, x.h_q, x.s_q, x.varlen ? " varlen" : "");
        x.name = n;
        for (const FlashMlaTime& f : kFlashMlaH200)
            if (f.b == x.b && f.s_k == x.s_k && f.h_q == x.h_q && f.s_q == x.s_q && f.varlen == x.varlen) x.flashmla_us = f.us;
    }
    return v;
}

struct BenchResult {
    double us = 0, gbs = 0, tflops = 0;
    int replays = 0;
    NvmlProbe::Reading before, after;
};

struct BenchRow {
    BenchShape shape;
    int parts = 0, splits = 0;
    double gbytes = 0, gbytes_fp8 = 0, gflop = 0;  // bytes moved with a bf16 / an FP8 cache
    BenchResult k[kNumDecodeKernels];  // per kDecodeKernels entry (0 where not timed)
};

// Times decode + combine for the kernels in `which` (bit i: kDecodeKernels[i])
// on the same three input sets.
BenchRow bench_shape(const BenchShape& s, unsigned which) {
    std::mt19937_64 rng(777 + s.s_k + s.h_q * 3 + s.s_q + s.b * 7);
    std::vector<int> lens(s.b, s.s_k);
    if (s.varlen) {  // FlashMLA's varlen: normal(mean, mean/2), at least s_q
        std::normal_distribution<double> nd(s.s_k, s.s_k / 2.0);
        for (int& l : lens) l = std::max<int>(s.s_q, (int)nd(rng));
    }
    const int rows = s.s_q * s.h_q, groups = ceil_div(rows, MLA_ROWS_PER_CTA);
    const int parts = default_num_sm_parts(g_dev.sm_count, groups);
    const TileSchedule sched = compute_tile_schedule(lens, parts);
    int max_nb = 0, total_pages = 0;
    long long tokens = 0;
    for (int l : lens) {
        max_nb = std::max(max_nb, ceil_div(l, 64));
        total_pages += ceil_div(l, 64);
        tokens += l;
    }
    const int stride = max_nb;
    constexpr int kSets = 3;  // rotate so no input set sits in L2
    struct Set { bf16 *pool, *q, *out; int *bt; float *lse, *oacc, *lacc; uint8_t* fp8; };
    bool any_fp8 = false;
    for (int kern = 0; kern < kNumDecodeKernels; ++kern) any_fp8 |= (which & (1u << kern)) && kDecodeKernels[kern].fp8;
    int* d_ident = nullptr;  // slots 0 .. total_pages*64-1: quantize the whole bf16 pool into the FP8 one
    if (any_fp8) {
        std::vector<int> ident((size_t)total_pages * 64);
        std::iota(ident.begin(), ident.end(), 0);
        d_ident = dalloc<int>(ident.size());
        upload(d_ident, ident);
    }
    Set sets[kSets];
    int* d_lens = dalloc<int>(s.b);
    int* d_meta = dalloc<int>(sched.sched_meta.size());
    int* d_ns = dalloc<int>(sched.num_splits.size());
    upload(d_lens, lens);
    upload(d_meta, sched.sched_meta);
    upload(d_ns, sched.num_splits);
    std::vector<MlaDecodeParams> P(kSets), P8(kSets);
    for (int k = 0; k < kSets; ++k) {
        const size_t pool_elems = (size_t)total_pages * 64 * MLA_HEAD_DIM_K;
        sets[k].pool = dalloc<bf16>(pool_elems);
        sets[k].q = dalloc<bf16>((size_t)s.b * rows * MLA_HEAD_DIM_K);
        sets[k].out = dalloc<bf16>((size_t)s.b * rows * MLA_HEAD_DIM_V);
        sets[k].lse = dalloc<float>((size_t)s.b * rows);
        sets[k].oacc = dalloc<float>((size_t)sched.total_splits() * rows * MLA_HEAD_DIM_V);
        sets[k].lacc = dalloc<float>((size_t)sched.total_splits() * rows);
        sets[k].bt = dalloc<int>((size_t)s.b * stride);
        std::vector<int> perm(total_pages), bt((size_t)s.b * stride, 0);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int b = 0, i = 0; b < s.b; ++b)
            for (int j = 0; j < ceil_div(lens[b], 64); ++j) bt[(size_t)b * stride + j] = perm[i++];
        upload(sets[k].bt, bt);
        check::fill_normal_bf16<<<4096, 256>>>(sets[k].pool, pool_elems, 100 + k, 1.f);
        check::fill_normal_bf16<<<1024, 256>>>(sets[k].q, (size_t)s.b * rows * MLA_HEAD_DIM_K, 200 + k, 1.f);
        CK(cudaGetLastError());
        MlaDecodeParams& p = P[k];
        p = MlaDecodeParams{};
        p.q = sets[k].q; p.kv_pool = sets[k].pool; p.block_table = sets[k].bt; p.seq_lens = d_lens;
        encode_kv_map(p, sets[k].pool, (size_t)total_pages * 64, 0);
        p.sched_meta = d_meta; p.num_splits = d_ns; p.out = sets[k].out; p.lse = sets[k].lse;
        p.o_accum = sets[k].oacc; p.lse_accum = sets[k].lacc;
        p.batch = s.b; p.s_q = s.s_q; p.h_q = s.h_q; p.rows_per_seq = rows; p.num_row_groups = groups;
        p.block_table_stride = stride; p.num_sm_parts = parts; p.num_blocks = total_pages;
        p.softmax_scale = kSoftmaxScale; p.scale_log2 = (float)(kSoftmaxScale * kLog2e);
        sets[k].fp8 = nullptr;
        if (any_fp8) {
            sets[k].fp8 = dalloc<uint8_t>((size_t)total_pages * MLA_FP8_PAGE_BYTES);
            KvAppendParams qp{};
            qp.kv_pool = sets[k].fp8;
            qp.rows = sets[k].pool;
            qp.slots = d_ident;
            qp.num_rows = total_pages * 64;
            qp.num_blocks = total_pages;
            flashmla_append_kv_fp8<<<ceil_div(qp.num_rows, MLA_APPEND_ROWS_PER_CTA), MLA_APPEND_THREADS>>>(qp);
            CK(cudaGetLastError());
            P8[k] = p;
            P8[k].kv_pool = sets[k].fp8;
        }
    }
    CK(cudaDeviceSynchronize());
    BenchRow row;
    row.shape = s;
    row.parts = parts;
    row.splits = sched.total_splits();
    row.gbytes = ((double)tokens * MLA_HEAD_DIM_K * 2 + (double)s.b * rows * MLA_HEAD_DIM_K * 2 +
                  (double)s.b * rows * MLA_HEAD_DIM_V * 2) / 1e9;
    row.gbytes_fp8 = row.gbytes - (double)tokens * (MLA_HEAD_DIM_K * 2 - MLA_FP8_TOKEN_BYTES) / 1e9;
    row.gflop = 2.0 * rows * (MLA_HEAD_DIM_K + MLA_HEAD_DIM_V) * (double)tokens / 1e9;

    cudaStream_t stream;
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<int> kerns;
    for (int kern = 0; kern < kNumDecodeKernels; ++kern)
        if (which & (1u << kern)) kerns.push_back(kern);
    // One graph per (kernel, input set): the whole step.
    std::vector<std::vector<cudaGraphExec_t>> graphs(kNumDecodeKernels);
    for (int kern : kerns) {
        for (int k = 0; k < kSets; ++k) {
            cudaGraph_t gr;
            CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            launch_decode_step(kDecodeKernels[kern].fp8 ? P8[k] : P[k], false, stream, kern);
            CK(cudaStreamEndCapture(stream, &gr));
            cudaGraphExec_t ex;
            CK(cudaGraphInstantiate(&ex, gr, 0));
            CK(cudaGraphDestroy(gr));
            graphs[kern].push_back(ex);
        }
    }
    const int max_reps = g_bench.quick ? 60 : g_bench.max_reps;
    std::vector<cudaEvent_t> ev(max_reps + 1);
    for (cudaEvent_t& e : ev) CK(cudaEventCreate(&e));
    long long replay = 0;  // rotates the input sets across everything below
    // Replays until `seconds` have passed and at least `min_replays` ran; returns
    // the mean host time per replay.
    auto settle = [&](int kern, double seconds, int min_replays) {
        const double t0 = host_seconds();
        int count = 0;
        do {
            for (int i = 0; i < 16; ++i, ++count) CK(cudaGraphLaunch(graphs[kern][replay++ % kSets], stream));
            CK(cudaStreamSynchronize(stream));
        } while (count < min_replays || host_seconds() - t0 < seconds);
        return (host_seconds() - t0) / count;
    };
    std::vector<std::vector<float>> samples(kNumDecodeKernels);
    std::vector<double> per_replay_s(kNumDecodeKernels, 0.0);
    const int rounds = g_bench.quick ? 1 : g_bench.rounds;
    for (int round = 0; round < rounds; ++round) {
        for (size_t ki = 0; ki < kerns.size(); ++ki) {
            const int kern = (round & 1) ? kerns[kerns.size() - 1 - ki] : kerns[ki];
            BenchResult& res = row.k[kern];
            // The shape's first block settles the clock (>= warmup_s and 300 replays); every
            // later one re-settles after the switch of kernel (>= rewarm_s and 100 replays).
            if (g_bench.quick) per_replay_s[kern] = settle(kern, 0.0, 10);
            else if (round == 0 && ki == 0) per_replay_s[kern] = settle(kern, g_bench.warmup_s, 300);
            else per_replay_s[kern] = settle(kern, g_bench.rewarm_s, 100);
            int reps = g_bench.quick ? 60 : (int)std::ceil(g_bench.time_s / std::max(per_replay_s[kern], 1e-7));
            reps = std::min(max_reps, std::max(reps, g_bench.quick ? 60 : g_bench.reps));
            const NvmlProbe::Reading before = g_nvml.read();
            CK(cudaEventRecord(ev[0], stream));
            for (int i = 0; i < reps; ++i) {
                CK(cudaGraphLaunch(graphs[kern][replay++ % kSets], stream));
                CK(cudaEventRecord(ev[i + 1], stream));
            }
            CK(cudaStreamSynchronize(stream));
            const NvmlProbe::Reading after = g_nvml.read();
            for (int i = 0; i < reps; ++i) {
                float ms;
                CK(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
                samples[kern].push_back(ms);
            }
            if (res.replays == 0) res.before = before;
            res.after = after;
            res.replays += reps;
        }
    }
    CK(cudaGetLastError());
    for (int kern : kerns) {
        const double sec = median(samples[kern]) * 1e-3;
        BenchResult& r = row.k[kern];
        r.us = sec * 1e6;
        r.gbs = (kDecodeKernels[kern].fp8 ? row.gbytes_fp8 : row.gbytes) / sec;
        r.tflops = row.gflop / sec / 1e3;
        for (cudaGraphExec_t ex : graphs[kern]) CK(cudaGraphExecDestroy(ex));
    }
    for (cudaEvent_t e : ev) CK(cudaEventDestroy(e));
    CK(cudaStreamDestroy(stream));
    for (int k = 0; k < kSets; ++k)
        for (void* p : std::initializer_list<void*>{sets[k].pool, sets[k].q, sets[k].out, sets[k].bt, sets[k].lse,
                                                    sets[k].oacc, sets[k].lacc, sets[k].fp8})
            CK(cudaFree(p));
    CK(cudaFree(d_ident));
    CK(cudaFree(d_lens));
    CK(cudaFree(d_meta));
    CK(cudaFree(d_ns));
    return row;
}

// Geometric mean of FlashMLA's time over ours on the rows with a FlashMLA
// time and batch 128 (big) or below (small); 0 if none.
double geomean_ratio(const std::vector<BenchRow>& rows, int kern, bool big) {
    double sum = 0;
    int n = 0;
    for (const BenchRow& r : rows) {
        if (r.shape.flashmla_us <= 0 || r.k[kern].us <= 0 || (r.shape.b >= 128) != big) continue;
        sum += std::log(r.shape.flashmla_us / r.k[kern].us);
        ++n;
    }
    return n ? std::exp(sum / n) : 0.0;
}

int run_bench(const std::string& results_path, int only_shape, unsigned which) {
    g_nvml.open();
    std::vector<BenchShape> grid = bench_grid();
    if (only_shape < 0 && !g_bench_shapes.empty()) {  // --shapes: a subset, in the order given
        std::vector<BenchShape> sub;
        for (int i : g_bench_shapes)
            if (i >= 0 && i < (int)grid.size()) sub.push_back(grid[i]);
        grid = sub;
    }
    if (only_shape >= 0) {  // one shape, one kernel, no ceilings: for profilers (ncu)
        g_bench.quick = true;
        const BenchRow r = bench_shape(grid[only_shape % grid.size()], 1u << g_dev.kernel);
        const BenchResult& k = r.k[g_dev.kernel];
        std::printf("%s [%s]: %.1f us, %.0f GB/s, %.1f TFLOP/s\n", r.shape.name.c_str(), kDecodeKernels[g_dev.kernel].name,
                    k.us, k.gbs, k.tflops);
        return 0;
    }
    const NvmlProbe::Reading idle = g_nvml.read();
    const Ceilings c = measure_ceilings();
    std::printf("ceilings: HBM read %.0f GB/s, D2D %.0f GB/s, cuBLAS bf16 %.0f TFLOP/s (SM %u MHz, %.0f W)\n",
                c.hbm_read_gbs, c.d2d_gbs, c.cublas_tflops, c.cublas_clock.sm_mhz, c.cublas_clock.milliwatts / 1e3);
    std::vector<BenchRow> rows;
    for (const BenchShape& s : grid) {
        rows.push_back(bench_shape(s, which));
        const BenchRow& r = rows.back();
        std::printf("bench %-32s", s.name.c_str());
        for (int k = 0; k < kNumDecodeKernels; ++k)
            if (which & (1u << k))
                std::printf(" | %s %7.1f us %4u->%4u MHz %3.0f->%3.0f W", kDecodeKernels[k].label, r.k[k].us,
                            r.k[k].before.sm_mhz, r.k[k].after.sm_mhz, r.k[k].before.milliwatts / 1e3,
                            r.k[k].after.milliwatts / 1e3);
        std::printf("\n");
        std::fflush(stdout);
    }

    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    std::ostringstream os;
    char line[1024];
    os << "# flashmla_check --bench\n";
    os << "date: " << date << "\n";
    os << "gpu: " << g_dev.prop.name << ", " << g_dev.sm_count << " SMs, L2 " << g_dev.prop.l2CacheSize / (1 << 20)
       << " MiB, driver " << driver << ", runtime " << runtime << "\n";
    std::snprintf(line, sizeof line, "idle before the run: SM %u MHz, %.0f W, %u C\n", idle.sm_mhz, idle.milliwatts / 1e3,
                  idle.celsius);
    os << line;
    std::snprintf(line, sizeof line,
                  "ceilings (same run): HBM read %.0f GB/s (read-only kernel, 4 GiB), D2D memcpy %.0f GB/s (read+write), "
                  "bf16 matrix %.0f TFLOP/s (cuBLAS 8192^3 after a warm-up; SM %u MHz, %.0f W)\n",
                  c.hbm_read_gbs, c.d2d_gbs, c.cublas_tflops, c.cublas_clock.sm_mhz, c.cublas_clock.milliwatts / 1e3);
    os << line;
    if (g_bench.quick) {
        os << "timing: QUICK mode (no settling, 1 x 60 replays): a quick check, not steady state\n";
    } else {
        std::snprintf(line, sizeof line,
                      "timing: steady state; each replay one CUDA graph of decode + combine (plain launches, as the "
                      "service), 3 input sets in turn; per shape settle >= %.2f s and 300 replays, then %d rounds "
                      "(kernels interleaved, re-settle >= %.2f s and 100 replays at each switch) of >= %d replays and >= "
                      "%.2f s per kernel; median of all timed replays\n",
                      g_bench.warmup_s, g_bench.rounds, g_bench.rewarm_s, g_bench.reps, g_bench.time_s);
        os << line;
    }
    os << "bytes = KV tokens*1152 (FP8 kernels: *656) + q + out; FLOP = 2*s_q*h_q*(576+512)*tokens; varlen = normal(s_k, s_k/2), at least "
          "s_q; % read = GB/s over the HBM read ceiling, % matrix = TFLOP/s over the cuBLAS ceiling; FlashMLA = its "
          "fastest release on the lent H200 (issue 16, 2026-12-03); FlashMLA/ours > 1 = ours faster; SM clock and "
          "board power when the kernel's first timed block started -> when its last ended\n\n";
    for (int kern = 0; kern < kNumDecodeKernels; ++kern) {
        if (!(which & (1u << kern))) continue;
        os << "## " << kDecodeKernels[kern].name << " (" << kDecodeKernels[kern].label << ")\n\n";
        os << "| shape | us | GB/s | % read | TFLOP/s | % matrix | FlashMLA us | FlashMLA/ours | SM MHz | W | replays |\n";
        os << "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for (const BenchRow& r : rows) {
            const BenchResult& k = r.k[kern];
            char fm[32] = "", ratio[32] = "";
            if (r.shape.flashmla_us > 0) {
                std::snprintf(fm, sizeof fm, "%.1f", r.shape.flashmla_us);
                std::snprintf(ratio, sizeof ratio, "%.3f", r.shape.flashmla_us / k.us);
            }
            std::snprintf(line, sizeof line,
                          "| %s | %.1f | %.0f | %.1f%% | %.1f | %.1f%% | %s | %s | %u -> %u | %.0f -> %.0f | %d |\n",
                          r.shape.name.c_str(), k.us, k.gbs, 100.0 * k.gbs / c.hbm_read_gbs, k.tflops,
                          100.0 * k.tflops / c.cublas_tflops, fm, ratio, k.before.sm_mhz, k.after.sm_mhz,
                          k.before.milliwatts / 1e3, k.after.milliwatts / 1e3, k.replays);
            os << line;
        }
        std::snprintf(line, sizeof line,
                      "\ngeometric mean of FlashMLA/ours: batch 128 %.3f, small batches %.3f\n\n",
                      geomean_ratio(rows, kern, true), geomean_ratio(rows, kern, false));
        os << line;
    }
    if (!results_path.empty()) {
        std::ofstream f(results_path);
        f << os.str();
        std::printf("results written to %s\n", results_path.c_str());
    }

    // Short table last: every shape run, us and FlashMLA/ours per kernel.
    std::printf("\nSHORT %s%s, HBM read %.0f GB/s, cuBLAS %.0f TFLOP/s; cells: us (FlashMLA/ours)\n", g_dev.prop.name,
                g_bench.quick ? " [QUICK, not steady state]" : "", c.hbm_read_gbs, c.cublas_tflops);
    std::printf("| %-30s", "shape");
    for (int k = 0; k < kNumDecodeKernels; ++k)
        if (which & (1u << k)) std::printf(" | %-16s", kDecodeKernels[k].label);
    // bf16/FP8: the exported bf16 kernel's time over each FP8 kernel's (KV tokens per second, FP8 over bf16).
    std::printf(" | FlashMLA | MHz  |");
    for (int k = 1; k < kNumDecodeKernels; ++k)
        if ((which & 1u) && (which & (1u << k)) && kDecodeKernels[k].fp8) std::printf(" bf16/%s |", kDecodeKernels[k].label);
    std::printf("\n");
    for (const BenchRow& r : rows) {
        std::printf("| %-30s", r.shape.name.c_str());
        unsigned mhz = 0;
        for (int k = 0; k < kNumDecodeKernels; ++k)
            if (which & (1u << k)) {
                std::printf(" | %7.1f (%5.3f)", r.k[k].us, r.shape.flashmla_us > 0 ? r.shape.flashmla_us / r.k[k].us : 0.0);
                mhz = r.k[k].after.sm_mhz;
            }
        std::printf(" | %8.1f | %4u |", r.shape.flashmla_us, mhz);
        for (int k = 1; k < kNumDecodeKernels; ++k)
            if ((which & 1u) && (which & (1u << k)) && kDecodeKernels[k].fp8)
                std::printf(" %11.3f |", r.k[k].us > 0 ? r.k[0].us / r.k[k].us : 0.0);
        std::printf("\n");
    }
    std::printf("| %-30s", "geomean b128 / small");
    for (int k = 0; k < kNumDecodeKernels; ++k)
        if (which & (1u << k))
            std::printf(" | %5.3f / %5.3f   ", geomean_ratio(rows, k, true), geomean_ratio(rows, k, false));
    std::printf(" |\n");
    return 0;
}
