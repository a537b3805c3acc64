// test_topk.c: the bilinear top-k primitive against a dense double-precision brute force.
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <omp.h>
#include <string.h>

#include "analysis/topk.h"
#include "base/util.h"
#include "test_common.h"

typedef struct {
    double v;
    int i;
} DEnt;

static int g_bottom;  // order used by cmp_dent
static int cmp_dent(const void *pa, const void *pb) {
    const DEnt *a = pa, *b = pb;
    double x = g_bottom ? -a->v : a->v, y = g_bottom ? -b->v : b->v;
    if (x != y) return x > y ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}
static int cmp_int(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }

// One problem and the primitive's answer to it.
typedef struct {
    int n, M, r;
    float *U, *a, *V, *c;  // [n x r], [n] or NULL, [M x r], [M] or NULL
    QkTopkOpts o;
    int32_t *idx, *cnt;    // [n x k], [n]
    float *val;            // [n x k]
} Prob;

static void prob_random(Prob *p, int n, int M, int r, int with_a, int with_c, uint64_t seed) {
    TRng g = {seed};
    memset(p, 0, sizeof *p);
    p->n = n, p->M = M, p->r = r;
    p->U = qk_malloc((size_t)n * r * sizeof(float));
    p->V = qk_malloc((size_t)M * r * sizeof(float));
    trng_fill_normal(&g, p->U, (size_t)n * r, 0.3, 1.0);
    trng_fill_normal(&g, p->V, (size_t)M * r, 0.0, 1.0);
    if (with_a) {
        p->a = qk_malloc(n * sizeof(float));
        for (int i = 0; i < n; i++) p->a[i] = (float)(0.5 + trng_unif(&g));
    }
    if (with_c) {
        p->c = qk_malloc(M * sizeof(float));
        trng_fill_normal(&g, p->c, M, 0.0, 2.0);
    }
}

static void prob_run(Prob *p) {
    int k = p->o.k;
    free(p->idx), free(p->val), free(p->cnt);
    p->idx = qk_malloc((size_t)p->n * k * sizeof(int32_t));
    p->val = qk_malloc((size_t)p->n * k * sizeof(float));
    p->cnt = qk_malloc((size_t)(p->n ? p->n : 1) * sizeof(int32_t));
    int rc = qk_topk(p->n, p->M, p->r, p->U, p->r, p->a, p->V, p->c, &p->o, p->idx, p->val, p->cnt);
    cr_assert_eq(rc, 0, "qk_topk failed: %s", qk_errmsg());
}

static void prob_free(Prob *p) {
    free(p->U), free(p->a), free(p->V), free(p->c), free(p->idx), free(p->val), free(p->cnt);
}

static double gate_of(const Prob *p, int j) { return p->o.gates ? p->o.gates[j] : p->o.gate; }

// Checks row i against the dense scores.  Returns 1 when the row is ambiguous at float precision
// (a selection boundary within tol), in which case only the unambiguous parts are checked.
static int check_row(const Prob *p, int i, DEnt *s, int *want, int *got) {
    const int M = p->M, k = p->o.k, gated = p->o.act == QK_TOPK_GATED;
    double scale = 0;
    for (int j = 0; j < M; j++) {
        double d = 0;
        for (int t = 0; t < p->r; t++) d += (double)p->U[(size_t)i * p->r + t] * p->V[(size_t)j * p->r + t];
        s[j] = (DEnt){(p->a ? p->a[i] : 1.0) * d + (p->c ? p->c[j] : 0.0), j};
        if (fabs(s[j].v) > scale) scale = fabs(s[j].v);
    }
    const double tol = 1e-5 * (scale > 1 ? scale : 1);
    double *dense = qk_malloc(M * sizeof(double));
    for (int j = 0; j < M; j++) dense[j] = s[j].v;
    int ambiguous = 0, nact = 0, m = M;
    if (gated) {  // keep only the active entries, in place
        m = 0;
        for (int j = 0; j < M; j++) {
            if (fabs(s[j].v - gate_of(p, j)) <= tol) ambiguous = 1;
            if (s[j].v > gate_of(p, j)) s[m++] = s[j];
        }
        nact = m;
    }
    g_bottom = p->o.bottom;
    qsort(s, m, sizeof(DEnt), cmp_dent);
    int keep = m < k ? m : k;
    if (keep < m && fabs(s[keep - 1].v - s[keep].v) <= tol) ambiguous = 1;
    const int32_t *oi = p->idx + (size_t)i * k;
    const float *ov = p->val + (size_t)i * k;
    if (!ambiguous) {
        for (int t = 0; t < keep; t++) want[t] = s[t].i, got[t] = oi[t];
        qsort(want, keep, sizeof(int), cmp_int);
        qsort(got, keep, sizeof(int), cmp_int);
        for (int t = 0; t < keep; t++)
            cr_assert_eq(got[t], want[t], "row %d: selected set differs at sorted slot %d: %d vs %d", i, t, got[t], want[t]);
        if (gated) cr_assert_eq(p->cnt[i], nact, "row %d: active count %d, dense %d", i, p->cnt[i], nact);
    }
    for (int t = 0; t < keep; t++) {
        cr_assert(oi[t] >= 0 && oi[t] < M, "row %d slot %d: index %d out of range", i, t, oi[t]);
        double want_v = dense[oi[t]];
        if (p->o.act == QK_TOPK_RELU && want_v <= tol) {
            cr_assert(ov[t] == 0.0f || fabs(ov[t] - want_v) <= tol, "row %d slot %d: relu value %g for pre %g", i, t, ov[t], want_v);
            continue;
        }
        cr_assert(fabs(ov[t] - want_v) <= tol, "row %d slot %d (j=%d): value %.9g, dense %.9g", i, t, oi[t], ov[t], want_v);
        if (t > 0 && p->o.act != QK_TOPK_RELU) {  // the output order is the total order
            int ok = p->o.bottom ? (ov[t] > ov[t - 1] || (ov[t] == ov[t - 1] && oi[t] > oi[t - 1]))
                                 : (ov[t] < ov[t - 1] || (ov[t] == ov[t - 1] && oi[t] > oi[t - 1]));
            cr_assert(ok, "row %d slot %d: output not in the total order", i, t);
        }
    }
    for (int t = keep; t < k; t++)
        cr_assert(oi[t] == -1 && ov[t] == 0.0f, "row %d slot %d: unused slot holds (%d, %g)", i, t, oi[t], ov[t]);
    if (p->o.act == QK_TOPK_RELU) {
        int pos = 0;
        for (int t = 0; t < k; t++) pos += ov[t] > 0;
        cr_assert_eq(p->cnt[i], pos, "row %d: count %d but %d positive values", i, p->cnt[i], pos);
        for (int t = 0; t < k; t++)
            cr_assert((t < pos) == (ov[t] > 0), "row %d: positive values are not first", i);
    } else if (!gated) {
        cr_assert_eq(p->cnt[i], keep, "row %d: count %d, want %d", i, p->cnt[i], keep);
    }
    free(dense);
    return ambiguous;
}

// Checks every row; returns the number of ambiguous rows (reported, and bounded by the caller).
static int check_all(const Prob *p) {
    DEnt *s = qk_malloc(p->M * sizeof(DEnt));
    int *want = qk_malloc(p->M * sizeof(int)), *got = qk_malloc(p->M * sizeof(int));
    int amb = 0;
    for (int i = 0; i < p->n; i++) amb += check_row(p, i, s, want, got);
    free(s), free(want), free(got);
    return amb;
}

static void run_and_check(Prob *p, const char *what) {
    prob_run(p);
    int amb = check_all(p);
    cr_log_info("%s: n=%d M=%d r=%d k=%d: %d ambiguous rows", what, p->n, p->M, p->r, p->o.k, amb);
    cr_assert(amb <= p->n / 10, "%s: %d of %d rows ambiguous: the test data is too tie-prone", what, amb, p->n);
}

Test(topk, awkward_sizes_vs_dense) {
    const int ks[] = {1, 7, 33};
    for (int t = 0; t < 3; t++) {
        Prob p;
        prob_random(&p, 37, 1001, 13, 1, 1, 11 + t);
        p.o = (QkTopkOpts){.k = ks[t], .row_block = 8, .col_block = 96};  // 1001 = 10 x 96 + 41
        run_and_check(&p, "plain");
        p.o.bottom = 1;
        run_and_check(&p, "bottom");
        p.o.bottom = 0, p.o.act = QK_TOPK_RELU;
        run_and_check(&p, "relu");
        p.o.row_block = p.o.col_block = 0;  // default tiles too
        p.o.act = QK_TOPK_PLAIN;
        run_and_check(&p, "default-blocks");
        prob_free(&p);
    }
}

Test(topk, k_equals_M_and_n_1) {
    Prob p;
    prob_random(&p, 5, 150, 9, 0, 1, 5);
    p.o = (QkTopkOpts){.k = 150, .col_block = 64};
    run_and_check(&p, "k=M");
    p.o.bottom = 1;
    run_and_check(&p, "k=M bottom");
    prob_free(&p);
    prob_random(&p, 1, 777, 21, 1, 1, 6);
    p.o = (QkTopkOpts){.k = 10, .col_block = 50};
    run_and_check(&p, "n=1");
    p.o.act = QK_TOPK_GATED, p.o.gate = 1.0f;
    run_and_check(&p, "n=1 gated");
    prob_free(&p);
}

Test(topk, relu_negative_rows) {
    Prob p;
    prob_random(&p, 20, 300, 8, 0, 1, 7);
    for (int j = 0; j < p.M; j++) p.c[j] = -1000.0f - j % 7;  // every score is negative
    p.o = (QkTopkOpts){.k = 12, .act = QK_TOPK_RELU, .col_block = 128};
    run_and_check(&p, "relu-negative");
    for (int i = 0; i < p.n; i++) {
        cr_assert_eq(p.cnt[i], 0, "row %d: count %d on an all-negative row", i, p.cnt[i]);
        for (int t = 0; t < p.o.k; t++) cr_assert(p.idx[i * p.o.k + t] >= 0, "relu keeps indices of zeroed entries");
    }
    prob_free(&p);
}

Test(topk, gated_per_column) {
    Prob p;
    prob_random(&p, 40, 517, 16, 1, 1, 8);
    float *gates = qk_malloc(p.M * sizeof(float));
    TRng g = {99};
    for (int j = 0; j < p.M; j++) gates[j] = (float)(4.0 * trng_unif(&g));
    p.o = (QkTopkOpts){.k = 6, .act = QK_TOPK_GATED, .gates = gates, .row_block = 16, .col_block = 100};
    run_and_check(&p, "jumprelu k=6");  // truncated: count > k on most rows
    int truncated = 0;
    for (int i = 0; i < p.n; i++) truncated += p.cnt[i] > p.o.k;
    cr_assert(truncated > 0, "the test should exercise truncation");
    p.o.k = p.M;
    run_and_check(&p, "jumprelu k=M");
    p.o.gates = NULL, p.o.gate = 0.0f, p.o.k = 50;
    run_and_check(&p, "relu-gated");
    free(gates);
    prob_free(&p);
}

// Small integers make every score exact in float: ties are real, and the order must be exactly
// value desc (asc for bottom), index asc, across tile and segment boundaries.
Test(topk, exact_ties) {
    for (int bottom = 0; bottom < 2; bottom++) {
        Prob p = {.n = 3, .M = 400, .r = 5};
        TRng g = {21};
        p.U = qk_malloc(p.n * p.r * sizeof(float));
        p.V = qk_malloc(p.M * p.r * sizeof(float));
        p.c = qk_malloc(p.M * sizeof(float));
        for (int t = 0; t < p.n * p.r; t++) p.U[t] = (float)trng_int(&g, -2, 2);
        for (int t = 0; t < p.M * p.r; t++) p.V[t] = (float)trng_int(&g, -2, 2);
        for (int j = 0; j < p.M; j++) p.c[j] = (float)trng_int(&g, -3, 3);
        p.o = (QkTopkOpts){.k = 60, .bottom = bottom, .row_block = 2, .col_block = 37};
        omp_set_num_threads(2);
        prob_run(&p);
        DEnt *s = qk_malloc(p.M * sizeof(DEnt));
        int boundary_ties = 0;
        for (int i = 0; i < p.n; i++) {
            for (int j = 0; j < p.M; j++) {
                double d = p.c[j];
                for (int t = 0; t < p.r; t++) d += (double)p.U[i * p.r + t] * p.V[j * p.r + t];
                s[j] = (DEnt){d, j};
            }
            g_bottom = bottom;
            qsort(s, p.M, sizeof(DEnt), cmp_dent);
            boundary_ties += s[p.o.k - 1].v == s[p.o.k].v;
            for (int t = 0; t < p.o.k; t++) {
                cr_assert_eq(p.idx[i * p.o.k + t], s[t].i, "row %d slot %d: index %d, want %d", i, t, p.idx[i * p.o.k + t], s[t].i);
                cr_assert_eq(p.val[i * p.o.k + t], (float)s[t].v, "row %d slot %d: value", i, t);
            }
        }
        cr_assert(boundary_ties > 0, "the data should put a tie across the k-th slot");
        free(s);
        prob_free(&p);
    }
}

static void same_at_1_and_2_threads(int n, int M, int r, QkTopkOpts o, uint64_t seed) {
    Prob p1, p2;
    prob_random(&p1, n, M, r, 1, 1, seed);
    prob_random(&p2, n, M, r, 1, 1, seed);
    p1.o = p2.o = o;
    omp_set_num_threads(1);
    prob_run(&p1);
    omp_set_num_threads(2);
    prob_run(&p2);
    size_t nk = (size_t)n * o.k;
    cr_assert(memcmp(p1.idx, p2.idx, nk * sizeof(int32_t)) == 0, "indices differ between 1 and 2 threads (n=%d)", n);
    cr_assert(memcmp(p1.val, p2.val, nk * sizeof(float)) == 0, "values differ between 1 and 2 threads (n=%d)", n);
    cr_assert(memcmp(p1.cnt, p2.cnt, n * sizeof(int32_t)) == 0, "counts differ between 1 and 2 threads (n=%d)", n);
    prob_free(&p1);
    prob_free(&p2);
}

Test(topk, thread_count_invariant) {
    same_at_1_and_2_threads(300, 5000, 40, (QkTopkOpts){.k = 32}, 31);
    same_at_1_and_2_threads(1, 5000, 40, (QkTopkOpts){.k = 32}, 32);  // column segments at 2 threads
    same_at_1_and_2_threads(3, 2000, 17, (QkTopkOpts){.k = 9, .act = QK_TOPK_GATED, .gate = 0.5f, .col_block = 128}, 33);
    same_at_1_and_2_threads(2, 999, 64, (QkTopkOpts){.k = 999, .bottom = 1, .col_block = 100}, 34);
}

Test(topk, bad_arguments) {
    Prob p;
    prob_random(&p, 2, 10, 3, 0, 0, 1);
    int32_t idx[40], cnt[2];
    float val[40];
    struct {
        QkTopkOpts o;
        int ldu;
        const char *needle;
    } cases[] = {
        {{.k = 0}, 3, "k=0"},
        {{.k = 11}, 3, "k=11"},
        {{.k = 2, .bottom = 1, .act = QK_TOPK_RELU}, 3, "bottom"},
        {{.k = 2, .act = (QkTopkAct)7}, 3, "act=7"},
        {{.k = 2}, 2, "ldu=2"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        qk_err_clear();
        int rc = qk_topk(2, 10, 3, p.U, cases[t].ldu, NULL, p.V, NULL, &cases[t].o, idx, val, cnt);
        cr_assert_eq(rc, -1, "case %zu: accepted", t);
        cr_assert(strstr(qk_errmsg(), cases[t].needle), "case %zu: message '%s' lacks '%s'", t, qk_errmsg(), cases[t].needle);
    }
    prob_free(&p);
}

// Top-k and bottom-k from one pass equal two separate calls bit for bit.
Test(topk, top_and_bottom_in_one_pass_equal_separate_calls) {
    TRng g = {77};
    const int n = 37, M = 1001, r = 20, k = 9;
    float *U = qk_malloc(sizeof(float) * n * r), *V = qk_malloc(sizeof(float) * M * r), *a = qk_malloc(sizeof(float) * n),
          *c = qk_malloc(sizeof(float) * M);
    trng_fill_normal(&g, U, (size_t)n * r, 0, 1);
    trng_fill_normal(&g, V, (size_t)M * r, 0, 1);
    trng_fill_normal(&g, a, n, 1, 0.3);
    trng_fill_normal(&g, c, M, 0, 0.5);
    int32_t *i1 = qk_malloc(4 * n * k), *i2 = qk_malloc(4 * n * k), *j1 = qk_malloc(4 * n * k), *j2 = qk_malloc(4 * n * k);
    float *v1 = qk_malloc(4 * n * k), *v2 = qk_malloc(4 * n * k), *w1 = qk_malloc(4 * n * k), *w2 = qk_malloc(4 * n * k);
    QkTopkOpts top = {.k = k, .col_block = 96}, bot = {.k = k, .bottom = 1, .col_block = 96};
    cr_assert_eq(qk_topk(n, M, r, U, r, a, V, c, &top, i1, v1, NULL), 0);
    cr_assert_eq(qk_topk(n, M, r, U, r, a, V, c, &bot, j1, w1, NULL), 0);
    QkTopkOpts both = {.k = k, .col_block = 96, .bottom_idx = j2, .bottom_val = w2};
    cr_assert_eq(qk_topk(n, M, r, U, r, a, V, c, &both, i2, v2, NULL), 0, "%s", qk_errmsg());
    cr_expect_eq(memcmp(i1, i2, 4 * n * k), 0);
    cr_expect_eq(memcmp(v1, v2, 4 * n * k), 0);
    cr_expect_eq(memcmp(j1, j2, 4 * n * k), 0);
    cr_expect_eq(memcmp(w1, w2, 4 * n * k), 0);
    QkTopkOpts bad = {.k = k, .act = QK_TOPK_RELU, .bottom_idx = j2, .bottom_val = w2};
    cr_expect_eq(qk_topk(n, M, r, U, r, a, V, c, &bad, i2, v2, NULL), -1);
    free(U), free(V), free(a), free(c), free(i1), free(i2), free(j1), free(j2), free(v1), free(v2), free(w1), free(w2);
}
