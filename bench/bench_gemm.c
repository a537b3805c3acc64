// bench_gemm.c: qk_gemm (one fixed summation order, gemm.h) against OpenBLAS's sgemm on the shapes
// qkscope runs, side by side in one process: GFLOP/s of each and the ratio.  One thread, timed in
// process CPU seconds (CLOCK_PROCESS_CPUTIME_ID), so other load on a shared machine changes the
// figures little; both libraries divide whole matrices among threads in the same way (by tiles),
// so the single-thread ratio is the kernel's.  Interleaved, best of each.  Prints a markdown table.
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "base/gemm.h"
#include "base/util.h"

typedef struct {
    const char *what;
    int M, N, K, trans;
} Shape;

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// GFLOP/s of the best of reps calls.
static double run(int blas, const Shape *s, float *A, float *B, float *C, int reps) {
    const int ldb = s->trans ? s->K : s->N;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_now();
        if (blas)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, s->trans ? CblasTrans : CblasNoTrans, s->M, s->N, s->K, 1.0f, A,
                        s->K, B, ldb, 0.0f, C, s->N);
        else
            qk_gemm(s->trans ? QK_GEMM_T : QK_GEMM_N, s->M, s->N, s->K, 1.0f, A, s->K, B, ldb, 0, C, s->N);
        double t = cpu_now() - t0;
        best = t < best ? t : best;
    }
    return 2.0 * s->M * s->N * s->K / best / 1e9;
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 10;
    static const Shape shapes[] = {
        {"forward qkv (B*T=512)", 512, 2304, 768, 0},     {"forward attn proj", 512, 768, 768, 0},
        {"forward mlp fc", 512, 3072, 768, 0},            {"forward mlp proj", 512, 768, 3072, 0},
        {"attention QK^T (one head)", 128, 128, 64, 1},   {"attention PV (one head)", 128, 64, 128, 0},
        {"top-k tile, look-for r=64", 256, 512, 64, 1},   {"top-k tile, SAE encode r=768", 128, 1024, 768, 1},
        {"error projection", 512, 64, 768, 0},            {"logits (cache --logits)", 512, 50257, 768, 1},
    };
    omp_set_num_threads(1);
    size_t maxa = 0, maxb = 0, maxc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const Shape *s = &shapes[i];
        size_t a = (size_t)s->M * s->K, b = (size_t)s->K * s->N, c = (size_t)s->M * s->N;
        maxa = a > maxa ? a : maxa, maxb = b > maxb ? b : maxb, maxc = c > maxc ? c : maxc;
    }
    float *A = qk_malloc_aligned(maxa * 4), *B = qk_malloc_aligned(maxb * 4), *C = qk_malloc_aligned(maxc * 4);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < maxa; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, A[i] = (float)(x % 2001) / 1000 - 1;
    for (size_t i = 0; i < maxb; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, B[i] = (float)(x % 2001) / 1000 - 1;
    printf("| shape | M x N x K | B^T | qk_gemm GFLOP/s | OpenBLAS GFLOP/s | qk_gemm / OpenBLAS |\n");
    printf("| --- | --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const Shape *s = &shapes[i];
        run(0, s, A, B, C, 1), run(1, s, A, B, C, 1);  // warm-up
        double q = 0, o = 0;
        for (int r = 0; r < 3; r++) {  // interleaved, best of each
            double a = run(0, s, A, B, C, reps), b = run(1, s, A, B, C, reps);
            q = a > q ? a : q, o = b > o ? b : o;
        }
        printf("| %s | %d x %d x %d | %s | %.1f | %.1f | %.2f |\n", s->what, s->M, s->N, s->K, s->trans ? "yes" : "no",
               q, o, q / o);
    }
    free(A), free(B), free(C);
    return 0;
}
