// test_topk_gpu.c: the device bilinear top-k (kernels/analysis/bilinear_topk.h) against host/analysis/topk.c, at
// small and GPT-2-small shapes.  Runs with QK_BACKEND=cuda on a machine with a GPU (make
// test-gpu); skips, saying why, otherwise.
//
// fp32: the same sets as the host except counted near-ties (an index whose score, in double, is
// within the GEMMs' rounding of the host's k-th value), values within that rounding, counts
// equal.  tf32 / bf16: the overlap of their sets with the device fp32 sets is measured and logged.
// Host and device outputs are poisoned before each run.  A failure names the kernel, the
// precision, the shape, the row and slot, and both values.
//
// The fused kernel (kernels/analysis/topk_fused.h): the whole suite runs on it with
// QK_BTK_PATH=fused (every run then asserts that the fused kernel took it, TF32 excepted); the
// fused_* tests run it whatever QK_BTK_PATH says: bf16 against an fp64 reference on bf16-rounded
// operands (same sets except counted near-ties, values within fp32 accumulation), and against
// the GEMM-then-select path at GPT-2-small sizes.
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <string.h>

#include "analysis/bilinear_topk.h"
#include "backend.h"
#include "base/util.h"
#include "model/forward_math.h"
#include "test_common.h"

static QkBtk *g_ctx[3];

static QkBtk *ctx_for(QkPrecision p) {
    test_cuda_gpus("device top-k");
    if (!g_ctx[p]) g_ctx[p] = qk_btk_create(0, p, 0);
    cr_assert(g_ctx[p], "qk_btk_create(%s): %s", qk_precision_name(p), qk_errmsg());
    return g_ctx[p];
}

static QkBtk *g_fz[3][4][3];  // [precision][bf16 flavour + 1][seeding + 1]
static const char *flav_name[3] = {"mma", "wgmma-st", "wgmma"};

// A context that runs the fused kernel whatever QK_BTK_PATH says, on bf16 flavour f (mma,
// wgmma-st, wgmma; -1: the environment's) with seeding on or off (-1: the environment's); NULL
// (after a log line) when the device lacks flavour f.
static QkBtk *fused_ctx_with(QkPrecision p, int f, int seed) {
    ctx_for(p);  // skips without a GPU
    QkBtk **x = &g_fz[p][f + 1][seed + 1];
    if (!*x) *x = qk_btk_create(0, p, 0);
    cr_assert(*x, "qk_btk_create(%s): %s", qk_precision_name(p), qk_errmsg());
    qk_btk_set_path(*x, 1);
    if (seed >= 0) cr_assert_eq(qk_btk_set_fused_seed(*x, seed), 0, "qk_btk_set_fused_seed: %s", qk_errmsg());
    if (f < 0) return *x;
    const int runs = qk_btk_set_fused_mma(*x, flav_name[f]);
    cr_assert(runs >= 0, "qk_btk_set_fused_mma(%s): %s", flav_name[f], qk_errmsg());
    if (!runs) {
#ifdef QK_CUDA_EMU
        fprintf(stderr, "topk_gpu: fused flavour %s: not on the emulated device (sm_90a wgmma / TMA run on a real Hopper "
                        "GPU only): not checked here\n", flav_name[f]);
#else
        fprintf(stderr, "topk_gpu: fused flavour %s: not on this device (mma.sync runs instead): not checked here\n", flav_name[f]);
#endif
        return NULL;
    }
    return *x;
}

static QkBtk *fused_ctx(QkPrecision p) { return fused_ctx_with(p, -1, -1); }
static QkBtk *flavour_ctx(int f, int seed) { return fused_ctx_with(QK_PREC_BF16, f, seed); }
static QkBtk *fp32_ctx(int seed) { return fused_ctx_with(QK_PREC_FP32, -1, seed); }

static void fini(void) {
    for (int p = 0; p < 3; p++) {
        qk_btk_destroy(g_ctx[p]), g_ctx[p] = NULL;
        for (int f = 0; f < 4; f++)
            for (int s = 0; s < 3; s++) qk_btk_destroy(g_fz[p][f][s]), g_fz[p][f][s] = NULL;
    }
}

// One problem: batch x (U [n x r], a [n], V [M x r], c [M]), gates [M] (shared), opts; c shared
// by the problems (c [0..M)) unless c_batched.
typedef struct {
    int batch, n, M, r, c_batched;
    float *U, *a, *V, *c, *gates;
    QkTopkOpts o;
} Prob;

static void prob_make(Prob *p, int batch, int n, int M, int r, int k, uint64_t seed) {
    TRng g = {seed};
    memset(p, 0, sizeof *p);
    p->batch = batch, p->n = n, p->M = M, p->r = r, p->o.k = k;
    p->U = qk_malloc(sizeof(float) * batch * n * r), p->V = qk_malloc(sizeof(float) * batch * M * r);
    p->a = qk_malloc(sizeof(float) * batch * n), p->c = qk_malloc(sizeof(float) * batch * M);
    p->gates = qk_malloc(sizeof(float) * M);
    trng_fill_normal(&g, p->U, (size_t)batch * n * r, 0.1, 1.0);
    trng_fill_normal(&g, p->V, (size_t)batch * M * r, 0.0, 1.0 / sqrt(r));
    for (int i = 0; i < batch * n; i++) p->a[i] = (float)(0.5 + trng_unif(&g));
    trng_fill_normal(&g, p->c, (size_t)batch * M, 0.0, 0.5);
    for (int j = 0; j < M; j++) p->gates[j] = (float)fabs(trng_normal(&g));
}

static void prob_free(Prob *p) { free(p->U), free(p->a), free(p->V), free(p->c), free(p->gates); }

typedef struct {
    int32_t *idx, *cnt, *bidx;
    float *val, *bval;
} Out;

static void out_alloc(Out *o, const Prob *p) {
    size_t nk = (size_t)p->batch * p->n * p->o.k;
    o->idx = qk_malloc(nk * 4), o->val = qk_malloc(nk * 4), o->bidx = qk_malloc(nk * 4), o->bval = qk_malloc(nk * 4);
    o->cnt = qk_malloc((size_t)p->batch * p->n * 4);
    memset(o->idx, 0x5a, nk * 4), memset(o->val, 0x5a, nk * 4), memset(o->bidx, 0x5a, nk * 4);  // poison
    memset(o->bval, 0x5a, nk * 4), memset(o->cnt, 0x5a, (size_t)p->batch * p->n * 4);
}

static void out_free(Out *o) { free(o->idx), free(o->val), free(o->bidx), free(o->bval), free(o->cnt); }

// The host reference: one qk_topk per problem of the batch.
static void run_host(const Prob *p, int both, Out *o) {
    out_alloc(o, p);
    for (int b = 0; b < p->batch; b++) {
        size_t nk = (size_t)b * p->n * p->o.k;
        QkTopkOpts h = p->o;
        if (both) h.bottom_idx = o->bidx + nk, h.bottom_val = o->bval + nk;
        cr_assert_eq(qk_topk(p->n, p->M, p->r, p->U + (size_t)b * p->n * p->r, p->r, p->a + (size_t)b * p->n,
                             p->V + (size_t)b * p->M * p->r, p->c + (p->c_batched ? (size_t)b * p->M : 0), &h, o->idx + nk, o->val + nk, o->cnt + (size_t)b * p->n),
                     0, "qk_topk: %s", qk_errmsg());
    }
}

// The name of the device path ctx's last run took, for failure messages.
static const char *path_name(const QkBtk *ctx) {
    const char *mma = getenv("QK_FUSED_MMA");
    if (!qk_btk_last_path(ctx, NULL)) return "btk_select";
    if (mma && !strcmp(mma, "wgmma")) return "topk_fused (wgmma+TMA if bf16 on sm_90)";
    return mma && !strcmp(mma, "wgmma-st") ? "topk_fused (wgmma, stored operands, if bf16 on sm_90)" : "topk_fused";
}

static void run_dev(QkBtk *ctx, const Prob *p, int both, Out *o) {
    out_alloc(o, p);
    QkTopkOpts d = p->o;
    if (both) d.bottom_idx = o->bidx, d.bottom_val = o->bval;
    QkBtkBatch bt = {p->batch, (long long)p->n * p->r, p->n, (long long)p->M * p->r, p->c_batched ? p->M : 0, 0};
    cr_assert_eq(qk_btk_run_host(ctx, &bt, p->n, p->M, p->r, p->U, p->r, p->a, p->V, p->c, &d, o->idx, o->val, o->cnt),
                 0, "qk_btk_run_host: %s", qk_errmsg());
    const char *path = getenv("QK_BTK_PATH"), *why = NULL;
    if (path && !strcmp(path, "fused") && qk_btk_precision(ctx) != QK_PREC_TF32)
        cr_assert(qk_btk_last_path(ctx, &why), "QK_BTK_PATH=fused, %s [batch %d n %d M %d r %d k %d]: the fused kernel did not run (%s)",
                  qk_precision_name(qk_btk_precision(ctx)), p->batch, p->n, p->M, p->r, p->o.k, why);
}

// Row (b, i)'s score of column j in double, and a bound on the fp32 GEMM's rounding of it.
static double dense(const Prob *p, int b, int i, int j, double *tol) {
    const float *u = p->U + ((size_t)b * p->n + i) * p->r, *v = p->V + ((size_t)b * p->M + j) * p->r;
    double d = 0, mag = 0;
    for (int t = 0; t < p->r; t++) d += (double)u[t] * v[t], mag += fabs((double)u[t] * v[t]);
    const double a = p->a[(size_t)b * p->n + i], cj = p->c[(p->c_batched ? (size_t)b * p->M : 0) + j];
    *tol = 4e-6 * fabs(a) * mag * (1 + sqrt(p->r) / 4) + 1e-6 * fabs(cj) + 1e-30;
    return a * d + cj;
}

static int in_set(const int32_t *s, int k, int32_t j) {
    for (int t = 0; t < k; t++)
        if (s[t] == j) return 1;
    return 0;
}

// Compares device with host, row by row; returns the near-ties counted (entries in one set only
// whose score is within rounding of the boundary).  sign -1: a bottom set.
static int compare(const char *kernel, const Prob *p, const int32_t *hi, const float *hv, const int32_t *di,
                   const float *dv, float sign) {
    const int k = p->o.k;
    int ties = 0;
    for (int b = 0; b < p->batch; b++)
        for (int i = 0; i < p->n; i++) {
            const size_t x = ((size_t)b * p->n + i) * k;
            int kept = 0;
            while (kept < k && hi[x + kept] >= 0) kept++;
            double ktol = 0;  // the host's k-th score, exact (values are post-ReLU)
            const double kth = kept ? dense(p, b, i, hi[x + kept - 1], &ktol) : 0;
            for (int s = 0; s < k; s++) {
                const int32_t j = di[x + s];
                cr_assert((j >= 0 && j < p->M) || (j == -1 && (hi[x + s] == -1 || p->o.act == QK_TOPK_GATED)),
                          "%s [batch %d n %d M %d r %d k %d]: problem %d row %d slot %d: device index %d (host %d) - unwritten or out of range",
                          kernel, p->batch, p->n, p->M, p->r, k, b, i, s, j, hi[x + s]);
                if (j < 0) continue;
                double tol, want = dense(p, b, i, j, &tol);
                if (!(p->o.act == QK_TOPK_RELU && want <= tol))
                    cr_assert(fabs(dv[x + s] - want) <= tol || (isinf(want) && dv[x + s] == want),
                              "%s [batch %d n %d M %d r %d k %d]: problem %d row %d slot %d (j=%d): device value %.9g, exact %.9g (host slot value %.9g)",
                              kernel, p->batch, p->n, p->M, p->r, k, b, i, s, j, dv[x + s], want, hv[x + s]);
                if (in_set(hi + x, k, j)) continue;
                // Only in the device set: must tie with the host's boundary (or its gate) within rounding.
                double d = sign * (want - kth);
                const double gate = p->o.gates ? p->o.gates[j] : p->o.gate;
                if (p->o.act == QK_TOPK_GATED && fabs(want - gate) <= tol) d = 0;
                cr_assert(fabs(d) <= tol + ktol,
                          "%s [batch %d n %d M %d r %d k %d]: problem %d row %d slot %d: device selects j=%d (value %.9g, exact %.9g) that the host does not; host k-th value %.9g (j=%d), gap %.3g > tolerance %.3g",
                          kernel, p->batch, p->n, p->M, p->r, k, b, i, s, j, dv[x + s], want, kth, kept ? hi[x + kept - 1] : -1, d, tol + ktol);
                ties++;
            }
        }
    return ties;
}

// Checks one configuration in fp32 (and its count), then logs tf32 / bf16 overlaps with it.
static void check(const char *name, Prob *p, int both, int other_precisions) {
    Out h, d;
    run_host(p, both, &h);
    run_dev(ctx_for(QK_PREC_FP32), p, both, &d);
    char kernel[160];
    snprintf(kernel, sizeof kernel, "%s%s fp32 %s act %d bottom %d", path_name(ctx_for(QK_PREC_FP32)), both ? "<both>" : "",
             name, (int)p->o.act, p->o.bottom);
    const float sign = p->o.bottom ? -1.0f : 1.0f;
    int ties = compare(kernel, p, h.idx, h.val, d.idx, d.val, sign);
    if (both) ties += compare(kernel, p, h.bidx, h.bval, d.bidx, d.bval, -1.0f);
    const int rows = p->batch * p->n;
    for (int i = 0; i < rows; i++) {
        if (p->o.act == QK_TOPK_GATED) {  // active counts: exact unless a score sits on its gate
            cr_assert(abs(d.cnt[i] - h.cnt[i]) <= 2, "%s: row %d: device active count %d, host %d", kernel, i, d.cnt[i],
                      h.cnt[i]);
            ties += d.cnt[i] != h.cnt[i];
        } else if (p->o.act == QK_TOPK_PLAIN) {
            cr_assert_eq(d.cnt[i], h.cnt[i], "%s: row %d: device count %d, host %d", kernel, i, d.cnt[i], h.cnt[i]);
        }
    }
    cr_log_info("%s [batch %d n %d M %d r %d k %d]: %d near-ties in %d rows", kernel, p->batch, p->n, p->M, p->r, p->o.k,
                ties, rows);
    cr_assert(ties <= rows / 20 + 2, "%s: %d near-ties in %d rows: more than rounding explains", kernel, ties, rows);
    for (int q = QK_PREC_TF32; other_precisions && q <= QK_PREC_BF16; q++) {
        Out o;
        run_dev(ctx_for((QkPrecision)q), p, 0, &o);
        long long same = 0, total = 0;
        for (int i = 0; i < rows; i++)
            for (int s = 0; s < p->o.k; s++) {
                int32_t j = o.idx[(size_t)i * p->o.k + s];
                cr_assert(j >= -1 && j < p->M, "device %s %s: row %d slot %d: index %d out of range",
                          qk_precision_name((QkPrecision)q), name, i, s, j);
                if (d.idx[(size_t)i * p->o.k + s] < 0) continue;
                total++;
                same += j >= 0 && in_set(d.idx + (size_t)i * p->o.k, p->o.k, j);
            }
        double overlap = total ? (double)same / total : 1;
        cr_log_info("overlap %s vs fp32, %s [n %d M %d r %d k %d]: %.4f", qk_precision_name((QkPrecision)q), name, p->n,
                    p->M, p->r, p->o.k, overlap);
        fprintf(stderr, "topk_gpu: overlap %s vs fp32, %s [n %d M %d r %d k %d]: %.4f\n", qk_precision_name((QkPrecision)q),
                name, p->n, p->M, p->r, p->o.k, overlap);
        cr_assert(overlap > 0.5, "device %s %s: overlap with fp32 %.3f: not a rounding effect",
                  qk_precision_name((QkPrecision)q), name, overlap);
        out_free(&o);
    }
    out_free(&h), out_free(&d);
}

TestSuite(topk_gpu, .fini = fini);

Test(topk_gpu, small_shapes_every_k) {
    const int ks[] = {1, 7, 32, 33, 64};
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        Prob p;
        prob_make(&p, 1, 37, 1003, 16, ks[t], 100 + t);
        check("small", &p, 0, 0);
        p.o.bottom = 1;
        check("small", &p, 0, 0);
        prob_free(&p);
    }
}

Test(topk_gpu, awkward_sizes_and_tiles) {
    Prob p;
    prob_make(&p, 1, 1, 4099, 32, 64, 7);  // n = 1, M not a multiple of 4
    check("n=1", &p, 1, 0);
    prob_free(&p);
    prob_make(&p, 1, 130, 777, 48, 5, 8);  // small tiles: many row and column blocks
    p.o.row_block = 9, p.o.col_block = 130;
    check("tiles 9x130", &p, 1, 0);
    p.o.col_block = 3;
    check("tiles 9x3", &p, 0, 0);
    prob_free(&p);
    prob_make(&p, 1, 20, 64, 16, 64, 9);  // k = M
    check("k=M", &p, 0, 0);
    prob_free(&p);
}

Test(topk_gpu, activations_relu_gated_both) {
    Prob p;
    prob_make(&p, 1, 64, 5000, 64, 32, 21);
    p.o.act = QK_TOPK_RELU;
    check("relu", &p, 0, 0);
    for (int i = 0; i < p.n; i++) p.a[i] = -50.0f;  // rows with every score negative
    check("relu, negative rows", &p, 0, 0);
    prob_free(&p);
    prob_make(&p, 1, 64, 5000, 64, 16, 22);
    p.o.act = QK_TOPK_GATED, p.o.gate = 0.0f;
    check("gated, scalar", &p, 0, 0);
    p.o.gates = p.gates;
    check("gated, per column", &p, 0, 0);
    prob_free(&p);
    prob_make(&p, 1, 64, 5000, 64, 32, 23);
    check("top and bottom", &p, 1, 0);
    prob_free(&p);
}

// Small integer operands: every GEMM (any order, fp32, tf32 or bf16) gives the exact dot
// products, so the device must equal the host bit for bit: indices, values, counts, and ties
// (many, and duplicate columns) broken by the lower index.
static void expect_identical(const char *what, const Prob *p, const Out *h, const Out *d, int both) {
    const size_t nk = (size_t)p->batch * p->n * p->o.k;
    for (size_t x = 0; x < nk; x++) {
        cr_assert(h->idx[x] == d->idx[x] && !memcmp(&h->val[x], &d->val[x], 4),
                  "%s: row %zu slot %zu: device (%d, %.9g), host (%d, %.9g)", what, x / p->o.k, x % p->o.k,
                  d->idx[x], d->val[x], h->idx[x], h->val[x]);
        if (both)
            cr_assert(h->bidx[x] == d->bidx[x] && !memcmp(&h->bval[x], &d->bval[x], 4),
                      "%s, both: bottom row %zu slot %zu: device (%d, %.9g), host (%d, %.9g)", what, x / p->o.k,
                      x % p->o.k, d->bidx[x], d->bval[x], h->bidx[x], h->bval[x]);
    }
    for (int i = 0; i < p->batch * p->n; i++)
        cr_assert_eq(d->cnt[i], h->cnt[i], "%s: row %d: device count %d, host %d", what, i, d->cnt[i], h->cnt[i]);
}

static void integer_scores_check(QkBtk *(*ctx)(QkPrecision)) {
    Prob p;
    prob_make(&p, 2, 40, 3001, 32, 32, 71);
    TRng g = {72};
    for (size_t x = 0; x < (size_t)2 * 40 * 32; x++) p.U[x] = (float)trng_int(&g, -2, 2);
    for (size_t x = 0; x < (size_t)2 * 3001 * 32; x++) p.V[x] = (float)trng_int(&g, -2, 2);
    for (int j = 2000; j < 3001; j++) memcpy(p.V + (size_t)j * 32, p.V + (size_t)(j - 2000) * 32, 32 * sizeof(float));
    for (int j = 0; j < 3001; j++) p.c[j] = j < 2000 ? (float)trng_int(&g, -3, 3) * 0.5f : p.c[j - 2000];  // exact ties
    p.o.row_block = 16, p.o.col_block = 700;  // several row and column blocks
    static const QkTopkAct acts[3] = {QK_TOPK_PLAIN, QK_TOPK_RELU, QK_TOPK_GATED};
    for (int q = QK_PREC_FP32; q <= QK_PREC_BF16; q++)
        for (int v = 0; v < 5; v++) {
            p.o.act = acts[v < 3 ? v : 0], p.o.bottom = v == 3, p.o.gates = v == 2 ? p.gates : NULL;
            const int both = v == 4;
            Out h, d;
            run_host(&p, both, &h);
            run_dev(ctx((QkPrecision)q), &p, both, &d);
            char what[128];
            snprintf(what, sizeof what, "%s %s act %d bottom %d, integer scores", path_name(ctx((QkPrecision)q)),
                     qk_precision_name((QkPrecision)q), (int)p.o.act, p.o.bottom);
            expect_identical(what, &p, &h, &d, both);
            out_free(&h), out_free(&d);
        }
    prob_free(&p);
}

Test(topk_gpu, integer_scores_equal_host_bit_for_bit) { integer_scores_check(ctx_for); }

Test(topk_gpu, fused_integer_scores_and_duplicate_columns_equal_host_bit_for_bit) { integer_scores_check(fused_ctx); }

Test(topk_gpu, batched_heads_equal_separate_problems) {
    Prob p;
    prob_make(&p, 3, 50, 3000, 64, 32, 41);
    check("batch of 3", &p, 1, 0);
    prob_free(&p);
}

// GPT-2 small: look-for (r = 64) and SAE encode (r = 768) against m = 32768 features, k = 32.
// One cuBLASLt algorithm is pinned per GEMM problem, and a problem is everything the heuristic
// saw: the tiles of M 300 in column blocks of 200 end with one 100 columns wide, the shape of
// M 100's only tile, but in rows of 200 (ldc) instead of 100.  (The emulated cuBLASLt refuses an
// algorithm used for another problem; the key once lacked ldc and the batch strides.)
Test(topk_gpu, gemm_algorithm_pinned_per_problem) {
    qk_btk_set_path(ctx_for(QK_PREC_FP32), 0);
    const int M[3] = {100, 300, 300}, cb[3] = {100, 200, 200}, batch[3] = {1, 1, 2};
    for (int t = 0; t < 3; t++) {
        Prob p;
        prob_make(&p, batch[t], 40, M[t], 64, 8, 91 + t);
        p.o.col_block = cb[t];
        char name[64];
        snprintf(name, sizeof name, "M %d col_block %d batch %d", M[t], cb[t], batch[t]);
        check(name, &p, 0, 0);
        prob_free(&p);
    }
}

Test(topk_gpu, gpt2_small_shapes, .timeout = 240) {
    Prob p;
    prob_make(&p, 1, TEST_GPU_ROWS(256, 32), 32768, 64, 32, 51);
    check("look-for r=64", &p, 1, 1);
    prob_free(&p);
    prob_make(&p, 1, TEST_GPU_ROWS(128, 16), 32768, 768, 32, 52);
    p.o.act = QK_TOPK_RELU;
    check("SAE encode r=768", &p, 0, 1);
    prob_free(&p);
}

Test(topk_gpu, bad_arguments_are_errors) {
    QkBtk *ctx = ctx_for(QK_PREC_FP32);
    float U[64] = {0}, V[64] = {0}, val[128];
    int32_t idx[128];
    QkTopkOpts o = {.k = 65};
    cr_assert_eq(qk_btk_run_host(ctx, NULL, 1, 4, 16, U, 16, NULL, V, NULL, &o, idx, val, NULL), -1);
    cr_assert(strstr(qk_errmsg(), "k=65") != NULL, "%s", qk_errmsg());
    o.k = 1, o.bottom = 1, o.act = QK_TOPK_RELU;
    cr_assert_eq(qk_btk_run_host(ctx, NULL, 1, 4, 16, U, 16, NULL, V, NULL, &o, idx, val, NULL), -1);
    cr_assert_eq(qk_btk_run(ctx, NULL, 1, 4, 20, U, 20, NULL, V, NULL, &(QkTopkOpts){.k = 1}, idx, val, NULL), -1);
    cr_assert(strstr(qk_errmsg(), "multiple of 16") != NULL, "%s", qk_errmsg());
}

// `qkscope static` on CUDA (QkBackend.static_maps) equals the host maps, near-ties counted.
Test(topk_gpu, static_maps_backend_equals_host) {
    ctx_for(QK_PREC_FP32);  // skips without a GPU
    QkBackend *be = NULL;
    cr_assert_eq(qk_backend_open(&be, QK_BACKEND_CUDA, 0, 1), 0, "%s", qk_errmsg());
    cr_assert(be->static_maps, "the CUDA backend has no static_maps");
    Prob p;
    const int m = 3000, dh = 64, k = 16;
    prob_make(&p, 1, m, m, dh, k, 61);
    HeadTables t;
    memset(&t, 0, sizeof t);
    t.m = m, t.qk.d_head = dh, t.Qd = p.U, t.Kd = p.V;
    t.key_prior = p.c;
    StaticMaps hs, ds;
    cr_assert_eq(static_maps_compute(&hs, &t, k, NULL, QK_PREC_FP32), 0, "%s", qk_errmsg());
    cr_assert_eq(static_maps_compute(&ds, &t, k, be, QK_PREC_FP32), 0, "%s", qk_errmsg());
    for (int i = 0; i < m; i++) p.a[i] = 1.0f / sqrtf((float)dh);
    memset(p.c, 0, sizeof(float) * m);
    int ties = compare("static q2k fp32", &p, hs.q2k_idx, hs.q2k_val, ds.q2k_idx, ds.q2k_val, 1.0f);
    float *swap = p.U;
    p.U = p.V, p.V = swap;
    ties += compare("static k2q fp32", &p, hs.k2q_idx, hs.k2q_val, ds.k2q_idx, ds.k2q_val, 1.0f);
    p.V = p.U, p.U = swap;
    cr_assert(!memcmp(hs.prior_idx, ds.prior_idx, sizeof(int32_t) * k), "key prior top-k differs");
    cr_log_info("static maps m %d: %d near-ties", m, ties);
    static_maps_free(&hs), static_maps_free(&ds);
    // k beyond the device's 64: the backend declines, the host computes (bit for bit the host's).
    cr_assert_eq(static_maps_compute(&hs, &t, 70, NULL, QK_PREC_FP32), 0, "%s", qk_errmsg());
    cr_assert_eq(static_maps_compute(&ds, &t, 70, be, QK_PREC_FP32), 0, "%s", qk_errmsg());
    cr_assert(!memcmp(hs.q2k_idx, ds.q2k_idx, sizeof(int32_t) * m * 70), "k = 70: not the host's maps");
    static_maps_free(&hs), static_maps_free(&ds);
    qk_backend_close(be);
    prob_free(&p);
}

// ---------------------------------------------------------------------------------------------
// The fused kernel (kernels/analysis/topk_fused_kernel.cuh), whatever QK_BTK_PATH says; its bf16
// runs take the wgmma flavours with QK_FUSED_MMA=wgmma (TMA) or wgmma-st on a compute capability
// 9.0 device, and seed their thresholds unless QK_FUSED_SEED=0 (the fused_flavour_* and
// fused_seeding_* tests set both per context, whatever the environment says).

// U and V rounded to bf16 in place: the host's fp32 top-k of these operands is then the exact
// reference of a bf16 run, which differs from it only by the order of its fp32 accumulation.
static void prob_round_bf16(Prob *p) {
    for (size_t x = 0; x < (size_t)p->batch * p->n * p->r; x++) p->U[x] = qk_bf16_round(p->U[x]);
    for (size_t x = 0; x < (size_t)p->batch * p->M * p->r; x++) p->V[x] = qk_bf16_round(p->V[x]);
}

// The fused kernel in precision q (seeding: 1 on, 0 off, -1 as the environment says) against the
// host on the same operands: same sets except counted near-ties, values within accumulation
// rounding, counts as check() wants them.
static void check_fused_seeding(const char *name, Prob *p, QkPrecision q, int seed, int both) {
    Out h, d;
    run_host(p, both, &h);
    QkBtk *ctx = fused_ctx_with(q, -1, seed);
    run_dev(ctx, p, both, &d);
    const char *why = NULL;
    cr_assert(qk_btk_last_path(ctx, &why), "%s %s [batch %d n %d M %d r %d k %d]: the fused kernel declined: %s", name,
              qk_precision_name(q), p->batch, p->n, p->M, p->r, p->o.k, why);
    char kernel[200];
    snprintf(kernel, sizeof kernel, "%s <%s%s> %s act %d bottom %d", path_name(ctx), qk_precision_name(q),
             both ? ",both" : "", name, (int)p->o.act, p->o.bottom);
    int ties = compare(kernel, p, h.idx, h.val, d.idx, d.val, p->o.bottom ? -1.0f : 1.0f);
    if (both) ties += compare(kernel, p, h.bidx, h.bval, d.bidx, d.bval, -1.0f);
    const int rows = p->batch * p->n;
    for (int i = 0; i < rows; i++) {
        if (p->o.act == QK_TOPK_GATED) {
            cr_assert(abs(d.cnt[i] - h.cnt[i]) <= 2, "%s: row %d: device active count %d, host %d", kernel, i, d.cnt[i], h.cnt[i]);
            ties += d.cnt[i] != h.cnt[i];
        } else if (p->o.act == QK_TOPK_PLAIN) {
            cr_assert_eq(d.cnt[i], h.cnt[i], "%s: row %d: device count %d, host %d", kernel, i, d.cnt[i], h.cnt[i]);
        }
    }
    fprintf(stderr, "topk_gpu: %s [batch %d n %d M %d r %d k %d]: %d near-ties in %d rows\n", kernel, p->batch, p->n, p->M,
            p->r, p->o.k, ties, rows);
    cr_assert(ties <= rows / 20 + 2, "%s: %d near-ties in %d rows: more than rounding explains", kernel, ties, rows);
    out_free(&h), out_free(&d);
}

static void check_fused(const char *name, Prob *p, QkPrecision q, int both) { check_fused_seeding(name, p, q, -1, both); }

// m not a multiple of the tile, n = 1, n not a multiple of 64, k = 1 and 64, k = M, r = 16 .. 768,
// a batch; every activation, bottom, top + bottom; ReLU rows with every score negative.
Test(topk_gpu, fused_awkward_shapes_every_activation, .timeout = 600) {
    static const int shapes[][5] = {  // batch, n, M, r, k
        {1, 1, 4099, 64, 64}, {1, 130, 777, 48, 5}, {1, 37, 1003, 16, 1}, {1, 65, 64, 16, 64},
        {1, 200, 65, 32, 33}, {3, 50, 3000, 64, 32}, {1, 64, 5000, 768, 32}};
    for (int q = QK_PREC_FP32; q <= QK_PREC_BF16; q += QK_PREC_BF16 - QK_PREC_FP32)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int *z = shapes[s];
            Prob p;
            prob_make(&p, z[0], z[1], z[2], z[3], z[4], 900 + s);
            if (q == QK_PREC_BF16) prob_round_bf16(&p);
            char name[64];
            snprintf(name, sizeof name, "shape %zu", s);
            check_fused(name, &p, (QkPrecision)q, 0);
            p.o.bottom = 1;
            check_fused(name, &p, (QkPrecision)q, 0);
            p.o.bottom = 0;
            check_fused(name, &p, (QkPrecision)q, 1);
            p.o.act = QK_TOPK_RELU;
            check_fused(name, &p, (QkPrecision)q, 0);
            p.o.act = QK_TOPK_GATED, p.o.gates = p.gates;
            check_fused(name, &p, (QkPrecision)q, 0);
            p.o.gates = NULL, p.o.gate = 0.25f;
            check_fused(name, &p, (QkPrecision)q, 0);
            p.o.act = QK_TOPK_RELU;
            for (int j = 0; j < p.M; j++) p.c[j] = -100.0f - fabsf(p.c[j]);  // every score negative: count 0
            check_fused("relu, every score negative", &p, (QkPrecision)q, 0);
            prob_free(&p);
        }
}

// NaN operands: a row of U all NaN (every score NaN: nothing selected, count 0), a row with one
// NaN, a column of V with one NaN (never selected).
Test(topk_gpu, fused_nan_scores_never_selected) {
    for (int q = QK_PREC_FP32; q <= QK_PREC_BF16; q += QK_PREC_BF16 - QK_PREC_FP32) {
        Prob p;
        prob_make(&p, 1, 70, 1000, 64, 16, 990);
        if (q == QK_PREC_BF16) prob_round_bf16(&p);  // the exact scores are those of the operands the kernel multiplies
        for (int t = 0; t < 64; t++) p.U[3 * 64 + t] = NAN;
        p.U[5 * 64 + 17] = NAN, p.V[7 * 64 + 9] = NAN;
        check_fused("NaN", &p, (QkPrecision)q, 0);
        check_fused("NaN", &p, (QkPrecision)q, 1);
        p.o.bottom = 1;
        check_fused("NaN", &p, (QkPrecision)q, 0);
        prob_free(&p);
    }
}

// GPT-2-small sizes, m = 32768, k = 32: the fused bf16 kernel against the GEMM-then-select path
// (cuBLASLt bf16 GEMM + btk_select) on the same bf16 operands; exact values in fp64 judge every
// difference.
Test(topk_gpu, fused_bf16_equals_gemm_path_gpt2_small, .timeout = 600) {
    static const int shapes[][2] = {{TEST_GPU_ROWS(4096, 128), 64}, {TEST_GPU_ROWS(1024, 32), 768}};  // n, r
    QkBtk *fused = fused_ctx(QK_PREC_BF16), *gemm = qk_btk_create(0, QK_PREC_BF16, 0);
    cr_assert(gemm, "%s", qk_errmsg());
    qk_btk_set_path(gemm, 0);
    for (int s = 0; s < 2; s++) {
        Prob p;
        prob_make(&p, 1, shapes[s][0], 32768, shapes[s][1], 32, 77 + s);
        prob_round_bf16(&p);
        Out g, f;
        double t0 = qk_now();
        run_dev(gemm, &p, 1, &g);
        double t1 = qk_now();
        run_dev(fused, &p, 1, &f);
        double t2 = qk_now();
        cr_assert(qk_btk_last_path(fused, NULL) && !qk_btk_last_path(gemm, NULL), "paths not as asked");
        char kernel[128];
        snprintf(kernel, sizeof kernel, "%s <bf16,both> vs GEMM path, r %d", path_name(fused), p.r);
        const int ties = compare(kernel, &p, g.idx, g.val, f.idx, f.val, 1.0f) + compare(kernel, &p, g.bidx, g.bval, f.bidx, f.bval, -1.0f);
        for (int i = 0; i < p.n; i++) cr_assert_eq(f.cnt[i], g.cnt[i], "%s: row %d: count %d, GEMM path %d", kernel, i, f.cnt[i], g.cnt[i]);
        fprintf(stderr, "topk_gpu: %s [n %d M %d k 32]: %d near-ties; host-pointer calls (with transfers) GEMM path %.3f s, fused %.3f s\n",
                kernel, p.n, p.M, ties, t1 - t0, t2 - t1);
        cr_assert(ties <= p.n / 20 + 2, "%s: %d near-ties in %d rows", kernel, ties, p.n);
        out_free(&g), out_free(&f);
        prob_free(&p);
    }
    qk_btk_destroy(gemm);
}

// Integer operands (exact dot products in any order, fp32 or bf16), c in halves: exact ties
// everywhere; the last third of V's rows (and their c) copies the first: duplicate columns.
static void int_prob(Prob *p, int batch, int n, int M, int r, int k, uint64_t seed) {
    prob_make(p, batch, n, M, r, k, seed);
    TRng g = {seed + 1};
    p->c_batched = batch > 1;
    for (size_t x = 0; x < (size_t)batch * n * r; x++) p->U[x] = (float)trng_int(&g, -2, 2);
    for (size_t x = 0; x < (size_t)batch * M * r; x++) p->V[x] = (float)trng_int(&g, -2, 2);
    for (size_t x = 0; x < (size_t)batch * M; x++) p->c[x] = (float)trng_int(&g, -6, 6) * 0.5f;
    const int dup = M / 3;
    for (int b = 0; b < batch; b++)
        for (int j = M - dup; j < M; j++) {
            memcpy(p->V + ((size_t)b * M + j) * r, p->V + ((size_t)b * M + j - (M - dup)) * r, sizeof(float) * r);
            p->c[(size_t)b * M + j] = p->c[(size_t)b * M + j - (M - dup)];
        }
}

// The awkward shapes of the seeding and flavour checks: batch, n, M, r, k (M not a multiple of the
// tile, M just past it, n = 1, k = 1 and 64, r = 16 .. 768, batches with their own c).
static const int seed_shapes[][5] = {{1, 1, 4099, 64, 64}, {1, 130, 777, 64, 1}, {1, 65, 65, 768, 64},
                                     {3, 50, 3000, 64, 32}, {1, 64, 2000, 768, 32}, {2, 70, 200, 16, 33}};
#define N_SEED_SHAPES (int)(sizeof seed_shapes / sizeof seed_shapes[0])

// Every activation of problem p on ctx against the host, bit for bit (integer scores).
static void flavour_equals_host(QkBtk *ctx, Prob *p, const char *what) {
    static const QkTopkAct acts[3] = {QK_TOPK_PLAIN, QK_TOPK_RELU, QK_TOPK_GATED};
    for (int v = 0; v < 6; v++) {
        p->o.act = acts[v < 3 ? v : 0], p->o.bottom = v == 3, p->o.gates = v == 2 ? p->gates : NULL;
        const int both = v == 4;
        float *keep = NULL;
        if (v == 5) {  // ReLU with every score negative: count 0, the k largest (negative) indices
            p->o.act = QK_TOPK_RELU;
            keep = qk_malloc(sizeof(float) * p->batch * p->M);
            memcpy(keep, p->c, sizeof(float) * p->batch * p->M);
            for (int j = 0; j < p->batch * p->M; j++) p->c[j] = -1000.0f + p->c[j];
        }
        Out h, d;
        run_host(p, both, &h);
        run_dev(ctx, p, both, &d);
        cr_assert(qk_btk_last_path(ctx, NULL), "%s: the fused kernel declined", what);
        char name[256];
        snprintf(name, sizeof name, "%s [batch %d n %d M %d r %d k %d] act %d bottom %d both %d", what, p->batch, p->n, p->M,
                 p->r, p->o.k, (int)p->o.act, p->o.bottom, both);
        expect_identical(name, p, &h, &d, both);
        out_free(&h), out_free(&d);
        if (keep) memcpy(p->c, keep, sizeof(float) * p->batch * p->M), free(keep);
    }
    p->o.act = QK_TOPK_PLAIN, p->o.bottom = 0, p->o.gates = NULL;
}

// Every bf16 flavour (mma.sync, wgmma with stored operands, wgmma fed by TMA), seeded and not,
// equals the host bit for bit on integer scores with exact ties and duplicate columns, at the
// awkward shapes: the TMA boxes' zero fill (n, M and r tails), the seed tile's gather and skip
// mask, the ring's phases over thousands of tiles.
Test(topk_gpu, fused_flavour_every_bf16_kernel_seeded_or_not_equals_host, .timeout = 600) {
    for (int f = 0; f < 3; f++)
        for (int seed = 0; seed < 2; seed++) {
            QkBtk *ctx = flavour_ctx(f, seed);
            if (!ctx) continue;
            for (int s = 0; s < N_SEED_SHAPES; s++) {
                const int *z = seed_shapes[s];
                Prob p;
                int_prob(&p, z[0], z[1], z[2], z[3], z[4], 700 + s);
                char what[96];
                snprintf(what, sizeof what, "topk_fused bf16 flavour %s seeding %d, integer scores", flav_name[f], seed);
                flavour_equals_host(ctx, &p, what);
                prob_free(&p);
            }
        }
}

// Seeding changes which scores survive, never the output: seeded and unseeded runs of every flavour
// give the same bits on random operands (fp32 and bf16), and the seeded one stands against the
// host as check_fused wants.
Test(topk_gpu, fused_seeding_on_and_off_identical, .timeout = 600) {
    for (int s = 0; s < N_SEED_SHAPES; s++) {
        const int *z = seed_shapes[s];
        Prob p;
        prob_make(&p, z[0], z[1], z[2], z[3], z[4], 800 + s);
        p.c_batched = z[0] > 1;
        prob_round_bf16(&p);
        for (int f = -1; f < 3; f++) {  // -1: fp32
            QkBtk *on = f < 0 ? fp32_ctx(1) : flavour_ctx(f, 1), *off = f < 0 ? fp32_ctx(0) : flavour_ctx(f, 0);
            if (!on) continue;
            for (int v = 0; v < 3; v++) {  // top, top + bottom, bottom
                p.o.bottom = v == 2;
                Out a, b;
                run_dev(on, &p, v == 1, &a);
                run_dev(off, &p, v == 1, &b);
                cr_assert(qk_btk_last_path(on, NULL) && qk_btk_last_path(off, NULL), "the fused kernel declined");
                char what[200];
                snprintf(what, sizeof what, "topk_fused %s seeded vs unseeded [batch %d n %d M %d r %d k %d] bottom %d both %d",
                         f < 0 ? "fp32" : flav_name[f], p.batch, p.n, p.M, p.r, p.o.k, p.o.bottom, v == 1);
                expect_identical(what, &p, &a, &b, v == 1);
                out_free(&a), out_free(&b);
            }
            p.o.bottom = 0;
        }
        check_fused_seeding("seeded", &p, QK_PREC_BF16, 1, 1);
        check_fused_seeding("seeded", &p, QK_PREC_FP32, 1, 0);
        prob_free(&p);
    }
}
