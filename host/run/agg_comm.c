// agg_comm.c: see agg_comm.h.
#include "run/agg_comm.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

// Copies between a field and its place in a flat buffer (NULL: count only).
static void move(void *flat, void *field, size_t bytes, int to_flat) {
    if (flat) memcpy(to_flat ? flat : field, to_flat ? field : flat, bytes);
}

// The dense fields of every head into (to_flat) or out of the flat buffer; *ni gets the element
// count.  The exact sums travel as their int64 limbs: the reduction is exact whatever the ranks.
static void pack_dense(HeadAggregates *const *aggs, int n, int64_t *i64, size_t *ni, int to_flat) {
    *ni = 0;
    for (int h = 0; h < n; h++) {
        if (!aggs[h]) continue;
        HeadAggFields fl;
        head_agg_fields(aggs[h], &fl);
        for (int q = 0; q < HEAD_AGG_I64; q++) {
            move(i64 ? i64 + *ni : NULL, fl.i64[q], sizeof(int64_t) * fl.n_i64[q], to_flat);
            *ni += fl.n_i64[q];
        }
    }
}

static int reduce_dense(QkComm *c, HeadAggregates *const *aggs, int n) {
    size_t ni;
    pack_dense(aggs, n, NULL, &ni, 1);  // sizes only
    int64_t *i64 = qk_malloc(sizeof(int64_t) * (ni + 1));
    pack_dense(aggs, n, i64, &ni, 1);
    int rc = c->allreduce_i64(c, i64, ni);
    if (!rc) pack_dense(aggs, n, i64, &ni, 0);
    free(i64);
    return rc ? -1 : 0;
}

// Every rank's sketches (one packed sketch per analysed head, in head order) gathered, then each
// head's sketch rebuilt from rank 0's, rank 1's, ... entries.
static int reduce_sketches(QkComm *c, HeadAggregates *const *aggs, int n) {
    size_t len = 0;
    for (int h = 0; h < n; h++)
        if (aggs[h]) len += pair_sketch_packed_size(&aggs[h]->sketch);
    uint8_t *mine = qk_malloc(len + 1), *p = mine;
    for (int h = 0; h < n; h++)
        if (aggs[h]) pair_sketch_pack(&aggs[h]->sketch, p), p += pair_sketch_packed_size(&aggs[h]->sketch);
    const int size = c->size(c);
    size_t *lens = qk_malloc(sizeof(size_t) * size);
    void *all = NULL;
    int rc = c->allgatherv(c, mine, len, &all, lens);
    free(mine);
    for (int h = 0; !rc && h < n; h++)
        if (aggs[h]) {
            int cap = aggs[h]->sketch.capacity;
            pair_sketch_free(&aggs[h]->sketch);
            pair_sketch_init(&aggs[h]->sketch, cap);
        }
    const uint8_t *at = all;
    for (int r = 0; !rc && r < size; r++) {
        size_t left = lens[r], used;
        for (int h = 0; !rc && h < n; h++) {
            if (!aggs[h]) continue;
            if (pair_sketch_merge_packed(&aggs[h]->sketch, at, left, &used)) {
                rc = qk_err("rank %d's pair sketch of head %d: %s", r, h, qk_errmsg());
                break;
            }
            at += used, left -= used;
        }
        if (!rc && left) rc = qk_err("rank %d sent %zu bytes more than its pair sketches", r, left);
        at += left;
    }
    free(all), free(lens);
    return rc ? -1 : 0;
}

int head_aggs_allreduce(QkComm *c, HeadAggregates *const *aggs, int n) {
    return reduce_dense(c, aggs, n) || reduce_sketches(c, aggs, n) ? -1 : 0;
}
