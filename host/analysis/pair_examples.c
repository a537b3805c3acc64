// pair_examples.c: see pair_examples.h.
#include "analysis/pair_examples.h"

#include <hdf5_hl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

void pair_examples_init(PairExamples *x, int per_pair, int capacity) {
    memset(x, 0, sizeof *x);
    x->per_pair = per_pair > 0 ? per_pair : 1;
    x->capacity = capacity > 0 ? capacity : 1;
    x->cap = 4 * x->capacity;
    x->e = qk_malloc(sizeof(PairExample) * x->cap);
}

void pair_examples_free(PairExamples *x) {
    free(x->e);
    memset(x, 0, sizeof *x);
}

// The total order, stronger first.
static int stronger(const void *pa, const void *pb) {
    const PairExample *a = pa, *b = pb;
    float ta = fabsf(a->term), tb = fabsf(b->term);
    if (ta != tb) return ta > tb ? -1 : 1;
    if (a->window != b->window) return a->window < b->window ? -1 : 1;
    if (a->qpos != b->qpos) return a->qpos < b->qpos ? -1 : 1;
    if (a->kpos != b->kpos) return a->kpos < b->kpos ? -1 : 1;
    if (a->f != b->f) return a->f < b->f ? -1 : 1;
    if (a->g != b->g) return a->g < b->g ? -1 : 1;
    return 0;
}

// By pair, then stronger first: to count each pair's strongest.
static int by_pair(const void *pa, const void *pb) {
    const PairExample *a = pa, *b = pb;
    if (a->f != b->f) return a->f < b->f ? -1 : 1;
    if (a->g != b->g) return a->g < b->g ? -1 : 1;
    return stronger(pa, pb);
}

int pair_examples_finish(PairExamples *x) {
    if (!x->n) return 0;
    qsort(x->e, x->n, sizeof *x->e, by_pair);
    int k = 0;
    for (int i = 0, run = 0; i < x->n; i++) {
        run = i && x->e[i].f == x->e[i - 1].f && x->e[i].g == x->e[i - 1].g ? run + 1 : 0;
        if (run < x->per_pair) x->e[k++] = x->e[i];
    }
    qsort(x->e, k, sizeof *x->e, stronger);
    x->n = k < x->capacity ? k : x->capacity;
    return x->n;
}

void pair_examples_add(PairExamples *x, int32_t f, int32_t g, float term, int64_t window, int32_t qpos, int32_t kpos) {
    if (x->n == x->cap) pair_examples_finish(x);  // compaction keeps R (composable)
    x->e[x->n++] = (PairExample){window, qpos, kpos, f, g, term};
}

void pair_examples_merge(PairExamples *x, const PairExamples *o) {
    for (int i = 0; i < o->n; i++) {
        const PairExample *e = &o->e[i];
        pair_examples_add(x, e->f, e->g, e->term, e->window, e->qpos, e->kpos);
    }
}

static const char *const k_names[6] = {"examples_query_feature", "examples_key_feature", "examples_window",
                                       "examples_query_pos",     "examples_key_pos",     "examples_term"};

int pair_examples_write(PairExamples *x, QkH5Out *o, const char *prefix, int d_sae) {
    int n = pair_examples_finish(x);
    static const char *const lbl[1] = {"rank"};
    hsize_t dims[1] = {(hsize_t)n};
    int32_t *f = qk_malloc(4 * (n + 1)), *g = qk_malloc(4 * (n + 1)), *qp = qk_malloc(4 * (n + 1)),
            *kp = qk_malloc(4 * (n + 1));
    int64_t *w = qk_malloc(8 * (n + 1));
    float *t = qk_malloc(4 * (n + 1));
    for (int i = 0; i < n; i++)
        f[i] = x->e[i].f, g[i] = x->e[i].g, w[i] = x->e[i].window, qp[i] = x->e[i].qpos, kp[i] = x->e[i].kpos,
        t[i] = x->e[i].term;
    char name[6][192];
    for (int k = 0; k < 6; k++) snprintf(name[k], sizeof name[k], "%s%s", prefix, k_names[k]);
    int rc = qk_h5_write_features(o, name[0], 1, dims, lbl, f, d_sae) ||
             qk_h5_write_features(o, name[1], 1, dims, lbl, g, d_sae) ||
             qk_h5_write(o, name[2], H5T_NATIVE_INT64, 1, dims, lbl, w) ||
             qk_h5_write(o, name[3], H5T_NATIVE_INT32, 1, dims, lbl, qp) ||
             qk_h5_write(o, name[4], H5T_NATIVE_INT32, 1, dims, lbl, kp) ||
             qk_h5_write(o, name[5], H5T_NATIVE_FLOAT, 1, dims, lbl, t);
    free(f), free(g), free(qp), free(kp), free(w), free(t);
    return rc ? -1 : 0;
}

int pair_examples_read_add(PairExamples *x, hid_t file, const char *path, const char *prefix, int64_t rebase) {
    char first[192];
    snprintf(first, sizeof first, "%s%s", prefix, k_names[0]);
    if (H5Lexists(file, first, H5P_DEFAULT) <= 0) return 0;
    const hid_t type[6] = {H5T_NATIVE_INT32, H5T_NATIVE_INT32, H5T_NATIVE_INT64,
                           H5T_NATIVE_INT32, H5T_NATIVE_INT32, H5T_NATIVE_FLOAT};
    static const size_t elem[6] = {4, 4, 8, 4, 4, 4};
    void *buf[6];
    int64_t n = 0;
    if (qk_h5_read_columns(file, path, prefix, 6, k_names, type, elem, buf, &n)) return -1;
    const int32_t *f = buf[0], *g = buf[1], *qp = buf[3], *kp = buf[4];
    const int64_t *w = buf[2];
    const float *t = buf[5];
    for (int64_t i = 0; i < n; i++) pair_examples_add(x, f[i], g[i], t[i], w[i] + rebase, qp[i], kp[i]);
    for (int k = 0; k < 6; k++) free(buf[k]);
    return 0;
}
