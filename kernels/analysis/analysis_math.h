// analysis_math.h: the per-thread logic of the device analysis (kernels/analysis_cuda.cu) as
// __host__ __device__ functions, so the CPU suite (tests/test_analysis_math.c) runs the very code
// the kernels run against host/analysis.c and host/sae.c.  Plain C when not compiled by nvcc.
// Definitions: docs/ANALYSIS.md.  Floating point: the .cu that includes this is built with
// -fmad=false and the host with -ffp-contract=off, so every expression rounds as written on both;
// explicit fmaf chains are the only fused operations (as host/gemm.h's qk_gemm).
//
// Shapes (N = B*T tokens of a batch, C = d_model, dh = d_head, m = d_sae, S = code slots):
//   x      (N, ldx)   resid_pre of the layer;      z (N, C) normalised SAE input
//   code   idx/val (N, S), live (N), scale (N)     the layer's SAE code, live = stored active
//   err    (N, C)     e = x - xhat
//   Q, K   (N, dh)    the head's hook_q / hook_k;  EQ, EK (N, dh) e W~ / sigma;  QF, KF (N, dh)
//   rows   S, Sb, Sq, Sk (N, T): row n = query n's scores over the keys of its window, j <= i
//   records per query n: as host/analysis.h HeadRecords.
#pragma once
#include <math.h>
#include <stdint.h>

#include "analysis/exact_sum.h"
#include "analysis/select.h"

#define QK_ANA_GROUPS 4
#define QK_ANA_BASE 8  // N_BASE_METRICS
#define QK_ANA_METRICS 16
#define QK_ANA_BINS 50
#define QK_ANA_MAX_DH 64

#ifndef __CUDA_ARCH__
#define QK_ANA_NAN NAN
#define QK_ANA_UNROLL
#else
#define QK_ANA_NAN __int_as_float(0x7fc00000)
#define QK_ANA_UNROLL _Pragma("unroll")  // fixed-size arrays stay in registers
#endif

// ---- SAE encode (host/sae.c normalise and decode) --------------------------------------------

// z (C) = the normalised token x (C) of SAE options (center_input, layer_norm); decode scale
// and shift.  Sequential double sums, in host/sae.c's order.
QK_HD void qk_ana_normalise(const float *x, int d, int center_input, int layer_norm, float *z, float *scale,
                            float *shift) {
    double mc = 0, mu = 0, ss = 0;
    if (center_input) {
        for (int t = 0; t < d; t++) mc += x[t];
        mc /= d;
    }
    for (int t = 0; t < d; t++) z[t] = (float)(x[t] - mc);
    *scale = 1.0f;
    *shift = (float)mc;
    if (!layer_norm) return;
    for (int t = 0; t < d; t++) mu += z[t];
    mu /= d;
    for (int t = 0; t < d; t++) ss += (z[t] - mu) * (z[t] - mu);
    double sd = d > 1 ? sqrt(ss / (d - 1)) : 0.0;
    for (int t = 0; t < d; t++) z[t] = (float)((z[t] - mu) / (sd + 1e-5));
    *scale = (float)sd;
    *shift = (float)(mc + mu);
}

// Stored active features of a code row: min(n_active, slots), at least 0.
QK_HD int32_t qk_ana_live(int32_t n_active, int slots) {
    int32_t l = n_active < slots ? n_active : slots;
    return l < 0 ? 0 : l;
}

// e[t] = x[t] - xhat[t] of one token and one coordinate t (host/sae.c qk_sae_decode, then
// layer_code_compute's subtraction).
QK_HD float qk_ana_err(float x, int t, int d, const int32_t *idx, const float *val, int slots, const float *W_dec,
                       const float *b_dec, float scale, float shift) {
    double acc = b_dec[t];
    for (int q = 0; q < slots; q++) {
        int32_t f = idx[q];
        float a = val[q];
        if (f < 0 || a == 0.0f) continue;
        acc += (double)a * W_dec[(size_t)f * d + t];
    }
    return x - (float)(acc * scale + shift);
}

// Encoder projection (host/sae.c qk_sae_encode_projected, analysis.c): row scale a, code scale.
QK_HD void qk_ana_proj_scale(double norm2, int d_in, int layer_norm, float *a, float *scale) {
    double sd = d_in > 1 ? sqrt(norm2 / (d_in - 1)) : 0.0;
    *a = layer_norm ? (float)(1.0 / (sd + 1e-5)) : 1.0f;
    *scale = layer_norm ? (float)sd : 1.0f;
}

// ---- per-token head vectors -------------------------------------------------------------------

// One element of the summed feature components (r/sigma) sum_f a_f Qd[f] (host analyse_head).
QK_HD float qk_ana_feat_sum(const int32_t *idx, const float *val, int live, const float *Qd, int dh, int d, float sc) {
    double acc = 0;
    for (int u = 0; u < live; u++) {
        double v = val[u];
        acc += v * Qd[(size_t)idx[u] * dh + d];
    }
    return (float)(sc * acc);
}

// a . b * inv as host qk_gemm with alpha = inv (FMA chain in increasing d, then alpha).
QK_HD float qk_ana_score(const float *a, const float *b, int dh, float inv) {
    float acc = 0.0f;
    for (int d = 0; d < dh; d++) acc = fmaf(a[d], b[d], acc);
    return acc * inv;
}

// The same with a - ea and b - eb in place of a and b (reconstructed q or k; NULL: as is).
QK_HD float qk_ana_score_hat(const float *a, const float *ea, const float *b, const float *eb, int dh, float inv) {
    float acc = 0.0f;
    for (int d = 0; d < dh; d++) {
        float x = ea ? a[d] - ea[d] : a[d], y = eb ? b[d] - eb[d] : b[d];
        acc = fmaf(x, y, acc);
    }
    return acc * inv;
}

QK_HD float qk_ana_dot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// ---- the per-query analysis -------------------------------------------------------------------

typedef struct {
    int T, dh, S, k, a, p, sp, P, records, patterns;
    float inv;
    // inputs (device or host pointers, all of one batch)
    const float *Srow, *Sb, *Sq, *Sk;           // (N, T)
    const float *QF, *KF, *EQ, *EK;             // (N, dh)
    const float *sigma, *scale;                 // (N)
    const int32_t *idx, *live;                  // (N, S), (N)
    const float *val;                           // (N, S)
    const float *Qd, *Kd, *qb, *kb, *bq, *bk;   // head tables
    const int32_t *top_idx;                     // (N, k) look-for top-k
    // outputs
    int32_t *att_idx;   float *att_w;           // (N, a)
    int32_t *pair_f, *pair_g; float *pair_val;  // (N, a, p)
    float *groups;                              // (N, a, 4, 4)
    float *metrics;                             // (N, 16)
    float *qmarg, *kmarg;                       // (N, S)
    int32_t *sk_f, *sk_g; float *sk_val;        // (N, sp)
    float *pattern, *pattern_hat;               // (N, T) when patterns
    int32_t *pt_f, *pt_g; float *pt_v;          // (N, P) scratch
} QkAnaView;

QK_HD float qk_ana_comp_scale(const QkAnaView *v, int n) { return v->scale[n] / v->sigma[n]; }

// The four group components of token n at coordinate d, query (key = 0) or key side (ANALYSIS.md
// §2): feature, decoder bias (sc = the token's comp_scale), error, attention bias.
QK_HD void qk_ana_components_at(const QkAnaView *v, int n, int key, float sc, int d, float c[QK_ANA_GROUPS]) {
    const size_t e = (size_t)n * v->dh + d;
    c[0] = (key ? v->KF : v->QF)[e];
    c[1] = sc * (key ? v->kb : v->qb)[d];
    c[2] = (key ? v->EK : v->EQ)[e];
    c[3] = (key ? v->bk : v->bq)[d];
}

// 4x4 group totals of score (ni, nj) into G[16]: each the chain sum_d q_al[d] k_be[d] in increasing
// d (a dot product of the two components), times 1/sqrt(dh).  No per-thread arrays but 16 sums.
QK_HD void qk_ana_group_totals(const QkAnaView *v, int ni, int nj, float *G) {
    float acc[QK_ANA_GROUPS * QK_ANA_GROUPS], qc[QK_ANA_GROUPS], kc[QK_ANA_GROUPS];
    QK_ANA_UNROLL
    for (int q = 0; q < QK_ANA_GROUPS * QK_ANA_GROUPS; q++) acc[q] = 0;
    const float si = qk_ana_comp_scale(v, ni), sj = qk_ana_comp_scale(v, nj);
    for (int d = 0; d < v->dh; d++) {
        qk_ana_components_at(v, ni, 0, si, d, qc);
        qk_ana_components_at(v, nj, 1, sj, d, kc);
        QK_ANA_UNROLL
        for (int al = 0; al < QK_ANA_GROUPS; al++) {
            QK_ANA_UNROLL
            for (int be = 0; be < QK_ANA_GROUPS; be++) acc[al * QK_ANA_GROUPS + be] += qc[al] * kc[be];
        }
    }
    QK_ANA_UNROLL
    for (int q = 0; q < QK_ANA_GROUPS * QK_ANA_GROUPS; q++) G[q] = acc[q] * v->inv;
}

QK_HD int qk_ana_pair_before(float av, int32_t af, int32_t ag, float bv, int32_t bf, int32_t bg) {
    if (fabsf(av) != fabsf(bv)) return fabsf(av) > fabsf(bv);
    if (af != bf) return af < bf;
    return ag < bg;
}

// Every (active query feature, active key feature) term of score (ni, nj): the P largest |value|
// into f/g/val (sorted); returns how many.
QK_HD int qk_ana_feature_pairs(const QkAnaView *v, int ni, int nj, int P, int32_t *pf, int32_t *pg, float *pv) {
    const int S = v->S, dh = v->dh;
    const float si = qk_ana_comp_scale(v, ni), sj = qk_ana_comp_scale(v, nj);
    int cnt = 0;
    for (int s = 0; s < v->live[ni]; s++) {
        int32_t f = v->idx[(size_t)ni * S + s];
        float ci = v->val[(size_t)ni * S + s] * si * v->inv;
        const float *qd = v->Qd + (size_t)f * dh;
        for (int u = 0; u < v->live[nj]; u++) {
            int32_t g = v->idx[(size_t)nj * S + u];
            float x = ci * v->val[(size_t)nj * S + u] * sj * qk_ana_dot(qd, v->Kd + (size_t)g * dh, dh);
            if (cnt == P && !qk_ana_pair_before(x, f, g, pv[cnt - 1], pf[cnt - 1], pg[cnt - 1])) continue;
            int i = cnt < P ? cnt++ : P - 1;
            for (; i > 0 && qk_ana_pair_before(x, f, g, pv[i - 1], pf[i - 1], pg[i - 1]); i--)
                pf[i] = pf[i - 1], pg[i] = pg[i - 1], pv[i] = pv[i - 1];
            pf[i] = f, pg[i] = g, pv[i] = x;
        }
    }
    return cnt;
}

// The valid entries of topk (k <= 64 indices, -1 unused) sorted ascending into st; returns how many.
QK_HD int qk_ana_sort_topk(const int32_t *topk, int k, int32_t *st) {
    int n = 0;
    for (int q = 0; q < k; q++) {
        int32_t x = topk[q];
        if (x < 0) continue;
        int u = n++;
        for (; u > 0 && st[u - 1] > x; u--) st[u] = st[u - 1];
        st[u] = x;
    }
    return n;
}

// |topk ∩ F(j)| with topk given sorted (st, n): a binary search per active feature.
QK_HD int qk_ana_hits(const int32_t *st, int n, const int32_t *F, int live) {
    int hit = 0;
    for (int s = 0; s < live; s++) {
        int lo = 0, hi = n;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (st[mid] < F[s]) lo = mid + 1;
            else hi = mid;
        }
        hit += lo < n && st[lo] == F[s];
    }
    return hit;
}

QK_HD float qk_ana_error_share(const float *G) {
    double num = 0, den = 0;
    QK_ANA_UNROLL
    for (int al = 0; al < QK_ANA_GROUPS; al++)
        QK_ANA_UNROLL
        for (int be = 0; be < QK_ANA_GROUPS - 1; be++) {
            double x = fabs(G[al * QK_ANA_GROUPS + be]);
            den += x;
            if (al == 2 || be == 2) num += x;
        }
    return den > 0 ? (float)(num / den) : QK_ANA_NAN;
}

QK_HD double qk_ana_lse(const float *row, int j0, int i) {
    double mx = -INFINITY, s = 0;
    for (int j = j0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
    for (int j = j0; j <= i; j++) s += exp(row[j] - mx);
    return mx + log(s);
}

QK_HD int qk_ana_argmax(const float *row, int j0, int i) {
    int best = j0;
    for (int j = j0 + 1; j <= i; j++)
        if (row[j] > row[best]) best = j;
    return best;
}

// The 8 metrics of query n (position i of window b) over keys j0..i into out[8]; G_top: group
// totals at the most attended key (j0 = 0) or NULL.
// st: scratch for k ints (the sorted look-for top-k).
QK_HD void qk_ana_metrics(const QkAnaView *v, int n, int i, int j0, const float *G_top, int32_t *st, float *out) {
    const int T = v->T, nb = n - i;
    const float *s = v->Srow + (size_t)n * T;
    const float *rows[3] = {v->Sb + (size_t)n * T, v->Sq + (size_t)n * T, v->Sk + (size_t)n * T};
    for (int q = 0; q < QK_ANA_BASE; q++) out[q] = QK_ANA_NAN;
    if (i < j0) return;
    double ls = qk_ana_lse(s, j0, i);
    QK_ANA_UNROLL
    for (int w = 0; w < 3; w++) {
        double lh = qk_ana_lse(rows[w], j0, i), kl = 0;
        for (int j = j0; j <= i; j++) {
            double la = s[j] - ls, A = exp(la);
            if (A > 0) kl += A * (la - (rows[w][j] - lh));
        }
        out[w] = (float)kl;
    }
    int jstar = qk_ana_argmax(s, j0, i);
    out[3] = qk_ana_argmax(rows[0], j0, i) == jstar ? 1.0f : 0.0f;
    if (i > j0) {
        double mean = 0, tot = 0, res = 0;
        for (int j = j0; j <= i; j++) mean += s[j];
        mean /= (i - j0 + 1);
        for (int j = j0; j <= i; j++)
            tot += (s[j] - mean) * (s[j] - mean), res += (s[j] - rows[0][j]) * (s[j] - rows[0][j]);
        out[4] = tot > 0 ? (float)(1.0 - res / tot) : QK_ANA_NAN;
    }
    float G[QK_ANA_GROUPS * QK_ANA_GROUPS];
    if (G_top) {
        QK_ANA_UNROLL
        for (int q = 0; q < QK_ANA_GROUPS * QK_ANA_GROUPS; q++) G[q] = G_top[q];
    } else {
        qk_ana_group_totals(v, n, nb + jstar, G);
    }
    out[5] = qk_ana_error_share(G);
    const int nt = qk_ana_sort_topk(v->top_idx + (size_t)n * v->k, v->k, st);
    int nj = nb + jstar, live = v->live[nj];
    out[6] = live ? (float)qk_ana_hits(st, nt, v->idx + (size_t)nj * v->S, live) / live : QK_ANA_NAN;
    // Chance: the mean over keys j0..i with F(j) non-empty of |topk ∩ F(j)| / |F(j)|.
    double cs = 0;
    int cn = 0;
    for (int j = j0; j <= i; j++) {
        int lj = v->live[nb + j];
        if (!lj) continue;
        cn++;
        cs += (double)qk_ana_hits(st, nt, v->idx + (size_t)(nb + j) * v->S, lj) / lj;
    }
    out[7] = cn > 0 ? (float)(cs / cn) : QK_ANA_NAN;
}

// Everything analyse_window computes for query n (position i in its window); st: scratch for k
// ints.
QK_HD void qk_ana_query(const QkAnaView *v, int n, int i, int32_t *st) {
    const int T = v->T, a = v->a, S = v->S, dh = v->dh, nb = n - i;
    const float *s = v->Srow + (size_t)n * T;
    double ls = qk_ana_lse(s, 0, i);
    if (v->patterns) {
        const float *sb = v->Sb + (size_t)n * T;
        double lb = qk_ana_lse(sb, 0, i);
        for (int j = 0; j < T; j++) {
            v->pattern[(size_t)n * T + j] = j <= i ? (float)exp(s[j] - ls) : 0.0f;
            v->pattern_hat[(size_t)n * T + j] = j <= i ? (float)exp(sb[j] - lb) : 0.0f;
        }
    }
    int32_t *att = v->att_idx + (size_t)n * a;
    float *attw = v->att_w + (size_t)n * a;
    for (int q = 0; q < a; q++) att[q] = -1, attw[q] = 0;
    for (int j = 0; j <= i; j++) {
        int q = a;
        while (q > 0 && (att[q - 1] < 0 || s[j] > s[att[q - 1]])) q--;
        if (q == a) continue;
        for (int u = a - 1; u > q; u--) att[u] = att[u - 1];
        att[q] = j;
    }
    int32_t *tf = v->pt_f + (size_t)n * v->P, *tg = v->pt_g + (size_t)n * v->P;
    float *tv = v->pt_v + (size_t)n * v->P;
    for (int q = 0; q < (v->records ? a : 1); q++) {
        float *G = v->groups + ((size_t)n * a + q) * QK_ANA_GROUPS * QK_ANA_GROUPS;
        int32_t *pf = v->pair_f + ((size_t)n * a + q) * v->p, *pg = v->pair_g + ((size_t)n * a + q) * v->p;
        float *pv = v->pair_val + ((size_t)n * a + q) * v->p;
        for (int u = 0; u < v->p; u++) pf[u] = pg[u] = -1, pv[u] = 0;
        if (att[q] < 0) {
            for (int u = 0; u < QK_ANA_GROUPS * QK_ANA_GROUPS; u++) G[u] = 0;
            continue;
        }
        attw[q] = (float)exp(s[att[q]] - ls);
        qk_ana_group_totals(v, n, nb + att[q], G);
        int cnt = qk_ana_feature_pairs(v, n, nb + att[q], v->P, tf, tg, tv);
        for (int u = 0; u < cnt && u < v->p; u++) pf[u] = tf[u], pg[u] = tg[u], pv[u] = tv[u];
        if (q == 0) {
            int32_t *sf = v->sk_f + (size_t)n * v->sp, *sg = v->sk_g + (size_t)n * v->sp;
            float *sv = v->sk_val + (size_t)n * v->sp;
            for (int u = 0; u < v->sp; u++) {
                int in = u < cnt;
                sf[u] = in ? tf[u] : -1, sg[u] = in ? tg[u] : -1, sv[u] = in ? tv[u] : 0;
            }
        }
    }
    // Marginals at j*: each active query feature against the whole key but its attention bias
    // (kall = (F + B) + E), the whole query (qall = ((F + B) + E) + A) against each active key
    // feature; the sums formed per coordinate, in host/analysis.c's order.
    const int nj = nb + att[0];
    const float si = qk_ana_comp_scale(v, n), sj = qk_ana_comp_scale(v, nj);
    for (int u = 0; u < S; u++) {
        const int qlive = u < v->live[n], klive = u < v->live[nj];
        const int32_t f = v->idx[(size_t)n * S + u], g = v->idx[(size_t)nj * S + u];
        float qs = 0, ks = 0, c[QK_ANA_GROUPS];
        for (int d = 0; qlive && d < dh; d++) {
            qk_ana_components_at(v, nj, 1, sj, d, c);
            qs += v->Qd[(size_t)f * dh + d] * ((c[0] + c[1]) + c[2]);
        }
        for (int d = 0; klive && d < dh; d++) {
            qk_ana_components_at(v, n, 0, si, d, c);
            ks += v->Kd[(size_t)g * dh + d] * (((c[0] + c[1]) + c[2]) + c[3]);
        }
        v->qmarg[(size_t)n * S + u] = qlive ? v->val[(size_t)n * S + u] * si * qs * v->inv : 0;
        v->kmarg[(size_t)n * S + u] = klive ? v->val[(size_t)nj * S + u] * sj * ks * v->inv : 0;
    }
    float *met = v->metrics + (size_t)n * QK_ANA_METRICS;
    qk_ana_metrics(v, n, i, 0, v->groups + (size_t)n * a * QK_ANA_GROUPS * QK_ANA_GROUPS, st, met);
    qk_ana_metrics(v, n, i, 1, NULL, st, met + QK_ANA_BASE);
}

// ---- aggregates -------------------------------------------------------------------------------

// The limbs qk_exact_add adds for term x (exact_sum.h), as values.
QK_HD void qk_ana_limbs(double x, int64_t *l) {
    if (!(x > -QK_EXACT_MAX)) x = -QK_EXACT_MAX;
    if (x > QK_EXACT_MAX) x = QK_EXACT_MAX;
    double a = fabs(x), whole = floor(a), frac = a - whole;
    double hi = floor(frac * 4294967296.0);
    double lo = nearbyint((frac * 4294967296.0 - hi) * 4294967296.0);
    int64_t l0 = (int64_t)lo, l1 = (int64_t)hi, l2 = (int64_t)whole;
    if (x < 0) l0 = -l0, l1 = -l1, l2 = -l2;
    l[0] = l0, l[1] = l1, l[2] = l2;
}

// Carries as qk_exact_normalize (arithmetic shifts on int64).
QK_HD void qk_ana_normalize(int64_t *s) {
    int64_t c = s[0] >> 32;
    s[0] -= c * 4294967296LL;
    s[1] += c;
    c = s[1] >> 32;
    s[1] -= c * 4294967296LL;
    s[2] += c;
}

// Histogram bin of metric value x with range [lo, hi] (host/analysis.c aggregate).
QK_HD int qk_ana_bin(float x, float lo, float hi) {
    int bin = (int)floorf((x - lo) / (hi - lo) * QK_ANA_BINS);
    return bin < 0 ? 0 : bin >= QK_ANA_BINS ? QK_ANA_BINS - 1 : bin;
}

// qk_metric_range without the host table.
QK_HD void qk_ana_range(int metric, float *lo, float *hi) {
    int b = metric % QK_ANA_BASE;
    if (b <= 2) *lo = 0, *hi = 5;
    else if (b == 4) *lo = -1, *hi = 1;
    else *lo = 0, *hi = 1;
}

// ---- example contexts of the heavy pairs (host/pair_examples.h), reduced per batch ------------
// The device sorts a batch's sketch candidates by pair (f, g), token order kept inside a pair
// (ana_pair_keys + a stable radix sort).  Each pair's `per_pair` strongest occurrences
// (qk_ana_segment_examples), sorted by qk_ana_example_key with a stable sort (pairs stay in
// (f, g) order on ties), are the batch's R of pair_examples.h in its "stronger" order, of which
// the first `capacity` are downloaded: R is composable, so adding R(batch) to the host's examples
// gives what adding every candidate would.  Inside one batch (window, query pos) ascending is
// token n ascending and the key position is a function of n, so (|term|, n) orders a pair.
#define QK_ANA_EXAMPLES_MAX_PER_PAIR 8

// kept[0 .. per_pair): the candidate indices pos[e] of segment [e0, e1) (one pair, token order)
// with the largest |val|, strongest first, the earlier token first on ties; -1 past the segment.
// per_pair <= QK_ANA_EXAMPLES_MAX_PER_PAIR.  A bubbling insertion over a fixed-size array, fully
// unrolled on the device so that best[] and kept[] stay in registers.
QK_HD void qk_ana_segment_examples(const uint32_t *pos, const float *val, int e0, int e1, int per_pair, int32_t *kept) {
    float best[QK_ANA_EXAMPLES_MAX_PER_PAIR];
    QK_ANA_UNROLL
    for (int q = 0; q < QK_ANA_EXAMPLES_MAX_PER_PAIR; q++) best[q] = -1.0f, kept[q] = -1;  // |term| >= 0 beats -1
    for (int e = e0; e < e1; e++) {
        int32_t cp = (int32_t)pos[e];
        float ct = fabsf(val[cp]);
        // It goes in before the first entry it is strictly stronger than (on ties the earlier
        // token stays ahead); from there every entry moves down one place.
        int moving = 0;
        QK_ANA_UNROLL
        for (int q = 0; q < QK_ANA_EXAMPLES_MAX_PER_PAIR; q++)
            if (q < per_pair && (moving || ct > best[q])) {
                const float t = best[q];
                const int32_t p = kept[q];
                best[q] = ct, kept[q] = cp;
                ct = t, cp = p, moving = 1;
            }
    }
}

// Ascending sort key of a kept candidate of token n: |term| descending, then n ascending.
// Empty slots: ~0 (last).  (The run stops before non-finite activations, so terms are finite.)
#define QK_ANA_EXAMPLE_NONE (~0ull)
QK_HD unsigned long long qk_ana_example_key(float term, uint32_t n) {
    return (unsigned long long)(0xFFFFFFFFu - qk_sel_bits(fabsf(term))) << 32 | n;
}
