// test_select.c: the selection rules of the device bilinear top-k (kernels/analysis/select.h), run by a
// 32-lane emulation of btk_select (kernels/analysis/bilinear_topk.cu, step for step: float4 steps,
// ballot-ordered buffer, merges, column blocks, outputs) and compared bit for bit with
// host/analysis/topk.c.  With r = 1 and U = 1 the scores are exactly V's values, so both see the same
// numbers and adversarial orders can be written directly.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "analysis/select.h"
#include "analysis/topk.h"
#include "base/util.h"
#include "test_common.h"

#define W QK_SEL_WARP

typedef struct {
    uint64_t q0[W], q1[W], thr;
    int nb;
    uint64_t buf[QK_SEL_BUF];
} EmuQueue;

static void emu_threshold(EmuQueue *w, int k) { w->thr = (qk_sel_thr_in_q1(k) ? w->q1 : w->q0)[qk_sel_thr_lane(k)]; }

static void emu_stage(uint64_t x[W], int size, int stride) {
    uint64_t y[W];
    for (int l = 0; l < W; l++) y[l] = qk_sel_cmpx(x[l], x[l ^ stride], qk_sel_keeps_max(l, size, stride));
    memcpy(x, y, sizeof y);
}
static void emu_sort32(uint64_t x[W]) {
    for (int size = 2; size <= W; size *= 2)
        for (int stride = size / 2; stride > 0; stride /= 2) emu_stage(x, size, stride);
}
static void emu_merge32(uint64_t x[W]) {
    for (int stride = W / 2; stride > 0; stride /= 2) emu_stage(x, 2 * W, stride);
}

// wq_merge
static void emu_merge(EmuQueue *w, int k) {
    uint64_t b[W], m[W], hi[W], lo[W];
    for (int l = 0; l < W; l++) b[l] = l < w->nb ? w->buf[l] : QK_SEL_EMPTY;
    for (int base = 0; base + W < w->nb; base += W) {
        uint64_t x[W];
        for (int l = 0; l < W; l++) x[l] = base + W + l < w->nb ? w->buf[base + W + l] : QK_SEL_EMPTY;
        for (int l = 0; l < W; l++)
            if (base + W + l < w->nb) w->buf[base + l] = x[l];
    }
    w->nb = w->nb > W ? w->nb - W : 0;
    emu_sort32(b);
    for (int l = 0; l < W; l++) m[l] = qk_sel_cmpx(w->q1[l], b[l ^ QK_SEL_MIRROR], 1);
    emu_merge32(m);
    for (int l = 0; l < W; l++) {
        hi[l] = qk_sel_cmpx(w->q0[l], m[l ^ QK_SEL_MIRROR], 1);
        lo[l] = qk_sel_cmpx(w->q0[l], m[l ^ QK_SEL_MIRROR], 0);
    }
    emu_merge32(hi), emu_merge32(lo);
    memcpy(w->q0, hi, sizeof hi), memcpy(w->q1, lo, sizeof lo);
    emu_threshold(w, k);
}

// wq_push
static void emu_push(EmuQueue *w, const uint64_t key[W]) {
    uint32_t ballot = 0;
    for (int l = 0; l < W; l++) ballot |= (uint32_t)qk_sel_passes(key[l], w->thr) << l;
    for (int l = 0; l < W; l++)
        if (ballot >> l & 1) {
            int slot = qk_sel_buf_slot(w->nb, ballot, l);
            cr_assert(slot < QK_SEL_BUF, "buffer overflow: slot %d", slot);
            w->buf[slot] = key[l];
        }
    w->nb += __builtin_popcount(ballot);
}

// wq_output: returns the count of counted slots.
static int emu_output(const EmuQueue *w, int k, float sign, int relu, int32_t *idx, float *val) {
    int counted = 0;
    for (int s = 0; s < k; s++) counted += qk_sel_output(s < W ? w->q0[s] : w->q1[s - W], sign, relu, &idx[s], &val[s]);
    return counted;
}

// One row of btk_select over every column block: scores dot[j] (the GEMM's), a_i, c, gates.
typedef struct {
    int k, cb, both, bottom;
    QkTopkAct act;
    float gate;
    const float *gates, *c;
} EmuOpts;

static void emu_row(const EmuOpts *o, int M, const float *dot, float ai, int32_t *idx, float *val, int32_t *count,
                    int32_t *bidx, float *bval) {
    static EmuQueue top, bot;
    const float sign = o->bottom ? -1.0f : 1.0f;
    const int gated = o->act == QK_TOPK_GATED;
    unsigned act = 0;
    for (int j0 = 0; j0 < M; j0 += o->cb) {
        const int cols = M - j0 < o->cb ? M - j0 : o->cb;
        if (j0 == 0) {  // wq_load with first
            memset(&top, 0, sizeof top), memset(&bot, 0, sizeof bot);
            emu_threshold(&top, o->k), emu_threshold(&bot, o->k);
        }
        top.nb = bot.nb = 0;
        for (int base = 0; base < cols; base += W * QK_SEL_VEC) {
            uint64_t key[QK_SEL_VEC][W], keyb[QK_SEL_VEC][W];
            int any = 0;
            for (int l = 0; l < W; l++) {
                const int t = base + QK_SEL_VEC * l;
                for (int e = 0; e < QK_SEL_VEC; e++) {
                    const int ok = t + e < cols, j = j0 + t + e;
                    const float cj = o->c && ok ? o->c[j] : 0.0f, gj = o->gates && ok ? o->gates[j] : o->gate;
                    const float v = qk_sel_score(ok ? dot[j] : 0.0f, ai, cj);
                    act += gated && ok && v > gj;
                    key[e][l] = ok ? qk_sel_key(v, j, sign, gated, gj) : QK_SEL_EMPTY;
                    keyb[e][l] = ok ? qk_sel_key(v, j, -1.0f, 0, 0.0f) : QK_SEL_EMPTY;
                    any |= qk_sel_passes(key[e][l], top.thr) | (o->both && qk_sel_passes(keyb[e][l], bot.thr));
                }
            }
            if (!any) continue;
            for (int e = 0; e < QK_SEL_VEC; e++) {
                emu_push(&top, key[e]);
                if (o->both) emu_push(&bot, keyb[e]);
            }
            while (top.nb >= W) emu_merge(&top, o->k);
            while (o->both && bot.nb >= W) emu_merge(&bot, o->k);
        }
        if (top.nb) emu_merge(&top, o->k);
        if (o->both && bot.nb) emu_merge(&bot, o->k);
    }
    int counted = emu_output(&top, o->k, sign, o->act == QK_TOPK_RELU, idx, val);
    if (o->both) emu_output(&bot, o->k, -1.0f, 0, bidx, bval);
    *count = gated ? (int32_t)act : counted;
}

// Runs the emulation and qk_topk (r = 1, U = 1, V = scores) on rows with scales a[i]; asserts
// the same bits.  gates / c may be NULL.
static void compare(const char *what, int M, const float *scores, int n, const float *a, const float *c, EmuOpts o) {
    const int k = o.k;
    float *ones = qk_malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) ones[i] = 1.0f;
    int32_t *hi = qk_malloc((size_t)n * k * 4), *ei = qk_malloc((size_t)n * k * 4), hc[64], ec[64];
    float *hv = qk_malloc((size_t)n * k * 4), *ev = qk_malloc((size_t)n * k * 4);
    int32_t *hbi = qk_malloc((size_t)n * k * 4), *ebi = qk_malloc((size_t)n * k * 4);
    float *hbv = qk_malloc((size_t)n * k * 4), *ebv = qk_malloc((size_t)n * k * 4);
    cr_assert(n <= 64);
    QkTopkOpts h = {.k = k, .bottom = o.bottom, .act = o.act, .gate = o.gate, .gates = o.gates};
    if (o.both) h.bottom_idx = hbi, h.bottom_val = hbv;
    o.c = c;
    cr_assert_eq(qk_topk(n, M, 1, ones, 1, a, scores, c, &h, hi, hv, hc), 0, "%s", qk_errmsg());
    for (int i = 0; i < n; i++)
        emu_row(&o, M, scores, a ? a[i] : 1.0f, ei + (size_t)i * k, ev + (size_t)i * k, &ec[i], ebi + (size_t)i * k,
                ebv + (size_t)i * k);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(ec[i], hc[i], "%s (M %d k %d cb %d act %d): row %d count %d, host %d", what, M, k, o.cb, (int)o.act,
                     i, ec[i], hc[i]);
        for (int s = 0; s < k; s++) {
            size_t x = (size_t)i * k + s;
            cr_assert(ei[x] == hi[x] && !memcmp(&ev[x], &hv[x], 4),
                      "%s (M %d k %d cb %d act %d bottom %d): row %d slot %d: emulated (%d, %.9g), host (%d, %.9g)", what,
                      M, k, o.cb, (int)o.act, o.bottom, i, s, ei[x], ev[x], hi[x], hv[x]);
            if (o.both)
                cr_assert(ebi[x] == hbi[x] && !memcmp(&ebv[x], &hbv[x], 4),
                          "%s (M %d k %d cb %d): bottom row %d slot %d: emulated (%d, %.9g), host (%d, %.9g)", what, M, k,
                          o.cb, i, s, ebi[x], ebv[x], hbi[x], hbv[x]);
        }
    }
    free(ones), free(hi), free(ei), free(hv), free(ev), free(hbi), free(ebi), free(hbv), free(ebv);
}

// Rows: scale +1, -1 (reverses the order), 0.5, and -0 (all scores +-0).
static const float k_scales[4] = {1.0f, -1.0f, 0.5f, -0.0f};

typedef enum { ORD_RANDOM, ORD_ASCENDING, ORD_DESCENDING, ORD_EQUAL, ORD_FEW_VALUES, ORD_NAN, ORD_INF_ZERO } Order;
static const char *const k_orders[] = {"random", "ascending", "descending", "all equal", "ties", "NaN", "inf/zero"};

static void fill(Order ord, float *x, int M, TRng *g) {
    for (int j = 0; j < M; j++) {
        switch (ord) {
        case ORD_RANDOM: x[j] = (float)trng_normal(g); break;
        case ORD_ASCENDING: x[j] = (float)j; break;
        case ORD_DESCENDING: x[j] = (float)(M - j); break;
        case ORD_EQUAL: x[j] = 1.5f; break;
        case ORD_FEW_VALUES: x[j] = (float)trng_int(g, -1, 2); break;
        case ORD_NAN: x[j] = trng_unif(g) < 0.6 ? NAN : (float)trng_normal(g); break;
        case ORD_INF_ZERO: {
            static const float v[5] = {INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f};
            x[j] = v[trng_int(g, 0, 4)];
            break;
        }
        }
    }
}

Test(select, key_order_is_the_total_order) {
    const float v[] = {-INFINITY, -3.0f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, INFINITY};
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++)
            for (int ia = 0; ia < 3; ia++)
                for (int ib = 0; ib < 3; ib++) {
                    uint64_t ka = qk_sel_pack(v[a], ia * 70000), kb = qk_sel_pack(v[b], ib * 70000);
                    int want = v[a] > v[b] || (v[a] == v[b] && ia < ib);
                    cr_assert_eq(ka > kb, want, "(%g, %d) vs (%g, %d)", v[a], ia, v[b], ib);
                    cr_assert(qk_sel_unpack_i(ka) == ia * 70000 && qk_sel_unpack_v(ka) == v[a]);
                    cr_assert(ka > QK_SEL_EMPTY);
                }
    cr_assert_eq(qk_sel_key(NAN, 3, 1.0f, 0, 0.0f), QK_SEL_EMPTY);
    cr_assert_eq(qk_sel_key(NAN, 3, -1.0f, 0, 0.0f), QK_SEL_EMPTY);
    cr_assert_eq(qk_sel_key(0.5f, 3, 1.0f, 1, 0.5f), QK_SEL_EMPTY, "a gated score must be above its gate");
    cr_assert_neq(qk_sel_key(0.5f, 3, 1.0f, 1, 0.25f), QK_SEL_EMPTY);
}

Test(select, bitonic_networks_sort_and_merge) {
    TRng g = {7};
    for (int rep = 0; rep < 200; rep++) {
        uint64_t x[W], want[W], q0[W], q1[W];
        for (int l = 0; l < W; l++) x[l] = rep % 3 ? trng_u64(&g) : trng_u64(&g) % 4;  // many equal keys too
        memcpy(want, x, sizeof x);
        for (int a = 0; a < W; a++)  // insertion sort, descending
            for (int b = a; b > 0 && want[b] > want[b - 1]; b--) {
                uint64_t t = want[b];
                want[b] = want[b - 1], want[b - 1] = t;
            }
        emu_sort32(x);
        cr_assert(!memcmp(x, want, sizeof x), "rep %d: bitonic sort differs", rep);
        // A queue merge keeps the top 64 of 64 + 32 in order.
        EmuQueue w;
        memset(&w, 0, sizeof w);
        uint64_t all[96];
        for (int t = 0; t < 64; t++) all[t] = trng_u64(&g) >> (rep % 2 ? 0 : 60);
        for (int a = 0; a < 64; a++)
            for (int b = a; b > 0 && all[b] > all[b - 1]; b--) {
                uint64_t t = all[b];
                all[b] = all[b - 1], all[b - 1] = t;
            }
        memcpy(q0, all, sizeof q0), memcpy(q1, all + 32, sizeof q1);
        memcpy(w.q0, q0, sizeof q0), memcpy(w.q1, q1, sizeof q1);
        for (int l = 0; l < W; l++) w.buf[l] = all[64 + l] = trng_u64(&g) >> (rep % 2 ? 0 : 60);
        w.nb = W;
        emu_merge(&w, 64);
        for (int a = 0; a < 96; a++)
            for (int b = a; b > 0 && all[b] > all[b - 1]; b--) {
                uint64_t t = all[b];
                all[b] = all[b - 1], all[b - 1] = t;
            }
        for (int s = 0; s < 64; s++)
            cr_assert_eq(s < W ? w.q0[s] : w.q1[s - W], all[s], "rep %d: merged queue slot %d", rep, s);
        cr_assert_eq(w.thr, all[63]);
    }
}

// Every order, k in {1, 5, 32, 33, 64}, column blocks that split steps and rows, top / bottom.
Test(select, emulated_kernel_equals_host_topk_plain) {
    TRng g = {11};
    const int Ms[] = {1, 7, 64, 131, 1000, 5003};
    const int ks[] = {1, 5, 32, 33, 64};
    const int cbs[] = {4096, 128, 200, 9};
    float *x = qk_malloc(5003 * sizeof(float));
    for (int ord = ORD_RANDOM; ord <= ORD_INF_ZERO; ord++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                const int M = Ms[mi], k = ks[ki];
                if (k > M) continue;
                fill((Order)ord, x, M, &g);
                for (size_t ci = 0; ci < sizeof cbs / sizeof cbs[0]; ci++)
                    for (int bottom = 0; bottom < 2; bottom++) {
                        EmuOpts o = {.k = k, .cb = cbs[ci], .bottom = bottom, .act = QK_TOPK_PLAIN};
                        compare(k_orders[ord], M, x, 4, k_scales, NULL, o);
                    }
            }
    free(x);
}

Test(select, emulated_kernel_equals_host_topk_both_relu_gated) {
    TRng g = {12};
    const int M = 3001;
    float *x = qk_malloc(M * sizeof(float)), *c = qk_malloc(M * sizeof(float)), *gates = qk_malloc(M * sizeof(float));
    for (int j = 0; j < M; j++) c[j] = (float)trng_normal(&g), gates[j] = (float)fabs(trng_normal(&g));
    for (int ord = ORD_RANDOM; ord <= ORD_INF_ZERO; ord++) {
        fill((Order)ord, x, M, &g);
        for (int k = 1; k <= 64; k += 21) {
            EmuOpts both = {.k = k, .cb = 1024, .both = 1, .act = QK_TOPK_PLAIN};
            compare(k_orders[ord], M, x, 4, k_scales, NULL, both);
            compare(k_orders[ord], M, x, 4, k_scales, c, both);
            EmuOpts relu = {.k = k, .cb = 512, .act = QK_TOPK_RELU};
            compare(k_orders[ord], M, x, 4, k_scales, c, relu);
            EmuOpts gated = {.k = k, .cb = 700, .act = QK_TOPK_GATED, .gate = 0.25f};
            compare(k_orders[ord], M, x, 4, k_scales, NULL, gated);
            gated.gates = gates;
            compare(k_orders[ord], M, x, 4, k_scales, c, gated);
        }
    }
    free(x), free(c), free(gates);
}

// Many ties exactly at the running threshold, arriving after it is set: only lower indices win.
Test(select, ties_at_the_threshold_prefer_lower_indices) {
    const int M = 4096;
    float *x = qk_malloc(M * sizeof(float));
    for (int j = 0; j < M; j++) x[j] = j < 40 ? 5.0f : (j % 3 ? 5.0f : 4.0f);
    for (int k = 1; k <= 64; k *= 2) {
        EmuOpts o = {.k = k, .cb = 333, .act = QK_TOPK_PLAIN};
        compare("ties at threshold", M, x, 1, NULL, NULL, o);
    }
    free(x);
}
