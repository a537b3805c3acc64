// pair_sketch.c: see pair_sketch.h.
#include "analysis/pair_sketch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static uint64_t hash_pair(int32_t f, int32_t g) {
    uint64_t h = ((uint64_t)(uint32_t)f << 32) | (uint32_t)g;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

// Strict order of the min-heap: lighter first; ties broken by (f, g) so the table is deterministic.
static int lighter(const PairEntry *a, const PairEntry *b) {
    if (a->weight != b->weight) return a->weight < b->weight;
    if (a->f != b->f) return a->f > b->f;
    return a->g > b->g;
}

void pair_sketch_init(PairSketch *s, int capacity) {
    memset(s, 0, sizeof *s);
    s->capacity = capacity < 1 ? 1 : capacity;
    s->heap = qk_calloc(s->capacity, sizeof(PairEntry));
    s->table_size = 4;
    while (s->table_size < 2 * s->capacity) s->table_size *= 2;
    s->slot = qk_malloc(sizeof(int32_t) * s->table_size);
    memset(s->slot, 0xff, sizeof(int32_t) * s->table_size);
}

void pair_sketch_free(PairSketch *s) {
    free(s->heap);
    free(s->slot);
    memset(s, 0, sizeof *s);
}

// Hash position of (f, g), or of the empty slot where it would go.
static int find(const PairSketch *s, int32_t f, int32_t g) {
    int mask = s->table_size - 1, p = (int)(hash_pair(f, g) & mask);
    while (s->slot[p] >= 0 && (s->heap[s->slot[p]].f != f || s->heap[s->slot[p]].g != g)) p = (p + 1) & mask;
    return p;
}

// Removes hash position p, shifting back the run that follows (linear probing, no tombstones).
static void unhash(PairSketch *s, int p) {
    int mask = s->table_size - 1;
    s->slot[p] = -1;
    for (int q = (p + 1) & mask; s->slot[q] >= 0; q = (q + 1) & mask) {
        PairEntry *e = &s->heap[s->slot[q]];
        int home = (int)(hash_pair(e->f, e->g) & mask);
        // The entry at q stays if its home lies cyclically in (p, q]; otherwise it moves to p.
        int stays = p <= q ? (p < home && home <= q) : (p < home || home <= q);
        if (!stays) {
            s->slot[p] = s->slot[q];
            s->slot[q] = -1;
            e->hpos = p;
            p = q;
        }
    }
}

static void swap_heap(PairSketch *s, int a, int b) {
    PairEntry t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
    s->slot[s->heap[a].hpos] = a;
    s->slot[s->heap[b].hpos] = b;
}

static void sift_down(PairSketch *s, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->size && lighter(&s->heap[l], &s->heap[m])) m = l;
        if (r < s->size && lighter(&s->heap[r], &s->heap[m])) m = r;
        if (m == i) return;
        swap_heap(s, i, m);
        i = m;
    }
}

static void sift_up(PairSketch *s, int i) {
    while (i > 0 && lighter(&s->heap[i], &s->heap[(i - 1) / 2])) {
        swap_heap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

void pair_sketch_add_entry(PairSketch *s, int32_t f, int32_t g, double w, double err, double value, int64_t count) {
    s->total += w;
    int p = find(s, f, g);
    if (s->slot[p] >= 0) {
        PairEntry *e = &s->heap[s->slot[p]];
        e->weight += w;
        e->err += err;
        e->sum += value;
        e->count += count;
        sift_down(s, s->slot[p]);  // heavier: moves away from the root
        return;
    }
    if (s->size < s->capacity) {
        s->heap[s->size] = (PairEntry){f, g, w, err, value, count, p};
        s->slot[p] = s->size++;
        sift_up(s, s->size - 1);
        return;
    }
    // Replace the lightest entry: the newcomer inherits its weight as the error bound.
    double floor_w = s->heap[0].weight;
    unhash(s, s->heap[0].hpos);
    p = find(s, f, g);  // after the removal: the probe run may have shifted
    s->heap[0] = (PairEntry){f, g, floor_w + w, floor_w + err, value, count, p};
    s->slot[p] = 0;
    sift_down(s, 0);
}

void pair_sketch_add(PairSketch *s, int32_t f, int32_t g, double value) {
    pair_sketch_add_entry(s, f, g, fabs(value), 0, value, 1);
}

void pair_sketch_add_pruned(PairSketch *s, double w) {
    s->total += w;
    s->pruned += w;
}

// Adds n entries (heaviest first) of a sketch whose total was `total`, `pruned` of it pruned.
static void merge_entries(PairSketch *s, const PairEntry *e, int n, double total, double pruned) {
    double before = s->total;
    for (int i = 0; i < n; i++) pair_sketch_add_entry(s, e[i].f, e[i].g, e[i].weight, e[i].err, e[i].sum, e[i].count);
    s->total = before + total;
    s->pruned += pruned;
}

void pair_sketch_merge(PairSketch *s, const PairSketch *o) {
    PairEntry *e = qk_malloc(sizeof(PairEntry) * (o->size ? o->size : 1));
    int n = pair_sketch_sorted(o, e);
    merge_entries(s, e, n, o->total, o->pruned);
    free(e);
}

#define PACKED_HEAD 24   // total, count, pruned
#define PACKED_ENTRY 40  // f, g, weight, err, sum, count

size_t pair_sketch_packed_size(const PairSketch *s) { return PACKED_HEAD + (size_t)s->size * PACKED_ENTRY; }

void pair_sketch_pack(const PairSketch *s, void *out) {
    uint8_t *p = out;
    PairEntry *e = qk_malloc(sizeof(PairEntry) * (s->size ? s->size : 1));
    int64_t n = pair_sketch_sorted(s, e);
    memcpy(p, &s->total, 8), memcpy(p + 8, &n, 8), memcpy(p + 16, &s->pruned, 8);
    p += PACKED_HEAD;
    for (int64_t i = 0; i < n; i++, p += PACKED_ENTRY) {
        memcpy(p, &e[i].f, 4), memcpy(p + 4, &e[i].g, 4), memcpy(p + 8, &e[i].weight, 8);
        memcpy(p + 16, &e[i].err, 8), memcpy(p + 24, &e[i].sum, 8), memcpy(p + 32, &e[i].count, 8);
    }
    free(e);
}

int pair_sketch_merge_packed(PairSketch *s, const void *buf, size_t len, size_t *used) {
    const uint8_t *p = buf;
    double total, pruned;
    int64_t n;
    if (len < PACKED_HEAD) return qk_err("packed pair sketch: %zu bytes, shorter than its %d-byte header", len, PACKED_HEAD);
    memcpy(&total, p, 8), memcpy(&n, p + 8, 8), memcpy(&pruned, p + 16, 8);
    if (n < 0 || (size_t)n > (len - PACKED_HEAD) / PACKED_ENTRY)
        return qk_err("packed pair sketch: %lld entries announced, %zu bytes given", (long long)n, len);
    PairEntry *e = qk_malloc(sizeof(PairEntry) * (n ? n : 1));
    p += PACKED_HEAD;
    for (int64_t i = 0; i < n; i++, p += PACKED_ENTRY) {
        memcpy(&e[i].f, p, 4), memcpy(&e[i].g, p + 4, 4), memcpy(&e[i].weight, p + 8, 8);
        memcpy(&e[i].err, p + 16, 8), memcpy(&e[i].sum, p + 24, 8), memcpy(&e[i].count, p + 32, 8);
    }
    merge_entries(s, e, (int)n, total, pruned);
    free(e);
    *used = PACKED_HEAD + (size_t)n * PACKED_ENTRY;
    return 0;
}

static int heavier_first(const void *a, const void *b) {
    const PairEntry *x = a, *y = b;
    if (x->weight != y->weight) return x->weight > y->weight ? -1 : 1;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return (x->g > y->g) - (x->g < y->g);
}

int pair_sketch_sorted(const PairSketch *s, PairEntry *out) {
    memcpy(out, s->heap, sizeof(PairEntry) * s->size);
    qsort(out, s->size, sizeof(PairEntry), heavier_first);
    return s->size;
}
