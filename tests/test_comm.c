// test_comm.c: the communicator of comm.h and the aggregate reduction over it.  The CPU
// communicator (ranks as threads) for 1-4 ranks: allreduce (bit-identical to a rank-order sum,
// and from run to run), bcast, allgatherv with empty buffers, barrier; the reduction of per-rank
// HeadAggregates equals the aggregates of the whole input.  The same bodies run on the NCCL
// communicator with QK_BACKEND=cuda (make test-gpu), one rank per visible GPU (up to 4); they
// skip, saying why, without a GPU.
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "run/agg_comm.h"
#include "run/comm.h"
#include "test_common.h"

// ---------------------------------------------------------------------------------------------
// Ranks as threads.  Criterion asserts only on the main thread: a rank reports a failure as text.

typedef struct RankJob RankJob;
typedef int (*RankFn)(QkComm *c, RankJob *j);
struct RankJob {
    QkComm *c;
    RankFn fn;
    void *arg;    // shared by every rank of the test
    int rc;       // fn's result
    char why[512];  // its failure, when rc != 0
};

static void *rank_main(void *p) {
    RankJob *j = p;
    j->rc = j->fn(j->c, j);
    if (j->rc && !j->why[0]) snprintf(j->why, sizeof j->why, "%s", qk_errmsg());
    return NULL;
}

static int fail(RankJob *j, const char *fmt, ...) QK_PRINTF(2, 3);
static int fail(RankJob *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->why, sizeof j->why, fmt, ap);
    va_end(ap);
    return -1;
}

typedef enum { COMM_CPU, COMM_NCCL } CommKind;

// The number of ranks a test of `kind` may use for a wanted n: n for the CPU; for NCCL, skips the
// test unless QK_BACKEND=cuda and a GPU is there, then min(n, GPUs).
static int ranks_for(CommKind kind, int n) {
    if (kind == COMM_CPU) return n;
    const int gpus = test_cuda_gpus("NCCL communicator");
    return n < gpus ? n : gpus;
}

// Runs fn on n ranks of a fresh group; asserts every rank succeeded.
static void run_ranks(CommKind kind, int n, RankFn fn, void *arg) {
    QkComm *ranks[8] = {0};
    int devices[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int rc = kind == COMM_CPU ? qk_comm_cpu_create_group(n, ranks) : qk_comm_nccl_create_group(n, devices, ranks);
    cr_assert_eq(rc, 0, "%s", qk_errmsg());
    RankJob jobs[8];
    pthread_t th[8];
    for (int r = 0; r < n; r++) {
        jobs[r] = (RankJob){.c = ranks[r], .fn = fn, .arg = arg};
        cr_assert_eq(ranks[r]->rank(ranks[r]), r);
        cr_assert_eq(ranks[r]->size(ranks[r]), n);
        pthread_create(&th[r], NULL, rank_main, &jobs[r]);
    }
    for (int r = 0; r < n; r++) pthread_join(th[r], NULL);
    qk_comm_free_group(ranks, n);
    for (int r = 0; r < n; r++) cr_assert_eq(jobs[r].rc, 0, "%d ranks, rank %d: %s", n, r, jobs[r].why);
}

// ---------------------------------------------------------------------------------------------
// Allreduce

#define AR_N 1003  // not a multiple of any rank count: uneven slices

// Rank r's input: magnitudes spread over 1e-8..1e8, so the summation order shows in the bits.
static void ar_input(int r, int trial, double *x, int64_t *y) {
    TRng g = {1000 + 17 * r + 7919 * trial};
    for (int i = 0; i < AR_N; i++) {
        x[i] = trng_normal(&g) * pow(10.0, trng_int(&g, -8, 8));
        y[i] = (int64_t)(trng_u64(&g) >> 4) - ((int64_t)1 << 58);
    }
}

typedef struct {
    int trial;
    double out_f[4][AR_N];
    int64_t out_i[4][AR_N];
} ArArgs;

static int ar_rank(QkComm *c, RankJob *j) {
    ArArgs *a = j->arg;
    int r = c->rank(c);
    ar_input(r, a->trial, a->out_f[r], a->out_i[r]);
    if (c->allreduce_f64(c, a->out_f[r], AR_N) || c->allreduce_i64(c, a->out_i[r], AR_N)) return -1;
    double none = 42;  // zero elements: nothing moves
    if (c->allreduce_f64(c, &none, 0) || none != 42) return fail(j, "allreduce of 0 elements touched the buffer");
    return 0;
}

static void allreduce_exact(CommKind kind) {
    for (int want = 1; want <= 4; want++) {
        int n = ranks_for(kind, want);
        ArArgs *a = qk_calloc(1, sizeof *a), *b = qk_calloc(1, sizeof *b);
        b->trial = a->trial = want;
        run_ranks(kind, n, ar_rank, a);
        run_ranks(kind, n, ar_rank, b);  // again: bit-identical
        double x[4][AR_N];
        int64_t y[4][AR_N];
        for (int r = 0; r < n; r++) ar_input(r, want, x[r], y[r]);
        for (int i = 0; i < AR_N; i++) {
            double s = x[0][i];  // rank order, from rank 0's value
            int64_t t = y[0][i];
            for (int r = 1; r < n; r++) s += x[r][i], t += y[r][i];
            for (int r = 0; r < n; r++) {
                cr_assert(memcmp(&a->out_f[r][i], &s, sizeof s) == 0, "%d ranks: f64[%d] on rank %d: %.17g, want %.17g", n, i,
                          r, a->out_f[r][i], s);
                cr_assert_eq(a->out_i[r][i], t, "%d ranks: i64[%d] on rank %d", n, i, r);
            }
        }
        cr_assert(memcmp(a->out_f, b->out_f, sizeof a->out_f) == 0, "%d ranks: two runs differ", n);
        free(a), free(b);
    }
}

Test(comm_cpu, allreduce_is_the_rank_order_sum_bit_for_bit) { allreduce_exact(COMM_CPU); }
Test(comm_nccl, allreduce_is_the_rank_order_sum_bit_for_bit) { allreduce_exact(COMM_NCCL); }

static int mismatch_rank(QkComm *c, RankJob *j) {
    double x[8] = {0};
    int rc = c->allreduce_f64(c, x, 4 + (size_t)c->rank(c));
    if (rc == 0) return fail(j, "allreduce with different lengths succeeded");
    if (!strstr(qk_errmsg(), "comm allreduce: rank")) return fail(j, "error line: %s", qk_errmsg());
    return 0;
}

// Different lengths on different ranks: every rank gets an error (none is left waiting).
Test(comm_cpu, allreduce_length_mismatch_fails_on_every_rank) {
    for (int n = 2; n <= 4; n++) run_ranks(COMM_CPU, n, mismatch_rank, NULL);
}

// ---------------------------------------------------------------------------------------------
// Bcast, allgatherv, barrier

static int bcast_rank(QkComm *c, RankJob *j) {
    int r = c->rank(c), n = c->size(c);
    for (int root = 0; root < n; root++) {
        uint8_t buf[3000];
        for (int i = 0; i < 3000; i++) buf[i] = (uint8_t)(r == root ? i * 7 + root : 0xee);
        if (c->bcast(c, buf, sizeof buf, root)) return -1;
        for (int i = 0; i < 3000; i++)
            if (buf[i] != (uint8_t)(i * 7 + root)) return fail(j, "root %d: byte %d is %d", root, i, buf[i]);
        if (c->bcast(c, buf, 0, root)) return -1;  // empty
    }
    return 0;
}

static void bcast_all_roots(CommKind kind) {
    for (int want = 1; want <= 4; want++) run_ranks(kind, ranks_for(kind, want), bcast_rank, NULL);
}
Test(comm_cpu, bcast_from_every_root) { bcast_all_roots(COMM_CPU); }
Test(comm_nccl, bcast_from_every_root) { bcast_all_roots(COMM_NCCL); }

// Rank r sends len(r, pattern) bytes, each byte a function of (r, i).
static size_t gv_len(int r, int pattern) {
    switch (pattern) {
    case 0: return (size_t)r * 37;              // rank 0 empty
    case 1: return r == 1 ? 0 : 1000 + r;       // a middle rank empty
    case 2: return 0;                           // everyone empty
    default: return r == 0 ? (9u << 20) + 5 : 3;  // one large buffer (over the NCCL staging chunk)
    }
}

static int gatherv_rank(QkComm *c, RankJob *j) {
    int r = c->rank(c), n = c->size(c);
    for (int pattern = 0; pattern < 4; pattern++) {
        size_t len = gv_len(r, pattern);
        uint8_t *buf = qk_malloc(len + 1);
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)(i * 13 + r * 101 + pattern);
        void *out = NULL;
        size_t lens[8];
        int rc = c->allgatherv(c, len ? buf : NULL, len, &out, lens);
        free(buf);
        if (rc) return -1;
        if (!out) return fail(j, "pattern %d: NULL output", pattern);
        const uint8_t *o = out;
        for (int q = 0; q < n; q++) {
            if (lens[q] != gv_len(q, pattern)) return fail(j, "pattern %d: lens[%d] = %zu", pattern, q, lens[q]);
            for (size_t i = 0; i < lens[q]; i++, o++)
                if (*o != (uint8_t)(i * 13 + q * 101 + pattern)) return fail(j, "pattern %d: rank %d byte %zu", pattern, q, i);
        }
        free(out);
    }
    return 0;
}

static void gatherv_patterns(CommKind kind) {
    for (int want = 1; want <= 4; want++) run_ranks(kind, ranks_for(kind, want), gatherv_rank, NULL);
}
Test(comm_cpu, allgatherv_in_rank_order_with_empty_buffers) { gatherv_patterns(COMM_CPU); }
Test(comm_nccl, allgatherv_in_rank_order_with_empty_buffers) { gatherv_patterns(COMM_NCCL); }

static int barrier_rank(QkComm *c, RankJob *j) {
    atomic_int *count = j->arg;
    int n = c->size(c);
    for (int round = 1; round <= 200; round++) {
        atomic_fetch_add(count, 1);
        if (c->barrier(c)) return -1;
        int seen = atomic_load(count);
        if (seen < round * n) return fail(j, "round %d: %d arrivals seen after the barrier", round, seen);
        if (c->barrier(c)) return -1;  // nobody starts the next round before everyone has looked
    }
    return 0;
}

static void barrier_rounds(CommKind kind) {
    for (int want = 1; want <= 4; want++) {
        atomic_int count = 0;
        run_ranks(kind, ranks_for(kind, want), barrier_rank, &count);
    }
}
Test(comm_cpu, barrier_holds_every_rank) { barrier_rounds(COMM_CPU); }
Test(comm_nccl, barrier_holds_every_rank) { barrier_rounds(COMM_NCCL); }

// ---------------------------------------------------------------------------------------------
// The aggregate reduction: per-rank aggregates of parts of an input, reduced, equal the
// aggregates of the whole input.

#define N_HEADS 3  // head 1 is not analysed (NULL on every rank)
#define N_TOKENS 900
static const int k_m[N_HEADS] = {40, 0, 23};

// One token's contribution to a head's aggregates (a stand-in for analyse_head's updates).
static void agg_token(HeadAggregates *g, int head, int token, int sketch_domain) {
    TRng rng = {(uint64_t)(head * 100003 + token + 1)};
    g->queries++;
    for (int q = 0; q < N_METRICS; q++) {
        if (trng_unif(&rng) < 0.2) continue;  // undefined (NaN) for this token
        double v = trng_normal(&rng) * pow(10.0, trng_int(&rng, -3, 3));
        qk_exact_add(g->sum_exact[q], v), g->count[q]++;
        g->hist[q][trng_int(&rng, 0, N_HIST_BINS - 1)]++;
    }
    for (int a = 0; a < 4; a++) {
        int f = trng_int(&rng, 0, g->m - 1), k = trng_int(&rng, 0, g->m - 1);
        qk_exact_add(g->query_marginal_exact + (size_t)f * QK_EXACT_LIMBS, trng_normal(&rng)), g->query_count[f]++;
        qk_exact_add(g->key_marginal_exact + (size_t)k * QK_EXACT_LIMBS, trng_normal(&rng)), g->key_count[k]++;
        pair_sketch_add(&g->sketch, trng_int(&rng, 0, sketch_domain - 1), trng_int(&rng, 0, sketch_domain - 1),
                        trng_normal(&rng));
    }
}

// The aggregates of tokens [lo, hi) into fresh aggs (NULL for head 1).
static void agg_range(HeadAggregates *store, HeadAggregates **aggs, int lo, int hi, int capacity, int domain) {
    for (int h = 0; h < N_HEADS; h++) {
        aggs[h] = NULL;
        if (!k_m[h]) continue;
        head_agg_init(&store[h], k_m[h], capacity);
        aggs[h] = &store[h];
        for (int t = lo; t < hi; t++) agg_token(aggs[h], h, t, domain);
    }
}

typedef struct {
    int capacity, domain;
    HeadAggregates store[4][N_HEADS];  // each rank's, reduced in place
} RedArgs;

// Rank r of n takes a contiguous part of the tokens (uneven: r+1 shares of n(n+1)/2).
static int reduce_rank(QkComm *c, RankJob *j) {
    RedArgs *a = j->arg;
    int r = c->rank(c), n = c->size(c), shares = n * (n + 1) / 2, before = r * (r + 1) / 2;
    HeadAggregates *aggs[N_HEADS];
    agg_range(a->store[r], aggs, N_TOKENS * before / shares, N_TOKENS * (before + r + 1) / shares, a->capacity, a->domain);
    return head_aggs_allreduce(c, aggs, N_HEADS);
}

static void free_store(HeadAggregates *store) {
    for (int h = 0; h < N_HEADS; h++)
        if (k_m[h]) head_agg_free(&store[h]);
}

// Bitwise equality of two aggregates (dense fields and sorted pair tables).
static int agg_identical(HeadAggregates *x, HeadAggregates *y) {
    HeadAggFields a, b;
    head_agg_fields(x, &a), head_agg_fields(y, &b);
    for (int q = 0; q < HEAD_AGG_I64; q++)  // the exact sums' limbs included
        if (memcmp(a.i64[q], b.i64[q], sizeof(int64_t) * a.n_i64[q])) return 0;
    int sums[3];
    agg_sum_values_same(x, y, sums);
    if (!sums[0] || !sums[1] || !sums[2]) return 0;
    if (x->sketch.size != y->sketch.size || memcmp(&x->sketch.total, &y->sketch.total, sizeof(double))) return 0;
    PairEntry *p = qk_malloc(sizeof(PairEntry) * (x->sketch.size + 1)), *q = qk_malloc(sizeof(PairEntry) * (y->sketch.size + 1));
    pair_sketch_sorted(&x->sketch, p), pair_sketch_sorted(&y->sketch, q);
    int same = 1;
    for (int i = 0; i < x->sketch.size && same; i++)
        same = p[i].f == q[i].f && p[i].g == q[i].g && p[i].count == q[i].count && !memcmp(&p[i].weight, &q[i].weight, 8) &&
               !memcmp(&p[i].err, &q[i].err, 8) && !memcmp(&p[i].sum, &q[i].sum, 8);
    free(p), free(q);
    return same;
}

static int close_rel(double x, double y) { return fabs(x - y) <= 1e-12 * (fabs(x) + fabs(y)) + 1e-300; }

// The reduced aggregates equal the whole input's: counts and sums exactly, the pair table
// entry by entry (its capacity is not exceeded).
static void expect_whole(HeadAggregates *got, HeadAggregates *want, int n, int h) {
    HeadAggFields a, b;
    head_agg_fields(got, &a), head_agg_fields(want, &b);
    // Counts and the exact sums' limbs: bit for bit, however the tokens were split.
    for (int q = 0; q < HEAD_AGG_I64; q++)
        cr_expect(memcmp(a.i64[q], b.i64[q], sizeof(int64_t) * a.n_i64[q]) == 0, "%d ranks, head %d: int64 field %d differs", n, h, q);
    int sums[3];
    agg_sum_values_same(got, want, sums);
    cr_expect(sums[0], "%d ranks, head %d: metric sums differ", n, h);
    cr_expect(sums[1] && sums[2], "%d ranks, head %d: marginals differ", n, h);
    cr_assert_eq(got->sketch.size, want->sketch.size, "%d ranks, head %d: pairs kept", n, h);
    cr_expect(close_rel(got->sketch.total, want->sketch.total), "%d ranks, head %d: sketch total", n, h);
    // Pair tables as sets (weights equal only to rounding, so the order of near ties may differ).
    PairEntry *p = qk_malloc(sizeof(PairEntry) * got->sketch.size), *w = qk_malloc(sizeof(PairEntry) * want->sketch.size);
    pair_sketch_sorted(&got->sketch, p), pair_sketch_sorted(&want->sketch, w);
    for (int i = 0; i < want->sketch.size; i++) {
        int found = 0;
        for (int k = 0; k < got->sketch.size && !found; k++)
            if (p[k].f == w[i].f && p[k].g == w[i].g) {
                found = 1;
                cr_expect(p[k].count == w[i].count && close_rel(p[k].weight, w[i].weight) && close_rel(p[k].sum, w[i].sum) &&
                              p[k].err == 0,
                          "%d ranks, head %d: pair (%d, %d) differs", n, h, w[i].f, w[i].g);
            }
        cr_expect(found, "%d ranks, head %d: pair (%d, %d) missing", n, h, w[i].f, w[i].g);
    }
    free(p), free(w);
}

static void reduction_equals_whole(CommKind kind) {
    HeadAggregates whole_store[N_HEADS], *whole[N_HEADS];
    agg_range(whole_store, whole, 0, N_TOKENS, 4096, 30);  // 900 pairs at most: capacity never exceeded
    for (int want = 1; want <= 4; want++) {
        int n = ranks_for(kind, want);
        RedArgs *a = qk_calloc(1, sizeof *a), *b = qk_calloc(1, sizeof *b);
        a->capacity = b->capacity = 4096, a->domain = b->domain = 30;
        run_ranks(kind, n, reduce_rank, a);
        run_ranks(kind, n, reduce_rank, b);
        for (int h = 0; h < N_HEADS; h++) {
            if (!k_m[h]) continue;
            cr_assert_gt(whole[h]->sketch.size, 300, "the test needs a well-filled pair table");
            for (int r = 0; r < n; r++) {
                cr_expect(agg_identical(&a->store[r][h], &a->store[0][h]), "%d ranks, head %d: rank %d differs from rank 0", n, h, r);
                cr_expect(agg_identical(&a->store[r][h], &b->store[r][h]), "%d ranks, head %d: not deterministic", n, h);
            }
            expect_whole(&a->store[0][h], whole[h], n, h);
        }
        for (int r = 0; r < n; r++) free_store(a->store[r]), free_store(b->store[r]);
        free(a), free(b);
    }
    free_store(whole_store);
}

Test(comm_cpu, aggregate_reduction_equals_the_whole_input, .timeout = 60) { reduction_equals_whole(COMM_CPU); }
Test(comm_nccl, aggregate_reduction_equals_the_whole_input, .timeout = 120) { reduction_equals_whole(COMM_NCCL); }

// A full sketch (capacity exceeded on every rank): the reduction is still deterministic and the
// same on every rank, keeps `capacity` pairs, and its total is every update's.
Test(comm_cpu, aggregate_reduction_with_full_sketches_is_deterministic, .timeout = 60) {
    HeadAggregates whole_store[N_HEADS], *whole[N_HEADS];
    agg_range(whole_store, whole, 0, N_TOKENS, 64, 60);
    for (int n = 2; n <= 4; n++) {
        RedArgs *a = qk_calloc(1, sizeof *a), *b = qk_calloc(1, sizeof *b);
        a->capacity = b->capacity = 64, a->domain = b->domain = 60;
        run_ranks(COMM_CPU, n, reduce_rank, a);
        run_ranks(COMM_CPU, n, reduce_rank, b);
        for (int h = 0; h < N_HEADS; h++) {
            if (!k_m[h]) continue;
            HeadAggregates *g = &a->store[0][h];
            cr_expect_eq(g->sketch.size, 64);
            cr_expect(close_rel(g->sketch.total, whole[h]->sketch.total), "%d ranks: the total is every update's", n);
            for (int r = 0; r < n; r++)
                cr_expect(agg_identical(&a->store[r][h], &b->store[r][h]) && agg_identical(&a->store[r][h], g),
                          "%d ranks, head %d, rank %d: not deterministic", n, h, r);
        }
        for (int r = 0; r < n; r++) free_store(a->store[r]), free_store(b->store[r]);
        free(a), free(b);
    }
    free_store(whole_store);
}

// Packed sketches round-trip, and a truncated one is refused with one line.
Test(comm_cpu, packed_sketch_round_trip_and_truncation) {
    PairSketch s, t;
    pair_sketch_init(&s, 50);
    TRng g = {5};
    for (int i = 0; i < 400; i++) pair_sketch_add(&s, trng_int(&g, 0, 20), trng_int(&g, 0, 20), trng_normal(&g));
    size_t n = pair_sketch_packed_size(&s), used = 0;
    uint8_t *buf = qk_malloc(n);
    pair_sketch_pack(&s, buf);
    pair_sketch_init(&t, 50);
    cr_assert_eq(pair_sketch_merge_packed(&t, buf, n, &used), 0, "%s", qk_errmsg());
    cr_expect_eq(used, n);
    cr_expect_eq(t.size, s.size);
    cr_expect_eq(t.total, s.total);
    PairSketch u;
    pair_sketch_init(&u, 50);
    cr_expect_eq(pair_sketch_merge_packed(&u, buf, n - 1, &used), -1);
    cr_expect(strstr(qk_errmsg(), "packed pair sketch") != NULL, "%s", qk_errmsg());
    free(buf);
    pair_sketch_free(&s), pair_sketch_free(&t), pair_sketch_free(&u);
}

// Without CUDA (or without a GPU) the NCCL factory answers one line, and never crashes.
Test(comm_nccl, factory_without_gpu_says_why) {
    char why[256];
    if (qk_cuda_probe(why, sizeof why) > 0) cr_skip_test("a CUDA device is present");
    QkComm *ranks[2] = {0};
    int devices[2] = {0, 1};
    cr_expect_eq(qk_comm_nccl_create_group(2, devices, ranks), -1);
    cr_expect(strstr(qk_errmsg(), "CUDA") != NULL, "%s", qk_errmsg());
    cr_expect(ranks[0] == NULL && ranks[1] == NULL);
}
