// agg_io.c: see agg_io.h.
#include "io/agg_io.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "model/gpt2.h"

// Metric means, from the exact sums.
static void means(const HeadAggregates *g, double *mean) {
    double sum[N_METRICS];
    head_agg_sums(g, sum, NULL, NULL);
    for (int m = 0; m < N_METRICS; m++) mean[m] = g->count[m] ? sum[m] / g->count[m] : NAN;
}

// A whole per-feature dataset (m rows): through the chunk writer's workers when there is one,
// else written and compressed here.
static int write_big(QkH5Out *o, ChunkWriter *cw, const char *name, hid_t type, int ndim, const hsize_t *dims,
                     const char *const *labels, const void *data) {
    if (!cw) return qk_h5_write(o, name, type, ndim, dims, labels, data);
    hsize_t ext[2] = {0, ndim > 1 ? dims[1] : 0};
    hid_t ds = qk_h5_dataset_ext(o, name, type, ndim, ext, labels);
    return ds < 0 ? -1 : cw_write_whole(cw, ds, type, data, dims[0]);
}

static int write_head(QkH5Out *o, ChunkWriter *cw, int l, int h, const HeadAggregates *g) {
    static const char *const lm[1] = {"metric"}, *const lmb[2] = {"metric", "bin"}, *const lf[1] = {"feature"};
    static const char *const lp[1] = {"rank"};
    static const char *const lml[2] = {"metric", "limb"}, *const lfl[2] = {"feature", "limb"};
    hsize_t nm[1] = {N_METRICS}, nmb[2] = {N_METRICS, N_HIST_BINS}, m1[1] = {(hsize_t)g->m};
    hsize_t nml[2] = {N_METRICS, QK_EXACT_LIMBS}, ml[2] = {(hsize_t)g->m, QK_EXACT_LIMBS};
    double mean[N_METRICS], sum[N_METRICS];
    means(g, mean);
    // The sums' values and their exact limbs (what qkscope merge adds, so merged sums are exact).
    int64_t sum_x[N_METRICS * QK_EXACT_LIMBS];
    qk_exact_values(&g->sum_exact[0][0], N_METRICS, sum, sum_x);
    double *qm = qk_malloc(sizeof(double) * (g->m + 1)), *km = qk_malloc(sizeof(double) * (g->m + 1));
    int64_t *qx = qk_malloc(sizeof(int64_t) * QK_EXACT_LIMBS * (g->m + 1)),
            *kx = qk_malloc(sizeof(int64_t) * QK_EXACT_LIMBS * (g->m + 1));
    qk_exact_values(g->query_marginal_exact, g->m, qm, qx);
    qk_exact_values(g->key_marginal_exact, g->m, km, kx);
    PairEntry *pe = qk_malloc(sizeof(PairEntry) * (g->sketch.size + 1));
    int np = pair_sketch_sorted(&g->sketch, pe);
    hsize_t p1[1] = {(hsize_t)np};
    int32_t *pf = qk_malloc(sizeof(int32_t) * (np + 1)), *pg = qk_malloc(sizeof(int32_t) * (np + 1));
    double *pw = qk_malloc(sizeof(double) * (np + 1)), *perr = qk_malloc(sizeof(double) * (np + 1)),
           *ps = qk_malloc(sizeof(double) * (np + 1));
    int64_t *pc = qk_malloc(sizeof(int64_t) * (np + 1));
    for (int q = 0; q < np; q++)
        pf[q] = pe[q].f, pg[q] = pe[q].g, pw[q] = pe[q].weight, perr[q] = pe[q].err, ps[q] = pe[q].sum, pc[q] = pe[q].count;
    char n[160];
#define AGG(name) (snprintf(n, sizeof n, "aggregates/%d.%d/" name, l, h), n)
    int rc = qk_h5_write(o, AGG("metric_sum"), H5T_NATIVE_DOUBLE, 1, nm, lm, sum) ||
             qk_h5_write(o, AGG("metric_sum_exact"), H5T_NATIVE_INT64, 2, nml, lml, sum_x) ||
             qk_h5_write(o, AGG("metric_count"), H5T_NATIVE_INT64, 1, nm, lm, g->count) ||
             qk_h5_write(o, AGG("metric_mean"), H5T_NATIVE_DOUBLE, 1, nm, lm, mean) ||
             qk_h5_write(o, AGG("metric_hist"), H5T_NATIVE_INT64, 2, nmb, lmb, g->hist) ||
             write_big(o, cw, AGG("query_marginal"), H5T_NATIVE_DOUBLE, 1, m1, lf, qm) ||
             write_big(o, cw, AGG("query_marginal_exact"), H5T_NATIVE_INT64, 2, ml, lfl, qx) ||
             write_big(o, cw, AGG("query_count"), H5T_NATIVE_INT64, 1, m1, lf, g->query_count) ||
             write_big(o, cw, AGG("key_marginal"), H5T_NATIVE_DOUBLE, 1, m1, lf, km) ||
             write_big(o, cw, AGG("key_marginal_exact"), H5T_NATIVE_INT64, 2, ml, lfl, kx) ||
             write_big(o, cw, AGG("key_count"), H5T_NATIVE_INT64, 1, m1, lf, g->key_count);
    if (!rc)  // written even when empty (0 rows), so readers find every name
        rc = qk_h5_write_features(o, AGG("pairs_query_feature"), 1, p1, lp, pf, g->m) ||
             qk_h5_write_features(o, AGG("pairs_key_feature"), 1, p1, lp, pg, g->m) ||
             qk_h5_write(o, AGG("pairs_weight"), H5T_NATIVE_DOUBLE, 1, p1, lp, pw) ||
             qk_h5_write(o, AGG("pairs_weight_err"), H5T_NATIVE_DOUBLE, 1, p1, lp, perr) ||
             qk_h5_write(o, AGG("pairs_sum"), H5T_NATIVE_DOUBLE, 1, p1, lp, ps) ||
             qk_h5_write(o, AGG("pairs_count"), H5T_NATIVE_INT64, 1, p1, lp, pc);
#undef AGG
    if (!rc) {
        snprintf(n, sizeof n, "aggregates/%d.%d", l, h);
        hid_t grp = H5Gopen2(o->file, n, H5P_DEFAULT);
        rc = qk_h5_attr_int(grp, "queries", g->queries) || qk_h5_attr_int(grp, "sketch_capacity", g->sketch.capacity) ||
             qk_h5_attr_double(grp, "sketch_total_weight", g->sketch.total) ||
             qk_h5_attr_double(grp, "sketch_pruned_weight", g->sketch.pruned) ||
             qk_h5_attr_str(grp, "sketch_note",
                            g->sketch.pruned > 0
                                ? "pairs_weight - pairs_weight_err <= true summed |value| <= pairs_weight + "
                                  "sketch_pruned_weight; every pair heavier than sketch_total_weight / sketch_capacity + "
                                  "sketch_pruned_weight is kept"
                                : "pairs_weight - pairs_weight_err <= true summed |value| <= pairs_weight; every pair "
                                  "heavier than sketch_total_weight / sketch_capacity is kept");
        if (!rc) rc = qk_h5_attr_int(grp, "examples_per_pair", g->examples.per_pair) ||
                      qk_h5_attr_int(grp, "examples_capacity", g->examples.capacity);
        H5Gclose(grp);
    }
    if (!rc) {  // finishing sorts the example buffer in place: its content (R) is unchanged
        snprintf(n, sizeof n, "aggregates/%d.%d/", l, h);
        rc = pair_examples_write((PairExamples *)&g->examples, o, n, g->m);
    }
    free(pe), free(pf), free(pg), free(pw), free(perr), free(ps), free(pc);
    free(qm), free(km), free(qx), free(kx);
    return rc ? -1 : 0;
}

int agg_write_all(QkH5Out *o, ChunkWriter *cw, int L, int H, const HeadAggregates *const *aggs) {
    static const char *const lm[1] = {"metric"}, *const lhm[2] = {"head", "metric"}, *const lh[1] = {"head"};
    int n_heads = 0, rc = 0;
    double *table = qk_malloc(sizeof(double) * L * H * N_METRICS);
    int32_t *hl = qk_malloc(sizeof(int32_t) * L * H), *hh = qk_malloc(sizeof(int32_t) * L * H);
    for (int i = 0; i < L * H && !rc; i++) {
        if (!aggs[i]) continue;
        means(aggs[i], table + (size_t)n_heads * N_METRICS);
        hl[n_heads] = i / H, hh[n_heads++] = i % H;
        rc = write_head(o, cw, i / H, i % H, aggs[i]);
    }
    float lo[N_METRICS], hi[N_METRICS];
    for (int m = 0; m < N_METRICS; m++) qk_metric_range(m, &lo[m], &hi[m]);
    hsize_t nm[1] = {N_METRICS}, hm[2] = {(hsize_t)n_heads, N_METRICS}, h1[1] = {(hsize_t)n_heads};
    rc = rc || qk_h5_write(o, "summary/metric_mean", H5T_NATIVE_DOUBLE, 2, hm, lhm, table) ||
         qk_h5_write(o, "summary/head_layer", H5T_NATIVE_INT32, 1, h1, lh, hl) ||
         qk_h5_write(o, "summary/head_index", H5T_NATIVE_INT32, 1, h1, lh, hh) ||
         qk_h5_write(o, "aggregates/hist_lo", H5T_NATIVE_FLOAT, 1, nm, lm, lo) ||
         qk_h5_write(o, "aggregates/hist_hi", H5T_NATIVE_FLOAT, 1, nm, lm, hi);
    if (!rc) {
        char names[32 * N_METRICS];
        qk_metric_names_csv(names, sizeof names);
        hid_t g = H5Gopen2(o->file, "aggregates", H5P_DEFAULT), s = H5Gopen2(o->file, "summary", H5P_DEFAULT);
        rc = qk_h5_attr_str(g, "metric_names", names) || qk_h5_attr_str(s, "metric_names", names);
        H5Gclose(g), H5Gclose(s);
    }
    free(table), free(hl), free(hh);
    return rc ? -1 : 0;
}

// Reads the aggregates of head (l, h) in `file` into *x (initialised here for d_sae m).
static int read_head(hid_t f, const char *path, int l, int h, int m, HeadAggregates *x) {
    char n[160];
    // The heavy-hitter pairs, as stored (heaviest first): one table, its length sizes the sketch.
    static const char *const col[6] = {"pairs_query_feature", "pairs_key_feature", "pairs_weight",
                                       "pairs_weight_err",    "pairs_sum",         "pairs_count"};
    static const size_t elem[6] = {4, 4, 8, 8, 8, 8};
    const hid_t type[6] = {H5T_NATIVE_UINT32, H5T_NATIVE_UINT32, H5T_NATIVE_DOUBLE,
                           H5T_NATIVE_DOUBLE, H5T_NATIVE_DOUBLE, H5T_NATIVE_INT64};
    void *b[6];
    int64_t np = 0;
    snprintf(n, sizeof n, "aggregates/%d.%d/", l, h);
    int rc = qk_h5_read_columns(f, path, n, 6, col, type, elem, b, &np);
    if (!rc && np > INT_MAX) rc = qk_err("%s: %spairs_weight: %lld pairs, more than a sketch holds", path, n, (long long)np);
    head_agg_init(x, m, rc || !np ? 1 : (int)np);  // room for every stored pair: nothing is evicted
#define AGG(name) (snprintf(n, sizeof n, "aggregates/%d.%d/" name, l, h), n)
    // The sums from their exact limbs (the doubles beside them are derived from those).
    rc = rc || qk_h5_read_exact(f, path, AGG("metric_sum_exact"), H5T_NATIVE_INT64, N_METRICS * QK_EXACT_LIMBS, x->sum_exact) ||
         qk_h5_read_exact(f, path, AGG("metric_count"), H5T_NATIVE_INT64, N_METRICS, x->count) ||
         qk_h5_read_exact(f, path, AGG("metric_hist"), H5T_NATIVE_INT64, N_METRICS * N_HIST_BINS, x->hist) ||
         qk_h5_read_exact(f, path, AGG("query_marginal_exact"), H5T_NATIVE_INT64, (size_t)m * QK_EXACT_LIMBS,
                          x->query_marginal_exact) ||
         qk_h5_read_exact(f, path, AGG("key_marginal_exact"), H5T_NATIVE_INT64, (size_t)m * QK_EXACT_LIMBS,
                          x->key_marginal_exact) ||
         qk_h5_read_exact(f, path, AGG("query_count"), H5T_NATIVE_INT64, m, x->query_count) ||
         qk_h5_read_exact(f, path, AGG("key_count"), H5T_NATIVE_INT64, m, x->key_count);
#undef AGG
    double total = NAN, pruned = 0;
    if (!rc) {
        snprintf(n, sizeof n, "aggregates/%d.%d", l, h);
        hid_t g = H5Gopen2(f, n, H5P_DEFAULT);
        x->queries = qk_h5_attr_read_int(g, "queries");
        total = qk_h5_attr_read_double(g, "sketch_total_weight");
        if (H5Aexists(g, "sketch_pruned_weight") > 0) pruned = qk_h5_attr_read_double(g, "sketch_pruned_weight");
        H5Gclose(g);
        if (x->queries < 0) rc = qk_err("%s: attribute %s/queries is missing", path, n);
    }
    const uint32_t *pf = b[0], *pg = b[1];
    const double *pw = b[2], *pe = b[3], *ps = b[4];
    const int64_t *pc = b[5];
    for (int64_t q = 0; !rc && q < np; q++)
        pair_sketch_add_entry(&x->sketch, (int32_t)pf[q], (int32_t)pg[q], pw[q], pe[q], ps[q], pc[q]);
    for (int c = 0; c < 6; c++) free(b[c]);
    if (isfinite(total)) x->sketch.total = total;  // every update the shard's sketch saw, not only those kept
    if (isfinite(pruned)) x->sketch.pruned = pruned;
    return rc ? -1 : 0;
}

int agg_read_summary_heads(hid_t f, const char *path, int32_t **hl_out, int32_t **hh_out, int64_t *n_out, int *L_out,
                           int *H_out) {
    int64_t n = 0, n2 = 0;
    int32_t *hl = qk_h5_read_all(f, path, "summary/head_layer", H5T_NATIVE_INT32, 4, NULL, NULL, &n);
    int32_t *hh = hl ? qk_h5_read_all(f, path, "summary/head_index", H5T_NATIVE_INT32, 4, NULL, NULL, &n2) : NULL;
    if (!hh) return free(hl), -1;
    int L = 0, H = 0, rc = 0;
    if (n2 != n)
        rc = qk_err("%s: summary/head_index has %lld entries, summary/head_layer %lld", path, (long long)n2, (long long)n);
    for (int64_t i = 0; i < n && !rc; i++) {
        if (hl[i] < 0 || hl[i] >= GPT2_MAX_LAYER || hh[i] < 0 || hh[i] >= GPT2_MAX_HEAD)
            rc = qk_err("%s: summary/head_layer, head_index [%lld]: head %d.%d is not a head", path, (long long)i, hl[i],
                        hh[i]);
        else L = hl[i] + 1 > L ? hl[i] + 1 : L, H = hh[i] + 1 > H ? hh[i] + 1 : H;
    }
    unsigned char *seen = rc ? NULL : qk_calloc((size_t)L * H + 1, 1);
    for (int64_t i = 0; i < n && !rc; i++)
        if (seen[(size_t)hl[i] * H + hh[i]]++)
            rc = qk_err("%s: summary/head_layer, head_index: head %d.%d listed twice", path, hl[i], hh[i]);
    free(seen);
    if (rc) return free(hl), free(hh), -1;
    *hl_out = hl, *hh_out = hh, *n_out = n, *L_out = L, *H_out = H;
    return 0;
}

int agg_read_add(hid_t f, const char *path, int l, int h, HeadAggregates *acc) {
    HeadAggregates x;
    int rc = read_head(f, path, l, h, acc->m, &x);
    if (!rc) head_agg_add(acc, &x);
    head_agg_free(&x);
    return rc;
}

void agg_print_summary(FILE *f, int L, int H, const HeadAggregates *const *aggs) {
    fprintf(f, "%-6s %8s %8s %8s %8s %8s %8s  %s\n", "head", "queries", "top1", "kl_both", "err_sh", "overlap", "chance",
            "heaviest pair (query f -> key g: summed term, count)");
    for (int i = 0; i < L * H; i++) {
        const HeadAggregates *g = aggs[i];
        if (!g) continue;
        double m[N_METRICS];
        means(g, m);
        char head[32], pair[96] = "-";
        snprintf(head, sizeof head, "%d.%d", i / H, i % H);
        if (g->sketch.size) {
            PairEntry *pe = qk_malloc(sizeof(PairEntry) * g->sketch.size);
            pair_sketch_sorted(&g->sketch, pe);
            snprintf(pair, sizeof pair, "%d -> %d: %.3g, %lld", pe[0].f, pe[0].g, pe[0].sum, (long long)pe[0].count);
            free(pe);
        }
        // kl_both with 3 significant digits: faithful heads have KL ~1e-4, which %.3f shows as 0.000.
        fprintf(f, "%-6s %8lld %8.3f %8.3g %8.3f %8.3f %8.3f  %s\n", head, (long long)g->queries, m[MET_TOP1],
                m[MET_KL_BOTH], m[MET_ERROR_SHARE], m[MET_OVERLAP], m[MET_OVERLAP_CHANCE], pair);
    }
    fputs("legend (means over valid queries; docs/ANALYSIS.md): top1 = share of queries whose most attended key is the\n"
          "  same with SAE reconstructions on both sides; kl_both = KL(real || reconstructed pattern), nats; err_sh = share\n"
          "  of the top key's score carried by SAE-error terms; overlap = share of the top key's features among the query's\n"
          "  look-for top-k, chance = the same for a random earlier key; heaviest pair: summed term (score units), count\n",
          f);
}
