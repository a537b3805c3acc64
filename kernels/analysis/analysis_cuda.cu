// analysis_cuda.cu: see analysis_cuda.h.  Kernels (N = B*T tokens, C = d_model, dh = d_head,
// m = d_sae, S = code slots, one stream; every launch checked and named):
//   ana_normalise   grid ceil(N/128) x 128     thread per token: z (N, C), scale, shift (N)
//   [qk_btk_run]    z (N, C) x W_encT (m, C)   the SAE activation: idx/val (N, S), n_active (N)
//   ana_err         grid ceil(N*C/256) x 256   thread per (n, t): live (N), err (N, C)
//   [cublasSgemm]   err (N, C) x Wqk (C, 2 H dh)   the error projections of all the layer's heads
//                                              at once: EQK (N, 2 H dh), fp32 (no TF32)
//   ana_head_vec    grid ceil(N*dh/128) x 128  thread per (n, d): Q, K (gathered), EQ, EK (EQK's
//                                              columns / sigma), QF, KF (N, dh)
//   [qk_btk_run]    H x (Q (N, dh) x Kd (m, dh))  look-for top-k / bottom-k (H, N, k): the
//                                              layer's heads as one batched top-k
//   ana_proj        grid ceil(N/128) x 128     thread per token: U = Q/sqrt(dh), row scale, |v|^2
//   [qk_btk_run]    U (N, dh) x E (m, dh)      encoder projection (N, enc_slots)
//   ana_rows        grid ceil(N*T/128) x 128   thread per (n, j <= i): S, Sb, Sq, Sk (N, T)
//   ana_query       grid (ceil(N/64), heads) x 64  thread per (query, head of the layer), its sorted
//                                              look-for top-k in shared memory:
//                                              kernels/analysis_math.h qk_ana_query
//   ana_agg         grid ceil(N/256) x 256     metric sums / counts / histograms reduced in shared
//                                              memory with int64 atomics, then one global atomic per
//                                              block; marginals: int64 atomics at (m) rows
//   ana_carry       grid ceil(m/256) x 256     normalises the exact limbs (value unchanged)
//   heavy pairs     per head and batch, the N*sp sketch candidates (f, g, value) at j*:
//     ana_pair_keys   grid ceil(N*sp/256)      key (f << 32 | g), padding / empty slots: ~0 (last)
//     [cub radix sort, stable: equal keys stay in token order]
//     ana_pair_heads  grid ceil(N*sp/256)      segment heads; [cub inclusive scan] -> segment ids
//     ana_pair_starts grid ceil(N*sp/256)      segment starts, segment count
//     ana_pair_sums   grid ceil(N*sp/128)      thread per segment: sum |v|, sum v (double, token
//                                              order), count; downloaded and merged into the
//                                              host sketch heaviest first (pair_sketch_add_entry)
//     ana_pair_examples grid ceil(N*sp/128)    thread per segment: the pair's 4 strongest occurrences
//     [cub radix sort, stable: |term| desc, token]   (analysis_math.h: the batch's R of
//     ana_examples_gather grid ceil(1024/128)  pair_examples.h), the first 1024 downloaded and
//                                              added to the host's examples (composable: the same
//                                              as adding every candidate)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/analysis_math.h"
#include "cuda_try.h"
#include "host_pinned.cuh"

extern "C" {
#include "analysis/analysis_cuda.h"
#include "analysis/bilinear_topk.h"
}

// ---- accumulator layout (int64, per analysed head) --------------------------------------------
// [0] queries, count[16], hist[16][50], sum[16][3], qmarg[m][3], kmarg[m][3], qcount[m], kcount[m]
#define ACC_QUERIES 0
#define ACC_COUNT 1
#define ACC_HIST (ACC_COUNT + QK_ANA_METRICS)
#define ACC_SUM (ACC_HIST + QK_ANA_METRICS * QK_ANA_BINS)
#define ACC_DENSE (ACC_SUM + QK_ANA_METRICS * 3)
static size_t acc_size(int m) { return ACC_DENSE + (size_t)m * 8; }

typedef unsigned long long ull;

__device__ __forceinline__ void add_i64(int64_t *p, int64_t v) {
    if (v) atomicAdd((ull *)p, (ull)v);  // two's complement: signed addition, wrapping as int64
}

// ---- kernels -----------------------------------------------------------------------------------

__global__ void ana_normalise(const float *x, long long ldx, int N, int C, int center, int ln, float *z, float *scale,
                              float *shift) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    qk_ana_normalise(x + (size_t)n * ldx, C, center, ln, z + (size_t)n * C, scale + n, shift + n);
}

__global__ void ana_err(const float *x, long long ldx, int N, int C, const int32_t *idx, const float *val,
                        const int32_t *n_active, int S, const float *W_dec, const float *b_dec, const float *scale,
                        const float *shift, int32_t *live, float *err) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)N * C) return;
    int n = (int)(e / C), t = (int)(e % C);
    if (t == 0) live[n] = qk_ana_live(n_active[n], S);
    err[e] = qk_ana_err(x[(size_t)n * ldx + t], t, C, idx + (size_t)n * S, val + (size_t)n * S, S, W_dec, b_dec,
                        scale[n], shift[n]);
}

struct HeadVecArgs {
    const float *q, *k;  // hook pointers at the head's first column
    long long ld;
    const float *eq, *ek;  // EQK's columns of the head's e Wq~ and e Wk~ (row stride ld_e)
    long long ld_e;
    const float *sigma, *scale, *val, *Qd, *Kd;
    const int32_t *idx, *live;
    int N, dh, S;
    float inv;
    float *Q, *K, *EQ, *EK, *QF, *KF, *ainv;
};

__global__ void ana_head_vec(const HeadVecArgs p) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)p.N * p.dh) return;
    int n = (int)(e / p.dh), d = (int)(e % p.dh);
    p.Q[e] = p.q[(size_t)n * p.ld + d];
    p.K[e] = p.k[(size_t)n * p.ld + d];
    p.EQ[e] = p.eq[(size_t)n * p.ld_e + d] / p.sigma[n];  // as the host: the product, then / sigma
    p.EK[e] = p.ek[(size_t)n * p.ld_e + d] / p.sigma[n];
    float sc = p.scale[n] / p.sigma[n];
    const int32_t *ix = p.idx + (size_t)n * p.S;
    const float *vl = p.val + (size_t)n * p.S;
    p.QF[e] = qk_ana_feat_sum(ix, vl, p.live[n], p.Qd, p.dh, d, sc);
    p.KF[e] = qk_ana_feat_sum(ix, vl, p.live[n], p.Kd, p.dh, d, sc);
    if (d == 0) p.ainv[n] = p.inv;
}

// Encoder projection inputs: U = Q * inv, row scale a and code scale / shift from |v|^2.
__global__ void ana_proj(const float *Q, int N, int dh, float inv, const float *G, int d_in, int ln, float *U, float *a,
                         float *scale, float *shift) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float *u = U + (size_t)n * dh;
    for (int d = 0; d < dh; d++) u[d] = Q[(size_t)n * dh + d] * inv;
    double s2 = 0;
    for (int d = 0; d < dh; d++) s2 += u[d] * (double)qk_ana_dot(G + (size_t)d * dh, u, dh);
    qk_ana_proj_scale((double)(float)s2, d_in, ln, a + n, scale + n);
    shift[n] = 0.0f;
}

__global__ void ana_rows(const float *Q, const float *K, const float *EQ, const float *EK, int N, int T, int dh,
                         float inv, float *S, float *Sb, float *Sq, float *Sk) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)N * T) return;
    int n = (int)(e / T), j = (int)(e % T), i = n % T;
    if (j > i) return;
    int nj = n - i + j;
    const float *q = Q + (size_t)n * dh, *k = K + (size_t)nj * dh, *eq = EQ + (size_t)n * dh, *ek = EK + (size_t)nj * dh;
    S[e] = qk_ana_score(q, k, dh, inv);
    Sb[e] = qk_ana_score_hat(q, eq, k, ek, dh, inv);
    Sq[e] = qk_ana_score_hat(q, eq, k, NULL, dh, inv);
    Sk[e] = qk_ana_score_hat(q, NULL, k, ek, dh, inv);
}

// grid.y: one of a layer's heads (views[blockIdx.y]).
// Each thread's sorted look-for top-k in shared memory (rows padded: conflict-free columns).
#define QUERY_THREADS 64
__global__ void __launch_bounds__(QUERY_THREADS) ana_query(const QkAnaView *views, int N) {
    __shared__ int32_t st[QUERY_THREADS][QK_SEL_QUEUE + 1];
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const QkAnaView *v = views + blockIdx.y;
    qk_ana_query(v, n, n % v->T, st[threadIdx.x]);
}

struct AggArgs {
    const float *metrics, *qmarg, *kmarg;
    const int32_t *idx, *live, *att_idx, *valid_len;
    int N, T, S, a;
    int64_t *acc;
    int m;
};

// Adds one token's marginal terms: feature F[u] gets term x[u] (limbs) and a count, u < live.
__device__ __forceinline__ void add_marginal(const int32_t *F, int live, const float *x, int64_t *sum, int64_t *count) {
    for (int u = 0; u < live; u++) {
        int64_t l[3];
        qk_ana_limbs(x[u], l);
        int64_t *s = sum + (size_t)F[u] * 3;
        add_i64(s, l[0]), add_i64(s + 1, l[1]), add_i64(s + 2, l[2]);
        add_i64(count + F[u], 1);
    }
}

#define AGG_THREADS 256
#define AGG_SMEM (1 + QK_ANA_METRICS + QK_ANA_METRICS * QK_ANA_BINS + QK_ANA_METRICS * 3)

__global__ void ana_agg(const AggArgs p) {
    __shared__ int64_t sh[AGG_SMEM];
    for (int q = threadIdx.x; q < AGG_SMEM; q += blockDim.x) sh[q] = 0;
    __syncthreads();
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    int ok = n < p.N && (!p.valid_len || n % p.T < p.valid_len[n / p.T]);
    if (ok) {
        add_i64(sh + ACC_QUERIES, 1);
        for (int m = 0; m < QK_ANA_METRICS; m++) {
            float x = p.metrics[(size_t)n * QK_ANA_METRICS + m], lo, hi;
            if (!isfinite(x)) continue;  // as the host: NaN and +-inf are not values a mean can hold
            int64_t l[3];
            qk_ana_limbs(x, l);
            for (int q = 0; q < 3; q++) add_i64(sh + ACC_SUM + m * 3 + q, l[q]);
            add_i64(sh + ACC_COUNT + m, 1);
            qk_ana_range(m, &lo, &hi);
            add_i64(sh + ACC_HIST + m * QK_ANA_BINS + qk_ana_bin(x, lo, hi), 1);
        }
        int64_t *qm = p.acc + ACC_DENSE, *km = qm + (size_t)p.m * 3, *qc = km + (size_t)p.m * 3, *kc = qc + p.m;
        int nj = n - n % p.T + p.att_idx[(size_t)n * p.a];
        add_marginal(p.idx + (size_t)n * p.S, p.live[n], p.qmarg + (size_t)n * p.S, qm, qc);
        add_marginal(p.idx + (size_t)nj * p.S, p.live[nj], p.kmarg + (size_t)n * p.S, km, kc);
    }
    __syncthreads();
    for (int q = threadIdx.x; q < AGG_SMEM; q += blockDim.x) add_i64(p.acc + q, sh[q]);
}

// Normalises the metric sums and the 2m marginal limb triples of one accumulator.
__global__ void ana_carry(int64_t *acc, int m) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < QK_ANA_METRICS) qk_ana_normalize(acc + ACC_SUM + e * 3);
    if (e < 2 * m) qk_ana_normalize(acc + ACC_DENSE + (size_t)e * 3);
}


// ---- heavy-pair candidates: reduced by (f, g) on the device ------------------------------------

#define PAIR_NONE (~0ull)

__global__ void ana_pair_keys(const int32_t *sk_f, const int32_t *sk_g, int N, int T, int sp, const int32_t *valid_len,
                              unsigned long long *key, uint32_t *pos) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)N * sp) return;
    int n = (int)(e / sp);
    int ok = (!valid_len || n % T < valid_len[n / T]) && sk_f[e] >= 0;
    // A slot after an empty one is not added by the host either (pairs are packed in front).
    for (int u = (int)(e % sp) - 1; ok && u >= 0; u--) ok = sk_f[(size_t)n * sp + u] >= 0;
    key[e] = ok ? ((unsigned long long)(uint32_t)sk_f[e] << 32 | (uint32_t)sk_g[e]) : PAIR_NONE;
    pos[e] = (uint32_t)e;
}

__global__ void ana_pair_heads(const unsigned long long *key, int n, int32_t *head) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) head[e] = e == 0 || key[e] != key[e - 1];
}

// seg (inclusive scan of the heads): segment s = seg[e] - 1 starts at e; start[nseg] = n.
__global__ void ana_pair_starts(const int32_t *head, const int32_t *seg, int n, int32_t *start, int32_t *nseg) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    if (head[e]) start[seg[e] - 1] = e;
    if (e == n - 1) *nseg = seg[e], start[seg[e]] = n;
}

__global__ void ana_pair_sums(const unsigned long long *key, const uint32_t *pos, const float *val, const int32_t *start,
                              const int32_t *nseg, int32_t *f, int32_t *g, double *w, double *sum, long long *count) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= *nseg) return;
    const int e0 = start[s], e1 = start[s + 1];
    const unsigned long long k = key[e0];
    if (k == PAIR_NONE) {  // padding and empty sketch slots (the last segment, up to np long): no pair
        f[s] = -1, g[s] = -1, w[s] = 0, sum[s] = 0, count[s] = 0;
        return;
    }
    double ws = 0, vs = 0;
    for (int e = e0; e < e1; e++) {
        double v = val[pos[e]];
        ws += fabs(v), vs += v;
    }
    f[s] = (int32_t)(k >> 32), g[s] = (int32_t)(uint32_t)k;
    w[s] = ws, sum[s] = vs, count[s] = e1 - e0;
}

// Thread per segment slot s < np: the merge order of the batch's distinct pairs as an ascending
// key, weight descending (w >= 0: its bits rise with it), slot s as the value; a stable sort keeps
// (f, g) order on equal weights (pair_sketch_sorted's order).  Past the segments and the empty
// slots' segment: ~0, last.
__global__ void ana_pair_wkeys(const int32_t *f, const double *w, const int32_t *nseg, int np, unsigned long long *key,
                               int32_t *slot) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= np) return;
    key[s] = s < *nseg && f[s] >= 0 ? ~(unsigned long long)__double_as_longlong(w[s]) : ~0ull;
    slot[s] = s;
}

// The first `top` pairs in merge order into the head's download buffers (f = -1 past the last),
// and rest[0] = the summed weight of the others (one block, a fixed order: the same bits every
// run), which the sketch's total takes.
#define PAIR_TOP_THREADS 256
__global__ void __launch_bounds__(PAIR_TOP_THREADS)
ana_pair_top(const int32_t *slot, const int32_t *nseg, int np, int top, const int32_t *f, const int32_t *g,
             const double *w, const double *sum, const long long *count, int32_t *of, int32_t *og, double *ow,
             double *osum, long long *ocount, double *rest) {
    __shared__ double part[PAIR_TOP_THREADS];
    const int n = *nseg;
    for (int r = threadIdx.x; r < top; r += blockDim.x) {
        const int s = r < np ? slot[r] : -1, live = s >= 0 && s < n && f[s] >= 0;
        of[r] = live ? f[s] : -1, og[r] = live ? g[s] : -1;
        ow[r] = live ? w[s] : 0, osum[r] = live ? sum[s] : 0, ocount[r] = live ? count[s] : 0;
    }
    double acc = 0;
    for (int r = top + threadIdx.x; r < np; r += blockDim.x) {
        const int s = slot[r];
        if (s < n && f[s] >= 0) acc += w[s];
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int h = PAIR_TOP_THREADS / 2; h > 0; h /= 2) {
        if (threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) rest[0] = part[0];
}

// ---- example contexts of the heavy pairs: the batch's R (pair_examples.h) on the device --------

static_assert(QK_EXAMPLES_PER_PAIR <= QK_ANA_EXAMPLES_MAX_PER_PAIR, "per-pair examples beyond the device's");

// Thread per segment slot s < np: the pair's per_pair strongest occurrences (analysis_math.h
// qk_ana_segment_examples) as sort keys and candidate indices at [s * per_pair, (s+1) * per_pair);
// slots past the segment count, the empty-slot segment and unfilled places: QK_ANA_EXAMPLE_NONE.
__global__ void ana_pair_examples(const unsigned long long *key, const uint32_t *pos, const float *val,
                                  const int32_t *start, const int32_t *nseg, int np, int sp, int per_pair,
                                  unsigned long long *ex_key, int32_t *ex_idx) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= np) return;
    int32_t kept[QK_ANA_EXAMPLES_MAX_PER_PAIR];
    const int live = s < *nseg && key[start[s]] != PAIR_NONE;
    qk_ana_segment_examples(pos, val, live ? start[s] : 0, live ? start[s + 1] : 0, per_pair, kept);
#pragma unroll
    for (int q = 0; q < QK_ANA_EXAMPLES_MAX_PER_PAIR; q++) {  // constant indices: kept[] in registers
        if (q >= per_pair) break;
        const size_t o = (size_t)s * per_pair + q;
        ex_key[o] = kept[q] >= 0 ? qk_ana_example_key(val[kept[q]], (uint32_t)(kept[q] / sp)) : QK_ANA_EXAMPLE_NONE;
        ex_idx[o] = kept[q];
    }
}

// Thread per rank r < capacity of the sorted examples: the candidate's pair, term, token and key
// position (att_idx (N, a): the query's most attended key); f = -1 past the last.
__global__ void ana_examples_gather(const unsigned long long *ex_key, const int32_t *ex_idx, int n, int capacity,
                                    const int32_t *sk_f, const int32_t *sk_g, const float *sk_val, const int32_t *att_idx,
                                    int sp, int a, int32_t *f, int32_t *g, float *v, int32_t *tok, int32_t *kpos) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= capacity) return;
    const int e = r < n && ex_key[r] != QK_ANA_EXAMPLE_NONE ? ex_idx[r] : -1;
    f[r] = e >= 0 ? sk_f[e] : -1;
    g[r] = e >= 0 ? sk_g[e] : -1;
    v[r] = e >= 0 ? sk_val[e] : 0.0f;
    tok[r] = e >= 0 ? e / sp : -1;
    kpos[r] = e >= 0 ? att_idx[(size_t)(e / sp) * a] : -1;
}

// ---- state -------------------------------------------------------------------------------------

struct LayerDev {
    const QkSae *sae;
    int S, any_rec;
    float *W_encT, *c_enc, *gates, *W_dec, *b_dec;
    float *Kd;  // (H, m, dh): the heads' Kd, one batched look-for (zeros for heads not analysed)
    float *Wqk;  // (C, 2 H dh): every head's Wq~, then every head's Wk~ (zeros for heads not analysed)
};

struct HeadDev {
    float *bq, *bk, *Qd, *Kd, *qb, *kb, *E, *G;
    int64_t *acc;
};

// One head's batch buffers (device); a layer's heads each have their own, so that ana_query runs
// them in one launch.
struct HeadBuf {
    float *Q, *K, *EQ, *EK, *QF, *KF, *ainv, *U, *aenc, *rows;
    int32_t *top_idx, *bot_idx, *e_idx, *e_nact, *att_idx, *pair_f, *pair_g, *sk_f, *sk_g, *pt_f, *pt_g;
    float *top_val, *bot_val, *e_val, *e_scale, *e_shift, *att_w, *pair_val, *groups, *metrics, *qmarg, *kmarg,
        *sk_val, *pt_v, *pattern, *pattern_hat;
};

// One head's per-batch results for the host's sketch and examples: the `top` heaviest distinct
// pairs in merge order and the rest's weight; the batch's strongest examples.  PairOut: on the
// device, one per head slot of a layer (reused layer after layer); PairHost: their page-locked
// host copies, one per analysed head and batch slot (the host merges them a batch later).
struct PairOut {
    int32_t *d_f, *d_g, *d_xf, *d_xg, *d_xt, *d_xj, *d_nseg;
    double *d_w, *d_sum, *d_rest;
    long long *d_cnt;
    float *d_xv;
};
struct PairHost {
    int32_t *f, *g, *xf, *xg, *xt, *xj, *nseg;  // (top), (top), (cap) x 4, (1)
    double *w, *sum, *rest;                      // (top), (top), (1)
    long long *cnt;                              // (top)
    float *xv;                                   // (cap)
};

// The batch pipeline: batch i is enqueued whole (no host wait inside it) into slot i % 2, and its
// results are taken by the host (nseg checks, sketch and example merges, records handed to emit)
// while batch i + 1 computes: in the next qk_ana_cuda_run, or in qk_ana_cuda_flush.  A slot holds
// where the batch's downloads land (page-locked), what the host does with them, and the events
// that time its stages on the device.
struct BatchSlot {
    int pending;             // enqueued, not yet taken by the host
    int B, N;
    HeadAggregates *agg;     // the batch's call's agg, emit and emit_ctx
    QkRecordsFn emit;
    void *emit_ctx;
    long long *window0;      // (L*H) each analysed head's agg->window0 at the batch's call
    PairHost *ph;            // (L*H) analysed heads' downloads
    HeadRecords *rec;        // (L*H) recorded heads' records (arrays in the page-locked block)
    int32_t *vlen;           // (max_batch) the batch's valid lengths, page-locked
    void *block;             // the page-locked block carved into ph's, rec's and vlen's arrays
                             // (host_pinned.cuh: ordinary memory where refused)
    cudaEvent_t *ev;         // (L, 3): layer l's start, its SAE code done, its heads done
    cudaEvent_t done;        // every download of the batch landed
};

// A layer's aggregates-and-pairs sequence (head_aggregate of every analysed head: ~35 launches and
// copies per head, ~5000 per batch at GPT-2-small shapes) captured as a CUDA graph on its first
// batch of N tokens and replayed by later batches of the same N.  Every pointer in it is fixed at
// open, so a replay is the same work.
struct LayerGraph {
    cudaGraphExec_t exec;
    int N, with_valid;
};

// Stage times (seconds) of finished batches not yet handed to a caller.
struct StageCarry {
    double sae, heads;
};

struct QkAnaCuda {
    AnalysisPlan p;
    int device, defer, L, H, C, dh, T, Nmax, S_max, es_max, P;
    int lag;                      // batches taken by the host one call late (defer, unless QK_CUDA_PIPELINE=0)
    int last;                     // the last layer with an SAE
    QkBtk *btk;
    cudaStream_t st;
    int sync_each;
    int counting;                 // open_buffers only sums its device bytes into counted
    size_t counted;
    size_t reserve;               // the caller's later device bytes for a batch of max_batch (qk_ana_cuda_open)
    int graphs;                   // capture layer_aggregates as CUDA graphs (QK_CUDA_GRAPHS=0: off; off with sync_each)
    LayerGraph *graph;            // (2, L): per batch slot (the graphs download into the slot's memory)
    LayerDev *lay;
    HeadDev *head;
    BatchSlot slot[2];            // the batch pipeline (BatchSlot); cur: the next batch's
    int cur;
    cudaEvent_t acts_free;        // after the last kernel of the last batch that reads its activations
    int acts_recorded;
    int dense_dirty;              // a batch added to the accumulators since the last flush_dense
    // Records download on their own stream, overlapping the next layer's SAE code: layer l's copies
    // start at heads_done[l] (on st) and end at copied[l] (on cst); st waits for copied[l] before
    // the next layer writes a head buffer.
    cudaStream_t cst;
    cudaEvent_t *heads_done, *copied;  // (L)
    StageCarry carry;
    // batch buffers (device)
    float *z, *err, *val, *scale, *shift;
    float *EQK;                   // (Nmax, 2 H dh): err Wqk, the layer's error projections
    cublasHandle_t blas;          // on st; fp32 GEMMs (the error projections)
    float *h_wqk;                 // (C, 2 H dh) host staging of a layer's Wqk
    int32_t *idx, *nact, *live;
    int32_t *vlen;
    HeadBuf *hb;                  // (H) a layer's heads, analysed together
    float *Qall, *ainv_all;       // (H, Nmax, dh), (H, Nmax): hb[h].Q and .ainv are slices
    int32_t *top_idx_all, *bot_idx_all;  // (H, N, k) for the batch's N: hb[h].top_* point into them
    float *top_val_all, *bot_val_all;
    QkAnaView *h_views, *d_views;  // (L, H) the views of ana_query's heads, host (qk_pinned_alloc) and device
    // heavy-pair reduction (device), and its host staging
    unsigned long long *pk, *pk2;
    uint32_t *pp, *pp2;
    int32_t *phead, *pseg, *pstart, *pnseg, *pf, *pg;
    double *pw, *psum;
    long long *pcnt;
    unsigned long long *wk, *wk2;  // (np) merge-order keys, sorted
    int32_t *ws, *ws2;             // (np) their segment slots, sorted
    // example contexts: keys and candidate indices (np * per_pair), sorted copies
    unsigned long long *xk, *xk2;
    int32_t *xi, *xi2;
    void *cub_tmp;
    size_t cub_bytes;
    int top;                       // pairs merged per head and batch: min(sketch_capacity, N * sketch_pairs)
    PairOut *out;                  // (H) a layer's heads' per-batch pair results (device)
    // every device allocation, freed at close
    void **allocs;
    int n_allocs, cap_allocs;
};

static int dev_alloc(QkAnaCuda *a, void **p, size_t bytes, const char *what) {
    *p = NULL;
    if (!bytes) bytes = 4;
    if (a->counting) {  // open_buffers' sizing pass: nothing allocated
        a->counted += (bytes + 255) / 256 * 256;
        return 0;
    }
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        return qk_err("qk_ana_cuda_open: cudaMalloc(%s, %zu bytes): %s (the plan: batches of %d windows of %d tokens, "
                      "%d heads per layer; a smaller [corpus] batch needs proportionally less)",
                      what, bytes, cudaGetErrorString(e), a->p.max_batch, a->p.T, a->H);
    }
    if (a->n_allocs == a->cap_allocs) {
        a->cap_allocs = a->cap_allocs ? 2 * a->cap_allocs : 64;
        a->allocs = (void **)realloc(a->allocs, sizeof(void *) * a->cap_allocs);
    }
    a->allocs[a->n_allocs++] = *p;
    return 0;
}

#define ALLOC(ptr, count, what) dev_alloc(a, (void **)&(ptr), sizeof(*(ptr)) * (size_t)(count), what)

static int upload(QkAnaCuda *a, float **dst, const float *src, size_t count, const char *what) {
    if (!src) {
        *dst = NULL;
        return 0;
    }
    if (dev_alloc(a, (void **)dst, count * sizeof(float), what)) return -1;
    CUDA_TRY(cudaMemcpy(*dst, src, count * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

// A launch's error, named with its kernel, layer, head and shape; with QK_CUDA_SYNC=1 also the
// error of its execution.
static int launched(QkAnaCuda *a, const char *kernel, int layer, int head, int N) {
    const cudaError_t e = qk_launch_status(a->st, a->sync_each);
    if (e != cudaSuccess)
        return qk_err("analysis kernel %s (layer %d head %d, N %d T %d C %d dh %d): %s", kernel, layer, head, N, a->T,
                      a->C, a->dh, cudaGetErrorString(e));
    return 0;
}

static int blocks(long long work, int threads) { return (int)((work + threads - 1) / threads); }

static QkTopkOpts sae_opts(const LayerDev *ld, int slots) {
    QkTopkOpts o;
    memset(&o, 0, sizeof o);
    o.k = slots;
    if (ld->sae->arch == QK_SAE_TOPK) o.act = QK_TOPK_RELU;
    else o.act = QK_TOPK_GATED, o.gates = ld->gates, o.gate = 0.0f;
    return o;
}

static void slot_free(BatchSlot *s, int L) {
    qk_pinned_free(s->block);
    for (int e = 0; s->ev && e < 3 * L; e++)
        if (s->ev[e]) cudaEventDestroy(s->ev[e]);
    if (s->done) cudaEventDestroy(s->done);
    free(s->ev), free(s->window0), free(s->ph), free(s->rec);
    memset(s, 0, sizeof *s);
}

// A batch still pending at close is dropped (close without flush: the caller gave up on it).
extern "C" void qk_ana_cuda_close(QkAnaCuda *a) {
    if (!a) return;
    if (a->st) cudaStreamSynchronize(a->st);
    if (a->cst) cudaStreamSynchronize(a->cst);
    qk_btk_destroy(a->btk);  // before the stream it enqueues on
    if (a->blas) cublasDestroy(a->blas), a->blas = NULL;  // before its stream and its workspace (in allocs)
    for (int q = 0; q < a->n_allocs; q++) cudaFree(a->allocs[q]);
    free(a->allocs);
    if (a->cst) cudaStreamDestroy(a->cst);
    if (a->st) cudaStreamDestroy(a->st);
    for (int q = 0; q < 2; q++) slot_free(&a->slot[q], a->L);
    if (a->acts_free) cudaEventDestroy(a->acts_free);
    for (int l = 0; l < a->L; l++) {
        if (a->heads_done && a->heads_done[l]) cudaEventDestroy(a->heads_done[l]);
        if (a->copied && a->copied[l]) cudaEventDestroy(a->copied[l]);
    }
    free(a->heads_done), free(a->copied);
    for (int g = 0; a->graph && g < 2 * a->L; g++)
        if (a->graph[g].exec) cudaGraphExecDestroy(a->graph[g].exec);
    free(a->graph);
    qk_pinned_free(a->h_views);
    free(a->lay), free(a->head), free(a->hb), free(a->out), free(a->h_wqk);
    free(a);
}

static int open_buffers(QkAnaCuda *a) {
    const AnalysisOpts *o = &a->p.o;
    const size_t N = a->Nmax, C = a->C, dh = a->dh, S = a->S_max, T = a->T;
    const size_t na = N * o->a;
    if (ALLOC(a->z, N * C, "z") || ALLOC(a->err, N * C, "err") || ALLOC(a->EQK, N * 2 * a->H * dh, "EQK") || ALLOC(a->val, N * S, "code val") ||
        ALLOC(a->idx, N * S, "code idx") || ALLOC(a->nact, N, "n_active") || ALLOC(a->live, N, "live") ||
        ALLOC(a->scale, N, "scale") || ALLOC(a->shift, N, "shift"))
        return -1;
    const size_t nk = N * o->k, es = a->es_max;
    if (ALLOC(a->vlen, a->p.max_batch, "valid_len")) return -1;
    a->hb = (HeadBuf *)calloc(a->H, sizeof(HeadBuf));
    if (ALLOC(a->d_views, (size_t)a->L * a->H, "head views")) return -1;
    const size_t H = a->H;
    if (ALLOC(a->Qall, H * N * dh, "Q (all heads)") || ALLOC(a->ainv_all, H * N, "1/sqrt(dh) (all heads)") ||
        ALLOC(a->top_idx_all, H * nk, "top_idx") || ALLOC(a->top_val_all, H * nk, "top_val") ||
        ALLOC(a->bot_idx_all, H * nk, "bot_idx") || ALLOC(a->bot_val_all, H * nk, "bot_val"))
        return -1;
    // Heads not analysed take part in the batched look-for on zeros (their outputs are unused).
    if (!a->counting) {
        CUDA_TRY(cudaMemset(a->Qall, 0, H * N * dh * sizeof(float)));
        CUDA_TRY(cudaMemset(a->ainv_all, 0, H * N * sizeof(float)));
    }
    for (int h = 0; h < a->H; h++) {
        HeadBuf *b = &a->hb[h];
        if (!a->counting) b->Q = a->Qall + (size_t)h * N * dh, b->ainv = a->ainv_all + (size_t)h * N;  // sizing pass: no memory yet
        if (ALLOC(b->K, N * dh, "K") || ALLOC(b->EQ, N * dh, "EQ") ||
            ALLOC(b->EK, N * dh, "EK") || ALLOC(b->QF, N * dh, "QF") || ALLOC(b->KF, N * dh, "KF") ||
            ALLOC(b->U, N * dh, "U") || ALLOC(b->aenc, N, "aenc") || ALLOC(b->rows, 4 * N * T, "score rows"))
            return -1;
        if (ALLOC(b->e_idx, N * es, "enc idx") || ALLOC(b->e_val, N * es, "enc val") ||
            ALLOC(b->e_nact, N, "enc n_active") || ALLOC(b->e_scale, N, "enc scale") || ALLOC(b->e_shift, N, "enc shift"))
            return -1;
        if (ALLOC(b->att_idx, na, "att_idx") || ALLOC(b->att_w, na, "att_w") || ALLOC(b->pair_f, na * o->p, "pair_f") ||
            ALLOC(b->pair_g, na * o->p, "pair_g") || ALLOC(b->pair_val, na * o->p, "pair_val") ||
            ALLOC(b->groups, na * 16, "groups") || ALLOC(b->metrics, N * QK_ANA_METRICS, "metrics") ||
            ALLOC(b->qmarg, N * S, "qmarg") || ALLOC(b->kmarg, N * S, "kmarg") ||
            ALLOC(b->sk_f, N * o->sketch_pairs, "sk_f") || ALLOC(b->sk_g, N * o->sketch_pairs, "sk_g") ||
            ALLOC(b->sk_val, N * o->sketch_pairs, "sk_val") || ALLOC(b->pt_f, N * a->P, "pair scratch f") ||
            ALLOC(b->pt_g, N * a->P, "pair scratch g") || ALLOC(b->pt_v, N * a->P, "pair scratch v"))
            return -1;
        if (a->p.record_patterns && (ALLOC(b->pattern, N * T, "pattern") || ALLOC(b->pattern_hat, N * T, "pattern_hat")))
            return -1;
    }
    const size_t np = N * o->sketch_pairs;
    if (ALLOC(a->pk, np, "pair keys") || ALLOC(a->pk2, np, "pair keys (sorted)") || ALLOC(a->pp, np, "pair positions") ||
        ALLOC(a->pp2, np, "pair positions (sorted)") || ALLOC(a->phead, np, "pair heads") ||
        ALLOC(a->pseg, np, "pair segments") || ALLOC(a->pstart, np + 1, "pair starts") || ALLOC(a->pnseg, 1, "pair count") ||
        ALLOC(a->pf, np, "pair f") || ALLOC(a->pg, np, "pair g") || ALLOC(a->pw, np, "pair weights") ||
        ALLOC(a->psum, np, "pair sums") || ALLOC(a->pcnt, np, "pair counts"))
        return -1;
    const size_t nx = np * QK_EXAMPLES_PER_PAIR, cap = QK_EXAMPLES_CAPACITY;
    if (ALLOC(a->xk, nx, "example keys") || ALLOC(a->xk2, nx, "example keys (sorted)") || ALLOC(a->xi, nx, "example index") ||
        ALLOC(a->xi2, nx, "example index (sorted)") || ALLOC(a->wk, np, "pair merge keys") ||
        ALLOC(a->wk2, np, "pair merge keys (sorted)") || ALLOC(a->ws, np, "pair merge slots") ||
        ALLOC(a->ws2, np, "pair merge slots (sorted)"))
        return -1;
    a->top = o->sketch_capacity < (int)np ? o->sketch_capacity : (int)np;
    const size_t top = a->top;
    a->out = (PairOut *)calloc(a->H, sizeof(PairOut));
    for (int h = 0; h < a->H; h++) {
        PairOut *q = &a->out[h];
        if (ALLOC(q->d_f, top, "merged pairs f") || ALLOC(q->d_g, top, "merged pairs g") || ALLOC(q->d_w, top, "merged pairs w") ||
            ALLOC(q->d_sum, top, "merged pairs sum") || ALLOC(q->d_cnt, top, "merged pairs count") ||
            ALLOC(q->d_rest, 1, "pairs' rest weight") || ALLOC(q->d_nseg, 1, "pair count") ||
            ALLOC(q->d_xf, cap, "examples f") || ALLOC(q->d_xg, cap, "examples g") || ALLOC(q->d_xt, cap, "examples token") ||
            ALLOC(q->d_xj, cap, "examples key pos") || ALLOC(q->d_xv, cap, "examples term"))
            return -1;
    }
    size_t sort_b = 0, scan_b = 0, sort_x = 0, sort_w = 0;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, sort_b, a->pk, a->pk2, a->pp, a->pp2, (int)np, 0, 64, a->st));
    CUDA_TRY(cub::DeviceScan::InclusiveSum(NULL, scan_b, a->phead, a->pseg, (int)np, a->st));
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, sort_x, a->xk, a->xk2, a->xi, a->xi2, (int)nx, 0, 64, a->st));
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, sort_w, a->wk, a->wk2, a->ws, a->ws2, (int)np, 0, 64, a->st));
    a->cub_bytes = sort_b > scan_b ? sort_b : scan_b;
    if (sort_x > a->cub_bytes) a->cub_bytes = sort_x;
    if (sort_w > a->cub_bytes) a->cub_bytes = sort_w;
    if (dev_alloc(a, &a->cub_tmp, a->cub_bytes, "cub scratch")) return -1;
    return 0;
}

// Before the batch buffers are allocated: their size for p->max_batch windows (open_buffers
// counting) plus the caller's reserve (the forward pass's activations, allocated at the first
// batch), against the device's free memory after the weights; too little names the batch that
// fits (both grow in proportion to it).
static int check_room(QkAnaCuda *a) {
    a->counting = 1, a->counted = 0;
    int rc = open_buffers(a);
    a->counting = 0;
    free(a->hb), free(a->out);
    a->hb = NULL, a->out = NULL;
    if (rc) return -1;
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    const size_t need = a->counted + a->reserve, margin = (size_t)256 << 20;  // cuBLAS / CUB workspaces, the context
    if (need + margin <= free_b) return 0;
    const long long fit = free_b > margin ? (long long)((double)a->p.max_batch * (free_b - margin) / need) : 0;
    return qk_err("the analysis on device %d: batches of %d windows of %d tokens need %.0f MiB (%.0f MiB of analysis "
                  "buffers, %.0f MiB of forward activations), %.0f MiB of %.0f MiB are free after the weights: [corpus] "
                  "batch = %lld fits%s", a->device, a->p.max_batch, a->p.T, need / 1048576.0, a->counted / 1048576.0,
                  a->reserve / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, fit,
                  fit < 1 ? " (none: fewer analysed heads or layers, or a larger GPU)" : "");
}

// Carves `count` elements of `size` bytes out of a block at *off, 256-byte aligned; base NULL
// only counts.
static void *carve(char *base, size_t *off, size_t count, size_t size) {
    const size_t at = (*off + 255) & ~(size_t)255;
    *off = at + count * size;
    return base ? base + at : NULL;
}
#define CARVE(ptr, count) ((ptr) = (decltype(ptr))carve(base, off, (size_t)(count), sizeof(*(ptr))))

// Slot s's host arrays in `base` (NULL: the sizing pass; *off ends at the bytes needed): every
// analysed head's pair downloads, every recorded head's records (head_records_alloc's arrays for
// Nmax tokens), the valid lengths.
static void slot_carve(const QkAnaCuda *a, BatchSlot *s, char *base, size_t *off) {
    const AnalysisPlan *p = &a->p;
    const AnalysisOpts *o = &p->o;
    const size_t N = a->Nmax, top = a->top, cap = QK_EXAMPLES_CAPACITY, nk = N * o->k, na = N * o->a;
    for (int i = 0; i < a->L * a->H; i++) {
        if (p->analysed[i]) {
            PairHost *q = &s->ph[i];
            CARVE(q->f, top), CARVE(q->g, top), CARVE(q->w, top), CARVE(q->sum, top), CARVE(q->cnt, top);
            CARVE(q->rest, 1), CARVE(q->nseg, 1);
            CARVE(q->xf, cap), CARVE(q->xg, cap), CARVE(q->xt, cap), CARVE(q->xj, cap), CARVE(q->xv, cap);
        }
        if (!p->recorded[i]) continue;
        const LayerDev *ld = &a->lay[i / a->H];
        const size_t S = ld->S, es = qk_sae_slots(ld->sae, o->enc_slots);
        HeadRecords *r = &s->rec[i];
        r->n = (int)N, r->k = o->k, r->a = o->a, r->p = o->p, r->sp = o->sketch_pairs;
        r->enc = p->encoder, r->records = 1, r->patterns = p->record_patterns;
        CARVE(r->top_idx, nk), CARVE(r->top_val, nk), CARVE(r->bot_idx, nk), CARVE(r->bot_val, nk);
        if (r->enc) {
            QkSaeCode *e = &r->enc_code;
            e->n = (int)N, e->slots = (int)es;
            CARVE(e->idx, N * es), CARVE(e->val, N * es), CARVE(e->n_active, N), CARVE(e->scale, N), CARVE(e->shift, N);
        }
        CARVE(r->att_idx, na), CARVE(r->att_w, na);
        CARVE(r->pair_f, na * o->p), CARVE(r->pair_g, na * o->p), CARVE(r->pair_val, na * o->p);
        CARVE(r->groups, na * 16), CARVE(r->metrics, N * QK_ANA_METRICS);
        CARVE(r->qmarg, N * S), CARVE(r->kmarg, N * S);
        CARVE(r->sk_f, N * o->sketch_pairs), CARVE(r->sk_g, N * o->sketch_pairs), CARVE(r->sk_val, N * o->sketch_pairs);
        if (r->patterns) CARVE(r->pattern, N * a->T), CARVE(r->pattern_hat, N * a->T);
    }
    CARVE(s->vlen, p->max_batch);
}
#undef CARVE

// The two batch slots (BatchSlot) and the layers' head views.
static int open_slots(QkAnaCuda *a) {
    const int LH = a->L * a->H;
    a->h_views = (QkAnaView *)qk_pinned_alloc(sizeof(QkAnaView) * LH, NULL);
    CUDA_TRY(cudaEventCreateWithFlags(&a->acts_free, cudaEventDisableTiming));
    CUDA_TRY(cudaStreamCreateWithFlags(&a->cst, cudaStreamNonBlocking));
    a->heads_done = (cudaEvent_t *)qk_calloc(a->L, sizeof(cudaEvent_t));
    a->copied = (cudaEvent_t *)qk_calloc(a->L, sizeof(cudaEvent_t));
    for (int l = 0; l < a->L; l++) {
        CUDA_TRY(cudaEventCreateWithFlags(&a->heads_done[l], cudaEventDisableTiming));
        CUDA_TRY(cudaEventCreateWithFlags(&a->copied[l], cudaEventDisableTiming));
    }
    for (int q = 0; q < 2; q++) {
        BatchSlot *s = &a->slot[q];
        s->window0 = (long long *)qk_calloc(LH, sizeof(long long));
        s->ph = (PairHost *)qk_calloc(LH, sizeof(PairHost));
        s->rec = (HeadRecords *)qk_calloc(LH, sizeof(HeadRecords));
        s->ev = (cudaEvent_t *)qk_calloc(3 * (size_t)a->L, sizeof(cudaEvent_t));
        size_t bytes = 0;
        slot_carve(a, s, NULL, &bytes);
        int pinned;
        s->block = qk_pinned_alloc(bytes, &pinned);
        if (!pinned) a->graphs = 0;  // a graph cannot capture a copy to ordinary memory
        size_t off = 0;
        slot_carve(a, s, (char *)s->block, &off);
        for (int e = 0; e < 3 * a->L; e++) CUDA_TRY(cudaEventCreate(&s->ev[e]));
        CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    }
    return 0;
}

static int open_weights(QkAnaCuda *a) {
    const AnalysisPlan *p = &a->p;
    const int C = a->C, dh = a->dh;
    for (int l = 0; l < a->L; l++) {
        const QkSae *s = p->sae[l];
        LayerDev *ld = &a->lay[l];
        if (!s) continue;
        const size_t m = s->d_sae;
        ld->sae = s;
        ld->S = qk_sae_slots(s, p->sae_max_active);
        if (upload(a, &ld->W_encT, s->W_encT, m * C, "W_encT") || upload(a, &ld->c_enc, s->c_enc, m, "c_enc") ||
            upload(a, &ld->gates, s->gates, m, "gates") || upload(a, &ld->W_dec, s->W_dec, m * C, "W_dec") ||
            upload(a, &ld->b_dec, s->b_dec, C, "b_dec"))
            return -1;
        const size_t mdh = m * dh, nqk = (size_t)C * 2 * a->H * dh;
        if (!a->h_wqk) a->h_wqk = (float *)qk_malloc(nqk * sizeof(float));  // freed at close, error paths too
        float *wqk = a->h_wqk;
        memset(wqk, 0, nqk * sizeof(float));
        if (dev_alloc(a, (void **)&ld->Kd, a->H * mdh * sizeof(float), "Kd (all heads)")) return -1;
        CUDA_TRY(cudaMemset(ld->Kd, 0, a->H * mdh * sizeof(float)));
        for (int h = 0; h < a->H; h++) {
            int i = l * a->H + h;
            ld->any_rec |= p->recorded[i];
            if (!p->analysed[i]) continue;
            const HeadTables *t = &p->tables[i];
            HeadDev *hd = &a->head[i];
            hd->Kd = ld->Kd + h * mdh;
            CUDA_TRY(cudaMemcpy(hd->Kd, t->Kd, mdh * sizeof(float), cudaMemcpyHostToDevice));
            for (int c = 0; c < C; c++)  // the head's columns of Wqk
                for (int d = 0; d < dh; d++) {
                    wqk[(size_t)c * 2 * a->H * dh + h * dh + d] = t->qk.Wq[(size_t)c * dh + d];
                    wqk[(size_t)c * 2 * a->H * dh + (a->H + h) * dh + d] = t->qk.Wk[(size_t)c * dh + d];
                }
            if (upload(a, &hd->bq, t->qk.bq, dh, "bq'") || upload(a, &hd->bk, t->qk.bk, dh, "bk'") ||
                upload(a, &hd->Qd, t->Qd, m * dh, "Qd") ||
                upload(a, &hd->qb, t->qb, dh, "qb") || upload(a, &hd->kb, t->kb, dh, "kb") ||
                upload(a, &hd->G, t->G, (size_t)dh * dh, "G"))
                return -1;
            if (p->encoder && p->recorded[i] && upload(a, &hd->E, t->E, m * dh, "E")) return -1;
            if (dev_alloc(a, (void **)&hd->acc, acc_size((int)m) * 8, "aggregates")) return -1;
            CUDA_TRY(cudaMemset(hd->acc, 0, acc_size((int)m) * 8));
        }
        if (upload(a, &ld->Wqk, wqk, nqk, "Wq~ and Wk~ of the layer's heads")) return -1;
    }
    return 0;
}

extern "C" QkAnaCuda *qk_ana_cuda_open(const AnalysisPlan *p, int device, QkPrecision prec, int defer_flush, size_t reserve) {
    const GPT2Config *c = &p->model->cfg;
    if (c->d_model % 16 || c->d_head % 16 || c->d_head > QK_ANA_MAX_DH) {
        qk_err("qk_ana_cuda_open: d_model %d and d_head %d must be multiples of 16, d_head <= %d", c->d_model, c->d_head,
               QK_ANA_MAX_DH);
        return NULL;
    }
    if (p->o.k > QK_SEL_QUEUE) {  // the code slots are checked per layer below (a top-k SAE's are its k)
        qk_err("qk_ana_cuda_open: [analysis] k %d: the device top-k keeps at most %d", p->o.k, QK_SEL_QUEUE);
        return NULL;
    }
    QkAnaCuda *a = (QkAnaCuda *)calloc(1, sizeof *a);
    a->p = *p;
    a->reserve = reserve;
    a->device = device, a->defer = defer_flush;
    const char *pipe = getenv("QK_CUDA_PIPELINE");
    a->lag = defer_flush && !(pipe && pipe[0] == '0');
    a->L = c->n_layer, a->H = c->n_head, a->C = c->d_model, a->dh = c->d_head, a->T = p->T;
    a->Nmax = p->max_batch * p->T;
    a->P = p->o.p > p->o.sketch_pairs ? p->o.p : p->o.sketch_pairs;
    a->lay = (LayerDev *)calloc(a->L, sizeof(LayerDev));
    a->head = (HeadDev *)calloc((size_t)a->L * a->H, sizeof(HeadDev));
    const char *sync = getenv("QK_CUDA_SYNC");
    a->sync_each = sync && sync[0] == '1';
    const char *graphs = getenv("QK_CUDA_GRAPHS");
    a->graphs = !a->sync_each && !(graphs && graphs[0] == '0');
    a->graph = (LayerGraph *)calloc(2 * (size_t)a->L, sizeof(LayerGraph));
    for (int l = 0; l < a->L; l++) {
        const QkSae *s = p->sae[l];
        if (!s) continue;
        int S = qk_sae_slots(s, p->sae_max_active), es = qk_sae_slots(s, p->o.enc_slots);
        if (S > QK_SEL_QUEUE || es > QK_SEL_QUEUE) {
            qk_err("qk_ana_cuda_open: layer %d: code slots %d ([sae] max_active or the SAE's k) / encoder slots %d "
                   "([analysis] enc_slots or k): the device top-k keeps at most %d", l, S, es, QK_SEL_QUEUE);
            qk_ana_cuda_close(a);
            return NULL;
        }
        a->S_max = S > a->S_max ? S : a->S_max;
        a->es_max = es > a->es_max ? es : a->es_max;
        a->last = l;
    }
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&a->st, cudaStreamNonBlocking) != cudaSuccess) {
        qk_err("qk_ana_cuda_open: device %d: %s", device, cudaGetErrorString(cudaGetLastError()));
        qk_ana_cuda_close(a);
        return NULL;
    }
    cublasStatus_t bs = cublasCreate(&a->blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetStream(a->blas, a->st);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetMathMode(a->blas, CUBLAS_DEFAULT_MATH);  // fp32: no TF32
    if (bs != CUBLAS_STATUS_SUCCESS) {
        qk_err("qk_ana_cuda_open: cuBLAS handle on device %d: %s", device, cublasGetStatusString(bs));
        qk_ana_cuda_close(a);
        return NULL;
    }
    // cuBLAS gives the same bits run to run with one stream per handle and its own workspace
    // (cublasSetWorkspace): the forward's cuBLASLt runs on other streams of the process.
    void *ws = NULL;
    const size_t ws_bytes = (size_t)32 << 20;
    if (dev_alloc(a, &ws, ws_bytes, "cuBLAS workspace") ||
        (bs = cublasSetWorkspace(a->blas, ws, ws_bytes)) != CUBLAS_STATUS_SUCCESS) {
        if (bs != CUBLAS_STATUS_SUCCESS) qk_err("qk_ana_cuda_open: cublasSetWorkspace: %s", cublasGetStatusString(bs));
        qk_ana_cuda_close(a);
        return NULL;
    }
    if (!(a->btk = qk_btk_create(device, prec, 0)) || open_weights(a) || check_room(a) || open_buffers(a) ||
        open_slots(a)) {
        qk_ana_cuda_close(a);
        return NULL;
    }
    qk_btk_use_stream(a->btk, a->st);  // the batch's top-k runs in its stream order, nothing waits
    cudaError_t e = cudaDeviceSynchronize();  // the uploads and memsets ran on the legacy stream
    if (e != cudaSuccess) {
        qk_err("qk_ana_cuda_open: cudaDeviceSynchronize: %s", cudaGetErrorString(e));
        qk_ana_cuda_close(a);
        return NULL;
    }
    return a;
}

// ---- one batch ---------------------------------------------------------------------------------

static int sync_st(QkAnaCuda *a, const char *after) {
    cudaError_t e = cudaStreamSynchronize(a->st);
    if (e != cudaSuccess)
        return qk_err("analysis: after %s: %s (run with QK_CUDA_SYNC=1 to name the kernel)", after, cudaGetErrorString(e));
    return 0;
}

static int layer_code(QkAnaCuda *a, int l, const QkAnaLayerActs *x, int N) {
    const LayerDev *ld = &a->lay[l];
    const QkSae *s = ld->sae;
    const int C = a->C;
    ana_normalise<<<blocks(N, 128), 128, 0, a->st>>>(x->resid, x->ld_resid, N, C, s->center_input,
                                                     s->norm == QK_SAE_NORM_LAYER_NORM, a->z, a->scale, a->shift);
    if (launched(a, "ana_normalise", l, -1, N)) return -1;
    QkTopkOpts o = sae_opts(ld, ld->S);
    if (qk_btk_run(a->btk, NULL, N, s->d_sae, C, a->z, C, NULL, ld->W_encT, ld->c_enc, &o, a->idx, a->val, a->nact))
        return qk_err("analysis: SAE encode of layer %d: %s", l, qk_errmsg());
    ana_err<<<blocks((long long)N * C, 256), 256, 0, a->st>>>(x->resid, x->ld_resid, N, C, a->idx, a->val, a->nact,
                                                              ld->S, ld->W_dec, ld->b_dec, a->scale, a->shift, a->live,
                                                              a->err);
    return launched(a, "ana_err", l, -1, N);
}

// A download of `count` elements on the stream dl_st of the function that uses it.
#define DL(dst, src, count) \
    CUDA_TRY(cudaMemcpyAsync(dst, src, sizeof(*(dst)) * (size_t)(count), cudaMemcpyDeviceToHost, dl_st))

// Enqueues on the copy stream (a->cst) the download of head buffer b's records into r.
static int download_records(QkAnaCuda *a, const HeadBuf *b, HeadRecords *r, int N, int S, int es) {
    const cudaStream_t dl_st = a->cst;
    const AnalysisOpts *o = &a->p.o;
    const size_t nk = (size_t)N * o->k, na = (size_t)N * o->a;
    DL(r->top_idx, b->top_idx, nk); DL(r->top_val, b->top_val, nk); DL(r->bot_idx, b->bot_idx, nk);
    DL(r->bot_val, b->bot_val, nk);
    if (r->enc) {
        DL(r->enc_code.idx, b->e_idx, (size_t)N * es); DL(r->enc_code.val, b->e_val, (size_t)N * es);
        DL(r->enc_code.n_active, b->e_nact, N); DL(r->enc_code.scale, b->e_scale, N);
        DL(r->enc_code.shift, b->e_shift, N);
    }
    DL(r->att_idx, b->att_idx, na); DL(r->att_w, b->att_w, na);
    DL(r->pair_f, b->pair_f, na * o->p); DL(r->pair_g, b->pair_g, na * o->p); DL(r->pair_val, b->pair_val, na * o->p);
    DL(r->groups, b->groups, na * 16); DL(r->metrics, b->metrics, (size_t)N * QK_ANA_METRICS);
    DL(r->qmarg, b->qmarg, (size_t)N * S); DL(r->kmarg, b->kmarg, (size_t)N * S);
    DL(r->sk_f, b->sk_f, (size_t)N * o->sketch_pairs); DL(r->sk_g, b->sk_g, (size_t)N * o->sketch_pairs);
    DL(r->sk_val, b->sk_val, (size_t)N * o->sketch_pairs);
    if (r->patterns) {
        DL(r->pattern, b->pattern, (size_t)N * a->T);
        DL(r->pattern_hat, b->pattern_hat, (size_t)N * a->T);
    }
    return 0;
}

// Enqueues, for the layer's head slot h (b = its buffers, q = its downloads): the batch's sketch
// candidates reduced by (f, g) (sorted by pair, token order kept inside a pair), the distinct
// pairs sorted into merge order (weight descending, then f, g: pair_sketch_sorted's order) of
// which the heaviest a->top are downloaded with the others' summed weight, and the example
// contexts (the batch's R of pair_examples.h), downloaded into ph.  Nothing waits: merge_pairs
// reads ph when the batch is finished (slot_finish).
static int pairs_enqueue(QkAnaCuda *a, const HeadBuf *b, PairOut *q, PairHost *ph, int l, int h, int N, int with_valid) {
    const int sp = a->p.o.sketch_pairs, np = N * sp;
    ana_pair_keys<<<blocks(np, 256), 256, 0, a->st>>>(b->sk_f, b->sk_g, N, a->T, sp, with_valid ? a->vlen : NULL, a->pk, a->pp);
    if (launched(a, "ana_pair_keys", l, h, N)) return -1;
    size_t bytes = a->cub_bytes;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(a->cub_tmp, bytes, a->pk, a->pk2, a->pp, a->pp2, np, 0, 64, a->st));
    if (launched(a, "cub::DeviceRadixSort::SortPairs (heavy pairs)", l, h, N)) return -1;
    ana_pair_heads<<<blocks(np, 256), 256, 0, a->st>>>(a->pk2, np, a->phead);
    if (launched(a, "ana_pair_heads", l, h, N)) return -1;
    bytes = a->cub_bytes;
    CUDA_TRY(cub::DeviceScan::InclusiveSum(a->cub_tmp, bytes, a->phead, a->pseg, np, a->st));
    if (launched(a, "cub::DeviceScan::InclusiveSum (heavy pairs)", l, h, N)) return -1;
    ana_pair_starts<<<blocks(np, 256), 256, 0, a->st>>>(a->phead, a->pseg, np, a->pstart, a->pnseg);
    if (launched(a, "ana_pair_starts", l, h, N)) return -1;
    ana_pair_sums<<<blocks(np, 128), 128, 0, a->st>>>(a->pk2, a->pp2, b->sk_val, a->pstart, a->pnseg, a->pf, a->pg, a->pw,
                                                      a->psum, a->pcnt);
    if (launched(a, "ana_pair_sums", l, h, N)) return -1;
    // merge order on the device; the host merges only the heaviest a->top (sketch_capacity)
    ana_pair_wkeys<<<blocks(np, 256), 256, 0, a->st>>>(a->pf, a->pw, a->pnseg, np, a->wk, a->ws);
    if (launched(a, "ana_pair_wkeys", l, h, N)) return -1;
    bytes = a->cub_bytes;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(a->cub_tmp, bytes, a->wk, a->wk2, a->ws, a->ws2, np, 0, 64, a->st));
    if (launched(a, "cub::DeviceRadixSort::SortPairs (merge order)", l, h, N)) return -1;
    ana_pair_top<<<1, PAIR_TOP_THREADS, 0, a->st>>>(a->ws2, a->pnseg, np, a->top, a->pf, a->pg, a->pw, a->psum, a->pcnt,
                                                    q->d_f, q->d_g, q->d_w, q->d_sum, q->d_cnt, q->d_rest);
    if (launched(a, "ana_pair_top", l, h, N)) return -1;
    CUDA_TRY(cudaMemcpyAsync(q->d_nseg, a->pnseg, 4, cudaMemcpyDeviceToDevice, a->st));
    // The example contexts: each pair's strongest occurrences, then the batch's strongest of those.
    const int pp = QK_EXAMPLES_PER_PAIR, nx = np * pp, cap = QK_EXAMPLES_CAPACITY;
    ana_pair_examples<<<blocks(np, 128), 128, 0, a->st>>>(a->pk2, a->pp2, b->sk_val, a->pstart, a->pnseg, np, sp, pp,
                                                          a->xk, a->xi);
    if (launched(a, "ana_pair_examples", l, h, N)) return -1;
    bytes = a->cub_bytes;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(a->cub_tmp, bytes, a->xk, a->xk2, a->xi, a->xi2, nx, 0, 64, a->st));
    if (launched(a, "cub::DeviceRadixSort::SortPairs (examples)", l, h, N)) return -1;
    ana_examples_gather<<<blocks(cap, 128), 128, 0, a->st>>>(a->xk2, a->xi2, nx, cap, b->sk_f, b->sk_g, b->sk_val,
                                                             b->att_idx, sp, a->p.o.a, q->d_xf, q->d_xg, q->d_xv, q->d_xt,
                                                             q->d_xj);
    if (launched(a, "ana_examples_gather", l, h, N)) return -1;
    const int top = a->top;
    const cudaStream_t dl_st = a->st;
    DL(ph->f, q->d_f, top); DL(ph->g, q->d_g, top); DL(ph->w, q->d_w, top); DL(ph->sum, q->d_sum, top);
    DL(ph->cnt, q->d_cnt, top); DL(ph->rest, q->d_rest, 1); DL(ph->nseg, q->d_nseg, 1);
    DL(ph->xf, q->d_xf, cap); DL(ph->xg, q->d_xg, cap); DL(ph->xv, q->d_xv, cap); DL(ph->xt, q->d_xt, cap);
    DL(ph->xj, q->d_xj, cap);
    return 0;
}

// Once the batch's downloads have landed: a head's pair downloads ph merged into its sketch
// (heaviest first, as pair_sketch_merge; the pairs past a->top count in the total only) and its
// examples, whose windows count from window0 (the head's agg->window0 when the batch was given).
// Touches only g: the heads run this in parallel.
static void merge_pairs(const QkAnaCuda *a, const PairHost *ph, HeadAggregates *g, long long window0) {
    PairSketch *sk = &g->sketch;
    for (int r = 0; r < a->top && ph->f[r] >= 0; r++)
        pair_sketch_add_entry(sk, ph->f[r], ph->g[r], ph->w[r], 0, ph->sum[r], ph->cnt[r]);
    pair_sketch_add_pruned(sk, *ph->rest);
    for (int r = 0; r < QK_EXAMPLES_CAPACITY && ph->xf[r] >= 0; r++) {
        const int t = ph->xt[r];
        pair_examples_add(&g->examples, ph->xf[r], ph->xg[r], ph->xv[r], window0 + t / a->T, t % a->T, ph->xj[r]);
    }
}

// Layer l's error projections for all its heads in one fp32 GEMM (row-major EQK = err Wqk, as
// column-major EQK^T = Wqk^T err^T); the host's are qk_gemm's, equal within float rounding.
static int layer_err_proj(QkAnaCuda *a, int l, int N) {
    const int M = 2 * a->H * a->dh, C = a->C;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasSgemm(a->blas, CUBLAS_OP_N, CUBLAS_OP_N, M, N, C, &one, a->lay[l].Wqk, M, a->err, C, &zero,
                                   a->EQK, M);
    if (s != CUBLAS_STATUS_SUCCESS)
        return qk_err("analysis: cublasSgemm (error projections of layer %d: %d x %d x %d): %s", l, N, M, C,
                      cublasGetStatusString(s));
    return launched(a, "cublasSgemm (error projections)", l, -1, N);
}

// Head (l, h)'s vectors: Q, K, EQ, EK, QF, KF.
static int head_prep(QkAnaCuda *a, int l, int h, const QkAnaLayerActs *x, int N) {
    HeadBuf *b = &a->hb[h];
    const LayerDev *ld = &a->lay[l];
    const int dh = a->dh, S = ld->S;
    const HeadDev *hd = &a->head[l * a->H + h];
    const float inv = 1.0f / sqrtf((float)dh);
    const long long ld_e = 2LL * a->H * dh;
    HeadVecArgs hv = {x->q + (size_t)h * dh, x->k + (size_t)h * dh, x->ld_qk, a->EQK + (size_t)h * dh,
                      a->EQK + (size_t)(a->H + h) * dh, ld_e, x->sigma, a->scale, a->val, hd->Qd, hd->Kd, a->idx, a->live,
                      N, dh, S, inv, b->Q, b->K, b->EQ, b->EK, b->QF, b->KF, b->ainv};
    ana_head_vec<<<blocks((long long)N * dh, 128), 128, 0, a->st>>>(hv);
    return launched(a, "ana_head_vec", l, h, N);
}

// The look-for top-k (and bottom-k when the layer has a recorded head) of all H heads of layer l in
// one batched top-k: problem h = hb[h].Q (N, dh) against the layer's Kd slice h.
static int layer_lookfor(QkAnaCuda *a, int l, int N) {
    const LayerDev *ld = &a->lay[l];
    const AnalysisOpts *o = &a->p.o;
    const int dh = a->dh, m = ld->sae->d_sae;
    const size_t nk = (size_t)N * o->k;
    for (int h = 0; h < a->H; h++) {
        HeadBuf *b = &a->hb[h];
        b->top_idx = a->top_idx_all + h * nk, b->top_val = a->top_val_all + h * nk;
        b->bot_idx = a->bot_idx_all + h * nk, b->bot_val = a->bot_val_all + h * nk;
    }
    QkBtkBatch bt;
    memset(&bt, 0, sizeof bt);
    bt.batch = a->H, bt.U = (long long)a->Nmax * dh, bt.a = a->Nmax, bt.V = (long long)m * dh;
    QkTopkOpts top;
    memset(&top, 0, sizeof top);
    top.k = o->k;
    if (ld->any_rec) top.bottom_idx = a->bot_idx_all, top.bottom_val = a->bot_val_all;
    if (qk_btk_run(a->btk, &bt, N, m, dh, a->Qall, dh, a->ainv_all, ld->Kd, NULL, &top, a->top_idx_all, a->top_val_all, NULL))
        return qk_err("analysis: look-for top-k of layer %d's heads: %s", l, qk_errmsg());
    return 0;
}

// Head (l, h) after its look-for: encoder projection, score rows, its view for ana_query in
// a->h_views[l H + h].
static int head_rows(QkAnaCuda *a, int l, int h, const QkAnaLayerActs *x, int N) {
    HeadBuf *b = &a->hb[h];
    const AnalysisPlan *p = &a->p;
    const AnalysisOpts *o = &p->o;
    const LayerDev *ld = &a->lay[l];
    const QkSae *s = ld->sae;
    const int i = l * a->H + h, rec = p->recorded[i], dh = a->dh, C = a->C, T = a->T, m = s->d_sae, S = ld->S;
    const HeadDev *hd = &a->head[i];
    const float inv = 1.0f / sqrtf((float)dh);
    const int enc = rec && p->encoder, es = qk_sae_slots(s, o->enc_slots);
    if (enc) {
        ana_proj<<<blocks(N, 128), 128, 0, a->st>>>(b->Q, N, dh, inv, hd->G, C, s->norm == QK_SAE_NORM_LAYER_NORM, b->U,
                                                     b->aenc, b->e_scale, b->e_shift);
        if (launched(a, "ana_proj", l, h, N)) return -1;
        QkTopkOpts eo = sae_opts(ld, es);
        if (qk_btk_run(a->btk, NULL, N, m, dh, b->U, dh, b->aenc, hd->E, ld->c_enc, &eo, b->e_idx, b->e_val, b->e_nact))
            return qk_err("analysis: encoder projection of head %d.%d: %s", l, h, qk_errmsg());
    }
    float *R = b->rows;
    const size_t NT = (size_t)N * T;
    ana_rows<<<blocks((long long)NT, 128), 128, 0, a->st>>>(b->Q, b->K, b->EQ, b->EK, N, T, dh, inv, R, R + NT, R + 2 * NT,
                                                            R + 3 * NT);
    if (launched(a, "ana_rows", l, h, N)) return -1;
    QkAnaView &v = a->h_views[(size_t)l * a->H + h];
    memset(&v, 0, sizeof v);
    v.T = T, v.dh = dh, v.S = S, v.k = o->k, v.a = o->a, v.p = o->p, v.sp = o->sketch_pairs, v.P = a->P;
    v.records = rec, v.patterns = rec && p->record_patterns, v.inv = inv;
    v.Srow = R, v.Sb = R + NT, v.Sq = R + 2 * NT, v.Sk = R + 3 * NT;
    v.QF = b->QF, v.KF = b->KF, v.EQ = b->EQ, v.EK = b->EK, v.sigma = x->sigma, v.scale = a->scale;
    v.idx = a->idx, v.live = a->live, v.val = a->val;
    v.Qd = hd->Qd, v.Kd = hd->Kd, v.qb = hd->qb, v.kb = hd->kb, v.bq = hd->bq, v.bk = hd->bk, v.top_idx = b->top_idx;
    v.att_idx = b->att_idx, v.att_w = b->att_w, v.pair_f = b->pair_f, v.pair_g = b->pair_g, v.pair_val = b->pair_val;
    v.groups = b->groups, v.metrics = b->metrics, v.qmarg = b->qmarg, v.kmarg = b->kmarg;
    v.sk_f = b->sk_f, v.sk_g = b->sk_g, v.sk_val = b->sk_val, v.pattern = b->pattern, v.pattern_hat = b->pattern_hat;
    v.pt_f = b->pt_f, v.pt_g = b->pt_g, v.pt_v = b->pt_v;
    return 0;
}

// Head (l, h) after ana_query: its aggregates' kernels, then its pair reductions and their
// downloads into slot s enqueued (pairs_enqueue); nothing waits.
static int head_aggregate(QkAnaCuda *a, BatchSlot *s, int l, int h, int N, int with_valid) {
    const AnalysisOpts *o = &a->p.o;
    const int i = l * a->H + h, m = a->lay[l].sae->d_sae;
    const HeadBuf *b = &a->hb[h];
    AggArgs g = {b->metrics, b->qmarg, b->kmarg, a->idx, a->live, b->att_idx, with_valid ? a->vlen : NULL,
                 N, a->T, a->lay[l].S, o->a, a->head[i].acc, m};
    ana_agg<<<blocks(N, AGG_THREADS), AGG_THREADS, 0, a->st>>>(g);
    if (launched(a, "ana_agg", l, h, N)) return -1;
    ana_carry<<<blocks(2LL * m, 256), 256, 0, a->st>>>(a->head[i].acc, m);
    if (launched(a, "ana_carry", l, h, N)) return -1;
    return pairs_enqueue(a, b, &a->out[h], &s->ph[i], l, h, N, with_valid);
}

// Every analysed head of layer l: head_aggregate, enqueued directly or as the layer's CUDA graph
// for slot s (its downloads land in the slot's memory: one graph per layer and slot).
static int layer_aggregates(QkAnaCuda *a, BatchSlot *s, int l, int N, int with_valid) {
    const int H = a->H;
    if (!a->graphs) {
        for (int h = 0; h < H; h++)
            if (a->p.analysed[l * H + h] && head_aggregate(a, s, l, h, N, with_valid)) return -1;
        return 0;
    }
    LayerGraph *g = &a->graph[(s - a->slot) * a->L + l];
    if (!g->exec || g->N != N || g->with_valid != with_valid) {
        if (g->exec) cudaGraphExecDestroy(g->exec), g->exec = NULL;
        CUDA_TRY(cudaStreamBeginCapture(a->st, cudaStreamCaptureModeThreadLocal));
        int rc = 0;
        for (int h = 0; h < H && !rc; h++)
            if (a->p.analysed[l * H + h]) rc = head_aggregate(a, s, l, h, N, with_valid);
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamEndCapture(a->st, &graph);  // ends the capture whatever happened
        if (rc) {
            if (graph) cudaGraphDestroy(graph);
            return -1;
        }
        if (e == cudaSuccess) e = cudaGraphInstantiate(&g->exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (e != cudaSuccess)
            return qk_err("analysis: layer %d's aggregates as a CUDA graph (N %d): %s (QK_CUDA_GRAPHS=0 launches them "
                          "one by one)", l, N, cudaGetErrorString(e));
        g->N = N, g->with_valid = with_valid;
    }
    CUDA_TRY(cudaGraphLaunch(g->exec, a->st));
    return 0;
}

// ana_query over the analysed heads of layer l, one launch (grid.y: the heads), their views
// (a->h_views' layer l, packed) uploaded first.  Every layer has its own views, so nothing waits
// for the upload: the host rewrites a layer's views only in a later batch, after qk_ana_cuda_run
// has waited for acts_free (which follows this launch).
static int layer_queries(QkAnaCuda *a, int l, int N) {
    QkAnaView *hv = a->h_views + (size_t)l * a->H;
    QkAnaView *dv = a->d_views + (size_t)l * a->H;
    int nh = 0;
    for (int h = 0; h < a->H; h++)
        if (a->p.analysed[l * a->H + h]) hv[nh++] = hv[h];  // h >= nh: packed in place
    if (!nh) return 0;
    CUDA_TRY(cudaMemcpyAsync(dv, hv, sizeof(QkAnaView) * nh, cudaMemcpyHostToDevice, a->st));
    ana_query<<<dim3(blocks(N, QUERY_THREADS), nh), QUERY_THREADS, 0, a->st>>>(dv, N);
    return launched(a, "ana_query", l, -1, N);
}

// Layer l of the batch in slot s, enqueued whole: the SAE code, the heads' vectors, look-for,
// score rows, ana_query; after the last layer's ana_query, acts_free (nothing reads the
// activations after it); then the aggregates and pair reductions (when the batch has agg), all
// into the slot, and the recorded heads' record downloads on the copy stream, which the next
// layer's SAE code overlaps (*copying: the layer whose downloads are in flight, or -1; the next
// layer waits for them before it writes a head buffer).  Events time the SAE and heads stages.
static int layer_enqueue(QkAnaCuda *a, BatchSlot *s, int l, const QkAnaLayerActs *x, int N, int with_valid,
                         int last, int *copying) {
    const AnalysisPlan *p = &a->p;
    const int H = a->H;
    cudaEvent_t *ev = s->ev + 3 * l;
    CUDA_TRY(cudaEventRecord(ev[0], a->st));
    if (layer_code(a, l, x, N) || layer_err_proj(a, l, N)) return -1;
    CUDA_TRY(cudaEventRecord(ev[1], a->st));
    if (*copying >= 0) CUDA_TRY(cudaStreamWaitEvent(a->st, a->copied[*copying], 0));  // head buffers rewritten below
    *copying = -1;
    for (int h = 0; h < H; h++)
        if (p->analysed[l * H + h] && head_prep(a, l, h, x, N)) return -1;
    if (layer_lookfor(a, l, N)) return -1;
    for (int h = 0; h < H; h++)
        if (p->analysed[l * H + h] && head_rows(a, l, h, x, N)) return -1;
    if (layer_queries(a, l, N)) return -1;
    if (last) {
        CUDA_TRY(cudaEventRecord(a->acts_free, a->st));
        a->acts_recorded = 1;
    }
    if (s->agg && layer_aggregates(a, s, l, N, with_valid)) return -1;
    CUDA_TRY(cudaEventRecord(ev[2], a->st));
    if (!s->emit || !a->lay[l].any_rec) return 0;
    CUDA_TRY(cudaEventRecord(a->heads_done[l], a->st));
    CUDA_TRY(cudaStreamWaitEvent(a->cst, a->heads_done[l], 0));
    for (int h = 0; h < H; h++) {
        const int i = l * H + h;
        if (p->recorded[i] &&
            download_records(a, &a->hb[h], &s->rec[i], N, a->lay[l].S, qk_sae_slots(a->lay[l].sae, p->o.enc_slots)))
            return -1;
    }
    CUDA_TRY(cudaEventRecord(a->copied[l], a->cst));
    *copying = l;
    return 0;
}

// The host's part of the batch in slot s, once its downloads have landed: the device stage times
// into a->carry, every analysed head's pair count checked, the heads' sketches and examples merged
// (in parallel: each touches only its own head's), then the recorded heads' records handed to
// emit, layer by layer in head order (as the host analysis emits them).
static int slot_finish(QkAnaCuda *a, BatchSlot *s) {
    const AnalysisPlan *p = &a->p;
    const int H = a->H, LH = a->L * a->H, N = s->N;
    s->pending = 0;
    cudaError_t e = cudaEventSynchronize(s->done);
    if (e != cudaSuccess)
        return qk_err("analysis of a batch of %d windows on device %d: %s (run with QK_CUDA_SYNC=1 to name the kernel)",
                      s->B, a->device, cudaGetErrorString(e));
    for (int l = 0; l < a->L; l++) {
        if (!p->sae[l]) continue;
        float sae_ms = 0, heads_ms = 0;
        CUDA_TRY(cudaEventElapsedTime(&sae_ms, s->ev[3 * l], s->ev[3 * l + 1]));
        CUDA_TRY(cudaEventElapsedTime(&heads_ms, s->ev[3 * l + 1], s->ev[3 * l + 2]));
        a->carry.sae += sae_ms * 1e-3, a->carry.heads += heads_ms * 1e-3;
    }
    if (s->agg) {
        for (int i = 0; i < LH; i++) {  // checked first: the parallel merges cannot fail
            if (!p->analysed[i]) continue;
            const int nseg = *s->ph[i].nseg, np = N * p->o.sketch_pairs;
            const HeadAggregates *g = &s->agg[i];
            if (nseg < 1 || nseg > np)
                return qk_err("analysis: head %d.%d: heavy-pair reduction gave %d segments of %d", i / H, i % H, nseg, np);
            if (g->examples.per_pair != QK_EXAMPLES_PER_PAIR || g->examples.capacity != QK_EXAMPLES_CAPACITY)
                return qk_err("analysis: head %d.%d: examples kept %d per pair, %d in all; the device reduces for %d and %d",
                              i / H, i % H, g->examples.per_pair, g->examples.capacity, QK_EXAMPLES_PER_PAIR,
                              QK_EXAMPLES_CAPACITY);
        }
#ifdef _OPENMP  // the Makefile builds this object with -Xcompiler -fopenmp
#pragma omp parallel for schedule(dynamic, 1)
#endif
        for (int i = 0; i < LH; i++)
            if (p->analysed[i]) merge_pairs(a, &s->ph[i], &s->agg[i], s->window0[i]);
    }
    for (int i = 0; s->emit && i < LH; i++)
        if (p->recorded[i] && s->emit(s->emit_ctx, i / H, i % H, &s->rec[i], s->B)) return -1;
    return 0;
}

static int flush_dense(QkAnaCuda *a, HeadAggregates *agg);

// The stage times of the batches finished so far to the caller's seconds (NULL: kept for the next).
static void hand_times(QkAnaCuda *a, double *seconds) {
    if (!seconds) return;
    seconds[QK_STAGE_SAE] += a->carry.sae, seconds[QK_STAGE_HEADS] += a->carry.heads;
    a->carry.sae = a->carry.heads = 0;
}

extern "C" int qk_ana_cuda_run(QkAnaCuda *a, const QkAnaLayerActs *acts, const int32_t *valid_len, int B,
                               HeadAggregates *agg, QkRecordsFn emit, void *emit_ctx, double *seconds) {
    const AnalysisPlan *p = &a->p;
    if (B > p->max_batch || B < 1) return qk_err("qk_ana_cuda_run: B=%d: the plan allows 1..%d", B, p->max_batch);
    CUDA_TRY(cudaSetDevice(a->device));
    // The layers' views and the slot's staging are rewritten below: the batch before must be past
    // its last reader of them (in the backend it is: the forward of this batch waited for it).
    if (qk_ana_cuda_acts_wait(a)) return -1;
    BatchSlot *s = &a->slot[a->cur];
    if (s->pending && slot_finish(a, s)) return -1;  // (never: the batch before it was finished by the last call)
    const int N = B * a->T;
    s->B = B, s->N = N, s->agg = agg, s->emit = emit, s->emit_ctx = emit_ctx;
    for (int i = 0; agg && i < a->L * a->H; i++)
        if (p->analysed[i]) s->window0[i] = agg[i].window0;
    if (valid_len) {
        memcpy(s->vlen, valid_len, sizeof(int32_t) * B);
        CUDA_TRY(cudaMemcpyAsync(a->vlen, s->vlen, sizeof(int32_t) * B, cudaMemcpyHostToDevice, a->st));
    }
    int copying = -1;
    for (int l = 0; l <= a->last; l++)
        if (p->sae[l] && layer_enqueue(a, s, l, &acts[l], N, valid_len != NULL, l == a->last, &copying)) return -1;
    if (copying >= 0) CUDA_TRY(cudaStreamWaitEvent(a->st, a->copied[copying], 0));
    CUDA_TRY(cudaEventRecord(s->done, a->st));
    s->pending = 1;
    a->dense_dirty |= agg != NULL;
    a->cur ^= 1;
    int rc;
    if (!a->lag) rc = slot_finish(a, s) || (!a->defer && agg && flush_dense(a, agg));
    else rc = a->slot[a->cur].pending ? slot_finish(a, &a->slot[a->cur]) : 0;  // the batch before this one
    hand_times(a, seconds);
    return rc ? -1 : 0;
}

extern "C" void *qk_ana_cuda_acts_event(QkAnaCuda *a) { return a->acts_recorded ? (void *)a->acts_free : NULL; }

extern "C" int qk_ana_cuda_acts_wait(QkAnaCuda *a) {
    if (a->acts_recorded) CUDA_TRY(cudaEventSynchronize(a->acts_free));
    return 0;
}

// Adds a downloaded accumulator (acc_size(g->m) int64) to g, normalising the exact sums.
static void add_acc(const int64_t *h, HeadAggregates *g) {
    const size_t m = g->m;
    const int64_t *qm = h + ACC_DENSE, *km = qm + m * 3, *qc = km + m * 3, *kc = qc + m;
    g->queries += h[ACC_QUERIES];
    for (int q = 0; q < QK_ANA_METRICS; q++) {
        g->count[q] += h[ACC_COUNT + q];
        for (int b = 0; b < QK_ANA_BINS; b++) g->hist[q][b] += h[ACC_HIST + q * QK_ANA_BINS + b];
        for (int t = 0; t < 3; t++) g->sum_exact[q][t] += h[ACC_SUM + q * 3 + t];
        qk_exact_normalize(g->sum_exact[q]);
    }
    for (size_t f = 0; f < m; f++) {
        g->query_count[f] += qc[f], g->key_count[f] += kc[f];
        for (int t = 0; t < 3; t++)
            g->query_marginal_exact[f * 3 + t] += qm[f * 3 + t], g->key_marginal_exact[f * 3 + t] += km[f * 3 + t];
        qk_exact_normalize(g->query_marginal_exact + f * 3);
        qk_exact_normalize(g->key_marginal_exact + f * 3);
    }
}

// The device accumulators added to agg (L*H) and zeroed.  Nothing to add when no batch reached
// them since the last flush (a shard's close and the summary after it flush twice).
static int flush_dense(QkAnaCuda *a, HeadAggregates *agg) {
    if (!a->dense_dirty) return 0;
    size_t cap = 0;
    for (int i = 0; i < a->L * a->H; i++)
        if (a->head[i].acc && acc_size(agg[i].m) > cap) cap = acc_size(agg[i].m);
    int64_t *h = (int64_t *)qk_malloc(cap * 8 + 8);  // one host buffer, head after head
    for (int i = 0; i < a->L * a->H; i++) {
        const HeadDev *hd = &a->head[i];
        if (!hd->acc) continue;
        HeadAggregates *g = &agg[i];
        const size_t n = acc_size(g->m);
        // on the analysis's stream (non-blocking: the legacy stream would not wait for its kernels)
        cudaError_t e = cudaMemcpyAsync(h, hd->acc, n * 8, cudaMemcpyDeviceToHost, a->st);
        if (e == cudaSuccess) e = cudaStreamSynchronize(a->st);
        if (e == cudaSuccess) e = cudaMemsetAsync(hd->acc, 0, n * 8, a->st);
        if (e != cudaSuccess) {
            free(h);
            return qk_err("qk_ana_cuda_flush: head %d.%d: %s", i / a->H, i % a->H, cudaGetErrorString(e));
        }
        add_acc(h, g);
    }
    free(h);
    a->dense_dirty = 0;
    return sync_st(a, "the aggregates' reset");
}

// The pending batches taken by the host (the older first), then the dense aggregates.
extern "C" int qk_ana_cuda_flush(QkAnaCuda *a, HeadAggregates *agg, double *seconds) {
    CUDA_TRY(cudaSetDevice(a->device));
    for (int q = 0; q < 2; q++) {
        BatchSlot *s = &a->slot[a->cur ^ q];  // slot cur holds the older batch, cur ^ 1 the last one
        if (s->pending && slot_finish(a, s)) return -1;
    }
    hand_times(a, seconds);
    return flush_dense(a, agg);
}

extern "C" int qk_ana_cuda_malloc(void **p, size_t bytes) {
    CUDA_TRY(cudaMalloc(p, bytes));
    return 0;
}

extern "C" int qk_ana_cuda_upload(void *dst, const void *src, size_t bytes) {
    CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" void qk_ana_cuda_free(void *p) { cudaFree(p); }

// Tests: ana_agg and ana_carry alone on given records (host arrays), added to agg.
extern "C" int qk_ana_cuda_aggregate_test(int device, int N, int T, int S, int a, const int32_t *valid_len, int B,
                                          const float *metrics, const float *qmarg, const float *kmarg,
                                          const int32_t *idx, const int32_t *live, const int32_t *att_idx,
                                          HeadAggregates *agg) {
    CUDA_TRY(cudaSetDevice(device));
    const int m = agg->m;
    const size_t n_acc = acc_size(m);
    struct { void *d; const void *h; size_t bytes; } buf[7] = {
        {NULL, metrics, (size_t)N * QK_ANA_METRICS * 4}, {NULL, qmarg, (size_t)N * S * 4}, {NULL, kmarg, (size_t)N * S * 4},
        {NULL, idx, (size_t)N * S * 4}, {NULL, live, (size_t)N * 4}, {NULL, att_idx, (size_t)N * a * 4},
        {NULL, valid_len, (size_t)B * 4}};
    int64_t *dacc = NULL, *h = (int64_t *)malloc(n_acc * 8);
    int rc = 0;
    cudaError_t e = cudaMalloc((void **)&dacc, n_acc * 8);
    if (e == cudaSuccess) e = cudaMemset(dacc, 0, n_acc * 8);
    for (int q = 0; q < 7 && e == cudaSuccess; q++)
        if (buf[q].h && (e = cudaMalloc(&buf[q].d, buf[q].bytes)) == cudaSuccess)
            e = cudaMemcpy(buf[q].d, buf[q].h, buf[q].bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        AggArgs g = {(const float *)buf[0].d, (const float *)buf[1].d, (const float *)buf[2].d, (const int32_t *)buf[3].d,
                     (const int32_t *)buf[4].d, (const int32_t *)buf[5].d, (const int32_t *)buf[6].d, N, T, S, a, dacc, m};
        ana_agg<<<blocks(N, AGG_THREADS), AGG_THREADS>>>(g);
        e = cudaGetLastError();
        if (e == cudaSuccess) {
            ana_carry<<<blocks(2LL * m, 256), 256>>>(dacc, m);
            e = cudaGetLastError();
        }
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        if (e == cudaSuccess) e = cudaMemcpy(h, dacc, n_acc * 8, cudaMemcpyDeviceToHost);
    }
    if (e != cudaSuccess) rc = qk_err("qk_ana_cuda_aggregate_test (ana_agg, ana_carry; N %d m %d): %s", N, m, cudaGetErrorString(e));
    else add_acc(h, agg);
    for (int q = 0; q < 7; q++) cudaFree(buf[q].d);
    cudaFree(dacc);
    free(h);
    return rc;
}
