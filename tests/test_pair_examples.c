// test_pair_examples.c: example contexts (pair_examples.h) are R of the whole stream whatever the
// split: streamed with compactions, or cut into parts merged in any grouping, bit for bit; and R
// itself checked against a direct computation (per-pair cap, then capacity, in the total order).
#include "analysis/pair_examples.h"
#include "test_common.h"

#define N_OCC 20000

static PairExample g_occ[N_OCC];

// Occurrences of a skewed stream: a few heavy pairs, many light ones, quantised terms (ties in
// |term| are frequent, so the window/position tie-breaks matter), signs mixed.
static void make_stream(uint64_t seed) {
    TRng rng = {seed};
    for (int n = 0; n < N_OCC; n++) {
        int heavy = trng_unif(&rng) < 0.2;
        int f = heavy ? trng_int(&rng, 0, 3) : trng_int(&rng, 0, 199), g = heavy ? f : trng_int(&rng, 0, 99);
        float t = (float)trng_int(&rng, 0, 40) / 8.0f * (heavy ? 2.0f : 1.0f) * (trng_unif(&rng) < 0.3 ? -1 : 1);
        g_occ[n] = (PairExample){.window = n / 64, .qpos = n % 64, .kpos = trng_int(&rng, 0, n % 64), .f = f, .g = g,
                                 .term = t};
    }
}

static int cmp_direct(const void *pa, const void *pb) {
    const PairExample *a = pa, *b = pb;
    float ta = fabsf(a->term), tb = fabsf(b->term);
    if (ta != tb) return ta > tb ? -1 : 1;
    if (a->window != b->window) return a->window < b->window ? -1 : 1;
    return a->qpos < b->qpos ? -1 : a->qpos > b->qpos;
}

static void assert_same(const PairExamples *a, const PairExample *b, int nb) {
    cr_assert_eq(a->n, nb);
    for (int i = 0; i < nb; i++)
        cr_assert(a->e[i].window == b[i].window && a->e[i].qpos == b[i].qpos && a->e[i].kpos == b[i].kpos &&
                      a->e[i].f == b[i].f && a->e[i].g == b[i].g && a->e[i].term == b[i].term,
                  "entry %d differs", i);
}

Test(pair_examples, streamed_equals_direct_and_any_split) {
    const int per = 3, cap = 64;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        make_stream(seed);
        // Direct: sort everything, keep each pair's first `per`, then the first `cap`.
        PairExample *all = qk_malloc(sizeof all[0] * N_OCC), *want = qk_malloc(sizeof all[0] * N_OCC);
        memcpy(all, g_occ, sizeof all[0] * N_OCC);
        qsort(all, N_OCC, sizeof all[0], cmp_direct);  // (window, qpos) is unique per occurrence
        static int seen[200][100];
        memset(seen, 0, sizeof seen);
        int nw = 0;
        for (int i = 0; i < N_OCC && nw < cap; i++)
            if (seen[all[i].f][all[i].g]++ < per) want[nw++] = all[i];
        // Streamed in one piece (many compactions: buffer 4 x cap).
        PairExamples one;
        pair_examples_init(&one, per, cap);
        for (int n = 0; n < N_OCC; n++)
            pair_examples_add(&one, g_occ[n].f, g_occ[n].g, g_occ[n].term, g_occ[n].window, g_occ[n].qpos, g_occ[n].kpos);
        pair_examples_finish(&one);
        assert_same(&one, want, nw);
        // Cut into random parts, merged in reverse order (merge order must not matter either).
        TRng rng = {seed * 77};
        PairExamples parts[8], acc;
        int cut[9] = {0, N_OCC};
        for (int p = 1; p < 8; p++) cut[p] = trng_int(&rng, 0, N_OCC);
        cut[8] = N_OCC;
        for (int p = 1; p < 8; p++)  // sort the inner cuts
            for (int q = p + 1; q < 8; q++)
                if (cut[q] < cut[p]) { int t = cut[p]; cut[p] = cut[q]; cut[q] = t; }
        pair_examples_init(&acc, per, cap);
        for (int p = 7; p >= 0; p--) {
            pair_examples_init(&parts[p], per, cap);
            for (int n = cut[p]; n < cut[p + 1]; n++)
                pair_examples_add(&parts[p], g_occ[n].f, g_occ[n].g, g_occ[n].term, g_occ[n].window, g_occ[n].qpos,
                                  g_occ[n].kpos);
            pair_examples_finish(&parts[p]);
            pair_examples_merge(&acc, &parts[p]);
            pair_examples_free(&parts[p]);
        }
        pair_examples_finish(&acc);
        assert_same(&acc, want, nw);
        pair_examples_free(&one), pair_examples_free(&acc);
        free(all), free(want);
    }
}
