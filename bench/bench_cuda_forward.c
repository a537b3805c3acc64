// bench_cuda_forward.c: tokens/s of the CUDA backend's forward pass per precision, as the
// analysis calls it (every layer, the hooks the analysis reads copied to page-locked host
// memory, one layer's attention rows kept, no logits).  scripts/gpu.sh runs it on the GPU.
//   bench_cuda_forward MODEL_DIR TOKENS.npy B T PRECISIONS [REPEATS]
// TOKENS: a corpus of ids (qkscope random's corpus.npy), its first B*T ids as B windows of T.
// Prints one table row per precision ("| ..."): median, min and max seconds over REPEATS
// (default 10) forward passes after 2 warm-ups, and tokens/s at the median.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "base/util.h"
#include "model/activations.h"
#include "model/gpt2.h"
#include "text/token_file.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: bench_cuda_forward MODEL_DIR TOKENS.npy B T fp32,tf32,bf16 [REPEATS]\n");
        return 2;
    }
    int B = atoi(argv[3]), T = atoi(argv[4]), reps = argc > 6 ? atoi(argv[6]) : 10, *ids, nb, nt;
    GPT2Model m;
    QkBackend *be = NULL;
    if (B < 1 || T < 1 || reps < 1) return fprintf(stderr, "bench_cuda_forward: bad B, T or REPEATS\n"), 2;
    if (gpt2_load(&m, argv[1]) || qk_token_file_read(argv[2], &ids, &nb, &nt) ||
        qk_backend_open(&be, QK_BACKEND_CUDA, 0, 1)) {
        fprintf(stderr, "bench_cuda_forward: %s\n", qk_errmsg());
        return 1;
    }
    if ((size_t)nb * nt < (size_t)B * T) return fprintf(stderr, "bench_cuda_forward: %s has fewer than %d ids\n", argv[2], B * T), 1;
    if (gpt2_check_tokens(&m.cfg, ids, B, T, argv[2])) return fprintf(stderr, "bench_cuda_forward: %s\n", qk_errmsg()), 1;
    GPT2Acts a;
    gpt2_acts_alloc_in(&a, &m.cfg, B, T, 0, 0, &be->host_mem);
    double *t = qk_malloc(sizeof(double) * reps);
    char *list = qk_strdup(argv[5]);
    int rc = 0;
    printf("| forward pass, %d layers, d %d, %d x %d tokens | median s | min s | max s | tokens/s |\n", m.cfg.n_layer,
           m.cfg.d_model, B, T);
    for (char *save = NULL, *p = strtok_r(list, ",", &save); p && !rc; p = strtok_r(NULL, ",", &save)) {
        if (qk_backend_set_precision(be, p)) {
            fprintf(stderr, "bench_cuda_forward: %s\n", qk_errmsg());
            rc = 1;
            break;
        }
        for (int r = -2; r < reps && !rc; r++) {
            double t0 = qk_now();
            if (be->forward(be, &m, ids, &a)) {
                fprintf(stderr, "bench_cuda_forward (%s): %s\n", p, qk_errmsg());
                rc = 1;
            }
            if (r >= 0) t[r] = qk_now() - t0;
        }
        if (rc) break;
        qsort(t, reps, sizeof(double), cmp_d);
        printf("| %s | %.5f | %.5f | %.5f | %.0f |\n", p, t[reps / 2], t[0], t[reps - 1], B * T / t[reps / 2]);
        fflush(stdout);
    }
    free(list);
    free(t);
    gpt2_acts_free(&a);
    qk_backend_close(be);
    free(ids);
    gpt2_free(&m);
    return rc;
}
