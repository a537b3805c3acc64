// analysis.h: feature-space attention of one head over a batch of windows (docs/ANALYSIS.md):
// look-for features, attended keys, the exact decomposition of their scores into feature pairs,
// the fidelity metrics, and the corpus aggregates they feed.
#pragma once
#include <stdint.h>

#include "analysis/exact_sum.h"
#include "analysis/head_tables.h"
#include "analysis/pair_examples.h"
#include "analysis/pair_sketch.h"
#include "model/activations.h"
#include "model/sae.h"

// Metrics of ANALYSIS.md §4: the first N_BASE_METRICS over keys 0..i, then the same over keys
// 1..i (suffix _nosink).
enum {
    MET_KL_BOTH, MET_KL_QUERY, MET_KL_KEY, MET_TOP1, MET_R2, MET_ERROR_SHARE, MET_OVERLAP, MET_OVERLAP_CHANCE,
    N_BASE_METRICS
};
#define N_METRICS (2 * N_BASE_METRICS)
#define N_HIST_BINS 50
extern const char *const qk_metric_names[N_METRICS];
// qk_metric_names joined with commas (the "metric_names" attributes), into buf of cap bytes.
void qk_metric_names_csv(char *buf, size_t cap);
// Histogram range of a metric: values below lo / above hi fall in the first / last bin.
void qk_metric_range(int metric, float *lo, float *hi);

// Component groups of the decomposition (ANALYSIS.md §2), on both axes of the 4x4 totals.
enum { GRP_FEATURE, GRP_DEC_BIAS, GRP_ERROR, GRP_ATTN_BIAS, N_GROUPS };

typedef struct {
    int k;                // look-for top-k and bottom-k (also overlap@k)
    int a;                // attended keys per query
    int p;                // feature pairs recorded per (query, attended key)
    int enc_slots;        // slots of the encoder-projection code (ReLU / JumpReLU SAEs; top-k: k)
    int sketch_pairs;     // pairs per query fed to the heavy-hitter sketch (largest |value| at j*)
    int sketch_capacity;  // heavy-hitter pairs kept per head
} AnalysisOpts;

// The SAE code of one layer's resid_pre for a batch of n tokens, and the SAE error vectors.
typedef struct {
    int C;
    QkSaeCode code;  // (code.n, slots): code.n is the tokens the arrays hold (>= the batch's n)
    int32_t *live;   // (n): stored active features of token i: the first live[i] slots
    float *err;      // (n, C): e = x - xhat
} LayerCode;

// lc: zeroed, or filled by an earlier call, whose memory is reused when it holds n tokens of the
// same slots and width (a batch analysis keeps one LayerCode for every layer and batch).
int layer_code_compute(LayerCode *lc, const QkSae *sae, const float *x, int n, int C, int max_active);
void layer_code_free(LayerCode *lc);

// Per-token records of one head for a batch of n = B*T tokens.  Unused slots: index -1, value 0.
typedef struct {
    int n, k, a, p, sp, enc;  // sp: sketch pairs per query; enc: encoder projection computed
    int records;              // the head's per-token records are wanted: bottom-k look-for, and the
                              // groups and pairs of every attended key (the aggregates need top-k
                              // and the most attended key only)
    int patterns;             // full attention rows kept (records with [analysis] record_patterns)
    float *pattern, *pattern_hat;  // (n, T) when patterns: A_i and Ahat_i (both sides), 0 for j > i
    int32_t *top_idx, *bot_idx;   // (n, k) look-for (decoder projection), top and bottom
    float *top_val, *bot_val;     // (n, k)
    QkSaeCode enc_code;           // (n, slots) encoder projection, when enc
    int32_t *att_idx;             // (n, a) attended key positions (in the window)
    float *att_w;                 // (n, a) their attention weights
    int32_t *pair_f, *pair_g;     // (n, a, p)
    float *pair_val;              // (n, a, p)
    float *groups;                // (n, a, 4, 4) group totals, ANALYSIS.md §2 order
    float *metrics;               // (n, N_METRICS), NaN where undefined
    // What the aggregates need, at j* = the most attended key:
    float *qmarg, *kmarg;         // (n, slots): each active query / key feature's contribution
    int32_t *sk_f, *sk_g;         // (n, sp) the largest-|value| pairs, for the sketch
    float *sk_val;                // (n, sp)
} HeadRecords;

void head_records_alloc(HeadRecords *r, const AnalysisOpts *o, int n, int slots, const QkSae *sae, int encoder);
// Adds the (n, T) pattern rows (for recorded heads with record_patterns).
void head_records_alloc_patterns(HeadRecords *r, int T);
void head_records_free(HeadRecords *r);

typedef struct {
    int m;
    int64_t queries;
    // The sums are exact (exact_sum.h: bit-identical however the corpus was split into batches,
    // shards or ranks); head_agg_sums gives their values.
    int64_t sum_exact[N_METRICS][QK_EXACT_LIMBS];          // metric sums
    int64_t *query_marginal_exact, *key_marginal_exact;  // (m, QK_EXACT_LIMBS)
    int64_t pending;                        // terms added since the limbs were normalised
    int64_t count[N_METRICS];
    int64_t hist[N_METRICS][N_HIST_BINS];
    int64_t *query_count, *key_count;       // (m)
    PairSketch sketch;
    // Example contexts of the sketch's pairs (pair_examples.h); window0: the run's corpus window
    // index of the batch's first window, set by the caller before each batch.  head_agg_add leaves
    // them alone: shards and ranks combine them by pair_examples_merge (qkscope merge).
    PairExamples examples;
    int64_t window0;
} HeadAggregates;

void head_agg_init(HeadAggregates *g, int m, int sketch_capacity);
void head_agg_free(HeadAggregates *g);
// The values of the exact sums: metric sums (N_METRICS), query and key marginals (m); NULL: not
// wanted.
void head_agg_sums(const HeadAggregates *g, double *sum, double *query_marginal, double *key_marginal);

// The dense parts of a HeadAggregates as flat int64 arrays in a fixed order (the exact sums
// normalised first): what combining shards or ranks adds element by element (the sketch is merged
// instead): queries, count, hist, query_count, key_count, sum_exact, query_marginal_exact,
// key_marginal_exact.
enum { HEAD_AGG_I64 = 8 };
typedef struct {
    int64_t *i64[HEAD_AGG_I64];
    size_t n_i64[HEAD_AGG_I64];
} HeadAggFields;
void head_agg_fields(HeadAggregates *g, HeadAggFields *f);
// Adds x to acc (the same d_sae): the dense fields element by element, and x's heavy-hitter pairs
// merged into acc's sketch (pair_sketch_merge).  Shards (qkscope merge) and ranks combine this way.
void head_agg_add(HeadAggregates *acc, const HeadAggregates *x);
// The dense fields alone: acc += x, and g's set to zero (the sketch and examples untouched).
void head_agg_add_dense(HeadAggregates *acc, const HeadAggregates *x);
void head_agg_zero_dense(HeadAggregates *g);

// Working memory of analyse_head, kept from one call to the next (zero it before the first call;
// head_scratch_free): grown when a call needs more, so a run allocates it once, not per head and
// batch.  The per-window part is one WindowScratch per OpenMP thread.
typedef struct WindowScratch WindowScratch;
typedef struct {
    size_t n_tok;           // tokens the per-token arrays hold
    float *buf;             // (n_tok, dh, 6): q, k, their error components and feature sums
    float *scale, *norm2;   // (n_tok)
    float *U;               // (n_tok, dh)
    int dh;
    int n_win, T, P;        // window scratches: how many, and their shapes
    size_t m;
    WindowScratch *win;     // (n_win)
} HeadScratch;
void head_scratch_free(HeadScratch *s);

// Analyses head (layer, head) over the batch in `acts` (B windows of T tokens, hook_q / hook_k /
// ln1 scales of every layer kept) with the layer's SAE code `lc`.  Fills `rec` for every token
// and adds the batch to `agg` (in token order: deterministic for any thread count), counting
// only the first valid_len[b] positions of window b (NULL: all; the rest is padding).
// scratch: kept by the caller between calls, or NULL (one for this call alone).
int analyse_head(const AnalysisOpts *o, const HeadTables *t, const QkSae *sae, const LayerCode *lc,
                 const GPT2Acts *acts, const GPT2Config *c, const int32_t *valid_len, HeadRecords *rec,
                 HeadAggregates *agg, HeadScratch *scratch);
