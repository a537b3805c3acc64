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
    const float *c;  // c_j (NULL: 0)
    int seeded;      // the seed tile first (the best c_j), then the walk skipping its columns
    uint64_t seed;   // the slot order of each pass (the kernel's atomics: any order)
} SimOpts;

// One row's running state through the tiles (both sides), as the kernel's shared memory holds it.
typedef struct {
    SimSide side[2];
    int nside, rescans;
    unsigned act;
    TRng g;
} SimRow;

// One tile of topk_fused's epilogue (topk_fused_kernel.cuh, ft_epilogue): position e holds column
// cols[e] (-1: none, as past M or a seed in the walk); scores dot + c (a = 1).
static void sim_tile(const SimOpts *o, SimRow *w, const int cols[QK_FSEL_BN], const float *dot) {
    const float sign = o->bottom ? -1.0f : 1.0f;
    const int gated = o->act == QK_TOPK_GATED;
    uint64_t key[2][QK_FSEL_BN];
    float sval[2][QK_FSEL_BN];  // the scores as the keys order them (sign * v)
    for (int e = 0; e < QK_FSEL_BN; e++) {
        const int j = cols[e], ok = j >= 0;
        const float gj = o->gates && ok ? o->gates[j] : o->gate;
        const float v = qk_sel_score(ok ? dot[j] : 0.0f, 1.0f, o->c && ok ? o->c[j] : 0.0f);
        w->act += gated && ok && v > gj;
        key[0][e] = ok ? qk_sel_key(v, j, sign, gated, gj) : QK_SEL_EMPTY;
        key[1][e] = ok ? qk_sel_key(v, j, -1.0f, 0, 0.0f) : QK_SEL_EMPTY;
        sval[0][e] = sign * v, sval[1][e] = -v;
    }
    for (int s = 0; s < w->nside; s++) w->side[s].pthr = w->side[s].thr;
    for (int pass = 0;; pass++) {
        cr_assert(pass < 4 * QK_FSEL_BN + 8, "tile at column %d: %d passes, no progress", cols[0], pass);
        int order[QK_FSEL_BN];
        for (int e = 0; e < QK_FSEL_BN; e++) order[e] = e;
        for (int e = QK_FSEL_BN - 1; e > 0; e--) {  // Fisher-Yates: slots in any order
            int f = trng_int(&w->g, 0, e), t = order[e];
            order[e] = order[f], order[f] = t;
        }
        int again = 0;
        for (int s = 0; s < w->nside; s++) {
            SimSide *d = &w->side[s];
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
            } else again = 1, w->rescans++;
        }
        if (!again) break;
    }
}

// The seed list of one problem as ft_seed_lists makes it, by brute force: the best min(64, M)
// seed keys of c (a full sort), placed by qk_fsel_seed_rank, NOSEED after.
static void seed_list(const float *c, int M, float sign, int32_t seeds[QK_FSEL_SEEDS]) {
    uint64_t *all = qk_malloc(sizeof(uint64_t) * (M > QK_FSEL_SEEDS ? M : QK_FSEL_SEEDS));
    for (int j = 0; j < M; j++) all[j] = qk_fsel_seed_key(c[j], j, sign);
    for (int j = M; j < QK_FSEL_SEEDS; j++) all[j] = QK_SEL_EMPTY;
    qsort(all, M > QK_FSEL_SEEDS ? M : QK_FSEL_SEEDS, sizeof(uint64_t), desc_u64);
    for (int x = 0; x < QK_FSEL_SEEDS; x++) seeds[x] = QK_FSEL_NOSEED;
    for (int x = 0; x < QK_FSEL_SEEDS; x++) {
        const int rank = qk_fsel_seed_rank(all, QK_FSEL_SEEDS, x);
        if (rank >= 0) seeds[rank] = qk_sel_unpack_i(all[x]);
    }
    free(all);
}

// One row of topk_fused (topk_fused_kernel.cuh) over all M columns of scores dot + c: the seed
// tile first when seeded, then the walk.  Returns the number of rescans it took.
static int sim_row(const SimOpts *o, int M, const float *dot, int32_t *idx, float *val, int32_t *count, int32_t *bidx,
                   float *bval) {
    static SimRow w;
    const float sign = o->bottom ? -1.0f : 1.0f;
    memset(&w, 0, sizeof w);
    w.nside = o->both ? 2 : 1, w.g.s = o->seed | 1;
    for (int s = 0; s < w.nside; s++) {
        for (int x = 0; x < TS; x++) w.side[s].T[x] = QK_SEL_EMPTY;
        w.side[s].thr = QK_SEL_EMPTY, w.side[s].cnt = 0;
    }
    int32_t seeds[QK_FSEL_SEEDS];
    for (int x = 0; x < QK_FSEL_SEEDS; x++) seeds[x] = QK_FSEL_NOSEED;
    int cols[QK_FSEL_BN];
    if (o->seeded) {
        seed_list(o->c, M, sign, seeds);
        for (int e = 0; e < QK_FSEL_BN; e++) cols[e] = seeds[e] < M ? seeds[e] : -1;
        sim_tile(o, &w, cols, dot);
    }
    int sp = 0;
    for (int j0 = 0; j0 < M; j0 += QK_FSEL_BN) {
        const uint64_t mask = qk_fsel_seed_mask(seeds, &sp, j0);
        for (int e = 0; e < QK_FSEL_BN; e++) cols[e] = qk_fsel_walk_col(j0, e, M, mask) ? j0 + e : -1;
        sim_tile(o, &w, cols, dot);
    }
    cr_assert(sp == QK_FSEL_SEEDS || seeds[sp] == QK_FSEL_NOSEED, "seed %d (column %d) never reached by the walk", sp, seeds[sp]);
    int counted = 0;
    for (int x = 0; x < o->k; x++) counted += qk_sel_output(w.side[0].T[x], sign, o->act == QK_TOPK_RELU, &idx[x], &val[x]);
    if (o->both)
        for (int x = 0; x < o->k; x++) qk_sel_output(w.side[1].T[x], -1.0f, 0, &bidx[x], &bval[x]);
    *count = o->act == QK_TOPK_GATED ? (int32_t)w.act : counted;
    return w.rescans;
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
    cr_assert_eq(qk_topk(1, M, 1, &one, 1, NULL, dot, o->c, &h, hi, hv, &hc), 0, "%s", qk_errmsg());
    cr_assert_eq(sc, hc, "%s (M %d k %d qcap %d act %d seeded %d): count %d, host %d", what, M, k, o->qcap, (int)o->act,
                 o->seeded, sc, hc);
    for (int x = 0; x < k; x++) {
        cr_assert(si[x] == hi[x] && !memcmp(&sv[x], &hv[x], 4),
                  "%s (M %d k %d qcap %d act %d bottom %d seeded %d): slot %d (%d, %a), host (%d, %a)", what, M, k,
                  o->qcap, (int)o->act, o->bottom, o->seeded, x, si[x], sv[x], hi[x], hv[x]);
        if (o->both)
            cr_assert(sbi[x] == hbi[x] && !memcmp(&sbv[x], &hbv[x], 4),
                      "%s (M %d k %d qcap %d seeded %d): bottom slot %d (%d, %a), host (%d, %a)", what, M, k, o->qcap,
                      o->seeded, x, sbi[x], sbv[x], hbi[x], hbv[x]);
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
        // BN slots hold a whole pass of a row (no overflow, so no rescan), whatever k
        cr_assert(q >= QK_FSEL_BN && q % 32 == 0 && q <= 256, "k %d: qcap %d", k, q);
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

// One row in each selection the kernel makes from o: top (its rescans are returned), top +
// bottom, bottom, ReLU, and GATED with per-column gates when given.
static int check_selections(const char *what, SimOpts o, int M, const float *d, const float *gates, TRng *g) {
    const int rescans = check_row(what, &o, M, d);
    o.both = 1, o.seed = trng_u64(g);
    check_row(what, &o, M, d);
    o.both = 0, o.bottom = 1;
    check_row(what, &o, M, d);
    o.bottom = 0, o.act = QK_TOPK_RELU;
    check_row(what, &o, M, d);
    if (gates) {
        o.act = QK_TOPK_GATED, o.gates = gates;
        check_row(what, &o, M, d);
    }
    return rescans;
}

typedef enum { C_RANDOM, C_EQUAL, C_ASC, C_BORDERS, C_NAN, C_INT_TIES, C_COUNT } CPattern;
static const char *cpat_name[] = {"c random", "c all equal", "c ascending", "c best at tile borders", "c with NaN",
                                  "integer scores, seeds tied with lower non-seed columns"};

// c of a seeded row; C_INT_TIES rewrites the scores too: small integers, so the seeds (the best
// c) tie with lower, unseeded columns of equal score, which must win.
static void fill_c(float *c, float *d, int M, CPattern pat, TRng *g) {
    for (int j = 0; j < M; j++) {
        switch (pat) {
        case C_RANDOM: c[j] = (float)trng_normal(g); break;
        case C_EQUAL: c[j] = 0.5f; break;
        case C_ASC: c[j] = (float)j * 0.01f; break;
        case C_BORDERS:
            c[j] = (j == 0 || j == 63 || j == 64 || j == 127 || j == 128 || j == M - 1) ? 50.0f : (float)trng_normal(g);
            break;
        case C_NAN: c[j] = trng_int(g, 0, 3) == 0 ? NAN : (float)trng_normal(g); break;
        case C_INT_TIES: c[j] = (float)trng_int(g, 0, 4), d[j] = (float)trng_int(g, 0, 4); break;
        default: break;
        }
    }
}

// Every order of scores x each M x each k <= M x both queue sizes, in every selection
// (check_selections); pat >= 0: seeded, c of that pattern, GATED too.  Returns the top's rescans.
static int sweep_orders(const int *Ms, int nM, const int *ks, int nk, int pat, TRng *g) {
    static float d[1031], c[1031], gates[1031];
    int rescans = 0;
    for (int ord = 0; ord < ORD_COUNT; ord++)
        for (int mi = 0; mi < nM; mi++)
            for (int ki = 0; ki < nk; ki++) {
                const int M = Ms[mi], k = ks[ki];
                if (k > M) continue;
                fill(d, M, (Order)ord, g);
                if (pat >= 0) {
                    fill_c(c, d, M, (CPattern)pat, g);
                    for (int j = 0; j < M; j++) gates[j] = (float)fabs(trng_normal(g));
                }
                char what[160];
                snprintf(what, sizeof what, "%s%s%s", ord_name[ord], pat >= 0 ? ", seeded, " : "", pat >= 0 ? cpat_name[pat] : "");
                int qc[2];
                for (int qi = 0; qi < qcaps(k, qc); qi++) {
                    SimOpts o = {.k = k, .qcap = qc[qi], .act = QK_TOPK_PLAIN, .c = pat >= 0 ? c : NULL, .seeded = pat >= 0,
                                 .seed = trng_u64(g)};
                    rescans += check_selections(what, o, M, d, pat >= 0 ? gates : NULL, g);
                }
            }
    return rescans;
}

Test(topk_fused_select, adversarial_orders_equal_host_topk, .timeout = 120) {
    static const int Ms[] = {1, 63, 64, 65, 200, 1031};
    static const int ks[] = {1, 2, 31, 32, 33, 64};
    TRng g = {42};
    const int rescans_plain = sweep_orders(Ms, 6, ks, 6, -1, &g);
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

// ---------------------------------------------------------------------------------------------
// Seeding (topk_fused_select.h, "Seeding")

// Each tile's mask holds exactly the seeds inside it, the walk offers exactly the other columns
// below M, and the pointer reaches the end of the list: against membership, for seed sets at the
// tile borders, contiguous runs, random subsets and none; M below, at and past the tile.
Test(topk_fused_select, seed_mask_marks_exactly_the_seeds_of_each_tile) {
    static const int Ms[] = {1, 40, 63, 64, 65, 127, 128, 129, 200, 1031, 4096};
    static char is[4096];
    TRng g = {11};
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (int trial = 0; trial < 40; trial++) {
            const int M = Ms[mi], most = M < QK_FSEL_SEEDS ? M : QK_FSEL_SEEDS;
            memset(is, 0, sizeof is);
            if (trial % 4 == 0) {
                const int borders[] = {0, 63, 64, 127, 128, M - 1};
                for (int x = 0; x < 6; x++)
                    if (borders[x] >= 0 && borders[x] < M) is[borders[x]] = 1;
            } else if (trial % 4 == 1) {
                const int len = trng_int(&g, 1, most), from = trng_int(&g, 0, M - len);
                memset(is + from, 1, len);
            } else if (trial % 4 == 2) {
                for (int x = trng_int(&g, 0, most); x > 0;) {
                    const int j = trng_int(&g, 0, M - 1);
                    if (!is[j]) is[j] = 1, x--;
                }
            }  // trial % 4 == 3: no seed
            int32_t seeds[QK_FSEL_SEEDS];
            int ns = 0;
            for (int j = 0; j < M; j++)
                if (is[j]) seeds[ns++] = j;
            for (int x = ns; x < QK_FSEL_SEEDS; x++) seeds[x] = QK_FSEL_NOSEED;
            int sp = 0;
            for (int j0 = 0; j0 < M; j0 += QK_FSEL_BN) {
                const uint64_t m = qk_fsel_seed_mask(seeds, &sp, j0);
                for (int e = 0; e < QK_FSEL_BN; e++) {
                    const int j = j0 + e, in = j < M && is[j];
                    cr_assert_eq((int)((m >> e) & 1), in, "M %d trial %d: tile %d bit %d: mask %d, seed %d", M, trial, j0, e,
                                 (int)((m >> e) & 1), in);
                    cr_assert_eq(qk_fsel_walk_col(j0, e, M, m), j < M && !is[j], "M %d trial %d: column %d offered wrongly", M,
                                 trial, j);
                }
            }
            cr_assert_eq(sp, ns, "M %d trial %d: %d of %d seeds consumed by the walk", M, trial, sp, ns);
        }
}

// Seed keys: NaN never a seed, ties by the lower column, bottom (sign -1) the smallest c first;
// ranks: the held keys' columns in ascending order, EMPTY nowhere (against a sort).
Test(topk_fused_select, seed_keys_and_ranks) {
    cr_assert_eq(qk_fsel_seed_key(NAN, 3, 1.0f), QK_SEL_EMPTY);
    cr_assert_eq(qk_fsel_seed_key(NAN, 3, -1.0f), QK_SEL_EMPTY);
    cr_assert(qk_fsel_seed_key(1.0f, 3, 1.0f) > qk_fsel_seed_key(1.0f, 4, 1.0f));
    cr_assert(qk_fsel_seed_key(2.0f, 9, 1.0f) > qk_fsel_seed_key(1.0f, 0, 1.0f));
    cr_assert(qk_fsel_seed_key(-2.0f, 9, -1.0f) > qk_fsel_seed_key(-1.0f, 0, -1.0f));
    TRng g = {12};
    for (int trial = 0; trial < 500; trial++) {
        uint64_t keys[QK_FSEL_SEEDS];
        int32_t cols[QK_FSEL_SEEDS];
        const int span = trial % 2 ? 64 : 100000;  // dense (every column a seed) or sparse columns
        for (int x = 0; x < QK_FSEL_SEEDS; x++) {
            int32_t j;
            int fresh;
            do {
                j = trng_int(&g, 0, span - 1), fresh = 1;
                for (int y = 0; y < x; y++) fresh &= cols[y] != j;
            } while (!fresh);
            cols[x] = j;
            keys[x] = trng_int(&g, 0, 4) == 0 ? QK_SEL_EMPTY : qk_fsel_seed_key((float)trng_normal(&g), j, 1.0f);
        }
        int32_t placed[QK_FSEL_SEEDS], sorted[QK_FSEL_SEEDS];
        int held = 0;
        for (int x = 0; x < QK_FSEL_SEEDS; x++) placed[x] = -1;
        for (int x = 0; x < QK_FSEL_SEEDS; x++) {
            const int rank = qk_fsel_seed_rank(keys, QK_FSEL_SEEDS, x);
            if (keys[x] == QK_SEL_EMPTY) {
                cr_assert_eq(rank, -1, "trial %d: EMPTY slot %d ranked %d", trial, x, rank);
                continue;
            }
            cr_assert(rank >= 0 && rank < QK_FSEL_SEEDS && placed[rank] == -1, "trial %d: rank %d of slot %d taken twice", trial,
                      rank, x);
            placed[rank] = cols[x], sorted[held++] = cols[x];
        }
        for (int x = 1; x < held; x++)  // insertion sort of the held columns: the reference order
            for (int y = x; y > 0 && sorted[y - 1] > sorted[y]; y--) {
                const int32_t t = sorted[y];
                sorted[y] = sorted[y - 1], sorted[y - 1] = t;
            }
        for (int x = 0; x < held; x++) cr_assert_eq(placed[x], sorted[x], "trial %d: slot %d: column %d, sorted %d", trial, x, placed[x], sorted[x]);
        for (int x = held; x < QK_FSEL_SEEDS; x++) cr_assert_eq(placed[x], -1, "trial %d: slot %d past the %d held", trial, x, held);
    }
}

// The seeded model (seed tile first, the walk skipping its columns) equals host/topk.c bit for
// bit on every order of scores and every pattern of c, M below, at and past the tile, both queue
// sizes, top, top + bottom, bottom, ReLU, GATED.
Test(topk_fused_select, seeded_rows_equal_host_topk, .timeout = 300) {
    static const int Ms[] = {1, 40, 64, 65, 127, 200, 1031};
    static const int ks[] = {1, 32, 33, 64};
    TRng g = {4242};
    int rescans = 0;
    for (int pat = 0; pat < C_COUNT; pat++) rescans += sweep_orders(Ms, 7, ks, 4, pat, &g);
    cr_assert(rescans > 100, "the overflow path was exercised only %d times with seeding", rescans);
}
