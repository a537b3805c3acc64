// test_gemm.c: qk_gemm's contract (gemm.h): every element is the fixed chain of fused
// multiply-adds in increasing k, so its bits equal a scalar fmaf loop's and do not depend on the
// tiling, the thread count, the other rows of the call or the instruction-set path.
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "analysis/topk.h"
#include "base/cpu_features.h"
#include "base/gemm.h"
#include "base/util.h"
#include "test_common.h"

// The definition, one element at a time.
static void gemm_chain(QkGemmTrans tr, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, int accumulate, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = accumulate ? C[(size_t)i * ldc + j] : 0.0f;
            for (int k = 0; k < K; k++) {
                float b = tr == QK_GEMM_N ? B[(size_t)k * ldb + j] : B[(size_t)j * ldb + k];
                acc = fmaf(A[(size_t)i * lda + k], b, acc);
            }
            C[(size_t)i * ldc + j] = alpha * acc;
        }
}

static float *rnd(TRng *g, size_t n) {
    float *x = qk_malloc(n * sizeof(float) + 4);
    trng_fill_normal(g, x, n, 0.0, 1.0);
    return x;
}

// The first differing element of C and R (M x N, stride ldc), or -1.
static long first_diff(const float *C, const float *R, int M, int N, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            if (memcmp(C + (size_t)i * ldc + j, R + (size_t)i * ldc + j, 4)) return (long)i * ldc + j;
    return -1;
}

// Shapes around every block edge (MR 6, NR 16, KC 256, tiles 96 x 256), strides wider than the
// matrices, both B layouts, with and without accumulate and alpha.
Test(gemm, equals_the_scalar_fma_chain_bit_for_bit) {
    static const int shapes[][3] = {{1, 1, 1},    {5, 15, 3},    {6, 16, 256},  {7, 17, 257},   {97, 257, 513},
                                    {128, 64, 128}, {200, 300, 768}, {13, 1, 64},  {1, 2304, 768}, {191, 33, 1000}};
    TRng g = {42};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tr = 0; tr < 2; tr++)
            for (int acc = 0; acc < 2; acc++) {
                const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                const int lda = K + 3, ldb = (tr ? K : N) + 5, ldc = N + 2;
                const float alpha = acc ? 1.0f : 0.125f;
                float *A = rnd(&g, (size_t)M * lda), *B = rnd(&g, (size_t)(tr ? N : K) * ldb);
                float *C = rnd(&g, (size_t)M * ldc), *R = qk_malloc((size_t)M * ldc * sizeof(float));
                memcpy(R, C, (size_t)M * ldc * sizeof(float));
                qk_gemm(tr, M, N, K, alpha, A, lda, B, ldb, acc, C, ldc);
                gemm_chain(tr, M, N, K, alpha, A, lda, B, ldb, acc, R, ldc);
                long d = first_diff(C, R, M, N, ldc);
                cr_assert_eq(d, -1, "M=%d N=%d K=%d trans=%d acc=%d: element %ld is %.9g, the chain gives %.9g", M, N,
                             K, tr, acc, d, d >= 0 ? C[d] : 0.0, d >= 0 ? R[d] : 0.0);
                // Padding between rows (ldc > N) is never written.
                for (int i = 0; i < M; i++)
                    for (int j = N; j < ldc; j++)
                        cr_assert_eq(memcmp(C + (size_t)i * ldc + j, R + (size_t)i * ldc + j, 4), 0,
                                     "M=%d N=%d K=%d: wrote past column N at row %d", M, N, K, i);
                free(A), free(B), free(C), free(R);
            }
}

// A row's result does not depend on which rows share the call (batch composition) nor on the
// thread count.
Test(gemm, rows_and_threads_do_not_change_bits) {
    const int M = 300, N = 2304, K = 768;
    TRng g = {7};
    float *A = rnd(&g, (size_t)M * K), *B = rnd(&g, (size_t)K * N);
    float *C1 = qk_malloc((size_t)M * N * 4), *C = qk_malloc((size_t)M * N * 4);
    omp_set_num_threads(1);
    qk_gemm(QK_GEMM_N, M, N, K, 1.0f, A, K, B, N, 0, C1, N);
    for (int threads = 2; threads <= 5; threads += 3) {
        omp_set_num_threads(threads);
        qk_gemm(QK_GEMM_N, M, N, K, 1.0f, A, K, B, N, 0, C, N);
        cr_assert_eq(memcmp(C, C1, (size_t)M * N * 4), 0, "%d threads differ from 1", threads);
    }
    // Rows 37..37+5 alone, and rows 100.. alone: the same bits as inside the full call.
    static const int parts[][2] = {{37, 5}, {100, 200}, {299, 1}};
    for (int p = 0; p < 3; p++) {
        qk_gemm(QK_GEMM_N, parts[p][1], N, K, 1.0f, A + (size_t)parts[p][0] * K, K, B, N, 0, C, N);
        cr_assert_eq(memcmp(C, C1 + (size_t)parts[p][0] * N, (size_t)parts[p][1] * N * 4), 0,
                     "rows %d..%d alone differ from the full call", parts[p][0], parts[p][0] + parts[p][1]);
    }
    omp_set_num_threads(omp_get_num_procs());
    free(A), free(B), free(C), free(C1);
}

// Inside a parallel region each call runs on its own thread: the same bits as a serial call.
Test(gemm, nested_calls_equal_serial_calls) {
    const int M = 64, N = 64, K = 64, P = 8;
    TRng g = {9};
    float *A = rnd(&g, (size_t)P * M * K), *B = rnd(&g, (size_t)K * N);
    float *C = qk_malloc((size_t)P * M * N * 4), *R = qk_malloc((size_t)P * M * N * 4);
    for (int p = 0; p < P; p++) qk_gemm(QK_GEMM_T, M, N, K, 0.5f, A + (size_t)p * M * K, K, B, K, 0, R + (size_t)p * M * N, N);
#pragma omp parallel for num_threads(4)
    for (int p = 0; p < P; p++) qk_gemm(QK_GEMM_T, M, N, K, 0.5f, A + (size_t)p * M * K, K, B, K, 0, C + (size_t)p * M * N, N);
    cr_assert_eq(memcmp(C, R, (size_t)P * M * N * 4), 0);
    free(A), free(B), free(C), free(R);
}

// The AVX-512 scan of the top-k against the AVX2 one: the same selections and values, bit for
// bit.  Runs only where the CPU has AVX-512 (CI lands on both kinds of machine).
Test(gemm, topk_avx512_path_equals_avx2_path) {
    setenv("QK_ISA", "auto", 1);
    qk_cpu_reload();
    if (!qk_cpu_avx512()) cr_skip_test("this CPU has no AVX-512: only the AVX2 path exists here");
    const int n = 70, M = 5000, r = 64, k = 32;
    TRng g = {11};
    float *U = rnd(&g, (size_t)n * r), *V = rnd(&g, (size_t)M * r), *c = rnd(&g, M);
    int32_t *idx[2], *cnt[2];
    float *val[2];
    for (int act = 0; act < 3; act++) {
        for (int path = 0; path < 2; path++) {
            setenv("QK_ISA", path ? "avx2" : "auto", 1);
            qk_cpu_reload();
            QkTopkOpts o = {.k = k, .act = (QkTopkAct)act, .gate = 0.5f};
            idx[path] = qk_malloc((size_t)n * k * 4), val[path] = qk_malloc((size_t)n * k * 4);
            cnt[path] = qk_malloc((size_t)n * 4);
            cr_assert_eq(qk_topk(n, M, r, U, r, NULL, V, c, &o, idx[path], val[path], cnt[path]), 0, "%s", qk_errmsg());
        }
        cr_assert_eq(memcmp(idx[0], idx[1], (size_t)n * k * 4), 0, "act %d: indices differ between AVX-512 and AVX2", act);
        cr_assert_eq(memcmp(val[0], val[1], (size_t)n * k * 4), 0, "act %d: values differ between AVX-512 and AVX2", act);
        cr_assert_eq(memcmp(cnt[0], cnt[1], (size_t)n * 4), 0, "act %d: counts differ between AVX-512 and AVX2", act);
        for (int p = 0; p < 2; p++) free(idx[p]), free(val[p]), free(cnt[p]);
    }
    unsetenv("QK_ISA");
    qk_cpu_reload();
    free(U), free(V), free(c);
}

// The CLI checks the ISA switch before any work: a bad value is one line naming it, exit 2.
Test(gemm, bad_isa_switch_is_refused_by_the_cli) {
    FILE *p = popen("QK_ISA=sse2 " QK_BIN " info tests/reference/data/gpt2_tiny_a 2>&1; echo \"exit=$?\"", "r");
    cr_assert_not_null(p);
    char out[512] = {0};
    size_t n = fread(out, 1, sizeof out - 1, p);
    pclose(p);
    out[n] = 0;
    cr_assert(strstr(out, "QK_ISA=sse2: expected auto, avx2 or avx512") != NULL, "got: %s", out);
    cr_assert(strstr(out, "exit=2") != NULL, "got: %s", out);
}
