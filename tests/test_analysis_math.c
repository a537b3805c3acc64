// test_analysis_math.c: the per-thread logic of the device analysis (kernels/analysis/analysis_math.h),
// run on the CPU, against host/model/sae.c and host/analysis/analysis.c on gpt2_tiny_a (a `none` + standard SAE
// on layer 0, `layer_norm` + topk on layer 1): the SAE normalisation, decode and error bit for bit;
// every query's records (attended keys, pairs, group totals, metrics, marginals, sketch pairs,
// patterns) from qk_ana_query fed the host's look-for top-k, within float rounding of the host's
// vectorised dot products; and the aggregates rebuilt from the records with the device's limb,
// bin and carry functions (integer sums in another order) equal to the host's bit for bit.
#include "analysis/analysis.h"
#include "analysis/analysis_math.h"
#include "analysis/head_tables.h"
#include "base/gemm.h"
#include "test_common.h"
#include "text/token_file.h"

#define MODEL REF_DIR "/gpt2_tiny_a"

static const char *k_sae[2] = {REF_DIR "/sae/standard_none_bdec", REF_DIR "/sae/topk_ln_bdec"};

typedef struct {
    GPT2Model m;
    QkSae sae[2];
    GPT2Acts acts;
    LayerCode lc[2];
    AnalysisOpts o;
    int B, T, N, C;
} Fx;

static void fx_open(Fx *fx) {
    memset(fx, 0, sizeof *fx);
    QkBackend *be = qk_backend_cpu_new();
    cr_assert_eq(gpt2_load(&fx->m, MODEL), 0, "%s", qk_errmsg());
    int *tokens;
    cr_assert_eq(qk_token_file_read(MODEL "/tokens.txt", &tokens, &fx->B, &fx->T), 0);
    fx->N = fx->B * fx->T, fx->C = fx->m.cfg.d_model;
    gpt2_acts_alloc(&fx->acts, &fx->m.cfg, fx->B, fx->T, 1, 0);
    cr_assert_eq(be->forward(be, &fx->m, tokens, &fx->acts), 0, "%s", qk_errmsg());
    for (int l = 0; l < 2; l++) {
        cr_assert_eq(qk_sae_load(&fx->sae[l], k_sae[l], fx->C, 0), 0, "%s", qk_errmsg());
        cr_assert_eq(layer_code_compute(&fx->lc[l], &fx->sae[l], acts_resid(&fx->acts, &fx->m.cfg, l), fx->N, fx->C, 12), 0,
                     "%s", qk_errmsg());
    }
    fx->o = (AnalysisOpts){.k = 8, .a = 3, .p = 5, .enc_slots = 16, .sketch_pairs = 6, .sketch_capacity = 64};
    free(tokens);
    qk_backend_close(be);
}

static void fx_close(Fx *fx) {
    for (int l = 0; l < 2; l++) layer_code_free(&fx->lc[l]), qk_sae_free(&fx->sae[l]);
    gpt2_acts_free(&fx->acts);
    gpt2_free(&fx->m);
}

Test(analysis_math, sae_code_bit_exact) {
    Fx fx;
    fx_open(&fx);
    float *z = qk_malloc(sizeof(float) * fx.C);
    for (int l = 0; l < 2; l++) {
        const QkSae *s = &fx.sae[l];
        const LayerCode *lc = &fx.lc[l];
        const float *x = acts_resid(&fx.acts, &fx.m.cfg, l);
        int bad = 0;
        for (int n = 0; n < fx.N && bad < 5; n++) {
            float sc, sh;
            qk_ana_normalise(x + (size_t)n * fx.C, fx.C, s->center_input, s->norm == QK_SAE_NORM_LAYER_NORM, z, &sc, &sh);
            if (sc != lc->code.scale[n] || sh != lc->code.shift[n]) {
                bad++;
                cr_expect_fail("layer %d token %d: scale %.9g shift %.9g, host %.9g %.9g", l, n, sc, sh,
                               lc->code.scale[n], lc->code.shift[n]);
            }
            int32_t live = qk_ana_live(lc->code.n_active[n], lc->code.slots);
            cr_expect_eq(live, lc->live[n], "layer %d token %d: live %d, host %d", l, n, live, lc->live[n]);
            for (int t = 0; t < fx.C; t++) {
                float e = qk_ana_err(x[(size_t)n * fx.C + t], t, fx.C, lc->code.idx + (size_t)n * lc->code.slots,
                                     lc->code.val + (size_t)n * lc->code.slots, lc->code.slots, s->W_dec, s->b_dec,
                                     lc->code.scale[n], lc->code.shift[n]);
                if (e != lc->err[(size_t)n * fx.C + t]) {
                    cr_expect_fail("layer %d token %d coord %d: err %.9g, host %.9g", l, n, t, e, lc->err[(size_t)n * fx.C + t]);
                    if (++bad >= 5) break;
                }
            }
        }
    }
    free(z);
    fx_close(&fx);
}

static int near(double x, double r, double scale, double tol) {
    if (isnan(r) || isnan(x)) return isnan(r) && isnan(x);
    return fabs(x - r) <= tol * (fabs(r) + scale);
}

// Counts mismatches of float arrays (n) under a relative tolerance; reports the first few.
static int cmp_f(const char *what, int l, int h, const float *x, const float *r, size_t n, size_t row, double tol) {
    double mx = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(r[i])) mx = fmax(mx, fabs(r[i]));
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!near(x[i], r[i], 1e-2 * mx, tol) && bad++ < 4) {
            cr_expect_fail("head %d.%d %s: token %zu entry %zu: %.9g, host %.9g", l, h, what, i / row, i % row, x[i], r[i]);
        }
    return bad;
}

static int cmp_i(const char *what, int l, int h, const int32_t *x, const int32_t *r, size_t n, size_t row) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] != r[i] && bad++ < 4) {
            cr_expect_fail("head %d.%d %s: token %zu entry %zu: %d, host %d", l, h, what, i / row, i % row, x[i], r[i]);
        }
    return bad;
}

// ana_agg's add_marginal, serially.
static void add_marginal(const int32_t *F, int live, const float *x, int64_t *sum, int64_t *count) {
    for (int u = 0; u < live; u++) {
        int64_t lim[3];
        qk_ana_limbs(x[u], lim);
        for (int q = 0; q < 3; q++) sum[(size_t)F[u] * 3 + q] += lim[q];
        count[F[u]]++;
    }
}

// The device's aggregation of one head's batch (kernels/analysis/analysis_cuda.cu ana_agg + ana_carry),
// run serially here: integer limb sums, in reverse token order to show order does not matter.
static void device_agg(const Fx *fx, int l, const HeadRecords *r, const int32_t *valid_len, HeadAggregates *g) {
    const LayerCode *lc = &fx->lc[l];
    const int S = lc->code.slots, T = fx->T;
    for (int n = fx->N - 1; n >= 0; n--) {
        if (valid_len && n % T >= valid_len[n / T]) continue;
        g->queries++;
        for (int m = 0; m < QK_ANA_METRICS; m++) {
            float x = r->metrics[(size_t)n * QK_ANA_METRICS + m], lo, hi;
            if (x != x) continue;
            int64_t lim[3];
            qk_ana_limbs(x, lim);
            for (int q = 0; q < 3; q++) g->sum_exact[m][q] += lim[q];
            g->count[m]++;
            qk_ana_range(m, &lo, &hi);
            g->hist[m][qk_ana_bin(x, lo, hi)]++;
        }
        int nj = n - n % T + r->att_idx[(size_t)n * r->a];
        add_marginal(lc->code.idx + (size_t)n * S, lc->live[n], r->qmarg + (size_t)n * S, g->query_marginal_exact, g->query_count);
        add_marginal(lc->code.idx + (size_t)nj * S, lc->live[nj], r->kmarg + (size_t)n * S, g->key_marginal_exact, g->key_count);
    }
    for (int m = 0; m < QK_ANA_METRICS; m++) qk_ana_normalize(g->sum_exact[m]);
    for (int f = 0; f < g->m; f++) qk_ana_normalize(g->query_marginal_exact + (size_t)f * 3), qk_ana_normalize(g->key_marginal_exact + (size_t)f * 3);
}

static void check_head(Fx *fx, int l, int h, const int32_t *valid_len) {
    const GPT2Config *c = &fx->m.cfg;
    const int N = fx->N, T = fx->T, C = fx->C, dh = c->d_head;
    const LayerCode *lc = &fx->lc[l];
    const int S = lc->code.slots;
    HeadTables t;
    head_tables_build(&t, &fx->m, l, h, &fx->sae[l], 1);
    HeadRecords r;
    head_records_alloc(&r, &fx->o, N, S, &fx->sae[l], 1);
    head_records_alloc_patterns(&r, T);
    r.patterns = 1;
    HeadAggregates agg, dagg;
    head_agg_init(&agg, t.m, 64), head_agg_init(&dagg, t.m, 64);
    cr_assert_eq(analyse_head(&fx->o, &t, &fx->sae[l], lc, &fx->acts, c, valid_len, &r, &agg, NULL), 0, "%s", qk_errmsg());
    // The device's inputs, computed with the header's functions.
    const float *sigma = fx->acts.ln1_scale + (size_t)l * N;
    float *buf = qk_malloc(sizeof(float) * (size_t)N * dh * 6), *rows = qk_malloc(sizeof(float) * (size_t)N * T * 4);
    float *Q = buf, *K = Q + (size_t)N * dh, *EQ = K + (size_t)N * dh, *EK = EQ + (size_t)N * dh, *QF = EK + (size_t)N * dh,
          *KF = QF + (size_t)N * dh;
    const float inv = 1.0f / sqrtf((float)dh);
    // The error projections: a GEMM on the device (cuBLAS fp32), the host's qk_gemm here; then / sigma.
    qk_gemm(QK_GEMM_N, N, dh, C, 1.0f, lc->err, C, t.qk.Wq, dh, 0, EQ, dh);
    qk_gemm(QK_GEMM_N, N, dh, C, 1.0f, lc->err, C, t.qk.Wk, dh, 0, EK, dh);
    for (int n = 0; n < N; n++)
        for (int d = 0; d < dh; d++) EQ[(size_t)n * dh + d] /= sigma[n], EK[(size_t)n * dh + d] /= sigma[n];
    for (int n = 0; n < N; n++)
        for (int d = 0; d < dh; d++) {
            size_t e = (size_t)n * dh + d;
            Q[e] = fx->acts.q[((size_t)l * N + n) * C + h * dh + d], K[e] = fx->acts.k[((size_t)l * N + n) * C + h * dh + d];
            float sc = lc->code.scale[n] / sigma[n];
            QF[e] = qk_ana_feat_sum(lc->code.idx + (size_t)n * S, lc->code.val + (size_t)n * S, lc->live[n], t.Qd, dh, d, sc);
            KF[e] = qk_ana_feat_sum(lc->code.idx + (size_t)n * S, lc->code.val + (size_t)n * S, lc->live[n], t.Kd, dh, d, sc);
        }
    const size_t NT = (size_t)N * T;
    for (int n = 0; n < N; n++)
        for (int j = 0; j <= n % T; j++) {
            int nj = n - n % T + j;
            size_t e = (size_t)n * T + j;
            const float *q = Q + (size_t)n * dh, *k = K + (size_t)nj * dh, *eq = EQ + (size_t)n * dh, *ek = EK + (size_t)nj * dh;
            rows[e] = qk_ana_score(q, k, dh, inv);
            rows[NT + e] = qk_ana_score_hat(q, eq, k, ek, dh, inv);
            rows[2 * NT + e] = qk_ana_score_hat(q, eq, k, NULL, dh, inv);
            rows[3 * NT + e] = qk_ana_score_hat(q, NULL, k, ek, dh, inv);
        }
    // Outputs.
    const AnalysisOpts *o = &fx->o;
    const int P = o->p > o->sketch_pairs ? o->p : o->sketch_pairs;
    HeadRecords d;
    head_records_alloc(&d, o, N, S, &fx->sae[l], 0);
    head_records_alloc_patterns(&d, T);
    int32_t *ptf = qk_malloc(sizeof(int32_t) * N * P), *ptg = qk_malloc(sizeof(int32_t) * N * P);
    float *ptv = qk_malloc(sizeof(float) * N * P);
    QkAnaView v = {.T = T, .dh = dh, .S = S, .k = o->k, .a = o->a, .p = o->p, .sp = o->sketch_pairs, .P = P,
                   .records = 1, .patterns = 1, .inv = inv, .Srow = rows, .Sb = rows + NT, .Sq = rows + 2 * NT,
                   .Sk = rows + 3 * NT, .QF = QF, .KF = KF, .EQ = EQ, .EK = EK, .sigma = sigma, .scale = lc->code.scale,
                   .idx = lc->code.idx, .live = lc->live, .val = lc->code.val, .Qd = t.Qd, .Kd = t.Kd, .qb = t.qb,
                   .kb = t.kb, .bq = t.qk.bq, .bk = t.qk.bk, .top_idx = r.top_idx, .att_idx = d.att_idx,
                   .att_w = d.att_w, .pair_f = d.pair_f, .pair_g = d.pair_g, .pair_val = d.pair_val, .groups = d.groups,
                   .metrics = d.metrics, .qmarg = d.qmarg, .kmarg = d.kmarg, .sk_f = d.sk_f, .sk_g = d.sk_g,
                   .sk_val = d.sk_val, .pattern = d.pattern, .pattern_hat = d.pattern_hat, .pt_f = ptf, .pt_g = ptg,
                   .pt_v = ptv};
    int32_t st[64];
    for (int n = 0; n < N; n++) qk_ana_query(&v, n, n % T, st);
    const size_t na = (size_t)N * o->a;
    const double tol = 1e-4;  // relative, with a floor of 1% of the array's largest |value|: dot products differ in order (the host's are vectorised)
    cmp_i("att_idx", l, h, d.att_idx, r.att_idx, na, o->a);
    cmp_f("att_w", l, h, d.att_w, r.att_w, na, o->a, tol);
    cmp_f("groups", l, h, d.groups, r.groups, na * 16, o->a * 16, tol);
    cmp_f("pair_val", l, h, d.pair_val, r.pair_val, na * o->p, o->a * o->p, tol);
    cmp_i("pair_f", l, h, d.pair_f, r.pair_f, na * o->p, o->a * o->p);
    cmp_i("pair_g", l, h, d.pair_g, r.pair_g, na * o->p, o->a * o->p);
    cmp_f("metrics", l, h, d.metrics, r.metrics, (size_t)N * N_METRICS, N_METRICS, 1e-4);
    cmp_f("qmarg", l, h, d.qmarg, r.qmarg, (size_t)N * S, S, tol);
    cmp_f("kmarg", l, h, d.kmarg, r.kmarg, (size_t)N * S, S, tol);
    cmp_i("sk_f", l, h, d.sk_f, r.sk_f, (size_t)N * o->sketch_pairs, o->sketch_pairs);
    cmp_f("sk_val", l, h, d.sk_val, r.sk_val, (size_t)N * o->sketch_pairs, o->sketch_pairs, tol);
    cmp_f("pattern", l, h, d.pattern, r.pattern, NT, T, tol);
    cmp_f("pattern_hat", l, h, d.pattern_hat, r.pattern_hat, NT, T, tol);
    // Encoder projection: the row scale from |v|^2 as ana_proj computes it.
    for (int n = 0; n < N; n++) {
        float u[64], a, sc;
        double s2 = 0;
        for (int e = 0; e < dh; e++) u[e] = Q[(size_t)n * dh + e] * inv;
        for (int e = 0; e < dh; e++) s2 += u[e] * (double)qk_ana_dot(t.G + (size_t)e * dh, u, dh);
        qk_ana_proj_scale((double)(float)s2, C, fx->sae[l].norm == QK_SAE_NORM_LAYER_NORM, &a, &sc);
        cr_expect(near(sc, r.enc_code.scale[n], 0, 1e-5), "head %d.%d token %d: encoder scale %.9g, host %.9g", l, h, n,
                  sc, r.enc_code.scale[n]);
    }
    // Aggregates from the HOST's records with the device's functions: bit for bit.
    device_agg(fx, l, &r, valid_len, &dagg);
    HeadAggFields fa, fb;
    head_agg_fields(&agg, &fa), head_agg_fields(&dagg, &fb);
    const char *field[HEAD_AGG_I64] = {"queries", "count", "hist", "query_count", "key_count", "sum_exact",
                                       "query_marginal_exact", "key_marginal_exact"};
    for (int q = 0; q < HEAD_AGG_I64; q++) {
        int bad = 0;
        for (size_t i = 0; i < fa.n_i64[q]; i++)
            if (fa.i64[q][i] != fb.i64[q][i] && bad++ < 3) {
                cr_expect_fail("head %d.%d aggregate %s[%zu]: device %lld, host %lld", l, h, field[q], i,
                               (long long)fb.i64[q][i], (long long)fa.i64[q][i]);
            }
    }
    free(buf), free(rows), free(ptf), free(ptg), free(ptv);
    head_records_free(&d), head_records_free(&r);
    head_agg_free(&agg), head_agg_free(&dagg);
    head_tables_free(&t);
}

Test(analysis_math, queries_and_aggregates_match_host) {
    Fx fx;
    fx_open(&fx);
    int32_t *vl = qk_malloc(sizeof(int32_t) * fx.B);
    for (int b = 0; b < fx.B; b++) vl[b] = b == 0 ? fx.T - 3 : fx.T;  // a short window: padding excluded
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < fx.m.cfg.n_head; h++) check_head(&fx, l, h, (l + h) % 2 ? vl : NULL);
    free(vl);
    fx_close(&fx);
}

Test(analysis_math, limbs_equal_exact_add) {
    const double xs[] = {0.0, 1.0, -1.0, 0.1, -0.1, 3.25e-7, -2.5e10, 1e-30, -7.77777e3, 5e19, -5e19, NAN};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        if (isnan(xs[i])) continue;  // callers skip NaN
        int64_t a[3] = {0, 0, 0}, b[3];
        qk_exact_add(a, xs[i]);
        qk_ana_limbs(xs[i], b);
        cr_expect(a[0] == b[0] && a[1] == b[1] && a[2] == b[2], "x=%g: limbs differ", xs[i]);
        int64_t s[3] = {b[0] * 3 - 5, b[1] * 3 + 7, b[2]};
        int64_t t[3] = {s[0], s[1], s[2]};
        qk_exact_normalize(s), qk_ana_normalize(t);
        cr_expect(s[0] == t[0] && s[1] == t[1] && s[2] == t[2], "x=%g: carry differs", xs[i]);
    }
    for (int m = 0; m < QK_ANA_METRICS; m++) {
        float lo, hi, lo2, hi2;
        qk_metric_range(m, &lo, &hi), qk_ana_range(m, &lo2, &hi2);
        cr_expect(lo == lo2 && hi == hi2, "metric %d range", m);
        for (float x = lo - 1; x <= hi + 1; x += 0.0137f) {
            int bin = (int)floorf((x - lo) / (hi - lo) * N_HIST_BINS);
            bin = bin < 0 ? 0 : bin >= N_HIST_BINS ? N_HIST_BINS - 1 : bin;
            cr_expect_eq(qk_ana_bin(x, lo, hi), bin, "metric %d value %g", m, x);
        }
    }
    cr_expect_eq(QK_ANA_METRICS, N_METRICS);
    cr_expect_eq(QK_ANA_BINS, N_HIST_BINS);
    cr_expect_eq(QK_ANA_GROUPS, N_GROUPS);
}

// ---- example contexts: the device's per-batch reduction (analysis_math.h) against every candidate

typedef struct {
    unsigned long long key;
    uint32_t pos;
} KeyPos;

// Ascending key, then position: what the device's stable radix sorts give.
static int keypos_cmp(const void *a, const void *b) {
    const KeyPos *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

// One batch's candidates (N tokens x sp slots, packed in front, f < 0 empty) reduced as the device
// does (by-pair sort, qk_ana_segment_examples, qk_ana_example_key sort, first `capacity`) and added
// to x.
static void add_batch_as_device(PairExamples *x, const int32_t *f, const int32_t *g, const float *v, const int32_t *kpos,
                                int N, int T, int sp, int64_t window0) {
    const int np = N * sp, pp = x->per_pair;
    KeyPos *byp = qk_malloc(sizeof(KeyPos) * np), *ex = qk_malloc(sizeof(KeyPos) * np * pp);
    for (int e = 0; e < np; e++)
        byp[e] = (KeyPos){f[e] >= 0 ? (unsigned long long)(uint32_t)f[e] << 32 | (uint32_t)g[e] : ~0ull, (uint32_t)e};
    qsort(byp, np, sizeof *byp, keypos_cmp);
    uint32_t *pos = qk_malloc(sizeof(uint32_t) * np);
    for (int e = 0; e < np; e++) pos[e] = byp[e].pos;
    int n_ex = 0;
    for (int e0 = 0, e1; e0 < np; e0 = e1) {
        for (e1 = e0 + 1; e1 < np && byp[e1].key == byp[e0].key; e1++) {
        }
        int32_t kept[QK_ANA_EXAMPLES_MAX_PER_PAIR];
        qk_ana_segment_examples(pos, v, e0, e1, pp, kept);
        for (int q = 0; q < pp; q++)
            ex[n_ex++] = byp[e0].key == ~0ull || kept[q] < 0
                             ? (KeyPos){QK_ANA_EXAMPLE_NONE, (uint32_t)n_ex}
                             : (KeyPos){qk_ana_example_key(v[kept[q]], (uint32_t)(kept[q] / sp)), (uint32_t)kept[q]};
    }
    // Stable in the order of ex (pairs in (f, g) order): ties of (|term|, n) keep it.
    KeyPos *sorted = qk_malloc(sizeof(KeyPos) * (n_ex + 1));
    for (int q = 0; q < n_ex; q++) sorted[q] = (KeyPos){ex[q].key, (uint32_t)q};
    qsort(sorted, n_ex, sizeof *sorted, keypos_cmp);
    for (int r = 0; r < n_ex && r < x->capacity; r++) {
        if (sorted[r].key == QK_ANA_EXAMPLE_NONE) break;
        int e = (int)ex[sorted[r].pos].pos, n = e / sp;
        pair_examples_add(x, f[e], g[e], v[e], window0 + n / T, n % T, kpos[n]);
    }
    free(byp), free(ex), free(pos), free(sorted);
}

Test(analysis_math, batch_examples_equal_every_candidate) {
    TRng rng = {0x5eedull};
    for (int trial = 0; trial < 2000; trial++) {
        const int T = trng_int(&rng, 1, 12), B = trng_int(&rng, 1, 4), N = B * T, sp = trng_int(&rng, 1, 6);
        const int per_pair = trng_int(&rng, 1, 4), capacity = trng_int(&rng, 1, 40);
        PairExamples want, got;
        pair_examples_init(&want, per_pair, capacity), pair_examples_init(&got, per_pair, capacity);
        int32_t *f = qk_malloc(4 * N * sp), *g = qk_malloc(4 * N * sp), *kpos = qk_malloc(4 * N);
        float *v = qk_malloc(4 * N * sp);
        int64_t window0 = 0;
        for (int batch = 0; batch < 3; batch++, window0 += B) {
            for (int n = 0; n < N; n++) {
                int live = trng_int(&rng, 0, sp), used[16] = {0};
                kpos[n] = trng_int(&rng, 0, n % T);
                for (int u = 0; u < sp; u++) {
                    const int e = n * sp + u;
                    if (u >= live) {
                        f[e] = g[e] = -1, v[e] = 0;
                        continue;
                    }
                    int id;
                    do id = trng_int(&rng, 0, 15);  // 16 pairs: many repeats, one query gives a pair once
                    while (used[id]);
                    used[id] = 1;
                    f[e] = id / 4, g[e] = id % 4;
                    v[e] = 0.25f * (float)trng_int(&rng, -6, 6);  // many ties in |term|, zeros, both signs
                }
                for (int u = 0; u < live; u++) {
                    const int e = n * sp + u;
                    pair_examples_add(&want, f[e], g[e], v[e], window0 + n / T, n % T, kpos[n]);
                }
            }
            add_batch_as_device(&got, f, g, v, kpos, N, T, sp, window0);
        }
        const int nw = pair_examples_finish(&want), ng = pair_examples_finish(&got);
        cr_assert_eq(ng, nw, "trial %d: %d examples kept, every candidate gives %d", trial, ng, nw);
        for (int q = 0; q < nw; q++) {
            const PairExample *a = &want.e[q], *b = &got.e[q];
            cr_assert(a->f == b->f && a->g == b->g && a->window == b->window && a->qpos == b->qpos && a->kpos == b->kpos &&
                          a->term == b->term,
                      "trial %d example %d: (%d, %d) w %lld i %d j %d %g, every candidate gives (%d, %d) w %lld i %d j %d %g",
                      trial, q, b->f, b->g, (long long)b->window, b->qpos, b->kpos, b->term, a->f, a->g,
                      (long long)a->window, a->qpos, a->kpos, a->term);
        }
        pair_examples_free(&want), pair_examples_free(&got);
        free(f), free(g), free(kpos), free(v);
    }
}
