// test_forward_math.c: the per-thread arithmetic of the CUDA forward pass (kernels/model/forward_math.h,
// __host__ __device__ functions compiled here as C), checked on the CPU: bf16 rounding, the index
// maps of the attention layouts, and the warp-order LayerNorm / softmax reductions against the
// CPU backend's sequential double sums.  Also the precision setting of the backend interface.
#include <float.h>
#include <stdint.h>

#include "model/forward_math.h"
#include "model/forward_mem.h"
#include "test_common.h"

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

Test(forward_math, bf16_round_to_nearest_even) {
    cr_expect_eq(qk_bf16_round(1.0f), 1.0f);
    cr_expect_eq(qk_bf16_round(-2.5f), -2.5f);
    // halfway between 1 and 1 + 2^-7: ties to the even mantissa (1)
    cr_expect_eq(qk_bf16_round(1.0f + 0x1p-8f), 1.0f);
    // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up
    cr_expect_eq(qk_bf16_round(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);
    // just above halfway: up
    cr_expect_eq(qk_bf16_round(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);
    cr_expect(isinf(qk_bf16_round(INFINITY)) && qk_bf16_round(-INFINITY) < 0);
    cr_expect(isnan(qk_bf16_round(NAN)));
    cr_expect(isinf(qk_bf16_round(FLT_MAX)), "FLT_MAX rounds to inf in bf16 (as __float2bfloat16_rn)");
    cr_expect_eq(qk_bf16_round(bits_f(0x00000001u)), 0.0f);  // smallest subnormal: down to 0
    TRng s = {7};
    for (int i = 0; i < 100000; i++) {
        float x = (float)(trng_unif(&s) - 0.5) * 1e4f;
        float r = qk_bf16_round(x);
        uint32_t u;
        memcpy(&u, &r, 4);
        cr_assert_eq(u & 0xffffu, 0u);
        cr_assert(fabsf(r - x) <= fabsf(x) * 0x1p-8f, "%g -> %g", x, r);
    }
}

// The per-head layout map is a bijection of (B, T, C) onto (B, H, T, dh) with the right order.
Test(forward_math, qkv_perm_index_is_the_head_layout) {
    const int B = 3, T = 5, C = 12, dh = 4, H = C / dh;
    size_t NC = (size_t)B * T * C;
    int *seen = calloc(NC, sizeof(int));
    for (size_t n = 0; n < (size_t)B * T; n++)
        for (int e = 0; e < C; e++) {
            size_t b = n / T, t = n % T, h = e / dh, d = e % dh, i = qk_qkv_perm_index(n, e, T, C, dh);
            cr_assert_eq(i, ((b * H + h) * T + t) * dh + d);
            cr_assert_lt(i, NC);
            seen[i]++;
        }
    for (size_t i = 0; i < NC; i++) cr_assert_eq(seen[i], 1);
    free(seen);
    for (size_t row = 0; row < (size_t)B * H * T; row++) cr_assert_eq(qk_score_row_query(row, T), (int)(row % T));
}

// host/model/forward_cpu.c's LayerNorm: sequential double sums.
static void ln_reference(float *out, float *scale, const float *x, const float *w, const float *b, int C, float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    double s = sqrt(var / C + (double)eps);
    *scale = (float)s;
    for (int i = 0; i < C; i++) out[i] = (float)((x[i] - mean) / s) * w[i] + b[i];
}

// The kernel's order (lane-strided partials, xor butterfly) gives the CPU's values within one
// rounding: the scale to float, each output to 2 ulps (the final multiply-add is fused).
Test(forward_math, layernorm_in_warp_order_matches_the_cpu) {
    const int sizes[] = {768, 80, 20, 1, 33, 1024};
    TRng s = {11};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int C = sizes[k];
        float *x = malloc(C * 4), *w = malloc(C * 4), *b = malloc(C * 4), *o1 = malloc(C * 4), *o2 = malloc(C * 4);
        for (int rep = 0; rep < 50; rep++) {
            float off = (float)(trng_unif(&s) * 200 - 100);  // a large mean: cancellation
            for (int i = 0; i < C; i++) {
                x[i] = off + (float)(trng_unif(&s) - 0.5) * 4;
                w[i] = (float)(trng_unif(&s) * 2);
                b[i] = (float)(trng_unif(&s) - 0.5);
            }
            float s1, s2;
            ln_reference(o1, &s1, x, w, b, C, 1e-5f);
            qk_ln_row_emulated(o2, &s2, x, w, b, C, 1e-5f);
            cr_assert(fabsf(s1 - s2) <= 1e-7f * s1, "C %d: scale %.9g vs %.9g", C, s1, s2);
            for (int i = 0; i < C; i++)
                cr_assert(fabsf(o1[i] - o2[i]) <= 2 * FLT_EPSILON * (fabsf(o1[i]) + fabsf(b[i]) + 1e-6f), "C %d, i %d: %.9g vs %.9g",
                          C, i, o1[i], o2[i]);
        }
        free(x), free(w), free(b), free(o1), free(o2);
    }
}

// The butterfly leaves every lane the same sum, equal to the plain sum to double rounding; the
// softmax row sum in lane order equals the CPU's sequential one.
Test(forward_math, warp_butterfly_and_softmax_sum) {
    TRng s = {3};
    double v[QK_WARP], plain = 0;
    for (int l = 0; l < QK_WARP; l++) plain += v[l] = trng_unif(&s) * 1e3 - 500;
    double got = qk_butterfly_sum32(v);
    for (int l = 1; l < QK_WARP; l++) cr_assert_eq(v[l], v[0]);
    cr_assert(fabs(got - plain) <= 1e-12 * fabs(plain) + 1e-9);
    const int T = 200;
    float row[200];
    for (int j = 0; j < T; j++) row[j] = (float)(trng_unif(&s) * 20 - 10);
    for (int last = 0; last < T; last += 37) {
        float mx = row[0];
        for (int j = 1; j <= last; j++) mx = row[j] > mx ? row[j] : mx;
        double seq = 0;
        for (int j = 0; j <= last; j++) seq += expf(row[j] - mx);
        for (int l = 0; l < QK_WARP; l++) v[l] = qk_lane_expsum(row, last, l, mx);
        double warp = qk_butterfly_sum32(v);
        cr_assert(fabs(warp - seq) <= 1e-13 * seq, "row up to %d: %.17g vs %.17g", last, warp, seq);
        cr_assert_eq((float)(1.0 / warp), (float)(1.0 / seq));
    }
}

Test(forward_math, gelu_new_is_the_cpu_formula) {
    const float k = 0.7978845608028654f;
    for (float x = -8; x <= 8; x += 0.01f) cr_assert_eq(qk_gelu_new(x), 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x))));
}

// The backend interface: the CPU backend takes fp32 only, and says so; unknown names are errors.
Test(forward_math, cpu_backend_precision) {
    QkBackend *be = qk_backend_cpu_new();
    cr_expect_eq(qk_backend_set_precision(be, "fp32"), 0);
    cr_expect_eq(qk_backend_set_precision(be, "bf16"), -1);
    cr_expect(strstr(qk_errmsg(), "needs the CUDA backend") != NULL, "%s", qk_errmsg());
    cr_expect_eq(qk_backend_set_precision(be, "fp16"), -1);
    cr_expect(strstr(qk_errmsg(), "expected fp32, tf32 or bf16") != NULL, "%s", qk_errmsg());
    qk_backend_close(be);
}

// The CUDA backend's memory arithmetic: GPT-2 small at 32 x 128 tokens needs what its buffers add
// up to, and the batch it names when an allocation does not fit is the largest that does.
Test(forward_math, activation_bytes_and_the_batch_that_fits) {
    GPT2Config c = {.n_layer = 12, .n_head = 12, .d_model = 768, .d_head = 64, .d_mlp = 3072, .n_ctx = 1024,
                    .vocab_size = 50257, .ln_eps = 1e-5f};
    size_t stride, B = 32, T = 128, N = B * T, L = 12, C = 768;
    size_t got = qk_cuda_acts_bytes(&c, B, T, 0, 0, &stride);
    cr_expect_eq(stride, N * C, "N C = %zu floats is already a multiple of 256 bytes", N * C);
    size_t want = 4 * (N + (L + 1) * N * C + L * N + 2 * L * N * C + 2 * B * 12 * T * T + N + 2 * N * C + N * 3072 +
                       N * 3 * C + 3 * N * C + N * C);
    cr_expect_eq(got, want, "%zu vs %zu bytes", got, want);
    cr_expect_gt(qk_cuda_acts_bytes(&c, B, T, 1, 1, NULL), got);
    size_t odd = qk_cuda_acts_bytes(&c, 3, 5, 1, 0, &stride);
    cr_expect(stride * 4 % 256 == 0 && stride >= 15 * C);
    cr_expect_eq(odd % 256, 0);
    for (int keep = 0; keep < 2; keep++) {
        double at32 = (double)qk_cuda_acts_bytes(&c, 32, T, keep, 1, NULL);
        cr_expect_eq(qk_cuda_batch_fit(&c, T, keep, 1, at32), 32);
        cr_expect_eq(qk_cuda_batch_fit(&c, T, keep, 1, at32 - 1), 31);
        cr_expect_eq(qk_cuda_batch_fit(&c, T, keep, 1, 1000), 0);
        long long h200 = qk_cuda_batch_fit(&c, T, keep, 0, 141e9);  // ~21 MB a window without all rows
        cr_expect(keep ? h200 > 500 && h200 < 5000 : h200 > 5000 && h200 < 8000, "%lld windows in 141 GB", h200);
    }
}
