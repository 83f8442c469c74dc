// flashmla_check.cu -- native check and bench harness for the FlashMLA kernels.
//
//   flashmla_check [--fatbin PATH] [--kernel NAME]   all checks (default) of the
//                         decode kernel NAME (default flashmla_decode_splitkv, the exported one;
//                         or a harness-only candidate listed in kDecodeKernels, if any)
//   flashmla_check --bench [--results FILE] [--kernels A,B,..]   steady-state timings (bench.cuh)
//                         of the named kernels (default all) on issue 16's 44-shape grid + the HBM
//                         read and bf16 matrix ceilings, FlashMLA's H200 times beside ours
//                         [--shapes I,J,..] a subset of the grid; [--rounds R] [--reps N]
//                         [--warmup-s S] [--rewarm-s S] [--time-s S]; [--quick] the short mode
//   flashmla_check --bench --shape I [--kernel NAME]   one bench shape (0..4: the five
//                         headline shapes of docs/performance.md), one kernel, quick, no
//                         ceilings (for ncu)
//
// Checks (docs/performance.md, native/README.md): random inputs, fp32
// reference kernel, KV rows past each length = NaN, outputs (and split
// scratch) poisoned with NaN before each run, shuffled block tables, varlen
// batches. One line per case, a summary, exit code 1 on any failure. A few
// cases launch through the driver API from the fatbin exactly as the C#
// service does (cuModuleLoadData + cuLaunchKernel with one pointer to the
// params struct); the others through the runtime.
//   flashmla_check --list-kernels   the decode kernels it can check and time, one a line
#include <cuda.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../host/tile_scheduler.h"
#include "../host/decode_shape.h"
#include "../include/decode_reference.cuh"
#include "../include/mla_config.h"
#include "../include/mla_kernels.h"
#include "../include/mla_params.h"
#include "device_fill.cuh"
#include "fp8_host.h"
#include "tma_check.cuh"
#include "wgmma_check.cuh"
#ifdef MLA_NARROW_CANDIDATES  // build.sh defines it when the candidates' translation unit compiles
#include "wgmma_narrow_check.cuh"
extern "C" __global__ void flashmla_decode_splitkv_fp8_v3(const __grid_constant__ MlaDecodeParams p);
extern "C" __global__ void flashmla_decode_splitkv_v18(const __grid_constant__ MlaDecodeParams p);
#endif
#ifdef MLA_CLUSTER_CANDIDATES  // build.sh defines it when kernels/decode_cluster_candidates.cu compiles
extern "C" __global__ void flashmla_decode_splitkv_v19(const __grid_constant__ MlaDecodeParams p);
#endif

#define CK(x)                                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (x);                                                                         \
        if (e_ != cudaSuccess) {                                                                      \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
            std::exit(2);                                                                             \
        }                                                                                             \
    } while (0)
#define CU(x)                                                                                         \
    do {                                                                                              \
        CUresult r_ = (x);                                                                            \
        if (r_ != CUDA_SUCCESS) {                                                                     \
            const char* s_ = nullptr;                                                                 \
            cuGetErrorString(r_, &s_);                                                                \
            std::fprintf(stderr, "CUDA driver error %s at %s:%d: %s\n", s_ ? s_ : "?", __FILE__, __LINE__, #x); \
            std::exit(2);                                                                             \
        }                                                                                             \
    } while (0)
#define CB(x)                                                                                         \
    do {                                                                                              \
        cublasStatus_t s_ = (x);                                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                            \
            std::fprintf(stderr, "cuBLAS error %d at %s:%d: %s\n", (int)s_, __FILE__, __LINE__, #x);  \
            std::exit(2);                                                                             \
        }                                                                                             \
    } while (0)

using bf16 = __nv_bfloat16;

namespace {

constexpr float kSoftmaxScale = 0.07216878364870322f;  // 1/sqrt(192), DeepSeek's qk head dim
constexpr double kLog2e = 1.4426950408889634;

struct Device {
    cudaDeviceProp prop{};
    int sm_count = 0;
    CUmodule module = nullptr;
    CUfunction f_decode = nullptr, f_combine = nullptr;
    unsigned decode_cluster = 1;  // the module's exported cluster width for f_decode (mla_params.h), as the C# host reads it
    int kernel = 0;  // index into kDecodeKernels: the decode kernel the checks run
};
Device g_dev;

// Decode kernels the harness can check and time: [0] is the service's (the
// module's flashmla_decode_splitkv). A candidate is added here, built into
// the harness only (its own .cu on build.sh's harness line), so that it is
// checked and timed in the same run as the exported one; all take the same
// launch. None is kept between milestones (issue 16: NOTES.md says which
// were tried, git has their code).
struct DecodeKernel {
    const char* name;
    const char* label;
    const void* fn;
    bool fp8;  // reads the FP8 KV format (mla_params.h): the checks quantize the cache for it
    unsigned cluster = 1;  // launched in clusters of this many CTAs along x when the row groups divide by it
};
#ifdef MLA_EXPORT_CLUSTER  // build.sh EXPORT_CLUSTER=1: the exported decode is v19 and is launched in clusters of two
constexpr unsigned kExportedDecodeCluster = 2;
#else
constexpr unsigned kExportedDecodeCluster = 1;
#endif
const DecodeKernel kDecodeKernels[] = {
    {"flashmla_decode_splitkv", "exported", reinterpret_cast<const void*>(flashmla_decode_splitkv), false, kExportedDecodeCluster},
    {"flashmla_decode_splitkv_fp8", "fp8 v1", reinterpret_cast<const void*>(flashmla_decode_splitkv_fp8), true},
#ifdef MLA_NARROW_CANDIDATES
    {"flashmla_decode_splitkv_v18", "v18 narrow", reinterpret_cast<const void*>(flashmla_decode_splitkv_v18), false},
    {"flashmla_decode_splitkv_fp8_v3", "fp8 v3 narrow", reinterpret_cast<const void*>(flashmla_decode_splitkv_fp8_v3), true},
#endif
#ifdef MLA_CLUSTER_CANDIDATES
    {"flashmla_decode_splitkv_v19", "v19 2-CTA multicast", reinterpret_cast<const void*>(flashmla_decode_splitkv_v19), false, 2},
#endif
};
constexpr int kNumDecodeKernels = sizeof(kDecodeKernels) / sizeof(kDecodeKernels[0]);
int decode_kernel_index(const std::string& name) {
    for (int i = 0; i < kNumDecodeKernels; ++i)
        if (name == kDecodeKernels[i].name) return i;
    std::fprintf(stderr, "unknown decode kernel %s\n", name.c_str());
    std::exit(2);
}

template <class T>
T* dalloc(size_t n) {
    T* p = nullptr;
    CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}
template <class T>
void upload(T* d, const std::vector<T>& h) {
    CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <class T>
std::vector<T> download(const T* d, size_t n) {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}
inline float bf16_bits_to_float(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return {};
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void setup_device(const std::string& fatbin_path) {
    CK(cudaSetDevice(0));
    CK(cudaGetDeviceProperties(&g_dev.prop, 0));
    g_dev.sm_count = g_dev.prop.multiProcessorCount;
    CK(cudaFree(nullptr));  // make the primary context current for the driver API
    for (const DecodeKernel& k : kDecodeKernels)
        CK(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, MLA_DECODE_SMEM_BYTES));
    // A cluster candidate's parts are planned for one CTA per SM: say whether every SM can hold one at once
    // (clusters are placed within a GPC, so an odd SM count in a GPC leaves an SM idle).
    for (const DecodeKernel& k : kDecodeKernels) {
        if (k.cluster <= 1) continue;
        cudaLaunchAttribute attr{};
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = k.cluster;
        attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = dim3(k.cluster);
        cfg.blockDim = dim3(MLA_DECODE_THREADS);
        cfg.dynamicSmemBytes = MLA_DECODE_SMEM_BYTES;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        int clusters = 0;
        CK(cudaOccupancyMaxActiveClusters(&clusters, k.fn, &cfg));
        std::printf("%s: %d clusters of %u CTAs at once (%d CTAs; %d SMs)%s\n", k.name, clusters, k.cluster,
                    clusters * (int)k.cluster, g_dev.sm_count,
                    clusters * (int)k.cluster < g_dev.sm_count ? " WARN: fewer than the SMs, parts will run in two waves" : "");
    }
    if (!fatbin_path.empty()) {
        std::vector<uint8_t> image = read_file(fatbin_path);
        if (image.empty()) {
            std::printf("WARN cannot read fatbin %s: driver-API cases skipped\n", fatbin_path.c_str());
            return;
        }
        CU(cuModuleLoadData(&g_dev.module, image.data()));
        // A harness-only candidate is not in the module: its driver-API cases run through the runtime.
        if (cuModuleGetFunction(&g_dev.f_decode, g_dev.module, kDecodeKernels[g_dev.kernel].name) != CUDA_SUCCESS)
            g_dev.f_decode = nullptr;
        CU(cuModuleGetFunction(&g_dev.f_combine, g_dev.module, MLA_KERNEL_COMBINE));
        CUfunction f;
        CU(cuModuleGetFunction(&f, g_dev.module, MLA_KERNEL_REFERENCE));
        CU(cuModuleGetFunction(&f, g_dev.module, MLA_KERNEL_APPEND));
        CU(cuModuleGetFunction(&f, g_dev.module, MLA_KERNEL_COPY));
        for (const char* name : {MLA_KERNEL_DECODE_FP8, MLA_KERNEL_APPEND_FP8, MLA_KERNEL_APPEND_FP8_RAW, MLA_KERNEL_COPY_FP8})
            CU(cuModuleGetFunction(&f, g_dev.module, name));
        if (g_dev.f_decode) {
            CU(cuFuncSetAttribute(g_dev.f_decode, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, MLA_DECODE_SMEM_BYTES));
            // The cluster width the module exports for it, if any (mla_params.h, MLA_DECODE_CLUSTER_WIDTH_SUFFIX).
            const std::string sym = std::string(kDecodeKernels[g_dev.kernel].name) + MLA_DECODE_CLUSTER_WIDTH_SUFFIX;
            CUdeviceptr ptr = 0;
            size_t bytes = 0;
            if (cuModuleGetGlobal(&ptr, &bytes, g_dev.module, sym.c_str()) == CUDA_SUCCESS) {
                int width = 1;
                if (bytes != sizeof width) { std::fprintf(stderr, "%s: %zu bytes, not an int\n", sym.c_str(), bytes); std::exit(1); }
                CU(cuMemcpyDtoH(&width, ptr, sizeof width));
                g_dev.decode_cluster = static_cast<unsigned>(width);
                std::printf("module: %s = %d (the decode is launched in clusters of %d when the row groups allow)\n", sym.c_str(), width, width);
            }
        }
    }
}

// The KV tensor map of MlaDecodeParams (ABI 2), encoded as mla_params.h
// prescribes: over `total_rows` 576-wide bf16 rows at `alloc`, 64 x 64 boxes,
// 128-byte swizzle; row0 = the map row of token 0 of page 0 of P.kv_pool.
void encode_kv_map(MlaDecodeParams& P, const void* alloc, size_t total_rows, int row0) {
    static_assert(sizeof(CUtensorMap) == sizeof(MlaTensorMap), "MlaTensorMap is a CUtensorMap");
    const cuuint64_t dims[2] = {MLA_HEAD_DIM_K, (cuuint64_t)total_rows};
    const cuuint64_t strides[1] = {MLA_HEAD_DIM_K * 2};
    const cuuint32_t box[2] = {64, 64};
    const cuuint32_t elem_strides[2] = {1, 1};
    CU(cuTensorMapEncodeTiled(reinterpret_cast<CUtensorMap*>(&P.kv_map), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                              const_cast<void*>(alloc), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    P.kv_map_row0 = row0;
}

// The decode step exactly as the service runs it: split kernel, then combine
// (two plain launches on one stream). Through the driver API the kernels come
// from the fatbin, as in the C# backend.
// kernel: index into kDecodeKernels (the driver path always uses g_dev.kernel).
void launch_decode_step(const MlaDecodeParams& P, bool via_driver, cudaStream_t stream, int kernel = g_dev.kernel) {
    const dim3 grid_decode(P.num_row_groups, P.num_sm_parts, 1);
    const dim3 grid_combine(P.batch, ceil_div(P.rows_per_seq, MLA_COMBINE_ROWS_PER_CTA), 1);
    void* args[] = {const_cast<MlaDecodeParams*>(&P)};
    if (via_driver && g_dev.decode_cluster > 1 && grid_decode.x % g_dev.decode_cluster == 0) {
        // As the C# backend launches a module that exports a cluster width: cuLaunchKernelEx, cluster (W, 1, 1).
        CUlaunchAttribute attr{};
        attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim.x = g_dev.decode_cluster;
        attr.value.clusterDim.y = 1;
        attr.value.clusterDim.z = 1;
        CUlaunchConfig cfg{};
        cfg.gridDimX = grid_decode.x;
        cfg.gridDimY = grid_decode.y;
        cfg.gridDimZ = 1;
        cfg.blockDimX = MLA_DECODE_THREADS;
        cfg.blockDimY = cfg.blockDimZ = 1;
        cfg.sharedMemBytes = MLA_DECODE_SMEM_BYTES;
        cfg.hStream = stream;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        CU(cuLaunchKernelEx(&cfg, g_dev.f_decode, args, nullptr));
        CU(cuLaunchKernel(g_dev.f_combine, grid_combine.x, grid_combine.y, 1, MLA_COMBINE_THREADS, 1, 1, 0, stream,
                          args, nullptr));
    } else if (via_driver) {
        CU(cuLaunchKernel(g_dev.f_decode, grid_decode.x, grid_decode.y, 1, MLA_DECODE_THREADS, 1, 1,
                          MLA_DECODE_SMEM_BYTES, stream, args, nullptr));
        CU(cuLaunchKernel(g_dev.f_combine, grid_combine.x, grid_combine.y, 1, MLA_COMBINE_THREADS, 1, 1, 0, stream,
                          args, nullptr));
    } else if (kDecodeKernels[kernel].cluster > 1 && grid_decode.x % kDecodeKernels[kernel].cluster == 0) {
        // A cluster candidate: the same grid, CTAs grouped along x (cudaLaunchKernelEx's cluster attribute).
        cudaLaunchAttribute attr{};
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = kDecodeKernels[kernel].cluster;
        attr.val.clusterDim.y = 1;
        attr.val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = grid_decode;
        cfg.blockDim = dim3(MLA_DECODE_THREADS);
        cfg.dynamicSmemBytes = MLA_DECODE_SMEM_BYTES;
        cfg.stream = stream;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelExC(&cfg, kDecodeKernels[kernel].fn, args));
        flashmla_combine<<<grid_combine, MLA_COMBINE_THREADS, 0, stream>>>(P);
        CK(cudaGetLastError());
    } else {
        CK(cudaLaunchKernel(kDecodeKernels[kernel].fn, grid_decode, dim3(MLA_DECODE_THREADS), args,
                            MLA_DECODE_SMEM_BYTES, stream));
        flashmla_combine<<<grid_combine, MLA_COMBINE_THREADS, 0, stream>>>(P);
        CK(cudaGetLastError());
    }
}

// The reference over an fp32 pool: FP8 codes times their scales, unrounded (check::dequant_fp8_pool_f32).
__global__ void __launch_bounds__(MLA_REFERENCE_THREADS) reference_f32(const MlaDecodeParams p, const float* pool) {
    decode_reference_rows(p, pool);
}

// A decode step's out and lse against one reference's.
struct RefCompare {
    double rel = 0, lse_err = 0;
    long long nan_out = 0, bad_lse = 0, bad_empty = 0, ref_nan = 0;
    bool ok() const { return nan_out == 0 && ref_nan == 0 && bad_lse == 0 && bad_empty == 0 && rel < 1e-2; }
};
RefCompare compare_to_reference(const std::vector<bf16>& out, const std::vector<float>& lse, const std::vector<float>& ref,
                                const std::vector<float>& ref_lse, int batch, int rows, int h_q, int s_q) {
    RefCompare m;
    double num = 0, den = 0;
    for (int b = 0; b < batch; ++b) {
        for (int r = 0; r < rows; ++r) {
            const int tok = r / h_q, h = r % h_q;
            const size_t li = ((size_t)b * h_q + h) * s_q + tok;
            const float rl = ref_lse[li], kl = lse[li];
            const bool empty = std::isinf(rl) && rl < 0;
            if (std::isnan(rl)) ++m.ref_nan;
            if (empty) {
                if (!(std::isinf(kl) && kl < 0)) ++m.bad_lse;
            } else {
                const double d = std::fabs((double)kl - rl);
                if (!(d <= 1e-3 + 1e-4 * std::fabs(rl))) ++m.bad_lse;  // NaN fails too
                if (std::isfinite(d)) m.lse_err = std::max(m.lse_err, d);
            }
            const size_t o = ((size_t)b * rows + r) * MLA_HEAD_DIM_V;
            for (int j = 0; j < MLA_HEAD_DIM_V; ++j) {
                const float kv = bf16_bits_to_float(*reinterpret_cast<const uint16_t*>(&out[o + j]));
                const float rv = ref[o + j];
                if (std::isnan(kv)) { ++m.nan_out; continue; }
                if (std::isnan(rv)) { ++m.ref_nan; continue; }
                if (empty && kv != 0.f) ++m.bad_empty;
                num += ((double)kv - rv) * ((double)kv - rv);
                den += (double)rv * rv;
            }
        }
    }
    m.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    return m;
}

struct Summary {
    int cases = 0, failed = 0;
    double worst_rel = 0, worst_lse = 0;
};

struct DecodeCase {
    std::string name;
    int h_q = 16, s_q = 1;
    std::vector<int> lens;
    int parts = 0;            // 0: the recommended count for this GPU
    bool via_driver = false;  // launch from the fatbin through the driver API
    bool repeat = false;      // run twice, results must be bitwise equal
};

// Builds one case on the device: pool (NaN everywhere but the valid rows),
// shuffled block table, q, the last min(s_q, len) rows of each sequence
// written by flashmla_append_kv; runs the step and the reference; compares.
bool run_decode_case(const DecodeCase& c, uint64_t seed, Summary& sum) {
    const auto t0 = std::chrono::steady_clock::now();
    const int batch = (int)c.lens.size();
    const int rows = c.s_q * c.h_q;
    const int groups = ceil_div(rows, MLA_ROWS_PER_CTA);
    const int parts = c.parts > 0 ? c.parts : default_num_sm_parts(g_dev.sm_count, groups);
    std::mt19937_64 rng(seed);

    std::vector<int> nb(batch);
    int max_nb = 0, total_pages = 0;
    long long total_tokens = 0;
    for (int b = 0; b < batch; ++b) {
        nb[b] = ceil_div(std::max(c.lens[b], 0), MLA_PAGE_TOKENS);
        max_nb = std::max(max_nb, nb[b]);
        total_pages += nb[b];
        total_tokens += c.lens[b];
    }
    const int stride = max_nb + 3;
    const int num_blocks = total_pages + 5;  // 5 pages nobody owns: stay NaN
    std::vector<int> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> bt((size_t)batch * stride, perm[total_pages]);  // unused entries -> a NaN page
    for (int b = 0, k = 0; b < batch; ++b)
        for (int j = 0; j < nb[b]; ++j) bt[(size_t)b * stride + j] = perm[k++];

    // New rows of this step: the last min(s_q, len) positions; two padding rows.
    std::vector<int> prefix(batch), slots;
    for (int b = 0; b < batch; ++b) {
        const int n_new = std::min(c.s_q, std::max(c.lens[b], 0));
        prefix[b] = std::max(c.lens[b], 0) - n_new;
        for (int pos = prefix[b]; pos < c.lens[b]; ++pos)
            slots.push_back(bt[(size_t)b * stride + pos / MLA_PAGE_TOKENS] * MLA_PAGE_TOKENS + pos % MLA_PAGE_TOKENS);
    }
    slots.push_back(-1);
    slots.push_back(num_blocks * MLA_PAGE_TOKENS);  // one past the pool: must be skipped
    const int n_append = (int)slots.size();

    const size_t pool_elems = (size_t)(num_blocks + 1) * MLA_PAGE_TOKENS * MLA_HEAD_DIM_K;  // +1 guard page
    // The pool sits `lead` NaN pages into its allocation, as a layer's pool
    // does in the service's one allocation for all layers: the tensor map
    // covers the allocation and kv_map_row0 points at the pool.
    const int lead = (int)(seed % 3);
    const size_t lead_elems = (size_t)lead * MLA_PAGE_TOKENS * MLA_HEAD_DIM_K;
    bf16* d_alloc = dalloc<bf16>(lead_elems + pool_elems);
    bf16* d_pool = d_alloc + lead_elems;
    CK(cudaMemset(d_alloc, 0xFF, lead_elems * sizeof(bf16)));
    bf16* d_q = dalloc<bf16>((size_t)batch * rows * MLA_HEAD_DIM_K);
    bf16* d_new = dalloc<bf16>((size_t)n_append * MLA_HEAD_DIM_K);
    int* d_bt = dalloc<int>(bt.size());
    int* d_lens = dalloc<int>(batch);
    int* d_prefix = dalloc<int>(batch);
    int* d_slots = dalloc<int>(n_append);
    unsigned* d_bad = dalloc<unsigned>(1);
    upload(d_bt, bt);
    upload(d_lens, c.lens);
    upload(d_prefix, prefix);
    upload(d_slots, slots);
    CK(cudaMemset(d_pool, 0xFF, pool_elems * sizeof(bf16)));  // 0xFFFF = bf16 NaN
    CK(cudaMemset(d_bad, 0, sizeof(unsigned)));
    if (max_nb > 0) check::fill_kv_prefix<<<dim3(max_nb, batch), 256>>>(d_pool, d_bt, stride, d_prefix, seed * 3 + 1);
    check::fill_normal_bf16<<<512, 256>>>(d_q, (size_t)batch * rows * MLA_HEAD_DIM_K, seed * 3 + 2, 1.f);
    check::fill_normal_bf16<<<512, 256>>>(d_new, (size_t)n_append * MLA_HEAD_DIM_K, seed * 3 + 3, 1.f);
    CK(cudaGetLastError());

    // ---- append ----
    KvAppendParams ap{};
    ap.kv_pool = d_pool;
    ap.rows = d_new;
    ap.slots = d_slots;
    ap.num_rows = n_append;
    ap.num_blocks = num_blocks;
    flashmla_append_kv<<<ceil_div(n_append, MLA_APPEND_ROWS_PER_CTA), MLA_APPEND_THREADS>>>(ap);
    CK(cudaGetLastError());
    check::count_append_mismatch<<<n_append, 128>>>(d_pool, d_new, d_slots, n_append, num_blocks, d_bad);
    CK(cudaGetLastError());
    const unsigned append_bad = download(d_bad, 1)[0];
    const std::vector<bf16> guard =
        download(d_pool + (size_t)num_blocks * MLA_PAGE_TOKENS * MLA_HEAD_DIM_K, (size_t)MLA_PAGE_TOKENS * MLA_HEAD_DIM_K);
    bool guard_ok = true;
    for (const bf16& v : guard) guard_ok &= (*reinterpret_cast<const uint16_t*>(&v) == 0xFFFF);

    // ---- FP8 kernels: the cache quantized (valid positions only; the rest
    // stays 0xFF: NaN codes, NaN scales, NaN rope) and its dequantized copy,
    // which the reference reads ----
    const bool fp8 = kDecodeKernels[g_dev.kernel].fp8;
    uint8_t* d_fp8 = nullptr;
    bf16* d_deq = nullptr;
    if (fp8) {
        std::vector<int> qslots((size_t)num_blocks * MLA_PAGE_TOKENS, -1);
        for (int b = 0; b < batch; ++b)
            for (int pos = 0; pos < c.lens[b]; ++pos) {
                const int slot = bt[(size_t)b * stride + pos / MLA_PAGE_TOKENS] * MLA_PAGE_TOKENS + pos % MLA_PAGE_TOKENS;
                qslots[slot] = slot;
            }
        int* d_qslots = dalloc<int>(qslots.size());
        upload(d_qslots, qslots);
        const size_t fp8_bytes = (size_t)(num_blocks + 1) * MLA_FP8_PAGE_BYTES;
        d_fp8 = dalloc<uint8_t>(fp8_bytes);
        d_deq = dalloc<bf16>(pool_elems);
        CK(cudaMemset(d_fp8, 0xFF, fp8_bytes));
        KvAppendParams qp{};
        qp.kv_pool = d_fp8;
        qp.rows = d_pool;
        qp.slots = d_qslots;
        qp.num_rows = (int)qslots.size();
        qp.num_blocks = num_blocks;
        flashmla_append_kv_fp8<<<ceil_div(qp.num_rows, MLA_APPEND_ROWS_PER_CTA), MLA_APPEND_THREADS>>>(qp);
        const size_t tokens = (size_t)(num_blocks + 1) * MLA_PAGE_TOKENS;
        check::dequant_fp8_pool<<<(unsigned)((tokens + 7) / 8), 256>>>(d_fp8, d_deq, tokens);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        CK(cudaFree(d_qslots));
    }

    // ---- schedule ----
    const TileSchedule sched = compute_tile_schedule(c.lens, parts);
    std::string why;
    const bool sched_ok = validate_tile_schedule(sched, c.lens, why);
    const int total_splits = sched.total_splits();
    int* d_meta = dalloc<int>(sched.sched_meta.size());
    int* d_nsplit = dalloc<int>(sched.num_splits.size());
    upload(d_meta, sched.sched_meta);
    upload(d_nsplit, sched.num_splits);

    const size_t out_elems = (size_t)batch * rows * MLA_HEAD_DIM_V;
    const size_t lse_elems = (size_t)batch * rows;
    bf16* d_out = dalloc<bf16>(out_elems);
    float* d_lse = dalloc<float>(lse_elems);
    float* d_oacc = dalloc<float>((size_t)total_splits * rows * MLA_HEAD_DIM_V);
    float* d_lacc = dalloc<float>((size_t)total_splits * rows);
    float* d_ref = dalloc<float>(out_elems);
    float* d_ref_lse = dalloc<float>(lse_elems);

    MlaDecodeParams P{};
    P.q = d_q;
    P.kv_pool = fp8 ? static_cast<const void*>(d_fp8) : d_pool;
    if (!fp8) encode_kv_map(P, d_alloc, (size_t)(lead + num_blocks + 1) * MLA_PAGE_TOKENS, lead * MLA_PAGE_TOKENS);
    P.block_table = d_bt;
    P.seq_lens = d_lens;
    P.sched_meta = d_meta;
    P.num_splits = d_nsplit;
    P.out = d_out;
    P.lse = d_lse;
    P.o_accum = d_oacc;
    P.lse_accum = d_lacc;
    set_decode_shape(P, batch, c.s_q, c.h_q, stride, parts, num_blocks, kSoftmaxScale);

    auto poison = [&]() {
        CK(cudaMemset(d_out, 0xFF, out_elems * sizeof(bf16)));
        CK(cudaMemset(d_lse, 0xFF, lse_elems * sizeof(float)));
        CK(cudaMemset(d_oacc, 0xFF, (size_t)total_splits * rows * MLA_HEAD_DIM_V * sizeof(float)));
        CK(cudaMemset(d_lacc, 0xFF, (size_t)total_splits * rows * sizeof(float)));
    };
    poison();
    const bool use_driver = c.via_driver && g_dev.module && g_dev.f_decode;
    launch_decode_step(P, use_driver, 0);
    CK(cudaDeviceSynchronize());
    std::vector<bf16> out = download(d_out, out_elems);
    std::vector<float> lse = download(d_lse, lse_elems);
    bool repeat_ok = true;
    if (c.repeat) {
        poison();
        launch_decode_step(P, use_driver, 0);
        CK(cudaDeviceSynchronize());
        std::vector<bf16> out2 = download(d_out, out_elems);
        std::vector<float> lse2 = download(d_lse, lse_elems);
        repeat_ok = std::memcmp(out.data(), out2.data(), out_elems * sizeof(bf16)) == 0 &&
                    std::memcmp(lse.data(), lse2.data(), lse_elems * sizeof(float)) == 0;
    }

    // The reference reads a bf16 pool (the dequantized cache for FP8 kernels) or an fp32 one (f32).
    auto reference = [&](const void* pool, std::vector<float>& o, std::vector<float>& l, bool f32 = false) {
        MlaDecodeParams R = P;
        R.kv_pool = pool;
        R.o_accum = d_ref;
        R.lse = d_ref_lse;
        CK(cudaMemset(d_ref, 0xFF, out_elems * sizeof(float)));
        CK(cudaMemset(d_ref_lse, 0xFF, lse_elems * sizeof(float)));
        const int grid = ceil_div(batch * rows, MLA_REFERENCE_ROWS_PER_CTA);
        if (f32) reference_f32<<<grid, MLA_REFERENCE_THREADS>>>(R, static_cast<const float*>(pool));
        else flashmla_decode_reference<<<grid, MLA_REFERENCE_THREADS>>>(R);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        o = download(d_ref, out_elems);
        l = download(d_ref_lse, lse_elems);
    };
    std::vector<float> ref, ref_lse;
    reference(fp8 ? d_deq : d_pool, ref, ref_lse);
    // FP8: the error against the unquantized bf16 cache, reported (not a bar).
    double rel_vs_bf16 = -1;
    if (fp8) {
        std::vector<float> ref16, lse16;
        reference(d_pool, ref16, lse16);
        double n2 = 0, d2 = 0;
        for (size_t i = 0; i < out_elems; ++i) {
            const double kv = bf16_bits_to_float(*reinterpret_cast<const uint16_t*>(&out[i]));
            if (std::isnan(kv) || std::isnan(ref16[i])) continue;
            n2 += (kv - ref16[i]) * (kv - ref16[i]);
            d2 += (double)ref16[i] * ref16[i];
        }
        rel_vs_bf16 = d2 > 0 ? std::sqrt(n2 / d2) : std::sqrt(n2);
    }

    // ---- compare: with the reference over the cache the kernel reads; an FP8 kernel may instead match the
    //      reference over the exact code x scale values (a kernel that applies the scales in fp32 around the
    //      products, fp8 v3's narrow path, is closer to those than to the format's bf16 rounding of them: the
    //      difference is the format's rounding, ~5e-3 in lse, not an error of the kernel) ----
    const RefCompare spec = compare_to_reference(out, lse, ref, ref_lse, batch, rows, c.h_q, c.s_q);
    RefCompare exact;
    bool exact_ran = false;
    if (fp8 && !spec.ok()) {
        float* d_deq32 = dalloc<float>(pool_elems);
        const size_t tokens = (size_t)(num_blocks + 1) * MLA_PAGE_TOKENS;
        check::dequant_fp8_pool_f32<<<(unsigned)((tokens + 7) / 8), 256>>>(d_fp8, d_deq32, tokens);
        CK(cudaGetLastError());
        std::vector<float> ref32, lse32;
        reference(d_deq32, ref32, lse32, true);
        exact = compare_to_reference(out, lse, ref32, lse32, batch, rows, c.h_q, c.s_q);
        exact_ran = true;
        CK(cudaFree(d_deq32));
    }
    const RefCompare& used = (exact_ran && exact.ok()) ? exact : spec;
    const double rel = used.rel, lse_err = used.lse_err;
    const long long nan_out = used.nan_out, bad_lse = used.bad_lse, bad_empty = used.bad_empty, ref_nan = used.ref_nan;
    const bool ok = sched_ok && append_bad == 0 && guard_ok && repeat_ok && used.ok();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char vs_bf16[160] = "";
    if (rel_vs_bf16 >= 0)
        std::snprintf(vs_bf16, sizeof vs_bf16, " rel_vs_bf16_cache=%.2e%s", rel_vs_bf16,
                      !exact_ran ? " matches=format"
                                 : (exact.ok() ? (" matches=exact (format: rel " + std::to_string(spec.rel) + " lse_err " +
                                                  std::to_string(spec.lse_err) + ")").c_str()
                                               : " matches=neither"));
    std::printf("%-4s decode %-34s b=%-3d s_q=%d h_q=%-3d parts=%-3d splits=%-4d tokens=%-8lld rel=%.2e lse_err=%.1e%s%s%s%s%s%s%s%s (%.2fs)\n",
                ok ? "PASS" : "FAIL", c.name.c_str(), batch, c.s_q, c.h_q, parts, total_splits, total_tokens, rel,
                lse_err, vs_bf16, use_driver ? " [driver]" : "", sched_ok ? "" : (" SCHED:" + why).c_str(),
                append_bad ? " APPEND_MISMATCH" : "", guard_ok ? "" : " APPEND_GUARD", repeat_ok ? "" : " NONDETERMINISTIC",
                nan_out ? (" NaN_OUT=" + std::to_string(nan_out)).c_str() : "",
                (bad_lse || bad_empty || ref_nan)
                    ? (" bad_lse=" + std::to_string(bad_lse) + " bad_empty=" + std::to_string(bad_empty) +
                       " ref_nan=" + std::to_string(ref_nan)).c_str()
                    : "",
                secs);
    std::fflush(stdout);
    sum.cases++;
    if (!ok) sum.failed++;
    sum.worst_rel = std::max(sum.worst_rel, rel);
    sum.worst_lse = std::max(sum.worst_lse, lse_err);

    for (void* p : std::initializer_list<void*>{d_alloc, d_q, d_new, d_bt, d_lens, d_prefix, d_slots, d_bad, d_meta,
                                                d_nsplit, d_out, d_lse, d_oacc, d_lacc, d_ref, d_ref_lse, d_fp8, d_deq})
        CK(cudaFree(p));
    return ok;
}

// Block copy over several layers with a layer stride larger than the pool:
// destination pages equal their sources in every layer, everything else
// (other pages, the gaps between layers) unchanged.
// fp8: the same over FP8 pages (flashmla_copy_blocks_fp8).
bool run_copy_check(uint64_t seed, Summary& sum, bool fp8) {
    const int num_blocks = 48, layers = 3, layer_stride = 53;
    const size_t page = fp8 ? (size_t)MLA_FP8_PAGE_BYTES : (size_t)MLA_PAGE_TOKENS * MLA_HEAD_DIM_K * 2;  // bytes
    const size_t elems = (size_t)layers * layer_stride * page;
    uint8_t* d_pool = dalloc<uint8_t>(elems);
    check::fill_normal_bf16<<<1024, 256>>>(reinterpret_cast<bf16*>(d_pool), elems / 2, seed, 1.f);
    CK(cudaGetLastError());
    std::mt19937_64 rng(seed);
    std::vector<int> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int> pairs;
    for (int i = 0; i < 12; ++i) {  // sources from the first half, destinations from the second
        pairs.push_back(ids[i]);
        pairs.push_back(ids[24 + i]);
    }
    pairs.push_back(-1); pairs.push_back(ids[40]);          // skipped: bad source
    pairs.push_back(ids[1]); pairs.push_back(num_blocks);   // skipped: bad destination
    const int n_pairs = (int)pairs.size() / 2;
    int* d_pairs = dalloc<int>(pairs.size());
    upload(d_pairs, pairs);
    std::vector<uint8_t> before = download(d_pool, elems);
    BlockCopyParams cp{};
    cp.kv_pool = d_pool;
    cp.pairs = d_pairs;
    cp.num_pairs = n_pairs;
    cp.num_layers = layers;
    cp.layer_stride_blocks = layer_stride;
    cp.num_blocks = num_blocks;
    if (fp8) flashmla_copy_blocks_fp8<<<dim3(n_pairs, layers), MLA_COPY_THREADS>>>(cp);
    else flashmla_copy_blocks<<<dim3(n_pairs, layers), MLA_COPY_THREADS>>>(cp);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> after = download(d_pool, elems);
    std::vector<uint8_t> expect = before;
    for (int l = 0; l < layers; ++l)
        for (int i = 0; i < 12; ++i)
            std::memcpy(&expect[((size_t)l * layer_stride + pairs[2 * i + 1]) * page],
                        &before[((size_t)l * layer_stride + pairs[2 * i]) * page], page);
    const bool ok = std::memcmp(after.data(), expect.data(), elems) == 0;
    std::printf("%-4s copy_blocks%s pairs=%d (2 invalid) layers=%d layer_stride_blocks=%d\n", ok ? "PASS" : "FAIL",
                fp8 ? "_fp8" : "", n_pairs, layers, layer_stride);
    sum.cases++;
    if (!ok) sum.failed++;
    CK(cudaFree(d_pool));
    CK(cudaFree(d_pairs));
    return ok;
}

// The Hopper wrappers and tile layout alone (check/wgmma_check.cuh): S = Q K^T
// and O = P V against float64; rows 61..63 of the page are NaN in global
// memory and must read as zero. On failure, prints where the first wrong
// values came from (which reference column holds them) to locate a layout bug.
// TMA wrappers and the decode kernel's tensor map: page 2 of a 4-page pool
// that sits 3 pages into its allocation (kv_map_row0 = 192), each element's
// bits = its global index, so every landed chunk says where it came from.
bool run_tma_check(Summary& sum) {
    constexpr int kLead = 3, kPages = 4, kWhich = 2, K = MLA_HEAD_DIM_K;
    const size_t rows = (size_t)(kLead + kPages) * MLA_PAGE_TOKENS;
    std::vector<uint16_t> host(rows * K);
    for (size_t i = 0; i < host.size(); ++i) host[i] = (uint16_t)(i * 2654435761u >> 7);
    uint16_t* d_alloc = dalloc<uint16_t>(host.size());
    upload(d_alloc, host);
    uint4* d_out = dalloc<uint4>(mla::kTileBytes / 16);
    CK(cudaMemset(d_out, 0xFF, mla::kTileBytes));
    MlaDecodeParams P{};
    P.kv_pool = d_alloc + (size_t)kLead * MLA_PAGE_TOKENS * K;
    encode_kv_map(P, d_alloc, rows, kLead * MLA_PAGE_TOKENS);
    CK(cudaFuncSetAttribute(check::tma_unit, cudaFuncAttributeMaxDynamicSharedMemorySize, mla::kTileBytes + 16));
    check::tma_unit<<<1, 128, mla::kTileBytes + 16>>>(P, kWhich, d_out);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint4> got = download(d_out, mla::kTileBytes / 16);
    const uint8_t* g = reinterpret_cast<const uint8_t*>(got.data());
    int bad = 0;
    for (int r = 0; r < MLA_PAGE_TOKENS; ++r)
        for (int c = 0; c < K / 8; ++c) {
            const size_t off = (size_t)(c >> 3) * mla::kSwBlockBytes + r * mla::kSwRowBytes + (((c & 7) ^ (r & 7)) << 4);
            const uint16_t* want = &host[((size_t)(kLead + kWhich) * MLA_PAGE_TOKENS + r) * K + c * 8];
            if (std::memcmp(g + off, want, 16) != 0 && bad++ < 4)
                std::printf("     tma_unit: row %d chunk %d not at swizzled offset %zu\n", r, c, off);
        }
    const bool ok = bad == 0;
    std::printf("%-4s tma_unit page %d of a map starting %d rows before the pool: %d of %d chunks misplaced\n",
                ok ? "PASS" : "FAIL", kWhich, kLead * MLA_PAGE_TOKENS, bad, MLA_PAGE_TOKENS * K / 8);
    sum.cases += 1;
    sum.failed += ok ? 0 : 1;
    CK(cudaFree(d_alloc));
    CK(cudaFree(d_out));
    return ok;
}

bool run_wgmma_check(uint64_t seed, Summary& sum) {
    constexpr int R = MLA_ROWS_PER_CTA, T = MLA_PAGE_TOKENS, K = MLA_HEAD_DIM_K, V = MLA_HEAD_DIM_V, kValid = 61;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto make = [&](size_t n, std::vector<float>& f, std::vector<bf16>& b, float scale) {
        f.resize(n);
        b.resize(n);
        for (size_t i = 0; i < n; ++i) {
            b[i] = __float2bfloat16(scale * nd(rng));
            f[i] = __bfloat162float(b[i]);
        }
    };
    std::vector<float> qf, kf, pf;
    std::vector<bf16> qb, kb, pb;
    make((size_t)R * K, qf, qb, 1.f);
    make((size_t)T * K, kf, kb, 1.f);
    make((size_t)R * T, pf, pb, 0.5f);
    for (size_t i = (size_t)kValid * K; i < (size_t)T * K; ++i) {
        const uint16_t nan_bits = 0xFFFF;
        std::memcpy(&kb[i], &nan_bits, 2);
    }
    bf16 *d_q = dalloc<bf16>(qb.size()), *d_k = dalloc<bf16>(kb.size()), *d_p = dalloc<bf16>(pb.size());
    float *d_s = dalloc<float>((size_t)R * T), *d_o = dalloc<float>((size_t)R * V);
    upload(d_q, qb);
    upload(d_k, kb);
    upload(d_p, pb);
    CK(cudaMemset(d_s, 0xFF, (size_t)R * T * 4));
    CK(cudaMemset(d_o, 0xFF, (size_t)R * V * 4));
    CK(cudaFuncSetAttribute(check::wgmma_unit, cudaFuncAttributeMaxDynamicSharedMemorySize, MLA_DECODE_SMEM_BYTES));
    check::wgmma_unit<<<1, MLA_DECODE_THREADS, MLA_DECODE_SMEM_BYTES>>>(d_q, d_k, d_p, d_s, d_o);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const std::vector<float> s = download(d_s, (size_t)R * T), o = download(d_o, (size_t)R * V);
    std::vector<double> sr((size_t)R * T, 0.0), orf((size_t)R * V, 0.0);
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < kValid; ++n) {
            double acc = 0;
            for (int k = 0; k < K; ++k) acc += (double)qf[(size_t)r * K + k] * kf[(size_t)n * K + k];
            sr[(size_t)r * T + n] = acc;
        }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < V; ++c) {
            double acc = 0;
            for (int n = 0; n < kValid; ++n) acc += (double)pf[(size_t)r * T + n] * kf[(size_t)n * K + c];
            orf[(size_t)r * V + c] = acc;
        }
    auto compare = [&](const char* what, const std::vector<float>& got, const std::vector<double>& ref, int cols) {
        double num = 0, den = 0;
        long long nan = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            if (std::isnan(got[i])) { ++nan; continue; }
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        const double rel = den > 0 ? std::sqrt(num / den) : 1.0;
        const bool ok = nan == 0 && rel < 1e-3;
        std::printf("%-4s wgmma_unit %s rel=%.2e nan=%lld\n", ok ? "PASS" : "FAIL", what, rel, nan);
        if (!ok) {
            const double rms = std::sqrt(den / got.size());
            int shown = 0;
            for (size_t i = 0; i < got.size() && shown < 6; ++i) {
                if (!(std::fabs(got[i] - ref[i]) > 1e-2 * rms)) continue;
                const int r = (int)(i / cols), c = (int)(i % cols);
                int src_r = -1, src_c = -1;  // where in the reference this value lives
                for (size_t j = 0; j < ref.size() && src_r < 0; ++j)
                    if (std::fabs(ref[j] - got[i]) <= 1e-4 * rms) { src_r = (int)(j / cols); src_c = (int)(j % cols); }
                std::printf("     %s[%d][%d] = %.5g, ref %.5g; that value is ref[%d][%d]\n", what, r, c, got[i], ref[i],
                            src_r, src_c);
                ++shown;
            }
        }
        return ok;
    };
    const bool ok_s = compare("S=QK^T", s, sr, T);
    const bool ok_o = compare("O=PV", o, orf, V);
    sum.cases += 2;
    sum.failed += (ok_s ? 0 : 1) + (ok_o ? 0 : 1);
    for (void* p : std::initializer_list<void*>{d_q, d_k, d_p, d_s, d_o}) CK(cudaFree(p));
    return ok_s && ok_o;
}

#ifdef MLA_NARROW_CANDIDATES
// The narrow wrappers and operand layouts (check/wgmma_narrow_check.cuh): S^T
// = K Q^T and O^T = V^T P^T for N query rows against float64; rows 61..63 of
// the page are NaN in global memory and must read as zero.
template <int N>
bool run_wgmma_narrow_check(uint64_t seed, Summary& sum) {
    constexpr int T = MLA_PAGE_TOKENS, K = MLA_HEAD_DIM_K, V = MLA_HEAD_DIM_V, kValid = 61;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto make = [&](size_t n, std::vector<float>& f, std::vector<bf16>& b, float scale) {
        f.resize(n);
        b.resize(n);
        for (size_t i = 0; i < n; ++i) {
            b[i] = __float2bfloat16(scale * nd(rng));
            f[i] = __bfloat162float(b[i]);
        }
    };
    std::vector<float> qf, kf, pf;
    std::vector<bf16> qb, kb, pb;
    make((size_t)N * K, qf, qb, 1.f);
    make((size_t)T * K, kf, kb, 1.f);
    make((size_t)N * T, pf, pb, 0.5f);  // P^T [N][64]
    for (size_t i = (size_t)kValid * K; i < (size_t)T * K; ++i) {
        const uint16_t nan_bits = 0xFFFF;
        std::memcpy(&kb[i], &nan_bits, 2);
    }
    bf16 *d_q = dalloc<bf16>(qb.size()), *d_k = dalloc<bf16>(kb.size()), *d_p = dalloc<bf16>(pb.size());
    float *d_s = dalloc<float>((size_t)T * N), *d_o = dalloc<float>((size_t)V * N);
    upload(d_q, qb);
    upload(d_k, kb);
    upload(d_p, pb);
    CK(cudaMemset(d_s, 0xFF, (size_t)T * N * 4));
    CK(cudaMemset(d_o, 0xFF, (size_t)V * N * 4));
    CK(cudaFuncSetAttribute(check::wgmma_narrow_unit<N>, cudaFuncAttributeMaxDynamicSharedMemorySize, MLA_DECODE_FP8_SMEM_BYTES));
    check::wgmma_narrow_unit<N><<<1, MLA_DECODE_THREADS, MLA_DECODE_FP8_SMEM_BYTES>>>(d_q, d_k, d_p, d_s, d_o);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const std::vector<float> s = download(d_s, (size_t)T * N), o = download(d_o, (size_t)V * N);
    std::vector<double> sr((size_t)T * N, 0.0), orf((size_t)V * N, 0.0);
    for (int n = 0; n < kValid; ++n)
        for (int c = 0; c < N; ++c) {
            double acc = 0;
            for (int k = 0; k < K; ++k) acc += (double)kf[(size_t)n * K + k] * qf[(size_t)c * K + k];
            sr[(size_t)n * N + c] = acc;
        }
    for (int d = 0; d < V; ++d)
        for (int c = 0; c < N; ++c) {
            double acc = 0;
            for (int n = 0; n < kValid; ++n) acc += (double)kf[(size_t)n * K + d] * pf[(size_t)c * T + n];
            orf[(size_t)d * N + c] = acc;
        }
    auto compare = [&](const char* what, const std::vector<float>& got, const std::vector<double>& ref) {
        double num = 0, den = 0;
        long long nan = 0;
        int first = -1;
        for (size_t i = 0; i < got.size(); ++i) {
            if (std::isnan(got[i])) { ++nan; if (first < 0) first = (int)i; continue; }
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
            if (first < 0 && std::fabs(got[i] - ref[i]) > 1e-2 * (std::fabs(ref[i]) + 1)) first = (int)i;
        }
        const double rel = den > 0 ? std::sqrt(num / den) : 1.0;
        const bool ok = nan == 0 && rel < 1e-3;
        std::printf("%-4s wgmma_narrow_unit<%d> %s rel=%.2e nan=%lld", ok ? "PASS" : "FAIL", N, what, rel, nan);
        if (!ok && first >= 0)
            std::printf(" first bad [%d][%d] = %.5g, ref %.5g", first / N, first % N, got[first], ref[first]);
        std::printf("\n");
        return ok;
    };
    const bool ok_s = compare("S^T=KQ^T", s, sr);
    const bool ok_o = compare("O^T=V^TP^T", o, orf);
    sum.cases += 2;
    sum.failed += (ok_s ? 0 : 1) + (ok_o ? 0 : 1);
    for (void* ptr : std::initializer_list<void*>{d_q, d_k, d_p, d_s, d_o}) CK(cudaFree(ptr));
    return ok_s && ok_o;
}
#endif

// The FP8 format's kernels (check/fp8_check.cuh).
#include "fp8_check.cuh"

std::vector<int> random_lens(std::mt19937_64& rng, int n, int lo, int hi) {
    std::uniform_int_distribution<int> d(lo, hi);
    std::vector<int> v(n);
    for (int& x : v) x = d(rng);
    return v;
}

int run_checks() {
    Summary sum;
    std::mt19937_64 rng(20261125);
    uint64_t seed = 1000;
    const auto t0 = std::chrono::steady_clock::now();

    // 0. The Hopper wgmma wrappers and the swizzled tile layout on their own.
    run_wgmma_check(seed++, sum);
#ifdef MLA_NARROW_CANDIDATES
    run_wgmma_narrow_check<16>(seed++, sum);
    run_wgmma_narrow_check<32>(seed++, sum);
#endif
    run_tma_check(sum);
    // 1. The head x query-token grid on a mixed batch: lengths 1, 2 (shorter
    //    than s_q for s_q > 2), 63, 64, 65, 129, 1000 and random ones.
    for (int h : {1, 8, 16, 32, 64, 128}) {
        for (int sq : {1, 2, 3, 4}) {
            DecodeCase c;
            c.name = "mixed";
            c.h_q = h;
            c.s_q = sq;
            c.lens = {1, 63, 64, 65, 2, 129, 1000};
            for (int x : random_lens(rng, 5, 1, 3000)) c.lens.push_back(x);
            std::shuffle(c.lens.begin(), c.lens.end(), rng);
            c.repeat = (h == 128 && sq == 2);
            run_decode_case(c, seed++, sum);
        }
    }
    // 2. Odd head counts (any 1..128 must work) and a zero-length sequence.
    run_decode_case({"odd_heads_h3", 3, 2, {5, 70, 300, 1, 64}, 0}, seed++, sum);
    run_decode_case({"odd_heads_h100_sq4", 100, 4, {3, 4, 700, 2050}, 0}, seed++, sum);
    run_decode_case({"odd_heads_h57_sq3", 57, 3, {1, 65, 128, 4097}, 0}, seed++, sum);
    run_decode_case({"zero_length", 8, 2, {0, 5, 64, 0}, 0}, seed++, sum);
    // 3. Scheduler shapes: one part (every sequence in one CTA chain), a few,
    //    more parts than pages.
    {
        std::vector<int> lens = {1, 63, 64, 65, 777, 3000, 129, 2};
        run_decode_case({"one_part", 16, 2, lens, 1}, seed++, sum);
        run_decode_case({"seven_parts", 64, 1, lens, 7}, seed++, sum);
        run_decode_case({"400_parts", 128, 2, lens, 400, false, true}, seed++, sum);
        run_decode_case({"400_parts_h16", 16, 1, lens, 400}, seed++, sum);
    }
    // 4. Long sequences (32k+), split across many parts.
    run_decode_case({"long_40000", 128, 2, {40000}, 0, false, true}, seed++, sum);
    run_decode_case({"long_33000_h1", 1, 1, {33000}, 0}, seed++, sum);
    run_decode_case({"long_mixed", 16, 4, {32768, 1, 65, 50000}, 0}, seed++, sum);
    run_decode_case({"long_mixed_h64", 64, 2, {35000, 63, 3, 9000}, 0}, seed++, sum);
    // 5. Big batches.
    run_decode_case({"batch256_h16", 16, 1, random_lens(rng, 256, 1, 2048), 0}, seed++, sum);
    run_decode_case({"batch256_h128_sq2", 128, 2, random_lens(rng, 256, 1, 1024), 0}, seed++, sum);
    run_decode_case({"batch128_h64_sq2", 64, 2, random_lens(rng, 128, 2000, 8192), 0}, seed++, sum);
    run_decode_case({"batch1_len1", 1, 1, {1}, 0}, seed++, sum);
    run_decode_case({"batch1_len1_sq4", 32, 4, {1}, 0}, seed++, sum);
    // 6. The service's path: fatbin + driver API.
    run_decode_case({"driver_api_h128", 128, 2, {1, 63, 64, 65, 5000, 2}, 0, true}, seed++, sum);
    run_decode_case({"driver_api_h16_b64", 16, 1, random_lens(rng, 64, 1, 4000), 0, true}, seed++, sum);
    // 7. Block copy; for an FP8 kernel also the FP8 page copy and the format's
    //    write kernels bit for bit against the host quantizer.
    run_copy_check(seed++, sum, false);
    if (kDecodeKernels[g_dev.kernel].fp8) {
        run_copy_check(seed++, sum, true);
        run_fp8_format_check(seed++, sum);
    }
    // 8. Random sweep: any h_q 1..128, s_q up to 4 (h_q*s_q <= 512), batches
    //    up to 256, lengths from 0 to 45k, random part counts, both launch paths.
    for (int i = 0; i < 120; ++i) {
        DecodeCase c;
        c.name = "random_" + std::to_string(i);
        c.h_q = 1 + (int)(rng() % 128);
        c.s_q = 1 + (int)(rng() % std::min(4, MLA_MAX_ROWS_PER_SEQ / c.h_q));
        const int batch = (i % 10 == 0) ? 1 + (int)(rng() % 256) : 1 + (int)(rng() % 24);
        for (int b = 0; b < batch; ++b) {
            const int kind = (int)(rng() % 100);
            if (kind < 10) c.lens.push_back((int)(rng() % 4));
            else if (kind < 20) c.lens.push_back(60 + (int)(rng() % 9));
            else if (kind < 25 && batch <= 8) c.lens.push_back(20000 + (int)(rng() % 25000));
            else c.lens.push_back(1 + (int)(rng() % 4000));
        }
        c.parts = (i % 4 == 0) ? 1 + (int)(rng() % 300) : 0;
        c.via_driver = (i % 7 == 0);
        c.repeat = (i % 13 == 0);
        run_decode_case(c, seed++, sum);
    }

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("SUMMARY checks [decode %s]: %d cases, %d failed, worst out rel err %.2e, worst lse err %.1e, %.1f s%s\n",
                kDecodeKernels[g_dev.kernel].name,
                sum.cases, sum.failed, sum.worst_rel, sum.worst_lse, secs,
                g_dev.module ? "" : " (driver-API cases ran through the runtime)");
    return sum.failed == 0 ? 0 : 1;
}

// The bench (--bench): steady-state timing of the whole step, with ceilings.
#include "bench.cuh"

}  // namespace

int main(int argc, char** argv) {
    bool bench = false;
    int only_shape = -1;
    unsigned which = (1u << kNumDecodeKernels) - 1;
    std::string fatbin = "native/build/flashmla.fatbin", results;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--list-kernels") {  // the decode kernels this harness can check and time, one a line
            for (const DecodeKernel& k : kDecodeKernels) std::printf("%s\n", k.name);
            return 0;
        }
        if (a == "--bench") bench = true;
        else if (a == "--check") bench = false;
        else if (a == "--fatbin" && i + 1 < argc) fatbin = argv[++i];
        else if (a == "--results" && i + 1 < argc) results = argv[++i];
        else if (a == "--shape" && i + 1 < argc) only_shape = std::atoi(argv[++i]);
        else if (a == "--kernel" && i + 1 < argc) g_dev.kernel = decode_kernel_index(argv[++i]);
        else if (a == "--rounds" && i + 1 < argc) g_bench.rounds = std::max(1, std::atoi(argv[++i]));
        else if (a == "--reps" && i + 1 < argc) g_bench.reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--warmup-s" && i + 1 < argc) g_bench.warmup_s = std::atof(argv[++i]);
        else if (a == "--rewarm-s" && i + 1 < argc) g_bench.rewarm_s = std::atof(argv[++i]);
        else if (a == "--time-s" && i + 1 < argc) g_bench.time_s = std::atof(argv[++i]);
        else if (a == "--quick") g_bench.quick = true;
        else if (a == "--shapes" && i + 1 < argc) {
            std::stringstream list(argv[++i]);
            for (std::string x; std::getline(list, x, ',');)
                if (!x.empty()) g_bench_shapes.push_back(std::atoi(x.c_str()));
        }
        else if (a == "--kernels" && i + 1 < argc) {
            which = 0;
            std::stringstream list(argv[++i]);
            for (std::string name; std::getline(list, name, ',');)
                if (!name.empty()) which |= 1u << decode_kernel_index(name);
        } else {
            std::fprintf(stderr,
                         "usage: %s [--check] [--kernel NAME] [--fatbin PATH] | --list-kernels\n"
                         "       %s --bench [--results FILE] [--kernels A,B] [--shapes I,J] [--rounds R] [--reps N]\n"
                         "           [--warmup-s S] [--rewarm-s S] [--time-s S] [--quick]\n"
                         "       %s --bench --shape I [--kernel NAME]\n",
                         argv[0], argv[0],
                         argv[0]);
            return 2;
        }
    }
    setup_device(bench ? std::string() : fatbin);
    std::printf("device: %s, %d SMs, smem opt-in %zu bytes\n", g_dev.prop.name, g_dev.sm_count,
                (size_t)g_dev.prop.sharedMemPerBlockOptin);
    return bench ? run_bench(results, only_shape, which) : run_checks();
}
