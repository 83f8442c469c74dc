// fp8_check.cuh -- checks of the FP8 KV format's kernels (mla_params.h, "FP8
// KV cache"), included into flashmla_check's anonymous namespace after
// run_copy_check. Every byte the GPU writes is compared with the host
// quantizer of fp8_host.h:
//   - the e4m3 conversion alone, on every bf16 bit pattern and on random
//     fp32 values (the quotients x / scale are fp32);
//   - flashmla_append_kv_fp8 on rows whose tiles are chosen to reach every
//     branch: ordinary, large, small, all zero (and -0), a NaN, near the bf16
//     range's ends, exact ties at scale 1, with padding slots that must be
//     skipped and a pool poisoned elsewhere that must stay as it was;
//   - flashmla_append_kv_fp8_raw with the host's tokens;
//   - the dequantization (fp8_dequant8) against the host's, bit for bit;
//   - the narrow decode's bit-moving dequantization (fp8x4_to_bf16_exp_shifted)
//     on every code in every byte position: code * 2^-120 exactly;
//   - the wide path's fast dequantization (fp8_dequant8_fast) within 1 bf16
//     ulp of fp8_dequant8 on every code but the two NaN codes and 64 scales
//     (NaN and huge included); the CPU emulator checks the same (native/emu).

// Every code in every byte position through fp8x4_to_bf16_exp_shifted (the
// narrow FP8 decode's dequantization): word w holds codes w, w+1, w+2, w+3 (mod 256).
__global__ void exp_shifted_kernel(uint16_t* out) {
    const uint32_t w = threadIdx.x;
    const uint32_t word = (w & 255u) | (((w + 1) & 255u) << 8) | (((w + 2) & 255u) << 16) | (((w + 3) & 255u) << 24);
    const uint2 r = mla::fp8x4_to_bf16_exp_shifted(word);
    out[4 * w + 0] = (uint16_t)(r.x & 0xFFFFu);
    out[4 * w + 1] = (uint16_t)(r.x >> 16);
    out[4 * w + 2] = (uint16_t)(r.y & 0xFFFFu);
    out[4 * w + 3] = (uint16_t)(r.y >> 16);
}

// fp8_dequant8_fast and fp8_dequant8 side by side: block b takes scales[b]; thread t the eight codes 8t .. 8t+7.
__global__ void dequant_fast_kernel(const float* scales, uint4* fast, uint4* exact) {
    const uint32_t c0 = 8u * threadIdx.x;
    const uint2 codes = make_uint2(c0 | ((c0 + 1) << 8) | ((c0 + 2) << 16) | ((c0 + 3) << 24),
                                   (c0 + 4) | ((c0 + 5) << 8) | ((c0 + 6) << 16) | ((c0 + 7) << 24));
    fast[blockIdx.x * 32 + threadIdx.x] = mla::fp8_dequant8_fast(codes, scales[blockIdx.x]);
    exact[blockIdx.x * 32 + threadIdx.x] = mla::fp8_dequant8(codes, scales[blockIdx.x]);
}

__global__ void e4m3_codes_kernel(const float* x, uint8_t* codes, int n) {
    const int i = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (i + 1 >= n) return;
    const uint16_t pair = ptx::cvt_e4m3x2(x[i], x[i + 1]);
    codes[i] = (uint8_t)(pair & 0xFF);
    codes[i + 1] = (uint8_t)(pair >> 8);
}

// One row of 576 bf16 bits whose four tiles have the kinds (row*4 + tile) % 8.
std::vector<uint16_t> fp8_check_row(std::mt19937_64& rng, int row) {
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<uint16_t> r(MLA_HEAD_DIM_K);
    for (int t = 0; t < MLA_HEAD_DIM_V / MLA_FP8_TILE; ++t) {
        const int kind = (row * 4 + t) % 8;
        for (int i = 0; i < MLA_FP8_TILE; ++i) {
            float v = nd(rng);
            switch (kind) {
                case 1: v *= 1e3f; break;
                case 2: v *= 1e-3f; break;
                case 3: v = (i % 3 == 0) ? -0.f : 0.f; break;
                case 4: if (i == (int)(rng() % MLA_FP8_TILE)) v = NAN; break;
                case 5: v *= 1e36f; break;
                case 6: v *= 1e-37f; break;  // bf16 subnormals and the smallest normals
                case 7: v = (i == 0) ? 448.f : std::ldexp(1.f + (float)(rng() % 16) / 16.f, (int)(rng() % 9) - 4) * ((i & 1) ? -1.f : 1.f); break;
                default: break;
            }
            r[t * MLA_FP8_TILE + i] = fp8host::bf16_bits(v);
        }
    }
    for (int i = MLA_HEAD_DIM_V; i < MLA_HEAD_DIM_K; ++i)
        r[i] = fp8host::bf16_bits(i == MLA_HEAD_DIM_V + row % 64 && row % 5 == 0 ? NAN : nd(rng));
    return r;
}

bool run_fp8_format_check(uint64_t seed, Summary& sum) {
    std::mt19937_64 rng(seed);
    bool all_ok = true;
    auto report = [&](bool ok, const char* what, const std::string& detail) {
        std::printf("%-4s fp8 %-30s %s\n", ok ? "PASS" : "FAIL", what, detail.c_str());
        sum.cases++;
        if (!ok) sum.failed++;
        all_ok &= ok;
    };

    // ---- the conversion alone ----
    {
        std::vector<float> x;
        for (uint32_t b = 0; b < 65536; ++b) x.push_back(fp8host::bf16_value((uint16_t)b));
        std::uniform_real_distribution<float> ud(-500.f, 500.f);
        for (int i = 0; i < 65536; ++i) x.push_back(i % 2 ? ud(rng) : ud(rng) * 1e-3f);
        const int n = (int)x.size();
        float* d_x = dalloc<float>(n);
        uint8_t* d_c = dalloc<uint8_t>(n);
        upload(d_x, x);
        e4m3_codes_kernel<<<(n / 2 + 255) / 256, 256>>>(d_x, d_c, n);
        CK(cudaGetLastError());
        const std::vector<uint8_t> got = download(d_c, n);
        int bad = 0;
        std::string first;
        for (int i = 0; i < n; ++i) {
            const uint8_t want = fp8host::e4m3_code(x[i]);
            if (got[i] != want) {
                if (bad++ == 0) {
                    char b[96];
                    std::snprintf(b, sizeof b, " first: %a -> 0x%02x, want 0x%02x", x[i], got[i], want);
                    first = b;
                }
            }
        }
        report(bad == 0, "e4m3 conversion", std::to_string(n) + " values, " + std::to_string(bad) + " differ" + first);
        CK(cudaFree(d_x));
        CK(cudaFree(d_c));
    }

    // ---- the bit-moving dequantization: code * 2^-120 exactly, NaN codes finite ----
    {
        uint16_t* d_out = dalloc<uint16_t>(4 * 256);
        exp_shifted_kernel<<<1, 256>>>(d_out);
        CK(cudaGetLastError());
        const std::vector<uint16_t> got = download(d_out, 4 * 256);
        int bad = 0;
        std::string first;
        for (int w = 0; w < 256; ++w)
            for (int k = 0; k < 4; ++k) {
                const uint8_t c = (uint8_t)((w + k) & 255);
                uint16_t want;
                if ((c & 0x7F) == 0x7F) {
                    want = (uint16_t)(((c & 0x80) << 8) | 0x07F0);  // documented: +-1.875 * 2^-112
                } else {
                    const float v = std::ldexp(fp8host::e4m3_value(c), -120);  // exact (a float subnormal at worst)
                    uint32_t bits;
                    std::memcpy(&bits, &v, 4);
                    want = (uint16_t)(bits >> 16);
                    if ((bits & 0xFFFFu) != 0) want = 0xFFFF;  // cannot happen: at most 4 significant bits
                }
                if (got[4 * w + k] != want && bad++ == 0) {
                    char b[96];
                    std::snprintf(b, sizeof b, " first: code 0x%02x -> 0x%04x, want 0x%04x", c, got[4 * w + k], want);
                    first = b;
                }
            }
        report(bad == 0, "exp-shifted dequantization", "1024 codes, " + std::to_string(bad) + " differ" + first);
        CK(cudaFree(d_out));
    }

    // ---- the fast dequantization (fp8 v3's wide path) within 1 bf16 ulp of fp8_dequant8, on every code ----
    {
        std::vector<float> scales = {0.f, 1.f, 1.f / 448.f, 1e-38f, 1e-40f, 3e-45f, 254.9f, 255.f, 1e10f, NAN, 0.75f};
        std::uniform_real_distribution<float> ue(-40.f, 8.f);
        while (scales.size() < 64) scales.push_back(std::exp2(ue(rng)) * (1.f + (float)(rng() % 1000) / 1000.f));
        const int ns = (int)scales.size();
        float* d_sc = dalloc<float>(ns);
        uint4 *d_fast = dalloc<uint4>((size_t)ns * 32), *d_exact = dalloc<uint4>((size_t)ns * 32);
        upload(d_sc, scales);
        dequant_fast_kernel<<<ns, 32>>>(d_sc, d_fast, d_exact);
        CK(cudaGetLastError());
        const std::vector<uint4> fast = download(d_fast, (size_t)ns * 32), exact = download(d_exact, (size_t)ns * 32);
        const uint16_t* f16 = reinterpret_cast<const uint16_t*>(fast.data());
        const uint16_t* e16 = reinterpret_cast<const uint16_t*>(exact.data());
        int worst = 0, bad = 0;
        std::string first;
        for (int i = 0; i < ns * 256; ++i) {
            if ((i & 0x7F) == 0x7F) continue;  // the NaN codes: the bit moves read them as +-480 (fp8_kv.cuh)
            const uint16_t a = f16[i], b = e16[i];
            const bool nan_a = (a & 0x7FFF) > 0x7F80, nan_b = (b & 0x7FFF) > 0x7F80;
            // ulps between two bf16 of the same sign (a zero of either sign counts as 0)
            auto ordinal = [](uint16_t x) { return (x & 0x8000) ? -(int)(x & 0x7FFF) : (int)(x & 0x7FFF); };
            const int ulps = (nan_a || nan_b) ? (nan_a == nan_b ? 0 : 1 << 20) : std::abs(ordinal(a) - ordinal(b));
            worst = std::max(worst, ulps);
            if (ulps > 1 && bad++ == 0) {
                char t[128];
                std::snprintf(t, sizeof t, " first: code 0x%02x scale %a -> 0x%04x, exact 0x%04x", i % 256, scales[i / 256], a, b);
                first = t;
            }
        }
        report(bad == 0, "fast dequantization", std::to_string(ns) + " scales x 256 codes, worst " + std::to_string(worst) +
               " ulps, " + std::to_string(bad) + " over 1" + first);
        CK(cudaFree(d_sc));
        CK(cudaFree(d_fast));
        CK(cudaFree(d_exact));
    }

    // ---- quantizing append, raw append, dequantization ----
    const int num_blocks = 9, n_rows = 300;
    const size_t pool_bytes = (size_t)num_blocks * MLA_FP8_PAGE_BYTES;
    std::vector<uint16_t> rows;
    for (int r = 0; r < n_rows; ++r) {
        const std::vector<uint16_t> row = fp8_check_row(rng, r);
        rows.insert(rows.end(), row.begin(), row.end());
    }
    std::vector<int> perm(num_blocks * MLA_PAGE_TOKENS);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> slots(perm.begin(), perm.begin() + n_rows);
    slots.push_back(-1);                               // padding: skipped
    slots.push_back(num_blocks * MLA_PAGE_TOKENS);     // one past the pool: skipped
    rows.resize(slots.size() * MLA_HEAD_DIM_K, 0x3F80);
    const int n_append = (int)slots.size();

    std::vector<uint8_t> expect(pool_bytes, 0xAB), tokens((size_t)n_append * MLA_FP8_TOKEN_BYTES, 0);
    for (int r = 0; r < n_rows; ++r) {
        fp8host::quantize_row(&rows[(size_t)r * MLA_HEAD_DIM_K], &tokens[(size_t)r * MLA_FP8_TOKEN_BYTES]);
        std::memcpy(&expect[(size_t)slots[r] * MLA_FP8_TOKEN_BYTES], &tokens[(size_t)r * MLA_FP8_TOKEN_BYTES],
                    MLA_FP8_TOKEN_BYTES);
    }
    uint16_t* d_rows = dalloc<uint16_t>(rows.size());
    uint8_t* d_tokens = dalloc<uint8_t>(tokens.size());
    int* d_slots = dalloc<int>(slots.size());
    uint8_t* d_pool = dalloc<uint8_t>(pool_bytes + MLA_FP8_PAGE_BYTES);  // + a guard page
    bf16* d_deq = dalloc<bf16>((size_t)num_blocks * MLA_PAGE_TOKENS * MLA_HEAD_DIM_K);
    upload(d_rows, rows);
    upload(d_tokens, tokens);
    upload(d_slots, slots);
    auto compare_pool = [&](const char* what) {
        const std::vector<uint8_t> got = download(d_pool, pool_bytes + MLA_FP8_PAGE_BYTES);
        long long bad = 0;
        std::string first;
        for (size_t i = 0; i < got.size(); ++i) {
            const uint8_t want = i < pool_bytes ? expect[i] : 0xAB;
            if (got[i] != want && bad++ == 0) {
                char b[128];
                std::snprintf(b, sizeof b, " first: slot %zu byte %zu: 0x%02x, want 0x%02x", i / MLA_FP8_TOKEN_BYTES,
                              i % MLA_FP8_TOKEN_BYTES, got[i], want);
                first = b;
            }
        }
        report(bad == 0, what, std::to_string(n_rows) + " rows + 2 skipped, " + std::to_string(bad) + " bytes differ" + first);
    };
    KvAppendParams ap{};
    ap.kv_pool = d_pool;
    ap.slots = d_slots;
    ap.num_rows = n_append;
    ap.num_blocks = num_blocks;

    CK(cudaMemset(d_pool, 0xAB, pool_bytes + MLA_FP8_PAGE_BYTES));
    ap.rows = d_rows;
    flashmla_append_kv_fp8<<<ceil_div(n_append, MLA_APPEND_ROWS_PER_CTA), MLA_APPEND_THREADS>>>(ap);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    compare_pool("append_kv_fp8 (quantize)");

    // Dequantization of what the GPU stored, against the host's.
    const size_t n_tok = (size_t)num_blocks * MLA_PAGE_TOKENS;
    check::dequant_fp8_pool<<<(unsigned)((n_tok + 7) / 8), 256>>>(d_pool, d_deq, n_tok);
    CK(cudaGetLastError());
    {
        const std::vector<bf16> deq = download(d_deq, n_tok * MLA_HEAD_DIM_K);
        long long bad = 0;
        std::vector<uint16_t> want(MLA_HEAD_DIM_K);
        for (int r = 0; r < n_rows; ++r) {
            fp8host::dequantize_token(&expect[(size_t)slots[r] * MLA_FP8_TOKEN_BYTES], want.data());
            for (int i = 0; i < MLA_HEAD_DIM_K; ++i) {
                const uint16_t g = *reinterpret_cast<const uint16_t*>(&deq[(size_t)slots[r] * MLA_HEAD_DIM_K + i]);
                const bool gn = std::isnan(fp8host::bf16_value(g)), wn = std::isnan(fp8host::bf16_value(want[i]));
                if (gn != wn || (!gn && g != want[i])) ++bad;
            }
        }
        report(bad == 0, "dequantization", std::to_string(n_rows) + " tokens, " + std::to_string(bad) + " values differ");
    }

    CK(cudaMemset(d_pool, 0xAB, pool_bytes + MLA_FP8_PAGE_BYTES));
    ap.rows = d_tokens;
    flashmla_append_kv_fp8_raw<<<ceil_div(n_append, MLA_APPEND_ROWS_PER_CTA), MLA_APPEND_THREADS>>>(ap);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    compare_pool("append_kv_fp8_raw");

    for (void* p : std::initializer_list<void*>{d_rows, d_tokens, d_slots, d_pool, d_deq}) CK(cudaFree(p));
    return all_ok;
}
