#!/usr/bin/env python3
"""Shows that emu_check can fail: each mutation below is a bug of a kind the
kernels could have (a missing fence or barrier, a wrong parity, swizzle or
descriptor, a copy issued into a slot still being read, a tail not zeroed,
an accumulator read before its wgmma retires),
applied to a copy of native/; emu_check on the kernel it breaks must then
fail. A mutation whose anchor text is gone fails this script too (the list
must follow the kernels). Prints one line per mutation and the counts.

    python3 native/emu/mutations.py [--jobs N] [--only SUBSTRING]
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile

NATIVE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file under native/, text, replacement, kernel, case filter); kernel None: the unit checks alone
MUTATIONS = [
    ("v15: no proxy fence after Q's cp.async", "kernels/decode_sm90_tma.cu",
     "ptx::fence_proxy_async_smem();  // Q: cp.async data (generic proxy) -> wgmma reads", "",
     "flashmla_decode_splitkv", "mixed_h16"),
    ("v15: page parity never flips", "kernels/decode_sm90_tma.cu",
     "kv_phase[st] ^= 1u;", "", "flashmla_decode_splitkv", "one_part"),
    ("v15: P freed before P V retires", "kernels/decode_sm90_tma.cu",
     "if (i + 1 < n) ptx::named_bar_arrive<kBarPFree, 2 * kWgThreads>();  // done with P(i), alpha(i)",
     "", "flashmla_decode_splitkv", "one_part"),
    ("narrow: no barrier between the S partials' exchange", "kernels/decode_sm90_narrow.cuh",
     "__syncthreads();  // both partials written", "", "flashmla_decode_splitkv_v18", "mixed_h16"),
    ("narrow: P^T stored unswizzled", "kernels/decode_sm90_narrow.cuh",
     "(((r >> 3) ^ (col & 7)) << 4)", "((r >> 3) << 4)", "flashmla_decode_splitkv_v18", "mixed_h16"),
    ("narrow: V^T descriptor with the wrong 8-row stride", "kernels/decode_sm90_narrow.cuh",
     "kk * 16 * kSwRowBytes, kSwBlockBytes, kSwAtomBytes),", "kk * 16 * kSwRowBytes, kSwBlockBytes, 2 * kSwAtomBytes),",
     "flashmla_decode_splitkv_v18", "mixed_h16"),
    ("narrow fp8: next raw page issued before the slot is read", "kernels/decode_sm90_narrow.cuh",
     "                ptx::fence_proxy_async_smem();  // the bf16 page (generic stores) -> wgmma reads\n"
     "                __syncthreads();                // page, scales and tile maxima ready; the raw slot is read\n"
     "                if (tid == 0 && i + 2 < n) issue_page(i + 2);",
     "                if (tid == 0 && i + 2 < n) issue_page(i + 2);\n"
     "                ptx::fence_proxy_async_smem();\n"
     "                __syncthreads();",
     "flashmla_decode_splitkv_fp8_v3", "mixed_h16"),
    ("narrow bf16: the tail page's V rows not zeroed", "kernels/decode_sm90_narrow.cuh",
     "} else if (valid < kPage) {", "} else if (false) {", "flashmla_decode_splitkv_v18", "mixed_h16"),
    ("fp8 wide: dequantized page read without the fence", "kernels/decode_sm90_fp8.cu",
     "ptx::fence_proxy_async_smem();  // the page (generic stores) -> wgmma reads", "",
     "flashmla_decode_splitkv_fp8", "wide_h64"),
    ("narrow: S read before the wgmma that writes it retires", "kernels/decode_sm90_narrow.cuh",
     "            ptx::wgmma_commit();\n            ptx::wgmma_wait<0>();\n#pragma unroll\n            for (int a = 0; a < kAcc; ++a) ptx::fence_regs(acc[a]);",
     "            ptx::wgmma_commit();\n            ptx::wgmma_wait<1>();\n#pragma unroll\n            for (int a = 0; a < kAcc; ++a) ptx::fence_regs(acc[a]);",
     "flashmla_decode_splitkv_v18", "mixed_h16"),
    ("fp8 append: a NaN tile's scale not forced to NaN", "include/fp8_kv.cuh",
     "const float scale = nan ? __int_as_float(0x7fc00000) : __fdiv_rn(amax, 448.f);",
     "const float scale = __fdiv_rn(amax, 448.f);", None, None),
    ("page copy: a destination past the pool not skipped", "kernels/copy_blocks.cu",
     "dst_blk < 0 || dst_blk >= p.num_blocks) return;", "dst_blk < 0) return;", None, None),
    ("v19: a stage released to this CTA only, not to the other", "kernels/decode_sm90_tma.cu",
     "ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, 0));\n"
     "            ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, 1));",
     "ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, rank));\n"
     "            ptx::mbarrier_arrive_cluster(ptx::mapa_shared(sEmpty + 8 * st, rank));",
     "flashmla_decode_splitkv_v19", "h128_chunks"),
    ("v19: chunks start with a CTA barrier, not a cluster barrier", "kernels/decode_sm90_tma.cu",
     "if (kCluster2) ptx::cluster_sync();\n        else __syncthreads();", "__syncthreads();",
     "flashmla_decode_splitkv_v19", "h128_chunks"),
    ("v19: gates armed for half the bytes", "kernels/decode_sm90_tma.cu",
     "ptx::mbarrier_arrive_expect_tx(gate(st, b / kGateBlocks), kGateBlocks * kSwBlockBytes);",
     "ptx::mbarrier_arrive_expect_tx(gate(st, b / kGateBlocks), (kCluster2 ? 1 : 2) * kGateBlocks * kSwBlockBytes / 2);",
     "flashmla_decode_splitkv_v19", "h128_sq2_one_part"),
    ("combine: weights not normalised", "kernels/combine.cu",
     "const float inv = (wsum > 0.f) ? 1.f / wsum : 0.f;", "const float inv = 1.f;",
     "flashmla_decode_splitkv", "many_parts"),
]


def run(m, tmp_root):
    name, path, text, repl, kernel, case = m
    work = tempfile.mkdtemp(dir=tmp_root)
    tree = os.path.join(work, "native")
    shutil.copytree(NATIVE, tree, ignore=shutil.ignore_patterns("build"))
    target = os.path.join(tree, path)
    src = open(target).read()
    if text not in src:
        return False, f"FAIL mutation '{name}': its anchor is gone from {path} (update emu/mutations.py)"
    open(target, "w").write(src.replace(text, repl, 1))
    exe = os.path.join(work, "emu_check")
    build = subprocess.run(["bash", os.path.join(tree, "emu", "build.sh"), exe], capture_output=True, text=True)
    if build.returncode != 0:
        return False, f"FAIL mutation '{name}': did not compile\n{build.stderr[-2000:]}"
    args = ["--kernel", kernel, "--case", case, "--seeds", "3", "--no-unit"] if kernel else ["--case", "(units only)"]
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)
    if r.returncode == 0:
        return False, f"FAIL mutation '{name}': emu_check passed with it ({kernel or 'unit checks'}, {case})"
    why = next((l for l in (r.stderr + r.stdout).splitlines() if l.startswith("EMU ERROR") or l.startswith("FAIL")), "")
    return True, f"PASS mutation '{name}' caught: {why[:160]}"


def main():
    jobs = 2
    if "--jobs" in sys.argv:
        jobs = int(sys.argv[sys.argv.index("--jobs") + 1])
    chosen = MUTATIONS
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
        chosen = [m for m in MUTATIONS if only in m[0]]
    tmp_root = tempfile.mkdtemp(prefix="emu-mutations-")
    passed = failed = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
            for ok, line in ex.map(lambda m: run(m, tmp_root), chosen):
                print(line, flush=True)
                passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
