// bench_forward.c: times the CPU forward pass (activation cache as the analysis keeps it, except
// the all-layer attention rows) on a model folder and a token .npy; prints one JSON line.
// Used by bench_forward.py, which times Hugging Face transformers on the same weights and tokens.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/util.h"
#include "model/activations.h"
#include "model/forward_cpu.h"
#include "model/gpt2.h"
#include "text/token_file.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_forward MODEL_DIR TOKENS.npy [REPEATS]\n");
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 3, *tokens, B, T;
    GPT2Model m;
    if (gpt2_load(&m, argv[1]) || qk_token_file_read(argv[2], &tokens, &B, &T) ||
        gpt2_check_tokens(&m.cfg, tokens, B, T, argv[2])) {
        fprintf(stderr, "bench_forward: %s\n", qk_errmsg());
        return 1;
    }
    GPT2Acts a;
    gpt2_acts_alloc(&a, &m.cfg, B, T, 0, 1);
    gpt2_forward_cpu(&m, tokens, &a);  // warm-up: page in weights and buffers
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double t0 = qk_now();
        gpt2_forward_cpu(&m, tokens, &a);
        double dt = qk_now() - t0;
        best = dt < best ? dt : best;
    }
    printf("{\"threads\": %d, \"batch\": %d, \"pos\": %d, \"best_s\": %.6f, \"tokens_per_s\": %.1f}\n",
           omp_get_max_threads(), B, T, best, B * T / best);
    gpt2_acts_free(&a);
    free(tokens);
    gpt2_free(&m);
    return 0;
}
