// analysis.c: see analysis.h; the definitions are docs/ANALYSIS.md.
//
// Per head and batch: (1) gather the head's queries and keys (N, dh) and their SAE error parts;
// (2) look-for top/bottom-k for all N queries with the bilinear top-k primitive (and the encoder
// projection); (3) per window, in parallel: scores and the three reconstructed score matrices
// (T, T), then per query the attended keys, the decomposition at each, and the metrics; (4) add
// the batch to the aggregates serially in token order.
#include "analysis/analysis.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis_math.h"
#include "analysis/topk.h"
#include "base/gemm.h"
#include "base/util.h"

const char *const qk_metric_names[N_METRICS] = {
    "kl_both",        "kl_query",        "kl_key",        "top1",        "r2",        "error_share",
    "overlap",        "overlap_chance",  "kl_both_nosink", "kl_query_nosink", "kl_key_nosink", "top1_nosink",
    "r2_nosink",      "error_share_nosink", "overlap_nosink", "overlap_chance_nosink"};

void qk_metric_names_csv(char *buf, size_t cap) {
    size_t off = 0;
    buf[0] = 0;
    for (int m = 0; m < N_METRICS && off < cap; m++) off += snprintf(buf + off, cap - off, "%s%s", m ? "," : "", qk_metric_names[m]);
}

void qk_metric_range(int metric, float *lo, float *hi) {
    switch (metric % N_BASE_METRICS) {
    case MET_KL_BOTH: case MET_KL_QUERY: case MET_KL_KEY: *lo = 0, *hi = 5; break;
    case MET_R2: *lo = -1, *hi = 1; break;
    default: *lo = 0, *hi = 1; break;
    }
}

// ---------------------------------------------------------------------------------------------
// Layer codes

int layer_code_compute(LayerCode *lc, const QkSae *sae, const float *x, int n, int C, int max_active) {
    int slots = qk_sae_slots(sae, max_active);
    if (lc->code.n < n || lc->C != C || lc->code.slots != slots || slots > sae->d_sae) {  // else reused
        layer_code_free(lc);
        if (qk_sae_code_alloc(&lc->code, sae, n, max_active)) return -1;
        lc->live = qk_malloc(sizeof(int32_t) * n);
        lc->err = qk_malloc(sizeof(float) * (size_t)n * C);
    }
    lc->C = C;
    if (qk_sae_encode(sae, x, C, n, &lc->code)) return -1;
    qk_sae_decode(sae, &lc->code, n, lc->err);  // xhat, turned into e = x - xhat below
    for (int i = 0; i < n; i++) {
        int live = lc->code.n_active[i] < lc->code.slots ? lc->code.n_active[i] : lc->code.slots;
        lc->live[i] = live < 0 ? 0 : live;
        for (int j = 0; j < C; j++) lc->err[(size_t)i * C + j] = x[(size_t)i * C + j] - lc->err[(size_t)i * C + j];
    }
    return 0;
}

void layer_code_free(LayerCode *lc) {
    qk_sae_code_free(&lc->code);
    free(lc->live);
    free(lc->err);
    memset(lc, 0, sizeof *lc);
}

// ---------------------------------------------------------------------------------------------
// Records and aggregates

void head_records_alloc(HeadRecords *r, const AnalysisOpts *o, int n, int slots, const QkSae *sae, int encoder) {
    memset(r, 0, sizeof *r);
    r->n = n, r->k = o->k, r->a = o->a, r->p = o->p, r->sp = o->sketch_pairs, r->enc = encoder, r->records = 1;
    size_t nk = (size_t)n * o->k, na = (size_t)n * o->a, nap = na * o->p;
    r->top_idx = qk_malloc(sizeof(int32_t) * nk), r->bot_idx = qk_malloc(sizeof(int32_t) * nk);
    r->top_val = qk_malloc(sizeof(float) * nk), r->bot_val = qk_malloc(sizeof(float) * nk);
    if (encoder) qk_sae_code_alloc(&r->enc_code, sae, n, o->enc_slots);
    r->att_idx = qk_malloc(sizeof(int32_t) * na), r->att_w = qk_malloc(sizeof(float) * na);
    r->pair_f = qk_malloc(sizeof(int32_t) * nap), r->pair_g = qk_malloc(sizeof(int32_t) * nap);
    r->pair_val = qk_malloc(sizeof(float) * nap);
    r->groups = qk_malloc(sizeof(float) * na * N_GROUPS * N_GROUPS);
    r->metrics = qk_malloc(sizeof(float) * (size_t)n * N_METRICS);
    r->qmarg = qk_malloc(sizeof(float) * (size_t)n * slots), r->kmarg = qk_malloc(sizeof(float) * (size_t)n * slots);
    r->sk_f = qk_malloc(sizeof(int32_t) * (size_t)n * o->sketch_pairs);
    r->sk_g = qk_malloc(sizeof(int32_t) * (size_t)n * o->sketch_pairs);
    r->sk_val = qk_malloc(sizeof(float) * (size_t)n * o->sketch_pairs);
}

void head_records_alloc_patterns(HeadRecords *r, int T) {
    r->pattern = qk_malloc(sizeof(float) * (size_t)r->n * T);
    r->pattern_hat = qk_malloc(sizeof(float) * (size_t)r->n * T);
}

void head_records_free(HeadRecords *r) {
    free(r->pattern), free(r->pattern_hat);
    free(r->top_idx), free(r->bot_idx), free(r->top_val), free(r->bot_val);
    if (r->enc) qk_sae_code_free(&r->enc_code);
    free(r->att_idx), free(r->att_w), free(r->pair_f), free(r->pair_g), free(r->pair_val), free(r->groups);
    free(r->metrics), free(r->qmarg), free(r->kmarg), free(r->sk_f), free(r->sk_g), free(r->sk_val);
    memset(r, 0, sizeof *r);
}

void head_agg_init(HeadAggregates *g, int m, int sketch_capacity) {
    memset(g, 0, sizeof *g);
    g->m = m;
    g->query_count = qk_calloc(m, sizeof(int64_t)), g->key_count = qk_calloc(m, sizeof(int64_t));
    g->query_marginal_exact = qk_calloc((size_t)m * QK_EXACT_LIMBS, sizeof(int64_t));
    g->key_marginal_exact = qk_calloc((size_t)m * QK_EXACT_LIMBS, sizeof(int64_t));
    pair_sketch_init(&g->sketch, sketch_capacity);
    pair_examples_init(&g->examples, QK_EXAMPLES_PER_PAIR, QK_EXAMPLES_CAPACITY);
}

void head_agg_free(HeadAggregates *g) {
    free(g->query_count), free(g->key_count);
    free(g->query_marginal_exact), free(g->key_marginal_exact);
    pair_sketch_free(&g->sketch);
    pair_examples_free(&g->examples);
    memset(g, 0, sizeof *g);
}

// Normalises every exact sum (a no-op on the value).
static void normalize_exact(HeadAggregates *g) {
    for (int m = 0; m < N_METRICS; m++) qk_exact_normalize(g->sum_exact[m]);
    for (size_t f = 0; f < (size_t)g->m; f++) {
        qk_exact_normalize(g->query_marginal_exact + f * QK_EXACT_LIMBS);
        qk_exact_normalize(g->key_marginal_exact + f * QK_EXACT_LIMBS);
    }
    g->pending = 0;
}

void head_agg_sums(const HeadAggregates *g, double *sum, double *query_marginal, double *key_marginal) {
    if (sum) qk_exact_values(&g->sum_exact[0][0], N_METRICS, sum, NULL);
    if (query_marginal) qk_exact_values(g->query_marginal_exact, g->m, query_marginal, NULL);
    if (key_marginal) qk_exact_values(g->key_marginal_exact, g->m, key_marginal, NULL);
}

void head_agg_fields(HeadAggregates *g, HeadAggFields *f) {
    const size_t m = (size_t)g->m;
    normalize_exact(g);
    *f = (HeadAggFields){.i64 = {&g->queries, g->count, &g->hist[0][0], g->query_count, g->key_count, &g->sum_exact[0][0],
                                 g->query_marginal_exact, g->key_marginal_exact},
                         .n_i64 = {1, N_METRICS, (size_t)N_METRICS * N_HIST_BINS, m, m, (size_t)N_METRICS * QK_EXACT_LIMBS,
                                   m * QK_EXACT_LIMBS, m * QK_EXACT_LIMBS}};
}

void head_agg_add_dense(HeadAggregates *acc, const HeadAggregates *x) {
    HeadAggFields a, b;
    head_agg_fields(acc, &a);
    head_agg_fields((HeadAggregates *)x, &b);  // normalises x's limbs: its value is unchanged
    for (int q = 0; q < HEAD_AGG_I64; q++)
        for (size_t i = 0; i < a.n_i64[q]; i++) a.i64[q][i] = qk_exact_sat_add(a.i64[q][i], b.i64[q][i]);
    normalize_exact(acc);  // the sum of two normalised limb sets is not one: the same value, one form
}

void head_agg_zero_dense(HeadAggregates *g) {
    HeadAggFields f;
    head_agg_fields(g, &f);
    for (int q = 0; q < HEAD_AGG_I64; q++) memset(f.i64[q], 0, f.n_i64[q] * sizeof(int64_t));
}

void head_agg_add(HeadAggregates *acc, const HeadAggregates *x) {
    head_agg_add_dense(acc, x);
    pair_sketch_merge(&acc->sketch, &x->sketch);
}

// ---------------------------------------------------------------------------------------------
// Per-head batch state

typedef struct {
    int B, T, N, C, dh, m, slots;
    float inv;                // 1 / sqrt(dh)
    const HeadTables *t;
    const LayerCode *lc;
    const float *sigma;       // (N) ln1 scales
    float *Qm, *Km;           // (N, dh) the head's q and k (hook_q / hook_k)
    float *EQ, *EK;           // (N, dh) error components e Wq~ / sigma, e Wk~ / sigma
    float *QF, *KF;           // (N, dh) summed feature components
} HeadBatch;

static float dotf(const float *a, const float *b, int n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// (r_i / sigma_i): the factor that turns a_f(i) Qd[f] into the component of feature f.
static float comp_scale(const HeadBatch *hb, int n) { return hb->lc->code.scale[n] / hb->sigma[n]; }

// Group component vectors of token n on the query (key = 0) or key side: out[4][dh].
static void components(const HeadBatch *hb, int n, int key, float out[N_GROUPS][64]) {
    const int dh = hb->dh;
    const float *F = key ? hb->KF : hb->QF, *E = key ? hb->EK : hb->EQ;
    const float *bias = key ? hb->t->kb : hb->t->qb, *attn = key ? hb->t->qk.bk : hb->t->qk.bq;
    float sc = comp_scale(hb, n);
    for (int d = 0; d < dh; d++) {
        out[GRP_FEATURE][d] = F[(size_t)n * dh + d];
        out[GRP_DEC_BIAS][d] = sc * bias[d];
        out[GRP_ERROR][d] = E[(size_t)n * dh + d];
        out[GRP_ATTN_BIAS][d] = attn[d];
    }
}

// 4x4 group totals of the score of query row ni at key row nj: G[alpha][beta].
static void group_totals(const HeadBatch *hb, int ni, int nj, float G[N_GROUPS][N_GROUPS]) {
    float Qc[N_GROUPS][64], Kc[N_GROUPS][64];
    components(hb, ni, 0, Qc);
    components(hb, nj, 1, Kc);
    for (int al = 0; al < N_GROUPS; al++)
        for (int be = 0; be < N_GROUPS; be++) G[al][be] = dotf(Qc[al], Kc[be], hb->dh) * hb->inv;
}

// A running list of the P pairs with the largest |value| (ties: lower f, then lower g).
typedef struct {
    int P, n;
    int32_t *f, *g;
    float *v;
} PairTop;

static int pair_before(float av, int32_t af, int32_t ag, float bv, int32_t bf, int32_t bg) {
    if (fabsf(av) != fabsf(bv)) return fabsf(av) > fabsf(bv);
    if (af != bf) return af < bf;
    return ag < bg;
}

static void pairtop_add(PairTop *pt, int32_t f, int32_t g, float v) {
    if (pt->n == pt->P && !pair_before(v, f, g, pt->v[pt->n - 1], pt->f[pt->n - 1], pt->g[pt->n - 1])) return;
    int i = pt->n < pt->P ? pt->n++ : pt->P - 1;
    for (; i > 0 && pair_before(v, f, g, pt->v[i - 1], pt->f[i - 1], pt->g[i - 1]); i--)
        pt->f[i] = pt->f[i - 1], pt->g[i] = pt->g[i - 1], pt->v[i] = pt->v[i - 1];
    pt->f[i] = f, pt->g[i] = g, pt->v[i] = v;
}

// Every (active query feature, active key feature) term of the score (ni, nj) into pt.
static void feature_pairs(const HeadBatch *hb, int ni, int nj, PairTop *pt) {
    const QkSaeCode *cd = &hb->lc->code;
    const int S = cd->slots, dh = hb->dh;
    const float si = comp_scale(hb, ni), sj = comp_scale(hb, nj);
    pt->n = 0;
    for (int s = 0; s < hb->lc->live[ni]; s++) {
        int32_t f = cd->idx[(size_t)ni * S + s];
        float ci = cd->val[(size_t)ni * S + s] * si * hb->inv;
        const float *qd = hb->t->Qd + (size_t)f * dh;
        for (int u = 0; u < hb->lc->live[nj]; u++) {
            int32_t g = cd->idx[(size_t)nj * S + u];
            float v = ci * cd->val[(size_t)nj * S + u] * sj * dotf(qd, hb->t->Kd + (size_t)g * dh, dh);
            pairtop_add(pt, f, g, v);
        }
    }
}

// |topk(u_i) ∩ F(j)| / |F(j)|, NaN when F(j) is empty.
static float overlap_at(const HeadBatch *hb, const int32_t *topk, int k, int nj) {
    int live = hb->lc->live[nj], S = hb->lc->code.slots, hit = 0;
    if (!live) return NAN;
    const int32_t *F = hb->lc->code.idx + (size_t)nj * S;
    for (int s = 0; s < live; s++)
        for (int q = 0; q < k; q++)
            if (topk[q] == F[s]) {
                hit++;
                break;
            }
    return (float)hit / live;
}

// error_share (ANALYSIS.md §4), log-sum-exp and argmax (ties to the lower j) over keys j0..i: the
// per-query rules of the device analysis (kernels/analysis/analysis_math.h, __host__ __device__),
// one definition for both backends.
_Static_assert(N_GROUPS == QK_ANA_GROUPS && GRP_ERROR == 2 && GRP_ATTN_BIAS == QK_ANA_GROUPS - 1,
               "analysis_math.h's group order is ANALYSIS.md's");
static float error_share(float G[N_GROUPS][N_GROUPS]) { return qk_ana_error_share(&G[0][0]); }

// Scores of window rows (T, T): S = Q K^T / sqrt(dh) for Q, K (T, dh) row blocks.
static void scores(const float *Q, const float *K, int T, int dh, float inv, float *S) {
    qk_gemm(QK_GEMM_T, T, T, dh, inv, Q, dh, K, dh, 0, S, T);
}

struct WindowScratch {
    float *S, *Sb, *Sq, *Sk;  // (T, T) real and reconstructed scores (both, query-only, key-only)
    float *Qh, *Kh;           // (T, dh) reconstructed q and k of the window
    double *W;                // (m) running chance weights: sum over keys so far of [g in F(j)] / |F(j)|
    double *la, *A;           // (T) log attention and attention of one query over keys j0..i
    PairTop pt;               // (P) pair scratch
};

// The 8 metrics of query i over keys j0..i (j0 = 0, or 1 without the sink) into out[8].
// ls: log-sum-exp of the query's scores over keys j0..i (the caller's, for j0 = 0).
// G_top: the group totals at the most attended key when already computed (the sink variant:
// j* is attended key 0), else NULL.
static void metrics_range(const HeadBatch *hb, WindowScratch *w, int b, int i, int j0, double ls, const int32_t *topk,
                          int k, double chance_sum, int chance_n, const float *G_top, float *out) {
    const int T = hb->T;
    const float *s = w->S + (size_t)i * T, *rows[3] = {w->Sb + (size_t)i * T, w->Sq + (size_t)i * T, w->Sk + (size_t)i * T};
    for (int m = 0; m < N_BASE_METRICS; m++) out[m] = NAN;
    if (i < j0) return;
    for (int j = j0; j <= i; j++) w->la[j] = s[j] - ls, w->A[j] = exp(w->la[j]);  // once for the three KLs
    for (int v = 0; v < 3; v++) {  // KL(A || Ahat) for both / query / key reconstructions
        double lh = qk_ana_lse(rows[v], j0, i), kl = 0;
        for (int j = j0; j <= i; j++)
            if (w->A[j] > 0) kl += w->A[j] * (w->la[j] - (rows[v][j] - lh));
        out[MET_KL_BOTH + v] = (float)kl;
    }
    int jstar = qk_ana_argmax(s, j0, i);
    out[MET_TOP1] = qk_ana_argmax(rows[0], j0, i) == jstar ? 1.0f : 0.0f;
    if (i > j0) {
        double mean = 0, tot = 0, res = 0;
        for (int j = j0; j <= i; j++) mean += s[j];
        mean /= (i - j0 + 1);
        for (int j = j0; j <= i; j++) tot += (s[j] - mean) * (s[j] - mean), res += (s[j] - rows[0][j]) * (s[j] - rows[0][j]);
        out[MET_R2] = tot > 0 ? (float)(1.0 - res / tot) : NAN;
    }
    float G[N_GROUPS][N_GROUPS];
    if (G_top) memcpy(G, G_top, sizeof G);
    else group_totals(hb, b * T + i, b * T + jstar, G);
    out[MET_ERROR_SHARE] = error_share(G);
    out[MET_OVERLAP] = overlap_at(hb, topk, k, b * T + jstar);
    out[MET_OVERLAP_CHANCE] = chance_n > 0 ? (float)(chance_sum / chance_n) : NAN;
}

// Sum over g in topk of W[g] (the chance numerator), optionally minus token n0's share.
static double chance_sum(const HeadBatch *hb, const double *W, const int32_t *topk, int k, int n0) {
    double s = 0;
    for (int q = 0; q < k; q++) {
        if (topk[q] < 0) continue;
        double w = W[topk[q]];
        if (n0 >= 0 && hb->lc->live[n0]) {
            const int32_t *F = hb->lc->code.idx + (size_t)n0 * hb->lc->code.slots;
            for (int u = 0; u < hb->lc->live[n0]; u++)
                if (F[u] == topk[q]) w -= 1.0 / hb->lc->live[n0];
        }
        s += w;
    }
    return s;
}

// Attended keys, decomposition, metrics and aggregate inputs for every query of window b.
static void analyse_window(const AnalysisOpts *o, const HeadBatch *hb, WindowScratch *w, int b, HeadRecords *r) {
    const int T = hb->T, dh = hb->dh, S = hb->slots, k = o->k, a = o->a;
    const float *Q = hb->Qm + (size_t)b * T * dh, *K = hb->Km + (size_t)b * T * dh;
    for (int t = 0; t < T * dh; t++) {
        w->Qh[t] = Q[t] - hb->EQ[(size_t)b * T * dh + t];
        w->Kh[t] = K[t] - hb->EK[(size_t)b * T * dh + t];
    }
    scores(Q, K, T, dh, hb->inv, w->S);
    scores(w->Qh, w->Kh, T, dh, hb->inv, w->Sb);
    scores(w->Qh, K, T, dh, hb->inv, w->Sq);
    scores(Q, w->Kh, T, dh, hb->inv, w->Sk);
    memset(w->W, 0, sizeof(double) * hb->m);
    int nonempty = 0;
    for (int i = 0; i < T; i++) {
        const int n = b * T + i;
        const QkSaeCode *cd = &hb->lc->code;
        if (hb->lc->live[n]) {  // token i joins the keys of the chance baseline
            nonempty++;
            for (int u = 0; u < hb->lc->live[n]; u++) w->W[cd->idx[(size_t)n * S + u]] += 1.0 / hb->lc->live[n];
        }
        // Attended keys: the a largest A_ij (= largest s_ij), ties to the lower j.
        const float *s = w->S + (size_t)i * T;
        double ls = qk_ana_lse(s, 0, i);
        if (r->patterns) {  // the full rows, real and reconstructed (both sides)
            const float *sb = w->Sb + (size_t)i * T;
            double lb = qk_ana_lse(sb, 0, i);
            for (int j = 0; j < T; j++) {
                r->pattern[(size_t)n * T + j] = j <= i ? (float)exp(s[j] - ls) : 0.0f;
                r->pattern_hat[(size_t)n * T + j] = j <= i ? (float)exp(sb[j] - lb) : 0.0f;
            }
        }
        int32_t *att = r->att_idx + (size_t)n * a;
        float *attw = r->att_w + (size_t)n * a;
        for (int q = 0; q < a; q++) att[q] = -1, attw[q] = 0;
        for (int j = 0; j <= i; j++) {
            int q = a;
            while (q > 0 && (att[q - 1] < 0 || s[j] > s[att[q - 1]])) q--;
            if (q == a) continue;
            for (int u = a - 1; u > q; u--) att[u] = att[u - 1];
            att[q] = j;
        }
        for (int q = 0; q < (r->records ? a : 1); q++) {  // j* only when no record is written
            float *G = r->groups + ((size_t)n * a + q) * N_GROUPS * N_GROUPS;
            int32_t *pf = r->pair_f + ((size_t)n * a + q) * o->p, *pg = r->pair_g + ((size_t)n * a + q) * o->p;
            float *pv = r->pair_val + ((size_t)n * a + q) * o->p;
            for (int u = 0; u < o->p; u++) pf[u] = pg[u] = -1, pv[u] = 0;
            if (att[q] < 0) {
                memset(G, 0, sizeof(float) * N_GROUPS * N_GROUPS);
                continue;
            }
            attw[q] = (float)exp(s[att[q]] - ls);
            group_totals(hb, n, b * T + att[q], (float(*)[N_GROUPS])G);
            feature_pairs(hb, n, b * T + att[q], &w->pt);
            for (int u = 0; u < w->pt.n && u < o->p; u++) pf[u] = w->pt.f[u], pg[u] = w->pt.g[u], pv[u] = w->pt.v[u];
            if (q == 0) {  // the sketch's pairs at j*
                int32_t *sf = r->sk_f + (size_t)n * r->sp, *sg = r->sk_g + (size_t)n * r->sp;
                float *sv = r->sk_val + (size_t)n * r->sp;
                for (int u = 0; u < r->sp; u++) {
                    int in = u < w->pt.n;
                    sf[u] = in ? w->pt.f[u] : -1, sg[u] = in ? w->pt.g[u] : -1, sv[u] = in ? w->pt.v[u] : 0;
                }
            }
        }
        // Marginals at j*: each query feature against the whole key (but its attention bias), and
        // the whole query against each key feature.
        int nj = b * T + att[0];
        float Qc[N_GROUPS][64], Kc[N_GROUPS][64], kall[64], qall[64];
        components(hb, n, 0, Qc);
        components(hb, nj, 1, Kc);
        for (int d = 0; d < dh; d++) {
            kall[d] = Kc[GRP_FEATURE][d] + Kc[GRP_DEC_BIAS][d] + Kc[GRP_ERROR][d];
            qall[d] = Qc[GRP_FEATURE][d] + Qc[GRP_DEC_BIAS][d] + Qc[GRP_ERROR][d] + Qc[GRP_ATTN_BIAS][d];
        }
        float si = comp_scale(hb, n), sj = comp_scale(hb, nj);
        for (int u = 0; u < S; u++) {
            int qlive = u < hb->lc->live[n], klive = u < hb->lc->live[nj];
            int32_t f = cd->idx[(size_t)n * S + u], g = cd->idx[(size_t)nj * S + u];
            r->qmarg[(size_t)n * S + u] =
                qlive ? cd->val[(size_t)n * S + u] * si * dotf(hb->t->Qd + (size_t)f * dh, kall, dh) * hb->inv : 0;
            r->kmarg[(size_t)n * S + u] =
                klive ? cd->val[(size_t)nj * S + u] * sj * dotf(hb->t->Kd + (size_t)g * dh, qall, dh) * hb->inv : 0;
        }
        // Metrics, with and without the sink.
        const int32_t *topk = r->top_idx + (size_t)n * k;
        float *met = r->metrics + (size_t)n * N_METRICS;
        int n0 = b * T, n0_live = hb->lc->live[n0] > 0;
        metrics_range(hb, w, b, i, 0, ls, topk, k, chance_sum(hb, w->W, topk, k, -1), nonempty,
                      r->groups + (size_t)n * a * N_GROUPS * N_GROUPS, met);
        metrics_range(hb, w, b, i, 1, i >= 1 ? qk_ana_lse(s, 1, i) : 0, topk, k, chance_sum(hb, w->W, topk, k, n0),
                      nonempty - n0_live, NULL, met + N_BASE_METRICS);
    }
}

// Adds the batch to the aggregates, in token order.
static void aggregate(const HeadBatch *hb, const HeadRecords *r, const int32_t *valid_len, HeadAggregates *g) {
    const int S = hb->slots;
    const QkSaeCode *cd = &hb->lc->code;
    for (int n = 0; n < hb->N; n++) {
        if (valid_len && n % hb->T >= valid_len[n / hb->T]) continue;  // padding after a short window
        g->queries++;
        for (int m = 0; m < N_METRICS; m++) {
            float v = r->metrics[(size_t)n * N_METRICS + m], lo, hi;
            if (!isfinite(v)) continue;  // undefined (NaN), or infinite: not a value a mean can hold
            qk_exact_add(g->sum_exact[m], v);
            g->count[m]++;
            qk_metric_range(m, &lo, &hi);
            int bin = (int)floorf((v - lo) / (hi - lo) * N_HIST_BINS);
            bin = bin < 0 ? 0 : bin >= N_HIST_BINS ? N_HIST_BINS - 1 : bin;
            g->hist[m][bin]++;
        }
        int b = n / hb->T, nj = b * hb->T + r->att_idx[(size_t)n * r->a];
        for (int u = 0; u < hb->lc->live[n]; u++) {
            int32_t f = cd->idx[(size_t)n * S + u];
            qk_exact_add(g->query_marginal_exact + (size_t)f * QK_EXACT_LIMBS, r->qmarg[(size_t)n * S + u]);
            g->query_count[f]++;
        }
        for (int u = 0; u < hb->lc->live[nj]; u++) {
            int32_t f = cd->idx[(size_t)nj * S + u];
            qk_exact_add(g->key_marginal_exact + (size_t)f * QK_EXACT_LIMBS, r->kmarg[(size_t)n * S + u]);
            g->key_count[f]++;
        }
        for (int u = 0; u < r->sp && r->sk_f[(size_t)n * r->sp + u] >= 0; u++) {
            int32_t f = r->sk_f[(size_t)n * r->sp + u], gf = r->sk_g[(size_t)n * r->sp + u];
            float v = r->sk_val[(size_t)n * r->sp + u];
            pair_sketch_add(&g->sketch, f, gf, v);
            pair_examples_add(&g->examples, f, gf, v, g->window0 + b, n % hb->T, r->att_idx[(size_t)n * r->a]);
        }
    }
    g->pending += hb->N;  // at most one term per token per exact sum
    if (g->pending > (1 << 28)) normalize_exact(g);
}

static void window_scratch_free(WindowScratch *w) {
    free(w->S), free(w->Qh), free(w->W), free(w->la), free(w->pt.f), free(w->pt.g), free(w->pt.v);
}

void head_scratch_free(HeadScratch *s) {
    free(s->buf), free(s->scale), free(s->norm2), free(s->U);
    for (int i = 0; i < s->n_win; i++) window_scratch_free(&s->win[i]);
    free(s->win);
    memset(s, 0, sizeof *s);
}

// Grows s to N tokens of width dh and n_win window scratches of T tokens, m features, P pairs.
static void head_scratch_reserve(HeadScratch *s, int N, int dh, int n_win, int T, size_t m, int P) {
    if ((size_t)N > s->n_tok || dh != s->dh) {
        free(s->buf), free(s->scale), free(s->norm2), free(s->U);
        s->n_tok = N;
        s->buf = qk_malloc(sizeof(float) * (size_t)N * dh * 6);
        s->scale = qk_malloc(sizeof(float) * N), s->norm2 = qk_malloc(sizeof(float) * N);
        s->U = qk_malloc(sizeof(float) * (size_t)N * dh);
    }
    if (n_win <= s->n_win && T == s->T && m <= s->m && P == s->P && dh == s->dh) return;
    for (int i = 0; i < s->n_win; i++) window_scratch_free(&s->win[i]);
    free(s->win);
    s->n_win = n_win > s->n_win ? n_win : s->n_win, s->T = T, s->m = m > s->m ? m : s->m, s->P = P, s->dh = dh;
    s->win = qk_calloc(s->n_win, sizeof(WindowScratch));
    for (int i = 0; i < s->n_win; i++) {
        WindowScratch *w = &s->win[i];
        w->S = qk_malloc(sizeof(float) * (size_t)T * T * 4);
        w->Sb = w->S + (size_t)T * T, w->Sq = w->Sb + (size_t)T * T, w->Sk = w->Sq + (size_t)T * T;
        w->Qh = qk_malloc(sizeof(float) * (size_t)T * dh * 2), w->Kh = w->Qh + (size_t)T * dh;
        w->W = qk_malloc(sizeof(double) * s->m);
        w->la = qk_malloc(sizeof(double) * T * 2), w->A = w->la + T;
        w->pt = (PairTop){.P = P, .f = qk_malloc(sizeof(int32_t) * P), .g = qk_malloc(sizeof(int32_t) * P),
                          .v = qk_malloc(sizeof(float) * P)};
    }
}

int analyse_head(const AnalysisOpts *o, const HeadTables *t, const QkSae *sae, const LayerCode *lc,
                 const GPT2Acts *acts, const GPT2Config *c, const int32_t *valid_len, HeadRecords *r,
                 HeadAggregates *agg, HeadScratch *scratch) {
    const int layer = t->qk.layer, head = t->qk.head, C = c->d_model, dh = c->d_head;
    if (dh > 64) return qk_err("analysis: d_head %d > 64 is not supported", dh);
    HeadBatch hb = {.B = acts->B, .T = acts->T, .N = acts->B * acts->T, .C = C, .dh = dh, .m = t->m,
                    .slots = lc->code.slots, .inv = 1.0f / sqrtf((float)dh), .t = t, .lc = lc};
    const int N = hb.N, P = o->p > o->sketch_pairs ? o->p : o->sketch_pairs;
    HeadScratch own = {0}, *sc = scratch ? scratch : &own;
    head_scratch_reserve(sc, N, dh, omp_get_max_threads(), hb.T, (size_t)t->m, P);
    hb.sigma = acts->ln1_scale + (size_t)layer * N;
    float *buf = sc->buf;
    hb.Qm = buf, hb.Km = buf + (size_t)N * dh, hb.EQ = hb.Km + (size_t)N * dh, hb.EK = hb.EQ + (size_t)N * dh;
    hb.QF = hb.EK + (size_t)N * dh, hb.KF = hb.QF + (size_t)N * dh;
    for (int n = 0; n < N; n++) {
        memcpy(hb.Qm + (size_t)n * dh, acts->q + ((size_t)layer * N + n) * C + head * dh, sizeof(float) * dh);
        memcpy(hb.Km + (size_t)n * dh, acts->k + ((size_t)layer * N + n) * C + head * dh, sizeof(float) * dh);
    }
    // Error components (N, dh) = e (N, C) W~ / sigma.
    qk_gemm(QK_GEMM_N, N, dh, C, 1.0f, lc->err, C, t->qk.Wq, dh, 0, hb.EQ, dh);
    qk_gemm(QK_GEMM_N, N, dh, C, 1.0f, lc->err, C, t->qk.Wk, dh, 0, hb.EK, dh);
    const QkSaeCode *cd = &lc->code;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float sc = comp_scale(&hb, n);
        for (int d = 0; d < dh; d++) {
            hb.EQ[(size_t)n * dh + d] /= hb.sigma[n];
            hb.EK[(size_t)n * dh + d] /= hb.sigma[n];
        }
        // Summed feature components: (r/sigma) sum_f a_f Qd[f] (and Kd).
        double qf[64] = {0}, kf[64] = {0};
        for (int u = 0; u < lc->live[n]; u++) {
            int32_t f = cd->idx[(size_t)n * cd->slots + u];
            double v = cd->val[(size_t)n * cd->slots + u];
            for (int d = 0; d < dh; d++) qf[d] += v * t->Qd[(size_t)f * dh + d], kf[d] += v * t->Kd[(size_t)f * dh + d];
        }
        for (int d = 0; d < dh; d++) hb.QF[(size_t)n * dh + d] = (float)(sc * qf[d]), hb.KF[(size_t)n * dh + d] = (float)(sc * kf[d]);
    }
    // Look-for features: u_i = q_i Kd^T / sqrt(dh), top-k and bottom-k; encoder projection.
    float *scale = sc->scale;
    for (int n = 0; n < N; n++) scale[n] = hb.inv;
    // Top-k and (for records) bottom-k from one pass over the same GEMM tiles.
    QkTopkOpts top = {.k = o->k, .bottom_idx = r->records ? r->bot_idx : NULL, .bottom_val = r->records ? r->bot_val : NULL};
    int rc = qk_topk(N, t->m, dh, hb.Qm, dh, scale, t->Kd, NULL, &top, r->top_idx, r->top_val, NULL);
    if (!rc && r->enc) {
        // v_i W_enc = (q_i / sqrt(dh)) E^T and |v_i|^2 = (q_i / sqrt(dh)) G (q_i / sqrt(dh))^T.
        float *U = sc->U, *norm2 = sc->norm2;
        for (int n = 0; n < N; n++) {
            for (int d = 0; d < dh; d++) U[(size_t)n * dh + d] = hb.Qm[(size_t)n * dh + d] * hb.inv;
            double s2 = 0;
            for (int d = 0; d < dh; d++) s2 += U[(size_t)n * dh + d] * (double)dotf(t->G + (size_t)d * dh, U + (size_t)n * dh, dh);
            norm2[n] = (float)s2;
        }
        rc = qk_sae_encode_projected(sae, N, dh, U, dh, norm2, t->E, &r->enc_code);
    }
    if (!rc) {
        // A team no larger than omp_get_max_threads() (reserved above): one window scratch a thread.
#pragma omp parallel
        {
            WindowScratch *w = &sc->win[omp_get_thread_num()];
#pragma omp for schedule(dynamic)
            for (int b = 0; b < hb.B; b++) analyse_window(o, &hb, w, b, r);
        }
        if (agg) aggregate(&hb, r, valid_len, agg);
    }
    if (!scratch) head_scratch_free(&own);
    return rc ? -1 : 0;
}
