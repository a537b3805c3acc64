// test_pair_sketch.c: the space-saving sketch against exact totals on random skewed streams.
#include "analysis/pair_sketch.h"
#include "test_common.h"

#define NF 40
#define NG 30

// A skewed stream: a few heavy pairs among many light ones; exact totals kept alongside.
static void run_stream(int capacity, int n_updates, uint64_t seed) {
    static double exact_w[NF][NG], exact_sum[NF][NG];
    static int64_t exact_n[NF][NG];
    memset(exact_w, 0, sizeof exact_w), memset(exact_sum, 0, sizeof exact_sum), memset(exact_n, 0, sizeof exact_n);
    PairSketch s;
    pair_sketch_init(&s, capacity);
    TRng rng = {seed};
    double total = 0;
    for (int u = 0; u < n_updates; u++) {
        int heavy = trng_unif(&rng) < 0.3;
        int f = heavy ? trng_int(&rng, 0, 2) : trng_int(&rng, 0, NF - 1);
        int g = heavy ? f + 1 : trng_int(&rng, 0, NG - 1);
        double v = (trng_unif(&rng) - 0.3) * (heavy ? 3.0 : 1.0);
        pair_sketch_add(&s, f, g, v);
        exact_w[f][g] += fabs(v), exact_sum[f][g] += v, exact_n[f][g]++;
        total += fabs(v);
    }
    PairEntry *e = qk_malloc(sizeof(PairEntry) * capacity);
    int n = pair_sketch_sorted(&s, e);
    cr_assert_leq(n, capacity);
    int kept[NF][NG] = {{0}};
    for (int i = 0; i < n; i++) {
        int f = e[i].f, g = e[i].g;
        kept[f][g] = 1;
        cr_expect(e[i].weight - e[i].err <= exact_w[f][g] + 1e-9 && exact_w[f][g] <= e[i].weight + 1e-9,
                  "(%d,%d): true %g outside [%g, %g]", f, g, exact_w[f][g], e[i].weight - e[i].err, e[i].weight);
        if (e[i].err == 0) {
            cr_expect(fabs(e[i].sum - exact_sum[f][g]) < 1e-9 && e[i].count == exact_n[f][g], "(%d,%d) exact", f, g);
        }
        if (i) cr_expect(e[i - 1].weight >= e[i].weight);
    }
    for (int f = 0; f < NF; f++)
        for (int g = 0; g < NG; g++)
            if (exact_w[f][g] > total / capacity) cr_expect(kept[f][g], "heavy pair (%d,%d) lost", f, g);
    free(e);
    pair_sketch_free(&s);
}

Test(pair_sketch, exact_when_everything_fits) { run_stream(NF * NG, 5000, 7); }
Test(pair_sketch, heavy_hitters_kept_small_capacity) { run_stream(16, 20000, 11); }
Test(pair_sketch, heavy_hitters_kept_medium_capacity) { run_stream(100, 20000, 12); }

// Weight summarised away before the table (the CUDA analysis's per-batch cut) is in the total and
// in `pruned`, and merging (directly or packed, as ranks do) carries both.
Test(pair_sketch, pruned_weight_survives_merges) {
    PairSketch a, b, c;
    pair_sketch_init(&a, 4), pair_sketch_init(&b, 4), pair_sketch_init(&c, 4);
    pair_sketch_add(&a, 1, 2, 3.0);
    pair_sketch_add_pruned(&a, 0.5);
    cr_expect(a.total == 3.5 && a.pruned == 0.5, "total %g pruned %g", a.total, a.pruned);
    pair_sketch_add(&b, 1, 2, -1.0);
    pair_sketch_add_pruned(&b, 0.25);
    pair_sketch_merge(&b, &a);
    cr_expect(b.total == 4.75 && b.pruned == 0.75, "merged: total %g pruned %g", b.total, b.pruned);
    size_t n = pair_sketch_packed_size(&b), used = 0;
    void *buf = qk_malloc(n);
    pair_sketch_pack(&b, buf);
    cr_assert_eq(pair_sketch_merge_packed(&c, buf, n, &used), 0, "%s", qk_errmsg());
    cr_expect(used == n && c.total == 4.75 && c.pruned == 0.75, "packed: used %zu of %zu, total %g pruned %g", used, n,
              c.total, c.pruned);
    free(buf);
    pair_sketch_free(&a), pair_sketch_free(&b), pair_sketch_free(&c);
}
