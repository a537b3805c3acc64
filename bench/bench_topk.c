// bench_topk.c: times qk_topk against the OpenBLAS GEMM alone on the same shapes.
//
//   bin/bench_topk [--n 4096] [--M 32768] [--k 32] [--r 64,768] [--reps 3] [--rb R] [--cb C]
//
// For each r prints one JSON line: the best-of-reps seconds of
//   topk:        qk_topk (GEMM tiles + selection), default tiles unless --rb/--cb;
//   gemm_tiled:  the same tile GEMMs into the same per-thread buffers, no selection;
//   gemm_full:   one cblas_sgemm of [n x r] by [r x M] into an n x M buffer.
// Threads: OMP_NUM_THREADS.
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/topk.h"
#include "base/util.h"

typedef struct {
    int n, M, k, reps, rb, cb;
    char rs[64];
} Args;

static int parse(Args *a, int argc, char **argv) {
    *a = (Args){.n = 4096, .M = 32768, .k = 32, .reps = 3};
    snprintf(a->rs, sizeof a->rs, "64,768");
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--n")) a->n = atoi(v);
        else if (!strcmp(f, "--M")) a->M = atoi(v);
        else if (!strcmp(f, "--k")) a->k = atoi(v);
        else if (!strcmp(f, "--reps")) a->reps = atoi(v);
        else if (!strcmp(f, "--rb")) a->rb = atoi(v);
        else if (!strcmp(f, "--cb")) a->cb = atoi(v);
        else if (!strcmp(f, "--r")) snprintf(a->rs, sizeof a->rs, "%s", v);
        else return fprintf(stderr, "bench_topk: unknown flag %s\n", f), -1;
    }
    return 0;
}

// The primitive's GEMM work alone: the same tiles, the same per-thread buffers.
static void gemm_tiled(int n, int M, int r, const float *U, const float *V, int RB, int CB) {
    int nrb = (n + RB - 1) / RB, ncb = (M + CB - 1) / CB;
#pragma omp parallel
    {
        float *buf = qk_malloc_aligned((size_t)RB * CB * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int rb = 0; rb < nrb; rb++)
            for (int cbi = 0; cbi < ncb; cbi++) {
                int r0 = rb * RB, rows = n - r0 < RB ? n - r0 : RB;
                int j0 = cbi * CB, cols = M - j0 < CB ? M - j0 : CB;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, r, 1.0f, U + (size_t)r0 * r, r,
                            V + (size_t)j0 * r, r, 0.0f, buf, cols);
            }
        free(buf);
    }
}

static void fill(float *x, size_t n, unsigned seed) {
    srand(seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
}

int main(int argc, char **argv) {
    Args a;
    if (parse(&a, argc, argv)) return 2;
    for (char *tok = strtok(a.rs, ","); tok; tok = strtok(NULL, ",")) {
        int r = atoi(tok), RB, CB;
        qk_topk_default_blocks(r, &RB, &CB);
        if (a.rb) RB = a.rb;
        if (a.cb) CB = a.cb;
        float *U = qk_malloc((size_t)a.n * r * 4), *V = qk_malloc((size_t)a.M * r * 4), *c = qk_malloc((size_t)a.M * 4);
        fill(U, (size_t)a.n * r, 1), fill(V, (size_t)a.M * r, 2), fill(c, a.M, 3);
        int32_t *idx = qk_malloc((size_t)a.n * a.k * 4), *cnt = qk_malloc((size_t)a.n * 4);
        float *val = qk_malloc((size_t)a.n * a.k * 4);
        float *full = qk_malloc((size_t)a.n * a.M * 4);  // [n x M] for gemm_full only
        QkTopkOpts o = {.k = a.k, .row_block = RB, .col_block = CB};
        double best[3] = {1e30, 1e30, 1e30};
        for (int rep = 0; rep < a.reps; rep++) {
            double t0 = qk_now();
            if (qk_topk(a.n, a.M, r, U, r, NULL, V, c, &o, idx, val, cnt))
                return fprintf(stderr, "bench_topk: %s\n", qk_errmsg()), 1;
            double t1 = qk_now();
            gemm_tiled(a.n, a.M, r, U, V, RB, CB);
            double t2 = qk_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a.n, a.M, r, 1.0f, U, r, V, r, 0.0f, full, a.M);
            double t3 = qk_now();
            double t[3] = {t1 - t0, t2 - t1, t3 - t2};
            for (int q = 0; q < 3; q++) best[q] = t[q] < best[q] ? t[q] : best[q];
        }
        printf("{\"n\": %d, \"M\": %d, \"k\": %d, \"r\": %d, \"threads\": %d, \"row_block\": %d, \"col_block\": %d, "
               "\"topk_s\": %.6f, \"gemm_tiled_s\": %.6f, \"gemm_full_s\": %.6f, \"checksum\": %.6g}\n",
               a.n, a.M, a.k, r, omp_get_max_threads(), RB, CB, best[0], best[1], best[2], (double)val[0] + idx[a.k - 1]);
        fflush(stdout);
        free(U), free(V), free(c), free(idx), free(cnt), free(val), free(full);
    }
    return 0;
}
