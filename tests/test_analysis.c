// test_analysis.c: the analysis of every head of gpt2_tiny_a against the independent float64
// PyTorch reference (tests/reference/make_analysis_ref.py: TransformerLens's cache + SAELens), and
// the exact invariant: the decomposition terms sum to the model's own score.
#include "analysis/analysis.h"
#include "analysis/head_tables.h"
#include "analysis/static_maps.h"
#include "test_common.h"
#include "text/token_file.h"

#define MODEL REF_DIR "/gpt2_tiny_a"
#define REF REF_DIR "/analysis_tiny_a/ref.safetensors"
#define GAP 1e-5  // near-tie: orders may legitimately differ under float rounding
#define TOL 1e-4

static const char *k_sae[2] = {REF_DIR "/sae/standard_none_bdec", REF_DIR "/sae/topk_ln_bdec"};

typedef struct {
    GPT2Model m;
    QkSae sae[2];
    GPT2Acts acts;
    LayerCode lc[2];
    QkSafetensors ref;
    AnalysisOpts o;
} Fixture;

static void fixture_open(Fixture *fx) {
    memset(fx, 0, sizeof *fx);
    QkBackend *be = test_backend();
    cr_assert_eq(gpt2_load(&fx->m, MODEL), 0, "%s", qk_errmsg());
    int *tokens, B, T;
    cr_assert_eq(qk_token_file_read(MODEL "/tokens.txt", &tokens, &B, &T), 0);
    gpt2_acts_alloc(&fx->acts, &fx->m.cfg, B, T, 1, 0);
    cr_assert_eq(be->forward(be, &fx->m, tokens, &fx->acts), 0, "%s", qk_errmsg());
    for (int l = 0; l < 2; l++) {
        cr_assert_eq(qk_sae_load(&fx->sae[l], k_sae[l], 80, 0), 0, "%s", qk_errmsg());
        // max_active = d_sae: no truncation, so F(i) is every active feature, as in the reference.
        cr_assert_eq(layer_code_compute(&fx->lc[l], &fx->sae[l], acts_resid(&fx->acts, &fx->m.cfg, l), B * T, 80, 200), 0,
                     "%s", qk_errmsg());
    }
    cr_assert_eq(qk_st_open(&fx->ref, REF), 0, "%s", qk_errmsg());
    fx->o = (AnalysisOpts){.k = 8, .a = 2, .p = 5, .enc_slots = 16, .sketch_pairs = 8, .sketch_capacity = 64};
    free(tokens);
    qk_backend_close(be);
}

static void fixture_close(Fixture *fx) {
    for (int l = 0; l < 2; l++) layer_code_free(&fx->lc[l]), qk_sae_free(&fx->sae[l]);
    gpt2_acts_free(&fx->acts);
    qk_st_close(&fx->ref);
    gpt2_free(&fx->m);
}

static float *ref_f(const Fixture *fx, int l, int h, const char *q, size_t *n) {
    char name[128];
    snprintf(name, sizeof name, "%d.%d.%s", l, h, q);
    return ref_tensor(&fx->ref, name, n);
}

static int32_t *ref_i(const Fixture *fx, int l, int h, const char *q, size_t *n) {
    char name[128];
    snprintf(name, sizeof name, "%d.%d.%s", l, h, q);
    const QkTensorInfo *t = qk_st_find(&fx->ref, name);
    cr_assert(t && t->dtype == QK_DT_I32, "reference tensor %s", name);
    int32_t *out = qk_malloc(t->numel * 4);
    memcpy(out, fx->ref.map + fx->ref.data_start + t->begin, t->numel * 4);
    if (n) *n = t->numel;
    return out;
}

static int close_to(double x, double r, double scale) { return fabs(x - r) <= TOL * (fabs(r) + scale); }

// Lists (rows, k) of indices and values: indices equal on rows whose gap >= GAP (the rest are
// counted), values within TOL relative to the row's largest |value|.
static int compare_lists(const char *what, int rows, int k, const int32_t *idx, const float *val, const int32_t *ridx,
                         const float *rval, const float *gap, const int *live) {
    int excused = 0;
    for (int i = 0; i < rows; i++) {
        int n = live ? live[i] : k;
        double mx = 0;
        for (int q = 0; q < n; q++) mx = fmax(mx, fabs(rval[(size_t)i * k + q]));
        if (gap && gap[i] < GAP) excused++;
        for (int q = 0; q < n; q++) {
            size_t e = (size_t)i * k + q;
            if (!(gap && gap[i] < GAP)) cr_expect_eq(idx[e], ridx[e], "%s row %d slot %d: %d vs %d", what, i, q, idx[e], ridx[e]);
            cr_expect(close_to(val[e], rval[e], 0.01 * mx), "%s row %d slot %d: %g vs %g", what, i, q, val[e], rval[e]);
        }
    }
    return excused;
}

static void check_head(Fixture *fx, int l, int h) {
    const GPT2Config *c = &fx->m.cfg;
    const int N = fx->acts.B * fx->acts.T, T = fx->acts.T;
    HeadTables t;
    head_tables_build(&t, &fx->m, l, h, &fx->sae[l], 1);
    HeadRecords r;
    head_records_alloc(&r, &fx->o, N, fx->lc[l].code.slots, &fx->sae[l], 1);
    head_records_alloc_patterns(&r, T);
    r.patterns = 1;
    HeadAggregates agg;
    head_agg_init(&agg, t.m, 64);
    cr_assert_eq(analyse_head(&fx->o, &t, &fx->sae[l], &fx->lc[l], &fx->acts, c, NULL, &r, &agg, NULL), 0, "%s", qk_errmsg());
    double agg_sum[N_METRICS];
    head_agg_sums(&agg, agg_sum, NULL, NULL);
    size_t n;
    char what[64];
    // Look-for, decoder projection.
    int32_t *ri = ref_i(fx, l, h, "lookfor_dec_top_idx", &n);
    float *rv = ref_f(fx, l, h, "lookfor_dec_top_val", NULL), *gap = ref_f(fx, l, h, "lookfor_dec_top_gap", NULL);
    snprintf(what, sizeof what, "%d.%d lookfor top", l, h);
    compare_lists(what, N, 8, r.top_idx, r.top_val, ri, rv, gap, NULL);
    free(ri), free(rv), free(gap);
    ri = ref_i(fx, l, h, "lookfor_dec_bot_idx", NULL);
    rv = ref_f(fx, l, h, "lookfor_dec_bot_val", NULL), gap = ref_f(fx, l, h, "lookfor_dec_bot_gap", NULL);
    snprintf(what, sizeof what, "%d.%d lookfor bottom", l, h);
    compare_lists(what, N, 8, r.bot_idx, r.bot_val, ri, rv, gap, NULL);
    free(ri), free(rv), free(gap);
    // Encoder projection: the active count, and the stored features.
    int32_t *rc = ref_i(fx, l, h, "lookfor_enc_count", NULL);
    ri = ref_i(fx, l, h, "lookfor_enc_idx", &n);
    rv = ref_f(fx, l, h, "lookfor_enc_val", NULL), gap = ref_f(fx, l, h, "lookfor_enc_gap", NULL);
    int S = (int)(n / N), *live = qk_malloc(sizeof(int) * N);
    cr_assert_eq(S, r.enc_code.slots, "encoder slots %d vs %d", r.enc_code.slots, S);
    for (int i = 0; i < N; i++) {
        if (gap[i] >= GAP) cr_expect_eq(r.enc_code.n_active[i], rc[i], "%d.%d enc count row %d", l, h, i);
        live[i] = rc[i] < S ? rc[i] : S;
    }
    snprintf(what, sizeof what, "%d.%d lookfor encoder", l, h);
    compare_lists(what, N, S, r.enc_code.idx, r.enc_code.val, ri, rv, gap, live);
    free(ri), free(rv), free(gap), free(rc), free(live);
    // Attended keys.
    ri = ref_i(fx, l, h, "attn_idx", NULL);
    rv = ref_f(fx, l, h, "attn_w", NULL), gap = ref_f(fx, l, h, "attn_gap", NULL);
    snprintf(what, sizeof what, "%d.%d attended", l, h);
    compare_lists(what, N, 2, r.att_idx, r.att_w, ri, rv, gap, NULL);
    free(ri), free(rv), free(gap);
    // Pairs and group totals at each attended key; the invariant against our own scores.
    int32_t *rf = ref_i(fx, l, h, "pairs_f", NULL), *rg = ref_i(fx, l, h, "pairs_g", NULL);
    float *rpv = ref_f(fx, l, h, "pairs_val", NULL), *rpgap = ref_f(fx, l, h, "pairs_gap", NULL);
    float *rG = ref_f(fx, l, h, "groups", NULL);
    const float *scores = acts_scores(&fx->acts, c, l);
    double worst_inv = 0;
    for (int i = 0; i < N; i++)
        for (int q = 0; q < 2; q++) {
            size_t e = (size_t)i * 2 + q;
            int j = r.att_idx[e];
            if (j < 0) continue;
            double mx = 0, sum = 0, mag = 0;
            for (int u = 0; u < 5; u++) mx = fmax(mx, fabs(rpv[e * 5 + u]));
            for (int u = 0; u < 5; u++) {
                if (rpgap[e] >= GAP) {
                    cr_expect_eq(r.pair_f[e * 5 + u], rf[e * 5 + u], "%d.%d pairs row %d key %d slot %d", l, h, i, q, u);
                    cr_expect_eq(r.pair_g[e * 5 + u], rg[e * 5 + u]);
                }
                cr_expect(close_to(r.pair_val[e * 5 + u], rpv[e * 5 + u], 0.01 * mx), "%d.%d pair value row %d: %g vs %g",
                          l, h, i, r.pair_val[e * 5 + u], rpv[e * 5 + u]);
            }
            const float *G = r.groups + e * 16, *RG = rG + e * 16;
            for (int g = 0; g < 16; g++) mag += fabs(RG[g]);
            for (int g = 0; g < 16; g++) {
                cr_expect(fabs(G[g] - RG[g]) <= TOL * mag, "%d.%d groups row %d key %d [%d][%d]: %g vs %g", l, h, i, q,
                          g / 4, g % 4, G[g], RG[g]);
                sum += G[g];
            }
            // Exact invariant: all terms sum to the model's own score (float32 rounding only).
            int b = i / T, qi = i % T;
            double s = scores[(((size_t)b * c->n_head + h) * T + qi) * T + j];
            worst_inv = fmax(worst_inv, fabs(sum - s) / mag);
        }
    cr_expect(worst_inv < 1e-5, "%d.%d: decomposition terms differ from the score by %.3g of their magnitude", l, h,
              worst_inv);
    // The recorded full rows equal the forward pass's hook_pattern.
    const float *pat = acts_pattern(&fx->acts, c, l);
    double worst_pat = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < T; j++) {
            int b = i / T, qi = i % T;
            worst_pat = fmax(worst_pat, fabs(r.pattern[(size_t)i * T + j] - pat[(((size_t)b * c->n_head + h) * T + qi) * T + j]));
        }
    cr_expect(worst_pat < 1e-5, "%d.%d: pattern rows differ from hook_pattern by %g", l, h, worst_pat);
    free(rf), free(rg), free(rpv), free(rpgap), free(rG);
    // Metrics, per query and as means.
    for (int m = 0; m < N_METRICS; m++) {
        float *ref = ref_f(fx, l, h, qk_metric_names[m], NULL);
        float *tgap = NULL, *den = NULL;
        if (m % N_BASE_METRICS == MET_TOP1) tgap = ref_f(fx, l, h, m < N_BASE_METRICS ? "top1_gap" : "top1_nosink_gap", NULL);
        if (m % N_BASE_METRICS == MET_R2) den = ref_f(fx, l, h, m < N_BASE_METRICS ? "r2_den" : "r2_nosink_den", NULL);
        for (int i = 0; i < N; i++) {
            float x = r.metrics[(size_t)i * N_METRICS + m], v = ref[i];
            cr_expect_eq(isnan(x), isnan(v), "%d.%d %s row %d: %g vs %g", l, h, qk_metric_names[m], i, x, v);
            if (isnan(v) || (tgap && tgap[i] < GAP)) continue;
            // R²'s value is (1 - res/den): its error scales like 1/den; compare res/den's error.
            double scale = den ? 1e-3 / fmax(den[i], 1e-30) + 1 : 1e-3;
            cr_expect(close_to(x, v, scale), "%d.%d %s row %d: %.7g vs %.7g", l, h, qk_metric_names[m], i, x, v);
        }
        char mean_name[64];
        snprintf(mean_name, sizeof mean_name, "mean.%s", qk_metric_names[m]);
        float *rmean = ref_f(fx, l, h, mean_name, NULL);
        if (!den && agg.count[m]) {
            double mean = agg_sum[m] / agg.count[m];
            cr_expect(close_to(mean, rmean[0], 1e-3), "%d.%d mean %s: %g vs %g", l, h, qk_metric_names[m], mean, rmean[0]);
        }
        free(ref), free(rmean), free(tgap), free(den);
    }
    head_agg_free(&agg);
    head_records_free(&r);
    head_tables_free(&t);
}

Test(analysis, every_head_matches_float64_reference) {
    Fixture fx;
    fixture_open(&fx);
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 4; h++) check_head(&fx, l, h);
    fixture_close(&fx);
}

// Weights-only maps (ANALYSIS.md §6) against the float64 reference, for every head, on the
// backend under test (QK_BACKEND: the CUDA one computes q2k / k2q on the device).
Test(analysis, static_maps_match_float64_reference) {
    QkBackend *be = test_backend();
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, MODEL), 0, "%s", qk_errmsg());
    QkSafetensors ref;
    cr_assert_eq(qk_st_open(&ref, REF), 0);
    Fixture fx = {.ref = ref};
    for (int l = 0; l < 2; l++) {
        QkSae sae;
        cr_assert_eq(qk_sae_load(&sae, k_sae[l], 80, 0), 0, "%s", qk_errmsg());
        for (int h = 0; h < 4; h++) {
            HeadTables t;
            head_tables_build(&t, &m, l, h, &sae, 0);
            StaticMaps s;
            cr_assert_eq(static_maps_compute(&s, &t, 8, be, QK_PREC_FP32), 0, "%s", qk_errmsg());
            const char *maps[2] = {"q2k", "k2q"};
            for (int which = 0; which < 2; which++) {
                char q[64], what[64];
                snprintf(q, sizeof q, "%s_idx", maps[which]);
                int32_t *ri = ref_i(&fx, l, h, q, NULL);
                snprintf(q, sizeof q, "%s_val", maps[which]);
                float *rv = ref_f(&fx, l, h, q, NULL);
                snprintf(q, sizeof q, "%s_gap", maps[which]);
                float *gap = ref_f(&fx, l, h, q, NULL);
                snprintf(what, sizeof what, "%d.%d %s", l, h, maps[which]);
                int excused = compare_lists(what, t.m, 8, which ? s.k2q_idx : s.q2k_idx, which ? s.k2q_val : s.q2k_val,
                                            ri, rv, gap, NULL);
                cr_expect_leq(excused, 10, "%s: %d near-tie rows", what, excused);
                free(ri), free(rv), free(gap);
            }
            float *prior = ref_f(&fx, l, h, "key_prior", NULL);
            size_t at;
            cr_expect_leq(rel_err(s.key_prior, prior, t.m, &at), TOL, "%d.%d key prior", l, h);
            int32_t *pi = ref_i(&fx, l, h, "key_prior_top_idx", NULL);
            float *pv = ref_f(&fx, l, h, "key_prior_top_val", NULL), *pg = ref_f(&fx, l, h, "key_prior_top_gap", NULL);
            compare_lists("key prior top", 1, 8, s.prior_idx, s.prior_val, pi, pv, pg, NULL);
            free(prior), free(pi), free(pv), free(pg);
            static_maps_free(&s);
            head_tables_free(&t);
        }
        qk_sae_free(&sae);
    }
    qk_st_close(&ref);
    qk_backend_close(be);
    gpt2_free(&m);
}

// A backend's static_maps hook is what static_maps_compute calls; a hook that declines (1) leaves
// the maps to the host, which computes fp32 only.
static int g_hook_calls;
static int hook_fill(QkBackend *be, const HeadTables *t, int k, QkPrecision prec, StaticMaps *s) {
    (void)be, (void)prec;
    g_hook_calls++;
    for (size_t x = 0; x < (size_t)t->m * k; x++) s->q2k_idx[x] = s->k2q_idx[x] = 7, s->q2k_val[x] = s->k2q_val[x] = 1.0f;
    return 0;
}
static int hook_decline(QkBackend *be, const HeadTables *t, int k, QkPrecision prec, StaticMaps *s) {
    (void)be, (void)t, (void)k, (void)prec, (void)s;
    g_hook_calls++;
    return 1;
}

Test(analysis, static_maps_go_through_the_backend_hook) {
    const int m = 40, dh = 8, k = 3;
    float Qd[40 * 8], Kd[40 * 8], prior[40];
    TRng g = {5};
    trng_fill_normal(&g, Qd, m * dh, 0, 1), trng_fill_normal(&g, Kd, m * dh, 0, 1), trng_fill_normal(&g, prior, m, 0, 1);
    HeadTables t = {.m = m, .Qd = Qd, .Kd = Kd, .key_prior = prior};
    t.qk.d_head = dh;
    QkBackend fake = {.name = "fake", .static_maps = hook_fill};
    StaticMaps s, h;
    cr_assert_eq(static_maps_compute(&s, &t, k, &fake, QK_PREC_BF16), 0, "%s", qk_errmsg());
    cr_assert_eq(g_hook_calls, 1);
    cr_assert(s.q2k_idx[0] == 7 && s.k2q_val[m * k - 1] == 1.0f, "the hook's maps were not kept");
    static_maps_free(&s);
    fake.static_maps = hook_decline;
    cr_assert_eq(static_maps_compute(&s, &t, k, &fake, QK_PREC_FP32), 0, "%s", qk_errmsg());
    cr_assert_eq(static_maps_compute(&h, &t, k, NULL, QK_PREC_FP32), 0, "%s", qk_errmsg());
    cr_assert_eq(g_hook_calls, 2);
    cr_assert(!memcmp(s.q2k_idx, h.q2k_idx, sizeof(int32_t) * m * k) && !memcmp(s.k2q_val, h.k2q_val, sizeof(float) * m * k),
              "a declined hook must give the host's maps");
    static_maps_free(&s), static_maps_free(&h);
    cr_assert_eq(static_maps_compute(&s, &t, k, &fake, QK_PREC_TF32), -1, "tf32 on the host must be refused");
    cr_assert(strstr(qk_errmsg(), "tf32") != NULL, "%s", qk_errmsg());
    cr_assert_eq(static_maps_compute(&s, &t, k, NULL, QK_PREC_BF16), -1);
}
