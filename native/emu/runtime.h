// runtime.h -- the CPU emulator's machine: one cluster of CTAs at a time (one
// CTA, unless the launch asks for a cluster), their threads as fibers
// (ucontext) switched only at synchronisation points, in a random order chosen
// by a seed, so that a missing barrier shows up as a wrong result in some
// seeds. What it models, and checks on every access:
//   - shared memory: a buffer poisoned with 0xFF (NaN in bf16 and fp32) at
//     each CTA's start; accesses out of the launch's dynamic size fail;
//   - named barriers (bar.sync / bar.arrive with counts), __syncthreads,
//     warp shuffles and votes (all 32 lanes must take part);
//   - mbarriers with arrival counts, transaction bytes and phase parity;
//   - TMA (2-D tensor copies with 128-byte swizzle, 1-D bulk copies) and
//     cp.async as copies that land LATE: queued, landed at random later
//     switches or when every fiber is blocked. Reading or writing a granule a
//     copy has not landed in yet fails (a missing wait);
//   - the proxy rule: a wgmma operand written with generic stores (st.shared,
//     cp.async) must have a fence.proxy.async between the write and the read,
//     in the writer after its write or in the reading thread after it
//     synchronised with the writer. Synchronisation is tracked with vector
//     clocks over barriers and mbarrier arrivals/waits, so a fence counts only
//     where the ISA's causality order puts it;
//   - clusters (along x): %cluster_ctarank, mapa, remote mbarrier arrivals,
//     barrier.cluster, TMA multicast (one copy per destination CTA, each
//     landing on its own); an access to a CTA of the cluster whose threads
//     have all exited fails (a CTA must outlive its peers' use of its memory);
//   - wgmma (m64nNk16, bf16 -> fp32, shared-memory descriptors with 128-byte
//     swizzle, K-major or MN-major, A from registers or shared memory) as a
//     rendezvous of the warpgroup's 128 threads; the descriptors must agree,
//     and an operand changed between the issue and the wait that retires it
//     fails.
// A failure prints what, where (kernel, block, thread) and exits with status 2:
// the check harness treats that as a failed case. A deadlock (every fiber
// blocked, nothing in flight) prints what each fiber waits for.
//
// It is a model of the PTX ISA as the kernels' comments describe it, not of
// the hardware: where the model and the hardware differ (fragment layouts,
// descriptor fields), both the kernel and the emulator are wrong together and
// only the device checks tell. What it finds without a GPU: index and layout
// arithmetic, protocol errors (barrier counts, parities, fences, ring slots)
// and races that a random order of threads exposes.
#pragma once
#include <ucontext.h>
#include <sys/mman.h>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>
#include <algorithm>
#include "cuda_emu.h"
#include "../include/mla_params.h"

namespace emu {

// ---- the tensor map the emulator's TMA reads (the host encodes it into MlaTensorMap's 128 bytes) ----
struct TensorMap2d {
    uint64_t magic;          // kMapMagic
    const uint8_t* base;     // global address of element (0, 0)
    uint64_t dim0, dim1;     // elements per row (x), rows (y)
    uint64_t row_bytes;      // global stride between rows
    uint32_t box0, box1;     // box: elements along x, rows
    uint32_t elem_bytes;
    uint32_t swizzle_bytes;  // 0 or 128
};
constexpr uint64_t kMapMagic = 0x454D55544D415032ull;  // "EMUTMAP2"
static_assert(sizeof(TensorMap2d) <= sizeof(MlaTensorMap), "the emulator's map fits the ABI's 128 bytes");

inline void encode_tensor_map_2d(MlaTensorMap* m, const void* base, uint64_t dim0, uint64_t dim1, uint64_t row_bytes,
                                 uint32_t box0, uint32_t box1, uint32_t elem_bytes, uint32_t swizzle_bytes) {
    std::memset(m, 0, sizeof *m);
    TensorMap2d t{kMapMagic, static_cast<const uint8_t*>(base), dim0, dim1, row_bytes, box0, box1, elem_bytes, swizzle_bytes};
    std::memcpy(m, &t, sizeof t);
}

struct Options {
    uint64_t seed = 1;
    int land_percent = 30;   // chance, at each switch, that one queued copy lands
    bool verbose = false;
};

constexpr int kMaxThreads = 256;
constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
    ucontext_t ctx{};
    Dim3 tid;
    int linear = 0;              // thread index within its CTA
    int gid = 0;                 // index within the cluster (vector clocks, cp.async ownership)
    int cta = 0;                 // its CTA's rank in the cluster
    bool done = false;
    uint64_t cluster_gen = 0;    // the barrier.cluster phase it arrived at (waited for by barrier.cluster.wait)
    bool cluster_arrived = false;
    std::function<bool()> wait;  // empty: runnable
    const char* what = "";
    uint32_t cp_committed = 0;   // cp.async groups committed
    uint32_t wg_committed = 0;   // wgmma groups committed
    std::vector<uint32_t> vc;    // vector clock: what this thread has synchronised with (vc[own] = own clock)
    std::vector<uint32_t> fence_vc;      // vc at this thread's last fence.proxy.async
    std::vector<uint32_t> fence_clocks;  // own clock at each of its fences, ascending
};

struct CpAsync {  // one cp.async of 16 bytes, pending until its group is waited for
    int thread;  // gid
    int cta;
    uint32_t group, dst, src_bytes;
    const uint8_t* src;
};

struct AsyncCopy {  // a TMA or bulk copy in flight
    bool tensor;
    uint32_t dst, bytes, bar;
    const uint8_t* src;   // bulk
    TensorMap2d map;      // tensor
    int x, y;
    int thread;
    int cta;  // the CTA whose shared memory it writes and whose mbarrier it signals
};

struct Mbar {
    int count = 0, pending = 0;
    int64_t tx = 0;
    uint32_t phase = 0;
    std::vector<uint32_t> acc;        // join of the arrivals' clocks in the current phase
    std::vector<uint32_t> done_vc[2]; // the last completed phase of each parity
};

struct WgmmaCall {
    float* d;
    int nregs, n;
    uint64_t da, db;
    const uint32_t* a;  // registers (rs form) or null
    int accumulate;
    bool ta, tb;
};

// One issued wgmma, in flight until a wgmma.wait_group retires its group: only then are the accumulators written
// (as late as the ISA allows, so a read before the wait sees stale registers), after checking that its shared-memory
// operands and its accumulators did not change since the issue. A from registers is taken at the issue: in C++ the
// kernels pass copies of their registers (a per-k-step array), so there is nothing to check them against later.
struct WgmmaOp {
    WgmmaCall c0;                        // thread 0's call (descriptors and flags; the same for all, checked at issue)
    float* d[128];                       // each thread's accumulator registers
    std::vector<float> a, b;             // the operand values at issue
    std::vector<float> d_issue;          // [thread][register] at issue
    bool retired = false;
};

struct Warpgroup {
    int arrived = 0;
    uint64_t gen = 0;
    WgmmaCall calls[128];
    std::vector<WgmmaOp> open;                   // issued since the last commit
    std::vector<std::vector<WgmmaOp>> groups;    // committed, by index
};

struct Warp {
    int arrived = 0;
    uint64_t gen = 0;
    uint32_t vals[32];
    int tags[32];
};

struct NamedBar {
    int arrived = 0, count = 0;
    uint64_t gen = 0;
    std::vector<uint32_t> acc;                             // join of this phase's arrivals
    std::unordered_map<uint64_t, std::vector<uint32_t>> done;  // completed phases' joins, by gen
};

struct Write {
    int16_t thread = -1;  // -1: clean (never written, or last written by the async proxy); else the writer's gid
    uint32_t clock = 0;   // the writer's clock at the write
};

// One CTA of the running cluster: its shared memory and everything that lives in it.
struct Cta {
    Dim3 bidx;
    unsigned rank = 0;
    std::vector<uint8_t> smem_store;
    uint8_t* smem = nullptr;
    std::vector<Write> writes;                    // per 16-byte granule: its last generic write
    std::vector<uint8_t> inflight;                // per granule: a copy will still write it
    NamedBar bars[16];
    Warp warps[kMaxThreads / 32];
    Warpgroup wgs[kMaxThreads / 128];
    std::unordered_map<uint32_t, Mbar> mbars;
    int alive = 0;                                // threads not exited
};

struct Machine {
    Options opt;
    std::mt19937_64 rng;
    const char* kernel = "";
    Dim3 grid, block;
    unsigned cluster = 1;                         // CTAs per cluster, along x
    int nthreads = 0;                             // per CTA
    uint32_t smem_bytes = 0;
    std::vector<Cta> ctas;                        // the running cluster's
    std::vector<Fiber> fibers;                    // cluster x nthreads, by gid = cta * nthreads + linear
    std::vector<char*> stacks;
    ucontext_t sched{};
    Fiber* cur = nullptr;
    NamedBar cluster_bar;                         // barrier.cluster
    std::vector<AsyncCopy> copies;
    std::vector<CpAsync> cps;
    std::function<void()> body;
    uint64_t switches = 0;
};

inline Machine& M() {
    static Machine m;
    return m;
}
inline Cta& C() { return M().ctas[M().cur->cta]; }  // the current thread's CTA

[[noreturn]] inline void fail(const char* fmt, ...) {
    Machine& m = M();
    if (m.cur) {
        const Dim3& b = m.ctas[m.cur->cta].bidx;
        std::fprintf(stderr, "EMU ERROR in %s block (%u,%u,%u)", m.kernel, b.x, b.y, b.z);
    } else if (!m.ctas.empty()) {
        const Dim3& b = m.ctas[0].bidx;
        std::fprintf(stderr, "EMU ERROR in %s cluster of block (%u,%u,%u)", m.kernel, b.x, b.y, b.z);
    } else {
        std::fprintf(stderr, "EMU ERROR in %s", m.kernel);
    }
    if (m.cur) std::fprintf(stderr, " thread %d", m.cur->linear);
    std::fprintf(stderr, ": ");
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(2);
}

inline const Dim3& thread_idx() { return M().cur->tid; }
inline const Dim3& block_idx() { return C().bidx; }
inline const Dim3& block_dim() { return M().block; }
inline const Dim3& grid_dim() { return M().grid; }
inline uint8_t* dynamic_smem() { return C().smem; }
inline void trap() { fail("__trap()"); }

inline uint32_t shared_offset(const void* p) {
    const Cta& c = C();
    const uint8_t* b = static_cast<const uint8_t*>(p);
    if (b < c.smem || b > c.smem + M().smem_bytes) fail("a generic pointer that is not in shared memory was converted to a shared address");
    return static_cast<uint32_t>(b - c.smem);
}

// ---- switching ----
inline void switch_out() { swapcontext(&M().cur->ctx, &M().sched); }
inline void yield() {  // stay runnable; let the scheduler pick anyone
    M().cur->wait = nullptr;
    switch_out();
}
inline void block_until(std::function<bool()> pred, const char* what) {
    if (pred()) return;
    Fiber* f = M().cur;
    f->wait = std::move(pred);
    f->what = what;
    switch_out();
}

// ---- shared memory access checks ----
inline uint8_t* smem_at_in(Cta& c, uint32_t addr, uint32_t bytes, const char* op) {
    Machine& m = M();
    if (addr % bytes != 0 && bytes <= 16) fail("%s at shared address %u: not aligned to %u bytes", op, addr, bytes);
    if (static_cast<uint64_t>(addr) + bytes > m.smem_bytes)
        fail("%s at shared address %u (+%u bytes): past the %u bytes of dynamic shared memory", op, addr, bytes, m.smem_bytes);
    for (uint32_t g = addr / 16; g <= (addr + bytes - 1) / 16; ++g)
        if (c.inflight[g]) fail("%s at shared address %u: a TMA/bulk copy issued earlier has not landed there yet (no mbarrier wait before it)", op, addr);
    return c.smem + addr;
}
inline uint8_t* smem_at(uint32_t addr, uint32_t bytes, const char* op) { return smem_at_in(C(), addr, bytes, op); }
// ---- vector clocks (for the proxy rule) ----
inline uint32_t tick() { return ++M().cur->vc[M().cur->gid]; }
inline void join(std::vector<uint32_t>& into, const std::vector<uint32_t>& from) {
    if (into.size() < from.size()) into.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); ++i) into[i] = std::max(into[i], from[i]);
}
inline void note_generic_write(uint32_t addr, uint32_t bytes) {
    Cta& cta = C();
    const uint32_t c = tick();
    for (uint32_t g = addr / 16; g <= (addr + bytes - 1) / 16; ++g) cta.writes[g] = Write{static_cast<int16_t>(M().cur->gid), c};
}
inline void fence_proxy_async() {
    Fiber& f = *M().cur;
    f.fence_clocks.push_back(tick());
    f.fence_vc = f.vc;
}
// Is the last generic write of granule g ordered before an async-proxy read by the current thread?
inline bool proxy_fenced(uint32_t g) {
    Machine& m = M();
    const Write& w = C().writes[g];
    if (w.thread < 0) return true;
    const Fiber& r = *m.cur;
    if (!r.fence_vc.empty() && r.fence_vc[w.thread] >= w.clock) return true;  // the reader fenced after it saw the write
    const auto& fc = m.fibers[w.thread].fence_clocks;
    const auto it = std::lower_bound(fc.begin(), fc.end(), w.clock);     // the writer's first fence after the write
    return it != fc.end() && r.vc[w.thread] >= *it;                          // ... which the reader has seen
}

// ---- barriers ----
inline void bar_sync(int id, int count, bool wait) {
    Machine& m = M();
    if (id < 0 || id > 15) fail("barrier id %d", id);
    if (count % 32 != 0 || count <= 0 || count > m.nthreads) fail("barrier %d: count %d", id, count);
    NamedBar& b = C().bars[id];
    if (b.arrived == 0) b.count = count;
    else if (b.count != count) fail("barrier %d: count %d while the phase in progress uses %d", id, count, b.count);
    const uint64_t my = b.gen;
    tick();
    join(b.acc, m.cur->vc);
    if (++b.arrived == count) {
        b.arrived = 0;
        b.done[b.gen] = std::move(b.acc);
        b.done.erase(b.gen - 4);  // phases long finished
        b.acc.clear();
        b.gen++;
    } else if (wait) {
        block_until([&b, my] { return b.gen != my; }, id == 0 ? "__syncthreads" : "bar.sync");
    }
    if (wait) join(m.cur->vc, b.done.at(my));
    yield();
}
inline void syncthreads() {
    if (M().nthreads % 32 != 0) fail("__syncthreads with a partial warp");
    bar_sync(0, M().nthreads, true);
}

inline void warp_rendezvous(Warp& w, const char* what) {
    const uint64_t my = w.gen;
    if (++w.arrived == 32) {
        w.arrived = 0;
        w.gen++;
    } else {
        block_until([&w, my] { return w.gen != my; }, what);
    }
}
inline uint32_t shfl_xor_bits(unsigned mask, uint32_t v, int lane_mask) {
    Machine& m = M();
    if (mask != 0xFFFFFFFFu) fail("shfl with a partial mask: not modelled");
    if (lane_mask < 0 || lane_mask > 31) fail("shfl.bfly lane mask %d", lane_mask);
    Warp& w = C().warps[m.cur->linear / 32];
    const int lane = m.cur->linear % 32;
    w.vals[lane] = v;
    w.tags[lane] = lane_mask;
    warp_rendezvous(w, "shfl");
    for (int l = 0; l < 32; ++l)
        if (w.tags[l] != lane_mask) fail("lanes of one warp in different shuffles (lane %d xor %d, lane %d xor %d)", lane, lane_mask, l, w.tags[l]);
    const uint32_t r = w.vals[lane ^ lane_mask];
    warp_rendezvous(w, "shfl (leaving)");
    return r;
}
inline int any_sync(unsigned mask, int pred) {
    Machine& m = M();
    if (mask != 0xFFFFFFFFu) fail("vote with a partial mask: not modelled");
    Warp& w = C().warps[m.cur->linear / 32];
    w.vals[m.cur->linear % 32] = pred ? 1u : 0u;
    w.tags[m.cur->linear % 32] = -1;
    warp_rendezvous(w, "vote.any");
    int any = 0;
    for (int l = 0; l < 32; ++l) {
        if (w.tags[l] != -1) fail("lanes of one warp in different collectives (vote and shuffle)");
        any |= w.vals[l] != 0;
    }
    warp_rendezvous(w, "vote.any (leaving)");
    return any;
}

// ---- mbarriers ----
inline Mbar& mbar_in(Cta& c, uint32_t addr, const char* op) {
    auto it = c.mbars.find(addr);
    if (it == c.mbars.end()) fail("%s on shared address %u of CTA rank %u: no mbarrier was initialised there", op, addr, c.rank);
    return it->second;
}
inline Mbar& mbar(uint32_t addr, const char* op) { return mbar_in(C(), addr, op); }
inline void mbar_check_complete(Mbar& b) {
    if (b.pending == 0 && b.tx == 0) {
        b.done_vc[b.phase & 1u] = std::move(b.acc);
        b.acc.clear();
        b.phase++;
        b.pending = b.count;
    }
}
inline void mbarrier_init(uint32_t addr, uint32_t count) {
    if (addr % 8 != 0) fail("mbarrier at %u: not 8-byte aligned", addr);
    smem_at(addr, 8, "mbarrier.init");
    Mbar b;
    b.count = b.pending = static_cast<int>(count);
    C().mbars[addr] = b;
}
inline void mbarrier_arrive_on(Mbar& b, const char* op) {
    tick();
    join(b.acc, M().cur->vc);
    if (--b.pending < 0) fail("%s: more arrivals than the mbarrier's count %d in one phase", op, b.count);
    mbar_check_complete(b);
}
inline void mbarrier_arrive(uint32_t addr, const char* op) { mbarrier_arrive_on(mbar(addr, op), op); }
inline void mbarrier_expect_tx(uint32_t addr, uint32_t bytes) {
    Mbar& b = mbar(addr, "mbarrier.arrive.expect_tx");
    b.tx += bytes;
    mbarrier_arrive(addr, "mbarrier.arrive.expect_tx");
}
inline void mbarrier_wait_parity(uint32_t addr, uint32_t parity) {
    Mbar* b = &mbar(addr, "mbarrier.try_wait.parity");
    block_until([b, parity] { return (b->phase & 1u) != (parity & 1u); }, "mbarrier.try_wait.parity");
    join(M().cur->vc, b->done_vc[parity & 1u]);
    yield();
}

// ---- copies ----
inline uint32_t swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

inline void mark_inflight(Cta& cta, uint32_t dst, uint32_t bytes, int delta) {
    for (uint32_t g = dst / 16; g <= (dst + bytes - 1) / 16; ++g) cta.inflight[g] = static_cast<uint8_t>(cta.inflight[g] + delta);
}
inline void land(size_t i) {
    Machine& m = M();
    const AsyncCopy c = m.copies[i];
    m.copies.erase(m.copies.begin() + static_cast<long>(i));
    Cta& cta = m.ctas[c.cta];
    mark_inflight(cta, c.dst, c.bytes, -1);
    if (!c.tensor) {
        std::memcpy(cta.smem + c.dst, c.src, c.bytes);
    } else {
        const TensorMap2d& t = c.map;
        const uint32_t row = t.box0 * t.elem_bytes;
        for (uint32_t r = 0; r < t.box1; ++r) {
            const int64_t gy = static_cast<int64_t>(c.y) + r;
            for (uint32_t e = 0; e < t.box0; ++e) {
                const int64_t gx = static_cast<int64_t>(c.x) + e;
                const uint32_t off = c.dst + r * row + e * t.elem_bytes;
                uint8_t* d = cta.smem + (t.swizzle_bytes == 128 ? swizzle128(off) : off);
                if (gx < 0 || gy < 0 || static_cast<uint64_t>(gx) >= t.dim0 || static_cast<uint64_t>(gy) >= t.dim1)
                    std::memset(d, 0, t.elem_bytes);  // out of bounds: zero fill
                else
                    std::memcpy(d, t.base + gy * t.row_bytes + gx * t.elem_bytes, t.elem_bytes);
            }
        }
    }
    // async-proxy writes: the granules' last writes are no longer generic ones
    for (uint32_t g = c.dst / 16; g <= (c.dst + c.bytes - 1) / 16; ++g) cta.writes[g] = Write{};
    Mbar& b = mbar_in(cta, c.bar, "complete_tx");
    b.tx -= c.bytes;
    mbar_check_complete(b);
}
// A CTA of the cluster that another one's operation reaches: it must still be running.
inline Cta& peer(unsigned rank, const char* op) {
    Machine& m = M();
    if (rank >= m.cluster) fail("%s: CTA rank %u in a cluster of %u", op, rank, m.cluster);
    Cta& c = m.ctas[rank];
    if (c.alive == 0) fail("%s reaches CTA rank %u of the cluster after all its threads exited (its shared memory is gone)", op, rank);
    return c;
}
inline void issue_copy(AsyncCopy c) {
    Machine& m = M();
    Cta& cta = peer(static_cast<unsigned>(c.cta), c.tensor ? "cp.async.bulk.tensor" : "cp.async.bulk");
    smem_at_in(cta, c.dst, c.bytes, c.tensor ? "cp.async.bulk.tensor" : "cp.async.bulk");
    mbar_in(cta, c.bar, "cp.async.bulk (its mbarrier)");
    mark_inflight(cta, c.dst, c.bytes, +1);
    m.copies.push_back(c);
}
inline void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    if (dst % 16 || bytes % 16 || reinterpret_cast<uintptr_t>(src) % 16)
        fail("cp.async.bulk: dst %u, src %p, %u bytes: all must be multiples of 16", dst, src, bytes);
    AsyncCopy c{};
    c.tensor = false;
    c.dst = dst;
    c.bytes = bytes;
    c.bar = bar;
    c.src = static_cast<const uint8_t*>(src);
    c.thread = M().cur->gid;
    c.cta = M().cur->cta;
    issue_copy(c);
}
inline AsyncCopy tma_box(uint32_t dst, const void* map, int x, int y, uint32_t bar) {
    TensorMap2d t;
    std::memcpy(&t, map, sizeof t);
    if (t.magic != kMapMagic) fail("cp.async.bulk.tensor: the tensor map was not encoded (encode_tensor_map_2d)");
    if (t.swizzle_bytes == 128 && (dst % 1024 != 0 || t.box0 * t.elem_bytes != 128))
        fail("cp.async.bulk.tensor with 128-byte swizzle: dst %u must be 1024-aligned and a box row 128 bytes", dst);
    AsyncCopy c{};
    c.tensor = true;
    c.dst = dst;
    c.bytes = t.box0 * t.box1 * t.elem_bytes;
    c.bar = bar;
    c.map = t;
    c.x = x;
    c.y = y;
    c.thread = M().cur->gid;
    c.cta = M().cur->cta;
    return c;
}
inline void tma_load_2d(uint32_t dst, const void* map, int x, int y, uint32_t bar) { issue_copy(tma_box(dst, map, x, y, bar)); }
// .multicast::cluster: the box lands at the same CTA-relative offset in every CTA of cta_mask and signals the
// mbarrier at the same offset in each; each destination's copy lands on its own.
inline void tma_load_2d_multicast(uint32_t dst, const void* map, int x, int y, uint32_t bar, uint16_t cta_mask) {
    Machine& m = M();
    if (cta_mask == 0 || (cta_mask >> m.cluster) != 0) fail("cp.async.bulk.tensor multicast: CTA mask %#x in a cluster of %u", cta_mask, m.cluster);
    AsyncCopy c = tma_box(dst, map, x, y, bar);
    for (unsigned r = 0; r < m.cluster; ++r)
        if (cta_mask & (1u << r)) {
            c.cta = static_cast<int>(r);
            issue_copy(c);
        }
}

inline void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
    Machine& m = M();
    if (dst % 16) fail("cp.async to %u: not 16-byte aligned", dst);
    if (src_bytes > 16) fail("cp.async src-size %u > 16", src_bytes);
    smem_at(dst, 16, "cp.async");
    m.cps.push_back(CpAsync{m.cur->gid, m.cur->cta, m.cur->cp_committed, dst, src_bytes, static_cast<const uint8_t*>(src)});
}
inline void cp_async_land_mine(uint32_t below_group) {  // this thread's copies of groups < below_group
    Machine& m = M();
    for (size_t i = 0; i < m.cps.size();) {
        const CpAsync c = m.cps[i];
        if (c.thread == m.cur->gid && c.group < below_group) {
            std::memset(C().smem + c.dst, 0, 16);
            if (c.src_bytes) std::memcpy(C().smem + c.dst, c.src, c.src_bytes);
            note_generic_write(c.dst, 16);  // cp.async writes are generic-proxy
            m.cps.erase(m.cps.begin() + static_cast<long>(i));
        } else {
            ++i;
        }
    }
}
inline void cp_async_commit() { M().cur->cp_committed++; }
inline void cp_async_wait(int n) {
    const uint32_t c = M().cur->cp_committed;
    cp_async_land_mine(c >= static_cast<uint32_t>(n) ? c - n : 0);
}
inline void cp_async_mbarrier_arrive(uint32_t bar) {
    cp_async_land_mine(~0u);
    mbarrier_arrive(bar, "cp.async.mbarrier.arrive.noinc");
}

// ---- wgmma ----
struct Desc {
    uint32_t start, lbo, sbo;
};
inline Desc decode_desc(uint64_t d) {
    if ((d >> 62) != 1) fail("wgmma descriptor %016llx: only the 128-byte swizzle is modelled", (unsigned long long)d);
    if (((d >> 49) & 7) != 0) fail("wgmma descriptor %016llx: base offset not 0", (unsigned long long)d);
    return Desc{static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
                static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4};
}
inline float bf16_at(uint32_t addr, const char* what) {
    Machine& m = M();
    smem_at(addr, 2, what);
    const uint32_t g = addr / 16;
    if (!proxy_fenced(g))
        fail("%s reads shared address %u, written by thread %d with generic stores and no fence.proxy.async between the write and this read",
             what, addr, C().writes[g].thread);
    uint16_t h;
    std::memcpy(&h, C().smem + addr, 2);
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
// Operand element (row r of `rows`, k of 16): K-major = rows stored as 128-byte swizzled rows of K; MN-major (trans) =
// K stored as rows, r contiguous, 64-element blocks lbo apart.
inline float operand(const Desc& d, bool trans, int r, int k, const char* what) {
    uint32_t addr;
    if (!trans) addr = d.start + (r / 8) * d.sbo + (r % 8) * 128 + k * 2;
    else addr = d.start + (r / 64) * d.lbo + (k / 8) * d.sbo + (k % 8) * 128 + (r % 64) * 2;
    return bf16_at(swizzle128(addr), what);
}
// A (64 x 16) from shared memory, or from the 128 threads' registers (all); with_a false: only B.
inline void read_operands(const WgmmaCall& c, const WgmmaCall* all, bool with_a, std::vector<float>& a, std::vector<float>& b) {
    a.assign(64 * 16, 0.f);
    b.assign(16 * c.n, 0.f);
    if (!with_a) {
    } else if (!c.a) {
        const Desc d = decode_desc(c.da);
        for (int r = 0; r < 64; ++r)
            for (int k = 0; k < 16; ++k) a[r * 16 + k] = operand(d, c.ta, r, k, "wgmma (A)");
    } else if (all) {
        for (int i = 0; i < 128; ++i) {
            const int w = i / 32, g = (i % 32) / 4, t = i % 4;
            for (int q = 0; q < 4; ++q) {
                const int r = 16 * w + g + ((q & 1) ? 8 : 0), k = 2 * t + ((q & 2) ? 8 : 0);
                const uint32_t v = all[i].a[q];
                a[r * 16 + k] = __uint_as_float(v << 16);
                a[r * 16 + k + 1] = __uint_as_float(v & 0xFFFF0000u);
            }
        }
    }
    const Desc d = decode_desc(c.db);
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < c.n; ++n) b[k * c.n + n] = operand(d, c.tb, n, k, "wgmma (B)");
}
inline void wgmma(float* dregs, int nregs, int n, uint64_t da, const uint32_t* a, uint64_t db, int accumulate, bool ta, bool tb) {
    Machine& m = M();
    if (m.nthreads % 128 != 0) fail("wgmma in a CTA that is not whole warpgroups");
    if (nregs != n / 2) fail("wgmma m64n%dk16: %d accumulator registers", n, nregs);
    Warpgroup& w = C().wgs[m.cur->linear / 128];
    w.calls[m.cur->linear % 128] = WgmmaCall{dregs, nregs, n, da, db, a, accumulate, ta, tb};
    const uint64_t my = w.gen;
    if (++w.arrived < 128) {
        block_until([&w, my] { return w.gen != my; }, "wgmma.mma_async (waiting for its warpgroup)");
        return;
    }
    const WgmmaCall& c0 = w.calls[0];
    for (int i = 1; i < 128; ++i) {
        const WgmmaCall& c = w.calls[i];
        if (c.n != c0.n || c.db != c0.db || (c.a == nullptr) != (c0.a == nullptr) || (!c.a && c.da != c0.da) ||
            c.accumulate != c0.accumulate || c.ta != c0.ta || c.tb != c0.tb)
            fail("wgmma: thread %d of the warpgroup issued it with other operands than thread 0", i);
    }
    WgmmaOp op;
    op.c0 = c0;
    read_operands(c0, w.calls, true, op.a, op.b);
    op.d_issue.resize(static_cast<size_t>(128) * nregs);
    for (int i = 0; i < 128; ++i) {
        op.d[i] = w.calls[i].d;
        std::memcpy(&op.d_issue[static_cast<size_t>(i) * nregs], w.calls[i].d, sizeof(float) * nregs);
    }
    w.open.push_back(std::move(op));
    w.arrived = 0;
    w.gen++;
    yield();
}
inline void wgmma_commit() {
    Machine& m = M();
    Warpgroup& w = C().wgs[m.cur->linear / 128];
    const uint32_t idx = m.cur->wg_committed++;
    if (idx == w.groups.size()) {
        w.groups.push_back(std::move(w.open));
        w.open.clear();
    } else if (idx > w.groups.size()) {
        fail("wgmma.commit_group: this thread is ahead of its warpgroup");
    }
}
// Retires every group this thread's wait covers (the first thread of the warpgroup to wait does it for all): the
// operands are checked unchanged, then the products are computed into the accumulators, in issue order.
inline void wgmma_wait(int n) {
    Machine& m = M();
    Warpgroup& w = C().wgs[m.cur->linear / 128];
    const uint32_t c = m.cur->wg_committed;
    std::vector<float*> written;  // accumulators this retirement already wrote (a chain of k-steps on one tile)
    for (uint32_t gi = 0; gi + n < c && gi < w.groups.size(); ++gi) {
        for (WgmmaOp& op : w.groups[gi]) {
            if (op.retired) continue;
            const WgmmaCall& c0 = op.c0;
            std::vector<float> a, b;
            read_operands(c0, nullptr, c0.a == nullptr, a, b);
            if ((c0.a == nullptr && std::memcmp(a.data(), op.a.data(), a.size() * 4) != 0) ||
                std::memcmp(b.data(), op.b.data(), b.size() * 4) != 0)
                fail("a shared-memory operand of a wgmma changed between its issue and the wgmma.wait_group that retires it");
            const bool chained = std::find(written.begin(), written.end(), op.d[0]) != written.end();
            for (int i = 0; i < 128; ++i) {
                if (!chained && std::memcmp(op.d[i], &op.d_issue[static_cast<size_t>(i) * c0.nregs], sizeof(float) * c0.nregs) != 0)
                    fail("thread %d wrote the accumulator registers of a wgmma before the wgmma.wait_group that retires it", i);
            }
            for (int i = 0; i < 128; ++i) {
                const int wp = i / 32, gg = (i % 32) / 4, t = i % 4;
                for (int j = 0; j < c0.nregs; ++j) {
                    const int row = 16 * wp + gg + ((j & 2) ? 8 : 0), col = 8 * (j / 4) + 2 * t + (j & 1);
                    float acc = c0.accumulate ? op.d[i][j] : 0.f;
                    for (int k = 0; k < 16; ++k) acc += op.a[row * 16 + k] * op.b[k * c0.n + col];
                    op.d[i][j] = acc;
                }
            }
            written.push_back(op.d[0]);
            op.retired = true;
        }
    }
}

// ---- clusters (along x) ----
// A shared::cluster address as mapa returns it: (rank + 1) << 24 | offset. Below 2^24 it is a shared::cta
// address, which names the executing CTA's own memory in the cluster window too (as in the ISA).
constexpr uint32_t kClusterWindow = 1u << 24;
inline unsigned cluster_ctarank() { return static_cast<unsigned>(M().cur->cta); }
inline unsigned cluster_nctarank() { return M().cluster; }
inline uint32_t mapa(uint32_t addr, unsigned rank) {
    if (addr >= kClusterWindow) fail("mapa of %#x: not a shared::cta address", addr);
    if (rank >= M().cluster) fail("mapa to CTA rank %u in a cluster of %u", rank, M().cluster);
    return ((rank + 1) << 24) | addr;
}
inline Cta& cluster_target(uint32_t addr, uint32_t& off, const char* op) {
    if (addr < kClusterWindow) {
        off = addr;
        return C();
    }
    off = addr & (kClusterWindow - 1);
    return peer((addr >> 24) - 1, op);
}
// mbarrier.arrive.release.cluster.shared::cluster: an arrival on any CTA's mbarrier of the cluster.
inline void mbarrier_arrive_cluster(uint32_t addr) {
    uint32_t off = 0;
    Cta& c = cluster_target(addr, off, "mbarrier.arrive.shared::cluster");
    mbarrier_arrive_on(mbar_in(c, off, "mbarrier.arrive.shared::cluster"), "mbarrier.arrive.shared::cluster");
}
// barrier.cluster.arrive.release / barrier.cluster.wait.acquire: every thread of every CTA of the cluster.
inline void cluster_arrive() {
    Machine& m = M();
    Fiber& f = *m.cur;
    if (f.cluster_arrived) fail("barrier.cluster.arrive twice without a barrier.cluster.wait between");
    NamedBar& b = m.cluster_bar;
    f.cluster_gen = b.gen;
    f.cluster_arrived = true;
    tick();
    join(b.acc, f.vc);
    if (++b.arrived == m.nthreads * static_cast<int>(m.cluster)) {
        b.arrived = 0;
        b.done[b.gen] = std::move(b.acc);
        b.done.erase(b.gen - 4);
        b.acc.clear();
        b.gen++;
    }
    yield();
}
inline void cluster_wait() {
    Machine& m = M();
    Fiber& f = *m.cur;
    if (!f.cluster_arrived) fail("barrier.cluster.wait without a barrier.cluster.arrive");
    NamedBar& b = m.cluster_bar;
    const uint64_t my = f.cluster_gen;
    block_until([&b, my] { return b.gen != my; }, "barrier.cluster.wait");
    join(f.vc, b.done.at(my));
    f.cluster_arrived = false;
    yield();
}

// ---- launch ----
inline void trampoline() {
    Machine& m = M();
    m.body();
    m.cur->done = true;
    m.cur->wait = nullptr;
    switch_out();
    std::abort();  // never resumed
}

inline void report_deadlock() {
    Machine& m = M();
    const Dim3& b0 = m.ctas[0].bidx;
    std::fprintf(stderr, "EMU ERROR in %s block (%u,%u,%u)%s: deadlock, every thread waits:\n", m.kernel, b0.x, b0.y, b0.z,
                 m.cluster > 1 ? " and its cluster" : "");
    std::string last;
    int first = -1, count = 0;
    for (size_t i = 0; i <= m.fibers.size(); ++i) {
        std::string w = i < m.fibers.size() ? (m.fibers[i].done ? "exited" : m.fibers[i].what) : "";
        if (i < m.fibers.size() && m.cluster > 1) w = "CTA rank " + std::to_string(m.fibers[i].cta) + ": " + w;
        if (i == m.fibers.size() || w != last) {
            if (count) std::fprintf(stderr, "  threads %d..%d: %s\n", first % m.nthreads, (first + count - 1) % m.nthreads, last.c_str());
            last = w;
            first = static_cast<int>(i);
            count = 0;
        }
        ++count;
    }
    std::fflush(stderr);
    std::_Exit(2);
}

// Two orders of threads, one per cluster by the seed: uniformly random at every switch (fine-grained
// interleavings), or warps by a random priority, the highest runnable warp first, the priorities redrawn now and
// then (one warp runs far ahead of the others: what exposes a thread that signals or reuses a buffer before the
// others are done). The warps of all the cluster's CTAs take part in one order.
inline void run_cluster() {
    Machine& m = M();
    const size_t n = m.fibers.size();
    const size_t warps = (n + 31) / 32;
    size_t alive = n;
    const bool by_warp = (m.rng() & 1) != 0;
    std::vector<size_t> order(warps);
    for (size_t w = 0; w < warps; ++w) order[w] = w;
    std::shuffle(order.begin(), order.end(), m.rng);
    auto runnable = [](Fiber& f) { return !f.done && (!f.wait || f.wait()); };
    while (alive) {
        if (!m.copies.empty() && static_cast<int>(m.rng() % 100) < m.opt.land_percent) land(m.rng() % m.copies.size());
        Fiber* pick = nullptr;
        if (by_warp) {
            if (m.rng() % 512 == 0) std::shuffle(order.begin(), order.end(), m.rng);
            for (size_t k = 0; k < warps && !pick; ++k) {
                const size_t base = order[k] * 32, lanes = std::min<size_t>(32, n - base), start = m.rng() % lanes;
                for (size_t l = 0; l < lanes && !pick; ++l)
                    if (runnable(m.fibers[base + (start + l) % lanes])) pick = &m.fibers[base + (start + l) % lanes];
            }
        } else {
            const size_t start = m.rng() % n;
            for (size_t k = 0; k < n && !pick; ++k)
                if (runnable(m.fibers[(start + k) % n])) pick = &m.fibers[(start + k) % n];
        }
        if (!pick) {
            if (!m.copies.empty()) {
                land(m.rng() % m.copies.size());
                continue;
            }
            m.cur = nullptr;
            report_deadlock();
        }
        pick->wait = nullptr;
        m.cur = pick;
        ++m.switches;
        swapcontext(&m.sched, &pick->ctx);
        m.cur = nullptr;
        if (pick->done) {
            --alive;
            --m.ctas[pick->cta].alive;
        }
    }
}

// Runs `body` as every thread of every CTA of the grid, one cluster at a time (cluster_x CTAs along x, as
// __cluster_dims__ or a launch attribute would group them). smem_bytes: the dynamic shared memory per CTA.
inline void launch(const char* name, Dim3 grid, Dim3 block, uint32_t smem_bytes, std::function<void()> body, unsigned cluster_x = 1) {
    Machine& m = M();
    m.kernel = name;
    m.grid = grid;
    m.block = block;
    m.cluster = cluster_x;
    m.nthreads = static_cast<int>(block.x * block.y * block.z);
    if (m.nthreads > kMaxThreads || m.nthreads <= 0) fail("launch with %d threads", m.nthreads);
    if (smem_bytes > 232448) fail("launch with %u bytes of dynamic shared memory (sm_90: 227 KB)", smem_bytes);
    if (cluster_x < 1 || cluster_x > 8 || grid.x % cluster_x != 0) fail("launch of grid.x %u in clusters of %u", grid.x, cluster_x);
    m.body = std::move(body);
    const size_t total = static_cast<size_t>(m.nthreads) * cluster_x;
    while (m.stacks.size() < total) {
        void* s = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED) fail("no memory for a fiber stack");
        m.stacks.push_back(static_cast<char*>(s));
    }
    m.smem_bytes = smem_bytes;
    m.ctas.assign(cluster_x, Cta{});
    const size_t granules = (smem_bytes + 15) / 16 + 1;
    for (Cta& c : m.ctas) {
        c.smem_store.assign(smem_bytes + 2048, 0);
        c.smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(c.smem_store.data()) + 1023) & ~uintptr_t(1023));
    }
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x0 = 0; x0 < grid.x; x0 += cluster_x) {
                for (unsigned r = 0; r < cluster_x; ++r) {
                    Cta& c = m.ctas[r];
                    c.bidx = Dim3{x0 + r, y, z};
                    c.rank = r;
                    std::memset(c.smem, 0xFF, smem_bytes);
                    c.writes.assign(granules, Write{});
                    c.inflight.assign(granules, 0);
                    for (auto& b : c.bars) b = NamedBar{};
                    for (auto& w : c.warps) w = Warp{};
                    for (auto& w : c.wgs) { w.arrived = 0; w.gen = 0; w.open.clear(); w.groups.clear(); }
                    c.mbars.clear();
                    c.alive = m.nthreads;
                }
                m.cluster_bar = NamedBar{};
                m.copies.clear();
                m.cps.clear();
                m.fibers.assign(total, Fiber{});
                for (size_t i = 0; i < total; ++i) {
                    Fiber& f = m.fibers[i];
                    f.gid = static_cast<int>(i);
                    f.cta = static_cast<int>(i / m.nthreads);
                    f.linear = static_cast<int>(i % m.nthreads);
                    f.vc.assign(total, 0);
                    const unsigned l = static_cast<unsigned>(f.linear);
                    f.tid = Dim3{l % block.x, (l / block.x) % block.y, l / (block.x * block.y)};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = m.stacks[i];
                    f.ctx.uc_stack.ss_size = kStackBytes;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, trampoline, 0);
                }
                run_cluster();
                if (!m.copies.empty()) fail("the CTA exited with %zu TMA/bulk copies still in flight", m.copies.size());
                if (!m.cps.empty()) fail("the CTA exited with cp.async copies never waited for");
                for (Fiber& f : m.fibers)
                    if (f.cluster_arrived) fail("thread %d of CTA rank %d exited after a barrier.cluster.arrive without its wait", f.linear, f.cta);
                for (Cta& c : m.ctas)
                    for (auto& w : c.wgs) {
                        bool pending = !w.open.empty();
                        for (auto& g : w.groups)
                            for (auto& op : g) pending |= !op.retired;
                        if (pending) fail("the CTA exited with wgmma in flight (no wgmma.wait_group retired them)");
                    }
            }
    m.kernel = "";
    m.ctas.clear();
}

inline void configure(const Options& o) {
    M().opt = o;
    M().rng.seed(o.seed);
}

}  // namespace emu
