// topk.c: see topk.h.
//
// Work is cut into fixed tiles (row block x column block) that do not depend on the thread count;
// every score is qk_gemm's fixed-order chain (gemm.h), so its bits do not depend on the tile, the
// threads or the CPU either.  The columns of a row may be split into S segments (more
// parallelism when rows are few), each with its own running heap, merged at the end.  Because the selection order is total, the merged result is unique.
#include "analysis/topk.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu_features.h"
#include "base/gemm.h"
#include "base/util.h"

#define SCAN_CHUNK 64  // columns tested per vector pass before any scalar insert

// An entry packed in one integer key whose unsigned order IS the total order of topk.h: the high
// word maps the float order-preservingly (-0 folded into +0), the low word is ~index, so a larger
// key means a larger value, then a lower index.
static inline uint64_t pack(float v, int32_t j) {
    v += 0.0f;  // -0 -> +0: they compare equal, so the index must decide
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)j;
}
static inline float unpack_v(uint64_t key) {
    uint32_t u = (uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
    float v;
    memcpy(&v, &u, 4);
    return v;
}
static inline int32_t unpack_i(uint64_t key) { return (int32_t)~(uint32_t)key; }

// A running k-best set: a binary min-heap of keys (the root is the WORST entry kept).
typedef struct {
    uint64_t *key;  // [k]
    int n, k;
    float thr;      // root's value once full, else -inf: a score must beat it to enter
} Heap;

static void heap_push(Heap *h, uint64_t x) {
    int p = h->n++;
    while (p > 0) {
        int up = (p - 1) / 2;
        if (h->key[up] <= x) break;
        h->key[p] = h->key[up];
        p = up;
    }
    h->key[p] = x;
    if (h->n == h->k) h->thr = unpack_v(h->key[0]);
}

// Replaces the root (worst) with x and restores the heap.
static void heap_replace_root(Heap *h, uint64_t x) {
    int p = 0, n = h->n;
    uint64_t *key = h->key;
    for (;;) {
        int l = 2 * p + 1;
        if (l >= n) break;
        int w = (l + 1 < n && key[l + 1] < key[l]) ? l + 1 : l;
        if (x <= key[w]) break;
        key[p] = key[w];
        p = w;
    }
    key[p] = x;
    h->thr = unpack_v(key[0]);
}

// Offers column j with score v.  Within one heap columns arrive in increasing j, so an equal
// score never beats the root: the strict test is the whole order.
static inline void heap_offer(Heap *h, float v, int32_t j) {
    if (isnan(v)) return;
    if (h->n < h->k)
        heap_push(h, pack(v, j));
    else if (v > h->thr)
        heap_replace_root(h, pack(v, j));
}

// Offers g[t0..te) (already scored) that pass the gate, one by one.
static void offer_range(const float *g, int t0, int te, int j0, int gated, const float *gates, float gate,
                        Heap *h) {
    for (int t = t0; t < te; t++) {
        float v = g[t];
        if (gated && !(v > (gates ? gates[t] : gate))) continue;
        heap_offer(h, v, j0 + t);
    }
}

// Portable scan of g[t0..te): score in place, count the active, offer any chunk with a hit.
static int64_t scan_generic(float *restrict g, int t0, int cb, int j0, float ai, const float *restrict c,
                            int gated, const float *restrict gates, float gate, Heap *h) {
    int64_t act = 0;
    for (; t0 < cb; t0 += SCAN_CHUNK) {
        int te = t0 + SCAN_CHUNK < cb ? t0 + SCAN_CHUNK : cb;
        float thr = h->thr;
        int hit = 0;
#pragma omp simd reduction(+ : hit, act)
        for (int t = t0; t < te; t++) {
            float v = ai * g[t] + c[t];
            g[t] = v;
            int on = !gated || v > (gates ? gates[t] : gate);
            act += on;
            hit += on & (v > thr);
        }
        if (hit || h->n < h->k) offer_range(g, t0, te, j0, gated, gates, gate, h);
    }
    return act;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_SCAN_AVX512 1
#include <immintrin.h>
// AVX-512 scan of whole 16-lane groups; returns how many columns it covered.  A group's hits are
// a bit mask; each insert raises the threshold, so the mask is re-tested against it.  Compiled for
// AVX-512 whatever the build's baseline, taken only where qk_cpu_avx512() says so.  Scores are
// a * g + c as two roundings, as in scan_generic (no FMA contraction in C11 mode): same bits.
__attribute__((target("avx512f"))) static int scan_avx512(float *restrict g, int cb, int j0, float ai,
                                                          const float *restrict c, int gated,
                                                          const float *restrict gates, float gate, Heap *h,
                                                          int64_t *act) {
    const __m512 va = _mm512_set1_ps(ai), vgate = _mm512_set1_ps(gate);
    int t = 0;
    int64_t on_total = 0;
    for (; t + 16 <= cb; t += 16) {
        __m512 v = _mm512_add_ps(_mm512_mul_ps(va, _mm512_loadu_ps(g + t)), _mm512_loadu_ps(c + t));
        _mm512_storeu_ps(g + t, v);
        __mmask16 on = 0xFFFF;
        if (gated) {
            on = _mm512_cmp_ps_mask(v, gates ? _mm512_loadu_ps(gates + t) : vgate, _CMP_GT_OQ);
            on_total += __builtin_popcount(on);
        }
        if (h->n < h->k) {
            offer_range(g, t, t + 16, j0, gated, gates, gate, h);
            continue;
        }
        __mmask16 m = on & _mm512_cmp_ps_mask(v, _mm512_set1_ps(h->thr), _CMP_GT_OQ);
        while (m) {
            int b = __builtin_ctz(m);
            heap_offer(h, g[t + b], j0 + t + b);
            m &= (__mmask16)(m - 1);
            m &= _mm512_cmp_ps_mask(v, _mm512_set1_ps(h->thr), _CMP_GT_OQ);
        }
    }
    *act += on_total;
    return t;
}
#endif

// Scores one tile row in place (g[t] = ai * g[t] + c[t], t < cb, columns j0 + t) and offers the
// ones that pass.  gated: only scores above their gate count and are offered; *active counts them.
static void scan_row(int avx512, float *restrict g, int cb, int j0, float ai, const float *restrict c,
                     int gated, const float *restrict gates, float gate, Heap *h, int64_t *active) {
    int t0 = 0;
#if HAVE_SCAN_AVX512
    if (avx512) t0 = scan_avx512(g, cb, j0, ai, c, gated, gates, gate, h, active);
#else
    (void)avx512;
#endif
    int64_t act = scan_generic(g, t0, cb, j0, ai, c, gated, gates, gate, h);
    *active += gated ? act : 0;
}

int qk_precision_parse(const char *s, QkPrecision *p) {
    if (!strcmp(s, "fp32")) *p = QK_PREC_FP32;
    else if (!strcmp(s, "tf32")) *p = QK_PREC_TF32;
    else if (!strcmp(s, "bf16")) *p = QK_PREC_BF16;
    else return qk_err("precision '%s': expected fp32, tf32 or bf16", s);
    return 0;
}

const char *qk_precision_name(QkPrecision p) { return p == QK_PREC_TF32 ? "tf32" : p == QK_PREC_BF16 ? "bf16" : "fp32"; }

void qk_topk_default_blocks(int r, int *row_block, int *col_block) {
    // Tile buffer row_block x col_block floats: sized to stay in L2 while it is scanned.
    *row_block = r <= 128 ? 256 : 128;
    *col_block = r <= 128 ? 512 : 1024;
}

static int cmp_key_desc(const void *pa, const void *pb) {
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return (a < b) - (a > b);
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

// Row i's result from its S segment heaps: the best k by the heap order, values times sign.
static void finalize_row(const QkTopkOpts *o, int i, int S, int k, float sign, const uint64_t *hk, const int *hn,
                         const int64_t *hact, uint64_t *tmp, int32_t *oi, float *ov, int32_t *count) {
    const int gated = o->act == QK_TOPK_GATED;
    int m = 0;
    int64_t act = 0;
    for (int sg = 0; sg < S; sg++) {
        size_t hx = (size_t)i * S + sg;
        for (int t = 0; t < hn[hx]; t++) tmp[m++] = hk[hx * k + t];
        act += hact[hx];
    }
    qsort(tmp, m, sizeof(uint64_t), cmp_key_desc);
    if (m > k) m = k;
    int positive = 0;
    for (int t = 0; t < k; t++) {
        oi[t] = t < m ? unpack_i(tmp[t]) : -1;
        ov[t] = t < m ? sign * unpack_v(tmp[t]) : 0.0f;
        if (o->act == QK_TOPK_RELU) {
            if (ov[t] > 0.0f) positive++;
            else ov[t] = 0.0f;
        }
    }
    if (count) {
        if (o->act == QK_TOPK_RELU) *count = positive;
        else if (gated) *count = act > INT32_MAX ? INT32_MAX : (int32_t)act;
        else *count = m;
    }
}

int qk_topk(int n, int M, int r, const float *U, int ldu, const float *a, const float *V,
            const float *c, const QkTopkOpts *o, int32_t *idx, float *val, int32_t *count) {
    if (check_args(n, M, r, U, ldu, V, o, idx, val)) return -1;
    const int both = o->bottom_idx != NULL;
    if (both && (o->bottom || o->act != QK_TOPK_PLAIN || !o->bottom_val))
        return qk_err("qk_topk: bottom_idx/bottom_val need act PLAIN, bottom 0 and both arrays");
    if (n == 0) return 0;
    const int k = o->k, gated = o->act == QK_TOPK_GATED, avx512 = qk_cpu_avx512();
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
    uint64_t *hk = qk_malloc(nh * k * sizeof(uint64_t));         // [n x S x k] heap keys
    int *hn = qk_calloc(nh, sizeof(int));                        // [n x S] entries held
    int64_t *hact = qk_calloc(nh, sizeof(int64_t));              // [n x S] gated: active count
    // The bottom-k heaps (both): the tile row, already scored as v in place, is rescored as -v.
    uint64_t *bk = both ? qk_malloc(nh * k * sizeof(uint64_t)) : NULL;  // [n x S x k]
    int *bn = both ? qk_calloc(nh, sizeof(int)) : NULL;                  // [n x S]
    int64_t *bact = both ? qk_calloc(nh, sizeof(int64_t)) : NULL;        // [n x S] unused (plain)
    float *zeros = both ? qk_calloc(CB, sizeof(float)) : NULL;          // [CB]

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
                qk_gemm(QK_GEMM_T, rows, cols, r, 1.0f,
                            U + (size_t)r0 * ldu, ldu, V + (size_t)j0 * r, r, 0, buf, cols);
                for (int ii = 0; ii < rows; ii++) {
                    int i = r0 + ii;
                    size_t hx = (size_t)i * S + sg;
                    Heap h = {hk + hx * k, hn[hx], k, -INFINITY};
                    if (h.n == k) h.thr = unpack_v(h.key[0]);
                    float ai = sign * (a ? a[i] : 1.0f);
                    scan_row(avx512, buf + (size_t)ii * cols, cols, j0, ai, ce + j0, gated,
                             o->gates ? o->gates + j0 : NULL, o->gate, &h, &hact[hx]);
                    hn[hx] = h.n;
                    if (both) {  // -(a U.V + c): bit-identical to a separate bottom = 1 call
                        Heap hb = {bk + hx * k, bn[hx], k, -INFINITY};
                        if (hb.n == k) hb.thr = unpack_v(hb.key[0]);
                        scan_row(avx512, buf + (size_t)ii * cols, cols, j0, -1.0f, zeros, 0, NULL, 0.0f, &hb, &bact[hx]);
                        bn[hx] = hb.n;
                    }
                }
            }
        }
        free(buf);
    }

#pragma omp parallel
    {
        uint64_t *tmp = qk_malloc((size_t)S * k * sizeof(uint64_t));  // [S x k]
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            finalize_row(o, i, S, k, sign, hk, hn, hact, tmp, idx + (size_t)i * k, val + (size_t)i * k,
                         count ? count + i : NULL);
            if (both)
                finalize_row(o, i, S, k, -1.0f, bk, bn, bact, tmp, o->bottom_idx + (size_t)i * k,
                             o->bottom_val + (size_t)i * k, NULL);
        }
        free(tmp);
    }
    free(ce);
    free(bk), free(bn), free(bact), free(zeros);
    free(hk);
    free(hn);
    free(hact);
    return 0;
}
