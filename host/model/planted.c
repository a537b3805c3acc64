// planted.c: see planted.h.  A synthetic GPT-2 whose chosen heads make chosen SAE features at the
// query attend to chosen SAE features at the key, and whose other heads do not.
//
// Design (every number below is a constant of this file):
//
// Shape: GPT-2 structure and file format, small: 2 layers x 4 heads, d_model C = 64, d_head 16,
// d_mlp 256, n_ctx 64, vocab 50257 (GPT-2's ids), gelu_new, LayerNorm eps 1e-5.  SAEs: d_sae m = 256, topk with
// k = 3, normalize_activations "none", b_enc = b_dec = 0, one per layer on blocks.L.hook_resid_pre
// (the same weights for every layer: the stream barely changes, see below).
//
// Feature geometry: an orthonormal basis of R^C whose first vector is the all-ones direction; the
// other C-1 (centred) basis vectors are split into G = 3 groups of 21 dims.  Every SAE feature
// belongs to one group and its decoder row W_dec[f] is a unit vector inside that group's span, so
// features of different groups are exactly orthogonal and no feature has a mean component (LN's
// centring leaves it alone).  Each planted feature owns one basis vector of its group, orthogonal
// to every other feature; the ~85 background features of a group are random unit vectors in the
// group's remaining dims, drawn with cos < 0.5 to every earlier one.  W_enc = W_dec^T.  Feature
// indices are a random permutation, so planted features sit anywhere in [0, m).
//
// Tokens: GPT-2's 50257 ids, so any GPT-2-tokenized text (a user's own .txt or .jsonl, through
// `[corpus] vocab`) runs through the model; the BPE files themselves are not part of the model
// (`qkscope planted --vocab DIR` copies them next to it).  Every token carries exactly one feature of each group, wte[t] = sum_groups c * W_dec[f],
// with c = 3 for a planted feature and c ~ U[2, 3] for a background one.  Each planted feature is
// carried by 4 tokens; a token carries at most one planted feature.  Because the groups are
// orthogonal the SAE pre-activation of a carried feature is exactly its coefficient, and any
// other feature of the group gets at most 0.5 * 3 = 1.5 < 2: the top-3 are exactly the carried
// features with their exact coefficients, so the SAE reconstructs the embedding exactly.  The
// planted tokens are drawn from ids [256, 1024): GPT-2's first merges, frequent English pieces
// (" the", " and", ...), so the circuits fire on ordinary text too.
// wpe is tiny (N(0, 0.004^2) per coordinate, centred; |wpe| ~ 0.03 against |x| ~ 4.7).
//
// Layers barely touch the stream: LN weights 1, biases 0; attention V ~ N(0, 0.02^2), c_proj
// ~ N(0, 0.001^2); MLP c_fc ~ N(0, 0.02^2), c_proj ~ N(0, 0.001^2); output biases 0.  So
// resid_pre of every layer is the token embedding up to ~0.5% (plus wpe): the SAE error stays
// ~1% at every layer.
//
// Planted circuits (layer.head: query feature group -> key feature group): 0.1: 0 -> 1,
// 1.0: 1 -> 2, 1.3: 2 -> 0; null heads 0.0, 0.2, 0.3, 1.1, 1.2.  For a planted head with unit
// w in R^dh: Wq = alpha W_dec[f]^T w + N(0, 0.02^2), Wk = alpha W_dec[g]^T w + N(0, 0.02^2),
// Q/K biases ~ N(0, 0.01^2).  With LN folded, q = x Wq~ / sigma + bq' and sigma = |x| / sqrt(C)
// (x is centred), so a query carrying f with coefficient 3 gets q = alpha sqrt(C) r_q w + noise,
// r = 3 / |x|, and with a key carrying g the score gains alpha^2 C r_q r_k / sqrt(dh).  alpha is
// set so this is 10 at the typical r (|x|^2 = 9 + 2 E[c^2]); over the corpus it ranges ~8-12.7,
// while the noise part of a score has std ~0.25.  Weights only: S[f, g] = alpha^2 / sqrt(dh)
// = 0.375 against ~0.01 for any other pair.  Null heads: Wq, Wk ~ N(0, 0.1^2), scores with std
// ~0.6 and no preference for any feature.
//
// Corpus: windows of n_ctx background tokens (no planted feature); per window and circuit, with
// probability 0.9, 1-2 tokens carrying g at random positions in [1, n_ctx/2) and then 1-3 tokens
// carrying f at random later positions.  The planted heads put ~95% of such a query's attention
// on the g keys; null heads put about the uniform share (a few %).
//
// Deterministic: an own xorshift64* RNG seeded by splitmix64(seed), all draws in a fixed order.
#include "model/planted.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "base/util.h"
#include "io/npy.h"
#include "model/gpt2.h"
#include "model/model_write.h"
#include "text/bpe.h"

enum {
    N_LAYER = 2, N_HEAD = 4, D_MODEL = 64, D_HEAD = D_MODEL / N_HEAD, D_MLP = 4 * D_MODEL, N_CTX = 64,
    VOCAB = QK_GPT2_EOT + 1, PLANTED_TOK_LO = 256, PLANTED_TOK_HI = 1024, D_SAE = 256, N_GROUPS = 3, GROUP_DIMS = (D_MODEL - 1) / N_GROUPS, TOK_PER_PLANTED = 4,
    N_CIRCUITS = 3, N_PLANTED_FEAT = 2 * N_CIRCUITS,
};
#define COEF_PLANTED 3.0
#define COEF_LO 2.0
#define COEF_HI 3.0
#define COS_CAP 0.5
#define SCORE 10.0
#define SD_WPE 0.004
#define SD_QK_PLANTED 0.02
#define SD_QK_NULL 0.1
#define SD_QK_BIAS 0.01
#define SD_IN 0.02      // V and c_fc weights (GPT-2's init)
#define SD_OUT 0.001    // attention and MLP c_proj weights: the layers barely write to the stream
#define P_CIRCUIT 0.9   // chance that a window holds a circuit's keys and queries

// layer, head, group of the query feature, group of the key feature
static const int k_circuits[N_CIRCUITS][4] = {{0, 1, 0, 1}, {1, 0, 1, 2}, {1, 3, 2, 0}};

static void shuffle(Rng *r, int *a, int n) {
    for (int i = 0; i < n; i++) a[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = rng_below(r, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

// ---- the generated model ----
typedef struct {
    Rng rng;
    double basis[D_MODEL][D_MODEL];  // rows orthonormal; row 0 = ones / sqrt(C)
    double dir[D_SAE][D_MODEL];      // feature directions, in local order (by group)
    int group[D_SAE];                // local feature -> group
    int feat_perm[D_SAE];            // local feature -> SAE feature index
    int planted_local[N_PLANTED_FEAT];  // 2c: query feature of circuit c, 2c+1: key feature
    int planted_tok[N_PLANTED_FEAT][TOK_PER_PLANTED];  // token ids carrying each planted feature
    int n_bg_tok;
    int *bg_tok;                     // token ids carrying no planted feature
    float *W_dec;                    // (m, C), SAE feature order
    double alpha;
} Gen;

static void make_basis(Gen *g) {
    for (int r = 0; r < D_MODEL; r++) {
        double *v = g->basis[r];
        for (int i = 0; i < D_MODEL; i++) v[i] = r ? rng_normal(&g->rng) : 1.0;
        for (int pass = 0; pass < 2; pass++)
            for (int q = 0; q < r; q++) {
                double d = 0;
                for (int i = 0; i < D_MODEL; i++) d += v[i] * g->basis[q][i];
                for (int i = 0; i < D_MODEL; i++) v[i] -= d * g->basis[q][i];
            }
        double n = 0;
        for (int i = 0; i < D_MODEL; i++) n += v[i] * v[i];
        for (int i = 0; i < D_MODEL; i++) v[i] /= sqrt(n);
    }
}

// Feature directions: per group, its planted features first (one basis vector each), then random
// unit background features in the group's remaining dims with cos < COS_CAP to each other.
static int make_features(Gen *g) {
    int f = 0;
    for (int gr = 0; gr < N_GROUPS; gr++) {
        int base = 1 + gr * GROUP_DIMS, used = 0, first_bg;
        for (int c = 0; c < N_CIRCUITS; c++)
            for (int side = 0; side < 2; side++)
                if (k_circuits[c][2 + side] == gr) {
                    memcpy(g->dir[f], g->basis[base + used++], sizeof g->dir[f]);
                    g->group[f] = gr;
                    g->planted_local[2 * c + side] = f++;
                }
        first_bg = f;
        int n_feat = D_SAE / N_GROUPS + (gr < D_SAE % N_GROUPS);
        for (int j = 0; j < n_feat - used; j++, f++) {
            for (int tries = 0;; tries++) {
                if (tries == 100000) return qk_err("planted: cannot place background feature %d of group %d", j, gr);
                double *v = g->dir[f], n = 0;
                memset(v, 0, sizeof g->dir[f]);
                for (int b = base + used; b < base + GROUP_DIMS; b++) {
                    double w = rng_normal(&g->rng);
                    for (int i = 0; i < D_MODEL; i++) v[i] += w * g->basis[b][i];
                }
                for (int i = 0; i < D_MODEL; i++) n += v[i] * v[i];
                for (int i = 0; i < D_MODEL; i++) v[i] /= sqrt(n);
                int ok = 1;
                for (int e = first_bg; ok && e < f; e++) {
                    double d = 0;
                    for (int i = 0; i < D_MODEL; i++) d += v[i] * g->dir[e][i];
                    ok = d < COS_CAP;
                }
                if (ok) break;
            }
            g->group[f] = gr;
        }
    }
    shuffle(&g->rng, g->feat_perm, D_SAE);
    g->W_dec = qk_malloc(sizeof(float) * D_SAE * D_MODEL);
    for (int l = 0; l < D_SAE; l++)
        for (int i = 0; i < D_MODEL; i++) g->W_dec[(size_t)g->feat_perm[l] * D_MODEL + i] = (float)g->dir[l][i];
    return 0;
}

// A random background (non-planted) feature of group gr, in local order.
static int background_feature(Gen *g, int gr) {
    for (;;) {
        int f = rng_below(&g->rng, D_SAE), planted = 0;
        for (int p = 0; p < N_PLANTED_FEAT; p++) planted |= g->planted_local[p] == f;
        if (g->group[f] == gr && !planted) return f;
    }
}

// Token embeddings: 6 x 4 distinct random ids of [PLANTED_TOK_LO, PLANTED_TOK_HI) carry the
// planted features (4 each), every other id only background features.
static void make_tokens(Gen *g, float *wte, float *wpe) {
    enum { N_RANGE = PLANTED_TOK_HI - PLANTED_TOK_LO };
    int perm[N_RANGE], *planted_of = qk_malloc(sizeof(int) * VOCAB);  // id -> planted feature or -1
    shuffle(&g->rng, perm, N_RANGE);
    for (int id = 0; id < VOCAB; id++) planted_of[id] = -1;
    for (int t = 0; t < N_PLANTED_FEAT * TOK_PER_PLANTED; t++) planted_of[PLANTED_TOK_LO + perm[t]] = t / TOK_PER_PLANTED;
    int seen[N_PLANTED_FEAT] = {0};
    g->bg_tok = qk_malloc(sizeof(int) * VOCAB);
    g->n_bg_tok = 0;
    for (int id = 0; id < VOCAB; id++) {
        int p = planted_of[id];
        double x[D_MODEL] = {0};
        for (int gr = 0; gr < N_GROUPS; gr++) {
            int f;
            double c;
            if (p >= 0 && g->group[g->planted_local[p]] == gr) {
                f = g->planted_local[p];
                c = COEF_PLANTED;
            } else {
                f = background_feature(g, gr);
                c = COEF_LO + (COEF_HI - COEF_LO) * rng_unif(&g->rng);
            }
            for (int i = 0; i < D_MODEL; i++) x[i] += c * g->dir[f][i];
        }
        for (int i = 0; i < D_MODEL; i++) wte[(size_t)id * D_MODEL + i] = (float)x[i];
        if (p >= 0) g->planted_tok[p][seen[p]++] = id;
        else g->bg_tok[g->n_bg_tok++] = id;
    }
    free(planted_of);
    for (int t = 0; t < N_CTX; t++) {
        float *w = wpe + (size_t)t * D_MODEL;
        double mean = 0;
        fill_normal(&g->rng, w, D_MODEL, SD_WPE);
        for (int i = 0; i < D_MODEL; i++) mean += w[i];
        for (int i = 0; i < D_MODEL; i++) w[i] -= (float)(mean / D_MODEL);
    }
}

// The circuit planted in head (l, h), or -1.
static int circuit_at(int l, int h) {
    for (int c = 0; c < N_CIRCUITS; c++)
        if (k_circuits[c][0] == l && k_circuits[c][1] == h) return c;
    return -1;
}

static void make_layer(Gen *g, GPT2Layer *ly, int l) {
    const int C = D_MODEL, C3 = 3 * C;
    ly->ln1_w = qk_malloc(sizeof(float) * C), ly->ln1_b = qk_calloc(C, sizeof(float));
    ly->ln2_w = qk_malloc(sizeof(float) * C), ly->ln2_b = qk_calloc(C, sizeof(float));
    fill_const(ly->ln1_w, C, 1.0f);
    fill_const(ly->ln2_w, C, 1.0f);
    ly->attn_w = qk_malloc(sizeof(float) * C * C3);
    ly->attn_b = qk_calloc(C3, sizeof(float));
    for (int h = 0; h < N_HEAD; h++) {
        int c = circuit_at(l, h);
        double w[D_HEAD], n = 0;
        for (int j = 0; j < D_HEAD; j++) w[j] = rng_normal(&g->rng), n += w[j] * w[j];
        for (int side = 0; side < 2; side++) {  // Q, then K
            const double *d = c >= 0 ? g->dir[g->planted_local[2 * c + side]] : NULL;
            for (int i = 0; i < C; i++)
                for (int j = 0; j < D_HEAD; j++) {
                    double v = rng_normal(&g->rng) * (c >= 0 ? SD_QK_PLANTED : SD_QK_NULL);
                    if (d) v += g->alpha * d[i] * w[j] / sqrt(n);
                    ly->attn_w[(size_t)i * C3 + side * C + h * D_HEAD + j] = (float)v;
                }
            fill_normal(&g->rng, ly->attn_b + side * C + h * D_HEAD, D_HEAD, SD_QK_BIAS);
        }
    }
    for (int i = 0; i < C; i++) fill_normal(&g->rng, ly->attn_w + (size_t)i * C3 + 2 * C, C, SD_IN);
    ly->proj_w = qk_malloc(sizeof(float) * C * C), ly->proj_b = qk_calloc(C, sizeof(float));
    fill_normal(&g->rng, ly->proj_w, (size_t)C * C, SD_OUT);
    ly->fc_w = qk_malloc(sizeof(float) * C * D_MLP), ly->fc_b = qk_calloc(D_MLP, sizeof(float));
    fill_normal(&g->rng, ly->fc_w, (size_t)C * D_MLP, SD_IN);
    ly->fcproj_w = qk_malloc(sizeof(float) * D_MLP * C), ly->fcproj_b = qk_calloc(C, sizeof(float));
    fill_normal(&g->rng, ly->fcproj_w, (size_t)D_MLP * C, SD_OUT);
}

// Corpus windows: background tokens, then per circuit (probability P_CIRCUIT) 1-2 g-carrying keys
// in [1, T/2) and 1-3 f-carrying queries after the last of them.
static int32_t *make_corpus(Gen *g, int n_windows) {
    const int T = N_CTX;
    int32_t *tok = qk_malloc(sizeof(int32_t) * (size_t)n_windows * T);
    for (int w = 0; w < n_windows; w++) {
        int32_t *x = tok + (size_t)w * T;
        char used[N_CTX] = {0};
        for (int t = 0; t < T; t++) x[t] = g->bg_tok[rng_below(&g->rng, g->n_bg_tok)];
        for (int c = 0; c < N_CIRCUITS; c++) {
            if (rng_unif(&g->rng) >= P_CIRCUIT) continue;
            int n_key = 1 + rng_below(&g->rng, 2), n_query = 1 + rng_below(&g->rng, 3), last = 0;
            for (int side = 1; side >= 0; side--) {  // keys first, then queries after them
                int n = side ? n_key : n_query, lo = side ? 1 : last + 1, hi = side ? T / 2 : T;
                for (int e = 0; e < n; e++) {
                    int p = -1;
                    for (int tries = 0; tries < 1000 && p < 0; tries++) {
                        int q = lo + rng_below(&g->rng, hi - lo);
                        if (!used[q]) p = q;
                    }
                    if (p < 0) continue;  // window full near the end: fewer tokens (never with 3 circuits)
                    used[p] = 1;
                    x[p] = g->planted_tok[2 * c + side][rng_below(&g->rng, TOK_PER_PLANTED)];
                    if (side && p > last) last = p;
                }
            }
        }
    }
    return tok;
}

// ---- writing ----

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static int write_manifest(const char *dir, const Gen *g, const QkPlanted *info, double score_lo, double score_hi) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "synthetic", 1);
    cJSON_AddStringToObject(r, "note",
                            "This model is synthetic: a tiny GPT-2-shaped model written by `qkscope planted` with "
                            "planted circuits (see host/model/planted.c). It is not GPT-2; its token ids are GPT-2's (50257), so GPT-2-"
                            "tokenized text runs through it, and query_tokens / key_tokens are the GPT-2 ids that carry "
                            "each planted feature.");
    cJSON_AddStringToObject(r, "generator", "qkscope planted");
    cJSON_AddNumberToObject(r, "seed", (double)info->seed);
    cJSON_AddStringToObject(r, "model", "model");
    cJSON_AddStringToObject(r, "corpus", "corpus.npy");
    cJSON *saes = cJSON_AddArrayToObject(r, "sae");
    for (int l = 0; l < info->n_layer; l++) {
        char d[64], hook[64];
        snprintf(d, sizeof d, "sae/layer_%d", l);
        snprintf(hook, sizeof hook, "blocks.%d.hook_resid_pre", l);
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "layer", l);
        cJSON_AddStringToObject(s, "dir", d);
        cJSON_AddStringToObject(s, "hook_name", hook);
        cJSON_AddItemToArray(saes, s);
    }
    const struct { const char *key; int v; } ints[] = {
        {"n_layer", info->n_layer}, {"n_head", info->n_head}, {"d_model", info->d_model},
        {"d_head", info->d_head},   {"n_ctx", info->n_ctx},   {"vocab_size", info->vocab_size},
        {"d_sae", info->d_sae},     {"k", info->k},           {"n_windows", info->n_windows}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) cJSON_AddNumberToObject(r, ints[i].key, ints[i].v);
    cJSON_AddNumberToObject(r, "score", info->score);
    cJSON *range = cJSON_AddArrayToObject(r, "score_range");
    cJSON_AddItemToArray(range, cJSON_CreateNumber(round(score_lo * 100) / 100));
    cJSON_AddItemToArray(range, cJSON_CreateNumber(round(score_hi * 100) / 100));
    cJSON_AddStringToObject(r, "score_note",
                            "a query token carrying query_feature adds about `score` (range score_range) to its score "
                            "with a key token carrying key_feature in the planted head; other pairs add ~0 (std ~0.25)");
    cJSON *circ = cJSON_AddArrayToObject(r, "circuits");
    for (int c = 0; c < info->n_circuits; c++) {
        const QkPlantedCircuit *p = &info->circuits[c];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", p->layer);
        cJSON_AddNumberToObject(o, "head", p->head);
        cJSON_AddNumberToObject(o, "query_feature", p->query_feature);
        cJSON_AddNumberToObject(o, "key_feature", p->key_feature);
        cJSON_AddItemToObject(o, "query_tokens", int_array(g->planted_tok[2 * c], TOK_PER_PLANTED));
        cJSON_AddItemToObject(o, "key_tokens", int_array(g->planted_tok[2 * c + 1], TOK_PER_PLANTED));
        cJSON_AddItemToArray(circ, o);
    }
    cJSON *nul = cJSON_AddArrayToObject(r, "null_heads");
    for (int i = 0; i < info->n_null; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", info->null_heads[i].layer);
        cJSON_AddNumberToObject(o, "head", info->null_heads[i].head);
        cJSON_AddItemToArray(nul, o);
    }
    return qk_write_json(dir, "planted.json", r);
}

void qk_planted_default_opts(QkPlantedOpts *o) {
    o->seed = 1;
    o->n_tokens = 4096;
}

int qk_planted_write(const char *dir, const QkPlantedOpts *opts, QkPlanted *info_out) {
    QkPlantedOpts def;
    qk_planted_default_opts(&def);
    if (!opts) opts = &def;
    if (opts->n_tokens < 1) return qk_err("planted: n_tokens must be positive (got %d)", opts->n_tokens);
    if (opts->seed > (uint64_t)QK_SEED_MAX) return qk_err("planted: seed must be below 2^53 (recorded exactly in planted.json)");
    if (qk_make_dirs(dir)) return -1;

    Gen *g = qk_calloc(1, sizeof(Gen));
    rng_seed(&g->rng, opts->seed);
    // alpha: the score a planted pair adds, SCORE, at the typical r = 3 / |x|.
    const double ec2 = (COEF_HI * COEF_HI * COEF_HI - COEF_LO * COEF_LO * COEF_LO) / (3 * (COEF_HI - COEF_LO));
    const double r_mid = COEF_PLANTED / sqrt(COEF_PLANTED * COEF_PLANTED + (N_GROUPS - 1) * ec2);
    const double r_lo = COEF_PLANTED / sqrt(COEF_PLANTED * COEF_PLANTED + (N_GROUPS - 1) * COEF_HI * COEF_HI);
    const double r_hi = COEF_PLANTED / sqrt(COEF_PLANTED * COEF_PLANTED + (N_GROUPS - 1) * COEF_LO * COEF_LO);
    g->alpha = sqrt(SCORE * sqrt((double)D_HEAD) / D_MODEL) / r_mid;

    GPT2Model m = {0};
    m.cfg = (GPT2Config){N_LAYER, N_HEAD, D_MODEL, D_HEAD, D_MLP, N_CTX, VOCAB, 1e-5f};
    m.wte = qk_malloc(sizeof(float) * VOCAB * D_MODEL);
    m.wpe = qk_malloc(sizeof(float) * N_CTX * D_MODEL);
    m.lnf_w = qk_malloc(sizeof(float) * D_MODEL);
    m.lnf_b = qk_calloc(D_MODEL, sizeof(float));
    fill_const(m.lnf_w, D_MODEL, 1.0f);
    m.layers = qk_calloc(N_LAYER, sizeof(GPT2Layer));

    QkPlanted info = {0};
    info.n_layer = N_LAYER, info.n_head = N_HEAD, info.d_model = D_MODEL, info.d_head = D_HEAD;
    info.n_ctx = N_CTX, info.vocab_size = VOCAB, info.d_sae = D_SAE, info.k = N_GROUPS;
    info.n_windows = (int)(((int64_t)opts->n_tokens + N_CTX - 1) / N_CTX);
    info.seed = opts->seed;
    info.score = SCORE;

    int rc = 0;
    int32_t *corpus = NULL;
    make_basis(g);
    if (make_features(g)) rc = -1;
    if (!rc) {
        make_tokens(g, m.wte, m.wpe);
        for (int l = 0; l < N_LAYER; l++) make_layer(g, &m.layers[l], l);
        corpus = make_corpus(g, info.n_windows);
        for (int c = 0; c < N_CIRCUITS; c++)
            info.circuits[info.n_circuits++] = (QkPlantedCircuit){
                k_circuits[c][0], k_circuits[c][1], g->feat_perm[g->planted_local[2 * c]],
                g->feat_perm[g->planted_local[2 * c + 1]]};
        for (int l = 0; l < N_LAYER; l++)
            for (int h = 0; h < N_HEAD; h++)
                if (circuit_at(l, h) < 0) info.null_heads[info.n_null++] = (QkPlantedHead){l, h};
        char *model_dir = qk_path_join(dir, "model");
        rc = qk_write_gpt2(model_dir, &m, "synthetic model written by `qkscope planted`; not GPT-2");
        free(model_dir);
        for (int l = 0; !rc && l < N_LAYER; l++) rc = qk_write_tied_topk_sae(dir, l, D_MODEL, D_SAE, N_GROUPS, N_CTX, "qkscope-planted (synthetic)", g->W_dec);
        if (!rc) {
            char *path = qk_path_join(dir, "corpus.npy");
            int64_t shape[2] = {info.n_windows, N_CTX};
            rc = qk_npy_write(path, "<i4", 2, shape, corpus);
            free(path);
        }
        double s = SCORE / (r_mid * r_mid);
        if (!rc) rc = write_manifest(dir, g, &info, s * r_lo * r_lo, s * r_hi * r_hi);
    }
    if (!rc && info_out) *info_out = info;
    free(corpus);
    free(g->W_dec);
    free(g->bg_tok);
    free(g);
    gpt2_free(&m);
    return rc;
}

// ---- reading planted.json ----
static int get_int(const cJSON *o, const char *key, const char *path, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 || v->valuedouble > 1e9)
        return qk_err("%s: field '%s': missing or not a non-negative integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

int qk_planted_read(const char *dir, QkPlanted *info) {
    memset(info, 0, sizeof *info);
    char *path = qk_path_join(dir, "planted.json");
    cJSON *r = qk_json_load(path);
    if (!r) {
        free(path);
        return -1;
    }
    int rc = 0;
    const struct { const char *key; int *v; } ints[] = {
        {"n_layer", &info->n_layer}, {"n_head", &info->n_head}, {"d_model", &info->d_model},
        {"d_head", &info->d_head},   {"n_ctx", &info->n_ctx},   {"vocab_size", &info->vocab_size},
        {"d_sae", &info->d_sae},     {"k", &info->k},           {"n_windows", &info->n_windows}};
    for (size_t i = 0; !rc && i < sizeof ints / sizeof ints[0]; i++) rc = get_int(r, ints[i].key, path, ints[i].v);
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(r, "seed");
    const cJSON *score = cJSON_GetObjectItemCaseSensitive(r, "score");
    if (!rc && (!cJSON_IsNumber(seed) || seed->valuedouble < 0 || !cJSON_IsNumber(score)))
        rc = qk_err("%s: fields 'seed' and 'score' must be numbers", path);
    if (!rc) info->seed = (uint64_t)seed->valuedouble, info->score = score->valuedouble;
    const char *lists[2] = {"circuits", "null_heads"};
    for (int which = 0; !rc && which < 2; which++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(r, lists[which]), *e;
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > QK_PLANTED_MAX_HEADS) {
            rc = qk_err("%s: field '%s' must be an array of at most %d entries", path, lists[which], QK_PLANTED_MAX_HEADS);
            break;
        }
        cJSON_ArrayForEach(e, a) {
            int l = 0, h = 0, f = 0, g = 0;
            if ((rc = get_int(e, "layer", path, &l) || get_int(e, "head", path, &h))) break;
            if (l >= info->n_layer || h >= info->n_head) {
                rc = qk_err("%s: %s: head %d.%d is outside the model", path, lists[which], l, h);
                break;
            }
            if (which == 0) {
                if ((rc = get_int(e, "query_feature", path, &f) || get_int(e, "key_feature", path, &g))) break;
                if (f >= info->d_sae || g >= info->d_sae) {
                    rc = qk_err("%s: circuit %d.%d: feature outside [0, %d)", path, l, h, info->d_sae);
                    break;
                }
                info->circuits[info->n_circuits++] = (QkPlantedCircuit){l, h, f, g};
            } else {
                info->null_heads[info->n_null++] = (QkPlantedHead){l, h};
            }
        }
    }
    cJSON_Delete(r);
    free(path);
    if (rc) memset(info, 0, sizeof *info);
    return rc ? -1 : 0;
}
