// test_topk_fused_select.c: the selection rules of the fused bilinear top-k
// (kernels/analysis/topk_fused_select.h), run by a host model of one row of the kernel's
// epilogue (tiles of QK_FSEL_BN columns; survivors take queue slots in an arbitrary order, as
// the kernel's shared-memory atomics give them; merge; commit or rescan) and compared bit for bit
// with host/topk.c.  The merge here is a plain sort (the kernel's bitonic network is select.h's,
// checked lane by lane by tests/test_select.c).  With r = 1 and U = 1 the scores are exactly V's
// values, so adversarial orders are written directly: ascending (every column survives), all
// equal, ties at the threshold, NaN, signed zeros; a small queue forces the rescan path, and the
// tests assert that it was taken.
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "analysis/topk_fused_select.h"
#include "test_common.h"
#include "analysis/topk.h"
#include "base/util.h"

#define TS 64  // T slots per row at most, as the kernel's warp queue (qk_fsel_tslots keeps 32 or 64)

typedef struct {
    uint64_t T[TS], thr, pthr;
    int cnt;
    uint64_t q[256];
} SimSide;

static int desc_u64(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

// T <- top 64 of T U q[0..held) (sorted descending) in out; no key may appear twice.
static void sim_merge(const SimSide *s, int held, uint64_t out[TS]) {
    uint64_t all[TS + 256];
    memcpy(all, s->T, sizeof s->T);
    memcpy(all + TS, s->q, sizeof(uint64_t) * held);
    qsort(all, TS + held, sizeof(uint64_t), desc_u64);
    for (int x = 1; x < TS + held; x++)
        cr_assert(all[x] == QK_SEL_EMPTY || all[x] != all[x - 1], "key %llx merged twice", (unsigned long long)all[x]);
    memcpy(out, all, sizeof(uint64_t) * TS);
}

typedef struct {
    int k, both, bottom, qcap;
    QkTopkAct act;
    float gate;
    const float *gates;
    uint64_t seed;  // the slot order of each pass (the kernel's atomics: any order)
} SimOpts;

// One row of topk_fused's epilogue (topk_fused_kernel.cuh) over all M columns of scores dot (a = 1, c = 0).
// Returns the number of rescans it took.
static int sim_row(const SimOpts *o, int M, const float *dot, int32_t *idx, float *val, int32_t *count, int32_t *bidx,
                   float *bval) {
    static SimSide side[2];
    const float sign = o->bottom ? -1.0f : 1.0f;
    const int gated = o->act == QK_TOPK_GATED, nside = o->both ? 2 : 1;
    TRng g = {o->seed | 1};
    int rescans = 0;
    unsigned act = 0;
    for (int s = 0; s < nside; s++) {
        for (int x = 0; x < TS; x++) side[s].T[x] = QK_SEL_EMPTY;
        side[s].thr = QK_SEL_EMPTY, side[s].cnt = 0;
    }
    for (int j0 = 0; j0 < M; j0 += QK_FSEL_BN) {
        uint64_t key[2][QK_FSEL_BN];
        float sval[2][QK_FSEL_BN];  // the scores as the keys order them (sign * v)
        for (int e = 0; e < QK_FSEL_BN; e++) {
            const int j = j0 + e, ok = j < M;
            const float gj = o->gates && ok ? o->gates[j] : o->gate;
            const float v = qk_sel_score(ok ? dot[j] : 0.0f, 1.0f, 0.0f);
            act += gated && ok && v > gj;
            key[0][e] = ok ? qk_sel_key(v, j, sign, gated, gj) : QK_SEL_EMPTY;
            key[1][e] = ok ? qk_sel_key(v, j, -1.0f, 0, 0.0f) : QK_SEL_EMPTY;
            sval[0][e] = sign * v, sval[1][e] = -v;
        }
        for (int s = 0; s < nside; s++) side[s].pthr = side[s].thr;
        for (int pass = 0;; pass++) {
            cr_assert(pass < 4 * M + 8, "tile at column %d: %d passes, no progress", j0, pass);
            int order[QK_FSEL_BN];
            for (int e = 0; e < QK_FSEL_BN; e++) order[e] = e;
            for (int e = QK_FSEL_BN - 1; e > 0; e--) {  // Fisher-Yates: slots in any order
                int f = trng_int(&g, 0, e), t = order[e];
                order[e] = order[f], order[f] = t;
            }
            int again = 0;
            for (int s = 0; s < nside; s++) {
                SimSide *d = &side[s];
                d->cnt = 0;
                const float bv = qk_fsel_bar_value(d->pthr);
                for (int e = 0; e < QK_FSEL_BN; e++) {
                    const uint64_t kk = key[s][order[e]];
                    if (kk != QK_SEL_EMPTY && !qk_fsel_may_pass(sval[s][order[e]], bv)) continue;  // the kernel's first test
                    if (qk_sel_passes(kk, d->pthr)) qk_fsel_store(d->q, o->qcap, d->cnt++, kk);
                }
                if (d->cnt == 0) {
                    d->pthr = QK_FSEL_DONE;
                    continue;
                }
                uint64_t m[TS];
                sim_merge(d, qk_fsel_held(d->cnt, o->qcap), m);
                const uint64_t kth = m[o->k - 1];
                if (qk_fsel_resolve(d->cnt, o->qcap, kth, &d->thr, &d->pthr)) {
                    memcpy(d->T, m, sizeof m);
                    for (int x = qk_fsel_tslots(o->k); x < TS; x++) d->T[x] = QK_SEL_EMPTY;  // slots not kept
                }
                else again = 1, rescans++;
            }
            if (!again) break;
        }
    }
    int counted = 0;
    for (int x = 0; x < o->k; x++) counted += qk_sel_output(side[0].T[x], sign, o->act == QK_TOPK_RELU, &idx[x], &val[x]);
    if (o->both)
        for (int x = 0; x < o->k; x++) qk_sel_output(side[1].T[x], -1.0f, 0, &bidx[x], &bval[x]);
    *count = gated ? (int32_t)act : counted;
    return rescans;
}

// The model against host/topk.c on one row of scores; returns its rescans.
static int check_row(const char *what, const SimOpts *o, int M, const float *dot) {
    const int k = o->k;
    int32_t si[64], sbi[64], hi[64], hbi[64], sc = -7, hc = -9;
    float sv[64], sbv[64], hv[64], hbv[64];
    memset(si, 0x5a, sizeof si), memset(sv, 0x5a, sizeof sv), memset(sbi, 0x5a, sizeof sbi), memset(sbv, 0x5a, sizeof sbv);
    memset(hi, 0x6b, sizeof hi), memset(hv, 0x6b, sizeof hv), memset(hbi, 0x6b, sizeof hbi), memset(hbv, 0x6b, sizeof hbv);
    const int rescans = sim_row(o, M, dot, si, sv, &sc, sbi, sbv);
    QkTopkOpts h = {.k = k, .bottom = o->bottom, .act = o->act, .gate = o->gate, .gates = o->gates};
    if (o->both) h.bottom_idx = hbi, h.bottom_val = hbv;
    const float one = 1.0f;
    cr_assert_eq(qk_topk(1, M, 1, &one, 1, NULL, dot, NULL, &h, hi, hv, &hc), 0, "%s", qk_errmsg());
    cr_assert_eq(sc, hc, "%s (M %d k %d qcap %d act %d): count %d, host %d", what, M, k, o->qcap, (int)o->act, sc, hc);
    for (int x = 0; x < k; x++) {
        cr_assert(si[x] == hi[x] && !memcmp(&sv[x], &hv[x], 4), "%s (M %d k %d qcap %d act %d bottom %d): slot %d (%d, %a), host (%d, %a)",
                  what, M, k, o->qcap, (int)o->act, o->bottom, x, si[x], sv[x], hi[x], hv[x]);
        if (o->both)
            cr_assert(sbi[x] == hbi[x] && !memcmp(&sbv[x], &hbv[x], 4), "%s (M %d k %d qcap %d): bottom slot %d (%d, %a), host (%d, %a)",
                      what, M, k, o->qcap, x, sbi[x], sbv[x], hbi[x], hbv[x]);
    }
    return rescans;
}

// Every queue size the kernel may use, and the smallest the proof allows (k + 1).
static int qcaps(int k, int out[2]) {
    out[0] = qk_fsel_qcap(k), out[1] = k + 1;
    return 2;
}

Test(topk_fused_select, queue_size_rules) {
    for (int k = 1; k <= 64; k++) {
        const int q = qk_fsel_qcap(k), ts = qk_fsel_tslots(k);
        cr_assert(q >= k + 1 && q >= QK_FSEL_BN && q % 32 == 0 && q <= 256, "k %d: qcap %d", k, q);
        cr_assert(ts >= k && (ts == 32 || ts == 64), "k %d: %d T slots", k, ts);
    }
    uint64_t queue[4] = {0}, thr = 5, pthr = 0;
    cr_assert_eq(qk_fsel_store(queue, 4, 3, 9), 1);
    cr_assert_eq(queue[3], 9u);
    cr_assert_eq(qk_fsel_store(queue, 4, 4, 11), 0, "a slot past the queue is not stored");
    cr_assert_eq(qk_fsel_held(9, 4), 4);
    cr_assert_eq(qk_fsel_held(3, 4), 3);
    cr_assert_eq(qk_fsel_resolve(4, 4, 77, &thr, &pthr), 1, "a full queue lost nothing");
    cr_assert(thr == 77 && pthr == QK_FSEL_DONE && !qk_sel_passes(~0ull, pthr));
    thr = 5;
    cr_assert_eq(qk_fsel_resolve(5, 4, 77, &thr, &pthr), 0, "a lost survivor means a rescan");
    cr_assert(thr == 5 && pthr == 76 && qk_sel_passes(77, pthr) && !qk_sel_passes(76, pthr), "rescan bar: keys >= kth");
}

// The float first test is conservative: whenever a key is above a bar, its score passes the
// bar's value; EMPTY lets every non-NaN score through, DONE none.  Bars: EMPTY, DONE, real keys and
// rescan bars (kth - 1), over values with signed zeros, infinities, ties and NaN.
Test(topk_fused_select, float_first_test_never_rejects_a_passing_key) {
    static const float vals[] = {0.0f, -0.0f, 1.0f, -1.0f, 1.5f, INFINITY, -INFINITY, NAN, 3e38f, -3e38f, 1e-45f, -1e-45f};
    const int nv = sizeof vals / sizeof *vals;
    static const int32_t idx[] = {0, 1, 7, 65535, 131071, 0x7fffffbf};
    const int ni = sizeof idx / sizeof *idx;
    cr_assert(qk_fsel_may_pass(-INFINITY, qk_fsel_bar_value(QK_SEL_EMPTY)) && !qk_fsel_may_pass(NAN, qk_fsel_bar_value(QK_SEL_EMPTY)));
    cr_assert(!qk_fsel_may_pass(INFINITY, qk_fsel_bar_value(QK_FSEL_DONE)));
    long long checked = 0;
    for (int sg = 0; sg < 2; sg++) {
        const float sign = sg ? -1.0f : 1.0f;
        for (int a = 0; a < nv; a++)
            for (int ia = 0; ia < ni; ia++) {
                const uint64_t key = qk_sel_key(vals[a], idx[ia], sign, 0, 0.0f);
                for (int b = 0; b < nv; b++)
                    for (int ib = 0; ib < ni; ib++)
                        for (int form = 0; form < 4; form++) {
                            const uint64_t kb = qk_sel_key(vals[b], idx[ib], 1.0f, 0, 0.0f);
                            if (form < 2 && kb == QK_SEL_EMPTY) continue;
                            const uint64_t bar = form == 0 ? kb : form == 1 ? kb - 1 : form == 2 ? QK_SEL_EMPTY : QK_FSEL_DONE;
                            if (!qk_sel_passes(key, bar)) continue;
                            checked++;
                            cr_assert(qk_fsel_may_pass(sign * vals[a], qk_fsel_bar_value(bar)),
                                      "key (%a, %d, sign %g) passes bar %llx but its score %a fails the float test against %a",
                                      vals[a], idx[ia], sign, (unsigned long long)bar, sign * vals[a], qk_fsel_bar_value(bar));
                        }
            }
    }
    cr_assert(checked > 1000, "only %lld passing pairs checked", checked);
}

typedef enum { ORD_RANDOM, ORD_ASC, ORD_DESC, ORD_EQUAL, ORD_TIES, ORD_NAN, ORD_ZEROS, ORD_NEG, ORD_COUNT } Order;
static const char *ord_name[] = {"random", "ascending", "descending", "all equal", "ties at the threshold",
                                 "NaN", "signed zeros", "all negative"};

static void fill(float *d, int M, Order ord, TRng *g) {
    for (int j = 0; j < M; j++) {
        switch (ord) {
        case ORD_RANDOM: d[j] = (float)trng_normal(g); break;
        case ORD_ASC: d[j] = (float)j * 0.25f - 3.0f; break;
        case ORD_DESC: d[j] = 1000.0f - (float)j; break;
        case ORD_EQUAL: d[j] = 1.5f; break;
        case ORD_TIES: d[j] = (float)(trng_int(g, 0, 2)) + (j > M / 2 ? 1.0f : 0.0f); break;  // later columns win, ties
        case ORD_NAN: d[j] = trng_int(g, 0, 3) == 0 ? NAN : (float)j * 0.5f; break;           // ascending through NaNs
        case ORD_ZEROS: d[j] = trng_int(g, 0, 1) ? 0.0f : -0.0f; break;
        case ORD_NEG: d[j] = -1.0f - (float)trng_unif(g); break;
        default: break;
        }
    }
}

Test(topk_fused_select, adversarial_orders_equal_host_topk, .timeout = 120) {
    static const int Ms[] = {1, 63, 64, 65, 200, 1031};
    static const int ks[] = {1, 2, 31, 32, 33, 64};
    static float d[1031];
    TRng g = {42};
    int rescans_plain = 0;
    for (int ord = 0; ord < ORD_COUNT; ord++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
            for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
                const int M = Ms[mi], k = ks[ki];
                if (k > M) continue;
                fill(d, M, (Order)ord, &g);
                int qc[2];
                for (int qi = 0; qi < qcaps(k, qc); qi++) {
                    SimOpts o = {.k = k, .qcap = qc[qi], .act = QK_TOPK_PLAIN, .seed = trng_u64(&g)};
                    rescans_plain += check_row(ord_name[ord], &o, M, d);
                    o.both = 1, o.seed = trng_u64(&g);
                    check_row(ord_name[ord], &o, M, d);
                    o.both = 0, o.bottom = 1;
                    check_row(ord_name[ord], &o, M, d);
                    o.bottom = 0, o.act = QK_TOPK_RELU;
                    check_row(ord_name[ord], &o, M, d);
                }
            }
    cr_assert(rescans_plain > 100, "the overflow path was exercised only %d times", rescans_plain);
}

Test(topk_fused_select, gated_counts_and_relu_rows_all_negative) {
    static float d[777], gates[777];
    TRng g = {7};
    for (int ord = 0; ord < ORD_COUNT; ord++) {
        fill(d, 777, (Order)ord, &g);
        for (int j = 0; j < 777; j++) gates[j] = (float)fabs(trng_normal(&g)) * (j % 3 == 0);
        for (int k = 1; k <= 64; k += 21) {
            SimOpts o = {.k = k, .qcap = qk_fsel_qcap(k), .act = QK_TOPK_GATED, .gates = gates, .seed = trng_u64(&g)};
            check_row(ord_name[ord], &o, 777, d);
            o.qcap = k + 1, o.gates = NULL, o.gate = 0.5f;
            check_row(ord_name[ord], &o, 777, d);
        }
    }
    // ReLU with every score negative: count 0, values 0, indices of the k largest.
    fill(d, 300, ORD_NEG, &g);
    SimOpts o = {.k = 32, .qcap = 64, .act = QK_TOPK_RELU, .seed = 3};
    check_row("relu, all negative", &o, 300, d);
}

Test(topk_fused_select, ascending_rows_rescan_every_tile_and_still_agree) {
    // Every column beats the running threshold: each tile after the first overflows a queue of
    // k + 1 < BN slots and is rescanned; the result must not depend on the slot order.
    static float d[4096];
    fill(d, 4096, ORD_ASC, &(TRng){1});
    for (int k = 1; k <= 64; k *= 4) {
        int total = 0;
        for (uint64_t seed = 1; seed <= 5; seed++) {
            SimOpts o = {.k = k, .qcap = k + 1, .act = QK_TOPK_PLAIN, .seed = seed * 977};
            total += check_row("ascending", &o, 4096, d);
        }
        if (k + 1 < QK_FSEL_BN)  // (a queue of >= BN slots holds a whole tile: it never overflows)
            cr_assert(total >= 5 * (4096 / QK_FSEL_BN - 1), "k %d: %d rescans, expected one per tile at least", k, total);
    }
}
