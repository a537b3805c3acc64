// comm_cpu.c: the CPU communicator of comm.h: n ranks as threads of one process.  A shared group
// holds a barrier (mutex + condition variable + generation) and one posted buffer per rank; a
// collective is "post, barrier, read the others' buffers, barrier".  Also the rank-order sums
// both communicators use, and the NCCL factory's stand-in for builds without CUDA.
#include "run/comm.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/exact_sum.h"
#include "base/util.h"

typedef struct {
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;        // ranks at the barrier in this generation
    unsigned gen;       // barrier generation
    int refs;           // ranks not freed yet
    const void **post;  // (n) each rank's buffer in the collective in flight
    size_t *len;        // (n) its length in bytes
} Group;

typedef struct {
    Group *g;
    int rank;
} Rank;

void qk_comm_sum_ranks_f64(double *out, const double *gathered, size_t n, size_t stride, int size) {
    for (size_t i = 0; i < n; i++) {
        double acc = gathered[i];
        for (int r = 1; r < size; r++) acc += gathered[r * stride + i];
        out[i] = acc;
    }
}

void qk_comm_sum_ranks_i64(int64_t *out, const int64_t *gathered, size_t n, size_t stride, int size) {
    for (size_t i = 0; i < n; i++) {
        int64_t acc = gathered[i];
        for (int r = 1; r < size; r++) acc = qk_exact_sat_add(acc, gathered[r * stride + i]);  // counts, exact limbs
        out[i] = acc;
    }
}

void qk_comm_free_group(QkComm **ranks, int n) {
    for (int r = 0; ranks && r < n; r++)
        if (ranks[r]) ranks[r]->free(ranks[r]), ranks[r] = NULL;
}

static int cpu_rank(const QkComm *c) { return ((const Rank *)c->ctx)->rank; }
static int cpu_size(const QkComm *c) { return ((const Rank *)c->ctx)->g->n; }

static int cpu_barrier(QkComm *c) {
    Group *g = ((Rank *)c->ctx)->g;
    pthread_mutex_lock(&g->mu);
    unsigned gen = g->gen;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
    } else
        while (gen == g->gen) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

// Posts this rank's buffer and waits until every rank has posted its own.
static Group *post(QkComm *c, const void *buf, size_t len) {
    Rank *k = c->ctx;
    k->g->post[k->rank] = buf;
    k->g->len[k->rank] = len;
    cpu_barrier(c);
    return k->g;
}

// Sums elem-byte elements: this rank computes its slice of the result from every rank's buffer,
// then (once every rank has read) writes it into every rank's buffer.
static int allreduce(QkComm *c, void *x, size_t n, size_t elem, int is_f64) {
    Rank *k = c->ctx;
    Group *g = post(c, x, n);
    for (int r = 0; r < g->n; r++)
        if (g->len[r] != n) {  // every rank sees the mismatch: all leave in step
            cpu_barrier(c), cpu_barrier(c);
            return qk_err("comm allreduce: rank %d has %zu elements, rank %d has %zu", k->rank, n, r, g->len[r]);
        }
    size_t lo = n * k->rank / g->n, hi = n * (k->rank + 1) / g->n, m = hi - lo;
    uint8_t *mine = qk_malloc(m * elem + 1), *gathered = qk_malloc(m * elem * g->n + 1);
    for (int r = 0; r < g->n; r++) memcpy(gathered + r * m * elem, (const uint8_t *)g->post[r] + lo * elem, m * elem);
    if (is_f64) qk_comm_sum_ranks_f64((double *)mine, (const double *)gathered, m, m, g->n);
    else qk_comm_sum_ranks_i64((int64_t *)mine, (const int64_t *)gathered, m, m, g->n);
    cpu_barrier(c);  // every rank has read every buffer
    for (int r = 0; r < g->n; r++) memcpy((uint8_t *)g->post[r] + lo * elem, mine, m * elem);
    cpu_barrier(c);  // every slice written before any rank goes on with its buffer
    free(mine), free(gathered);
    return 0;
}

static int cpu_allreduce_f64(QkComm *c, double *x, size_t n) { return allreduce(c, x, n, sizeof(double), 1); }
static int cpu_allreduce_i64(QkComm *c, int64_t *x, size_t n) { return allreduce(c, x, n, sizeof(int64_t), 0); }

static int cpu_bcast(QkComm *c, void *buf, size_t n, int root) {
    Rank *k = c->ctx;
    if (root < 0 || root >= k->g->n) return qk_err("comm bcast: root %d is not a rank of %d", root, k->g->n);
    Group *g = post(c, buf, n);
    int rc = 0;
    if (g->len[root] != n) rc = qk_err("comm bcast: rank %d has %zu bytes, root %d has %zu", k->rank, n, root, g->len[root]);
    else if (k->rank != root) memcpy(buf, g->post[root], n);
    cpu_barrier(c);
    return rc;
}

static int cpu_allgatherv(QkComm *c, const void *buf, size_t len, void **out, size_t *lens) {
    Group *g = post(c, buf, len);
    size_t total = 0;
    for (int r = 0; r < g->n; r++) lens[r] = g->len[r], total += g->len[r];
    uint8_t *o = qk_malloc(total + 1);
    size_t off = 0;
    for (int r = 0; r < g->n; r++) {
        if (g->len[r]) memcpy(o + off, g->post[r], g->len[r]);
        off += g->len[r];
    }
    cpu_barrier(c);
    *out = o;
    return 0;
}

static void cpu_free(QkComm *c) {
    Rank *k = c->ctx;
    Group *g = k->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->post), free(g->len), free(g);
    }
    free(k), free(c);
}

int qk_comm_cpu_create_group(int n, QkComm **ranks) {
    if (n < 1 || n > 4096) return qk_err("CPU communicator: %d ranks (1..4096)", n);
    Group *g = qk_calloc(1, sizeof *g);
    g->n = g->refs = n;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->post = qk_calloc(n, sizeof(void *));
    g->len = qk_calloc(n, sizeof(size_t));
    for (int r = 0; r < n; r++) {
        Rank *k = qk_calloc(1, sizeof *k);
        k->g = g, k->rank = r;
        QkComm *c = qk_calloc(1, sizeof *c);
        *c = (QkComm){.name = "cpu", .ctx = k, .rank = cpu_rank, .size = cpu_size, .allreduce_f64 = cpu_allreduce_f64,
                      .allreduce_i64 = cpu_allreduce_i64, .bcast = cpu_bcast, .allgatherv = cpu_allgatherv,
                      .barrier = cpu_barrier, .bcast_device = NULL, .free = cpu_free};
        ranks[r] = c;
    }
    return 0;
}

#ifndef QK_HAVE_NCCL
int qk_comm_nccl_create_group(int n, const int *devices, QkComm **ranks) {
    (void)n, (void)devices, (void)ranks;
#ifdef QK_HAVE_CUDA
    return qk_err("this build has no NCCL communicator (nccl.h was not found: NCCL=0); multi-GPU runs need it");
#else
    return qk_err("the NCCL communicator needs CUDA: this build has none (built with CUDA=0)");
#endif
}
#endif
