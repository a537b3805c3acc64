// topk.c: see topk.h.
//
// Work is cut into fixed tiles (row block x column block) that do not depend on the thread count,
// so every score is produced by the same sgemm call whatever the threads; the columns of a row may
// be split into S segments (more parallelism when rows are few), each with its own running heap,
// merged at the end.  Because the selection order is total, the merged result is unique.
#include "topk.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SCAN_CHUNK 64  // columns tested per vector pass before any scalar insert

typedef struct {
    float v;
    int32_t i;
} Entry;

// A running k-best set: a binary heap whose root is the WORST entry kept.
typedef struct {
    float *v;    // [k]
    int32_t *i;  // [k]
    int n, k;
} Heap;

// The total order of topk.h: a before b.
static inline int better(float va, int32_t ia, float vb, int32_t ib) {
    return va > vb || (va == vb && ia < ib);
}

static void heap_push(Heap *h, float v, int32_t j) {
    int p = h->n++;
    while (p > 0) {
        int up = (p - 1) / 2;
        if (!better(h->v[up], h->i[up], v, j)) break;
        h->v[p] = h->v[up];
        h->i[p] = h->i[up];
        p = up;
    }
    h->v[p] = v;
    h->i[p] = j;
}

// Replaces the root (worst) with (v, j) and restores the heap.
static void heap_replace_root(Heap *h, float v, int32_t j) {
    int p = 0;
    for (;;) {
        int l = 2 * p + 1, w = l;
        if (l >= h->n) break;
        if (l + 1 < h->n && better(h->v[l], h->i[l], h->v[l + 1], h->i[l + 1])) w = l + 1;
        if (!better(v, j, h->v[w], h->i[w])) break;
        h->v[p] = h->v[w];
        h->i[p] = h->i[w];
        p = w;
    }
    h->v[p] = v;
    h->i[p] = j;
}

// Offers column j with score v.  Within one heap columns arrive in increasing j, so an equal
// score never beats the root: the strict test is the whole order.
static inline void heap_offer(Heap *h, float v, int32_t j) {
    if (isnan(v)) return;
    if (h->n < h->k)
        heap_push(h, v, j);
    else if (v > h->v[0])
        heap_replace_root(h, v, j);
}

// Scores one tile row in place (g[t] = ai * g[t] + c[t], t < cb, columns j0 + t) and offers the
// ones that pass.  gated: only scores above their gate count and are offered; *active counts them.
static void scan_row(float *restrict g, int cb, int j0, float ai, const float *restrict c,
                     int gated, const float *restrict gates, float gate, Heap *h,
                     int64_t *active) {
    int64_t act = 0;
    for (int t0 = 0; t0 < cb; t0 += SCAN_CHUNK) {
        int te = t0 + SCAN_CHUNK < cb ? t0 + SCAN_CHUNK : cb;
        float thr = h->n < h->k ? -INFINITY : h->v[0];
        int hit = 0;
        if (!gated) {
#pragma omp simd reduction(+ : hit)
            for (int t = t0; t < te; t++) {
                float v = ai * g[t] + c[t];
                g[t] = v;
                hit += v > thr;
            }
        } else if (gates) {
#pragma omp simd reduction(+ : hit, act)
            for (int t = t0; t < te; t++) {
                float v = ai * g[t] + c[t];
                g[t] = v;
                int on = v > gates[t];
                act += on;
                hit += on & (v > thr);
            }
        } else {
#pragma omp simd reduction(+ : hit, act)
            for (int t = t0; t < te; t++) {
                float v = ai * g[t] + c[t];
                g[t] = v;
                int on = v > gate;
                act += on;
                hit += on & (v > thr);
            }
        }
        if (!hit && h->n == h->k) continue;
        for (int t = t0; t < te; t++) {
            float v = g[t];
            if (gated && !(v > (gates ? gates[t] : gate))) continue;
            heap_offer(h, v, j0 + t);
        }
    }
    *active += act;
}

void qk_topk_default_blocks(int r, int *row_block, int *col_block) {
    // Tile buffer row_block x col_block floats: sized to stay in L2 while it is scanned.
    *row_block = r <= 128 ? 256 : 128;
    *col_block = r <= 128 ? 512 : 1024;
}

static int cmp_entry(const void *pa, const void *pb) {
    const Entry *a = pa, *b = pb;
    if (better(a->v, a->i, b->v, b->i)) return -1;
    if (better(b->v, b->i, a->v, a->i)) return 1;
    return 0;
}

static int check_args(int n, int M, int r, const float *U, int ldu, const float *V,
                      const QkTopkOpts *o, const int32_t *idx, const float *val) {
    if (!o) return qk_err("qk_topk: opts: NULL");
    if (n < 0 || M < 1 || r < 1) return qk_err("qk_topk: n=%d M=%d r=%d: need n >= 0, M >= 1, r >= 1", n, M, r);
    if (ldu < r) return qk_err("qk_topk: ldu=%d: less than r=%d", ldu, r);
    if (o->k < 1 || o->k > M) return qk_err("qk_topk: k=%d: need 1 <= k <= M=%d", o->k, M);
    if (o->act != QK_TOPK_PLAIN && o->act != QK_TOPK_RELU && o->act != QK_TOPK_GATED)
        return qk_err("qk_topk: act=%d: unknown activation", (int)o->act);
    if (o->bottom && o->act != QK_TOPK_PLAIN)
        return qk_err("qk_topk: bottom: only with QK_TOPK_PLAIN");
    if (o->row_block < 0 || o->col_block < 0)
        return qk_err("qk_topk: row_block=%d col_block=%d: negative", o->row_block, o->col_block);
    if (n > 0 && (!U || !V || !idx || !val)) return qk_err("qk_topk: U, V, idx, val: NULL");
    return 0;
}

int qk_topk(int n, int M, int r, const float *U, int ldu, const float *a, const float *V,
            const float *c, const QkTopkOpts *o, int32_t *idx, float *val, int32_t *count) {
    if (check_args(n, M, r, U, ldu, V, o, idx, val)) return -1;
    if (n == 0) return 0;
    const int k = o->k, gated = o->act == QK_TOPK_GATED;
    const float sign = o->bottom ? -1.0f : 1.0f;
    int RB, CB;
    qk_topk_default_blocks(r, &RB, &CB);
    if (o->row_block) RB = o->row_block;
    if (o->col_block) CB = o->col_block;
    if (RB > n) RB = n;
    if (CB > M) CB = M;
    const int nrb = (n + RB - 1) / RB, ncb = (M + CB - 1) / CB;
    const int nt = omp_get_max_threads();
    int S = nrb >= nt ? 1 : (nt + nrb - 1) / nrb;  // column segments per row
    if (S > ncb) S = ncb;

    float *ce = qk_malloc_aligned((size_t)M * sizeof(float));  // [M] sign * c
    for (int j = 0; j < M; j++) ce[j] = c ? sign * c[j] : 0.0f;
    size_t nh = (size_t)n * S;                                   // heaps, one per (row, segment)
    float *hv = qk_malloc(nh * k * sizeof(float));               // [n x S x k]
    int32_t *hi = qk_malloc(nh * k * sizeof(int32_t));           // [n x S x k]
    int *hn = qk_calloc(nh, sizeof(int));                        // [n x S] entries held
    int64_t *hact = qk_calloc(nh, sizeof(int64_t));              // [n x S] gated: active count

#pragma omp parallel
    {
        float *buf = qk_malloc_aligned((size_t)RB * CB * sizeof(float));  // [RB x CB] tile
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < nrb * S; item++) {
            int rb = item / S, sg = item % S;
            int r0 = rb * RB, rows = n - r0 < RB ? n - r0 : RB;
            int cb0 = (int)((int64_t)sg * ncb / S), cb1 = (int)((int64_t)(sg + 1) * ncb / S);
            for (int cbi = cb0; cbi < cb1; cbi++) {
                int j0 = cbi * CB, cols = M - j0 < CB ? M - j0 : CB;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, r, 1.0f,
                            U + (size_t)r0 * ldu, ldu, V + (size_t)j0 * r, r, 0.0f, buf, cols);
                for (int ii = 0; ii < rows; ii++) {
                    int i = r0 + ii;
                    size_t hx = (size_t)i * S + sg;
                    Heap h = {hv + hx * k, hi + hx * k, hn[hx], k};
                    float ai = sign * (a ? a[i] : 1.0f);
                    scan_row(buf + (size_t)ii * cols, cols, j0, ai, ce + j0, gated,
                             o->gates ? o->gates + j0 : NULL, o->gate, &h, &hact[hx]);
                    hn[hx] = h.n;
                }
            }
        }
        free(buf);
    }

#pragma omp parallel
    {
        Entry *tmp = qk_malloc((size_t)S * k * sizeof(Entry));  // [S x k]
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            int m = 0;
            int64_t act = 0;
            for (int sg = 0; sg < S; sg++) {
                size_t hx = (size_t)i * S + sg;
                for (int t = 0; t < hn[hx]; t++) tmp[m++] = (Entry){hv[hx * k + t], hi[hx * k + t]};
                act += hact[hx];
            }
            qsort(tmp, m, sizeof(Entry), cmp_entry);
            if (m > k) m = k;
            int32_t *oi = idx + (size_t)i * k;
            float *ov = val + (size_t)i * k;
            int positive = 0;
            for (int t = 0; t < k; t++) {
                oi[t] = t < m ? tmp[t].i : -1;
                ov[t] = t < m ? sign * tmp[t].v : 0.0f;
                if (o->act == QK_TOPK_RELU) {
                    if (ov[t] > 0.0f) positive++;
                    else ov[t] = 0.0f;
                }
            }
            if (count) {
                if (o->act == QK_TOPK_RELU) count[i] = positive;
                else if (gated) count[i] = act > INT32_MAX ? INT32_MAX : (int32_t)act;
                else count[i] = m;
            }
        }
        free(tmp);
    }
    free(ce);
    free(hv);
    free(hi);
    free(hn);
    free(hact);
    return 0;
}
