// cmd_random.c: `qkscope random`: a GPT-2-shaped model with random weights, random SAELens TopK
// SAEs for every layer and a random token corpus, in the real file formats, written by qkscope
// itself so benchmarks need no Python and no download (the GPU machines have neither): the cost of
// the analysis depends on the shapes, not on the values.
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/rng.h"
#include "base/util.h"
#include "cli/commands.h"
#include "io/npy.h"
#include "io/out_check.h"
#include "model/model_write.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope random --out DIR [options] [-q]\n\n"
            "Writes a RANDOM model with GPT-2's structure (GPT-2 small's shapes by default), one random\n"
            "SAELens TopK SAE per layer (on blocks.L.hook_resid_pre) and a corpus of random token ids,\n"
            "for benchmarks at real sizes without Python or a download.  Nothing in it means anything.\n"
            "  DIR/model/         config.json, model.safetensors (Hugging Face GPT-2, float32)\n"
            "  DIR/sae/layer_L/   cfg.json, sae_weights.safetensors\n"
            "  DIR/corpus.npy     int32 [tokens] uniform over the vocabulary\n\n"
            "  --out DIR        folder to write (created if missing; files of the same names are replaced)\n"
            "  --layers N       (12)      --heads N   (12)      --d-model N (768)\n"
            "  --d-mlp N        (4 d_model)  --n-ctx N (1024)   --vocab N   (50257)\n"
            "  --d-sae N        SAE width (32768)        --k N   SAE top-k (32)\n"
            "  --tokens N       corpus size (65536)      --seed N  (1; the same seed writes the same files)\n"
            "  -q, --quiet      print nothing\n"
            "  -h, --help       this text\n");
}

typedef struct {
    int layers, heads, d_model, d_mlp, n_ctx, vocab, d_sae, k;
    int64_t tokens;
    uint64_t seed;
} RandomShape;

// GPT-2's initialisation: N(0, 0.02) weights, output projections scaled by 1/sqrt(2 L), small
// random biases (so that they cost what they cost), LayerNorm weights 1.
static void make_model(Rng *g, const RandomShape *s, GPT2Model *m) {
    const int C = s->d_model, F = s->d_mlp, L = s->layers;
    m->cfg = (GPT2Config){L, s->heads, C, C / s->heads, F, s->n_ctx, s->vocab, 1e-5f};
    m->wte = qk_malloc(sizeof(float) * s->vocab * C), m->wpe = qk_malloc(sizeof(float) * s->n_ctx * C);
    fill_normal(g, m->wte, (size_t)s->vocab * C, 0.02);
    fill_normal(g, m->wpe, (size_t)s->n_ctx * C, 0.01);
    m->lnf_w = qk_malloc(sizeof(float) * C), m->lnf_b = qk_calloc(C, sizeof(float));
    fill_const(m->lnf_w, C, 1.0f);
    m->layers = qk_calloc(L, sizeof(GPT2Layer));
    const double out_sd = 0.02 / sqrt(2.0 * L);
    for (int l = 0; l < L; l++) {
        GPT2Layer *y = &m->layers[l];
        y->ln1_w = qk_malloc(sizeof(float) * C), y->ln1_b = qk_calloc(C, sizeof(float));
        y->ln2_w = qk_malloc(sizeof(float) * C), y->ln2_b = qk_calloc(C, sizeof(float));
        fill_const(y->ln1_w, C, 1.0f), fill_const(y->ln2_w, C, 1.0f);
        struct { float **p; size_t n; double sd; } parts[] = {
            {&y->attn_w, (size_t)C * 3 * C, 0.02}, {&y->attn_b, (size_t)3 * C, 0.01},
            {&y->proj_w, (size_t)C * C, out_sd},   {&y->proj_b, (size_t)C, 0.01},
            {&y->fc_w, (size_t)C * F, 0.02},       {&y->fc_b, (size_t)F, 0.01},
            {&y->fcproj_w, (size_t)F * C, out_sd}, {&y->fcproj_b, (size_t)C, 0.01}};
        for (size_t q = 0; q < sizeof parts / sizeof parts[0]; q++) {
            *parts[q].p = qk_malloc(sizeof(float) * parts[q].n);
            fill_normal(g, *parts[q].p, parts[q].n, parts[q].sd);
        }
    }
}

// Layer l's SAE: unit-norm random decoder rows, tied encoder, zero biases.
static int write_sae(Rng *g, const RandomShape *s, const char *dir, int l) {
    const int C = s->d_model, M = s->d_sae;
    float *W_dec = qk_malloc(sizeof(float) * M * C);
    fill_normal(g, W_dec, (size_t)M * C, 1.0);
    for (int f = 0; f < M; f++) {
        double n2 = 0;
        for (int i = 0; i < C; i++) n2 += (double)W_dec[(size_t)f * C + i] * W_dec[(size_t)f * C + i];
        float inv = (float)(1.0 / sqrt(n2));
        for (int i = 0; i < C; i++) W_dec[(size_t)f * C + i] *= inv;
    }
    int rc = qk_write_tied_topk_sae(dir, l, C, M, s->k, s->n_ctx, "qkscope-random (random weights)", W_dec);
    free(W_dec);
    return rc;
}

static int write_random(const char *dir, const RandomShape *s) {
    if (s->d_model % s->heads) return qk_err("--d-model %d is not a multiple of --heads %d", s->d_model, s->heads);
    if (s->k > s->d_sae) return qk_err("--k %d exceeds --d-sae %d", s->k, s->d_sae);
    if (qk_make_dirs(dir)) return -1;
    Rng g;
    rng_seed(&g, s->seed);
    GPT2Model m = {0};
    make_model(&g, s, &m);
    char *model_dir = qk_path_join(dir, "model");
    int rc = qk_write_gpt2(model_dir, &m, "random weights written by `qkscope random`; not GPT-2");
    free(model_dir);
    gpt2_free(&m);
    for (int l = 0; !rc && l < s->layers; l++) rc = write_sae(&g, s, dir, l);
    if (!rc) {
        int32_t *ids = qk_malloc(sizeof(int32_t) * (size_t)s->tokens);
        for (int64_t i = 0; i < s->tokens; i++) ids[i] = rng_below(&g, s->vocab);
        char *path = qk_path_join(dir, "corpus.npy");
        int64_t shape[1] = {s->tokens};
        rc = qk_npy_write(path, "<i4", 1, shape, ids);
        free(path), free(ids);
    }
    return rc;
}

int cmd_random(int argc, char **argv) {
    RandomShape s = {.layers = 12, .heads = 12, .d_model = 768, .d_mlp = 0, .n_ctx = 1024, .vocab = 50257,
                     .d_sae = 32768, .k = 32, .tokens = 65536, .seed = 1};
    const char *out = NULL;
    int quiet = 0;
    enum { O_LAYERS = 256, O_HEADS, O_DMODEL, O_DMLP, O_NCTX, O_VOCAB, O_DSAE, O_K, O_TOKENS, O_SEED };
    static const struct option longs[] = {
        {"out", required_argument, 0, 'o'},       {"layers", required_argument, 0, O_LAYERS},
        {"heads", required_argument, 0, O_HEADS}, {"d-model", required_argument, 0, O_DMODEL},
        {"d-mlp", required_argument, 0, O_DMLP},  {"n-ctx", required_argument, 0, O_NCTX},
        {"vocab", required_argument, 0, O_VOCAB}, {"d-sae", required_argument, 0, O_DSAE},
        {"k", required_argument, 0, O_K},         {"tokens", required_argument, 0, O_TOKENS},
        {"seed", required_argument, 0, O_SEED},   {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:qh", longs, NULL)) != -1) {
        int *dst = NULL, lo = 1, hi = 1 << 30;
        switch (c) {
        case 'o': out = optarg; continue;
        case 'q': quiet = 1; continue;
        case 'h': usage(stdout); return QK_EXIT_OK;
        case O_LAYERS: dst = &s.layers, hi = 1024; break;
        case O_HEADS: dst = &s.heads, hi = 1024; break;
        case O_DMODEL: dst = &s.d_model, hi = 1 << 16; break;
        case O_DMLP: dst = &s.d_mlp, hi = 1 << 18; break;
        case O_NCTX: dst = &s.n_ctx, hi = 1 << 16; break;
        case O_VOCAB: dst = &s.vocab, lo = 2; break;
        case O_DSAE: dst = &s.d_sae, hi = 1 << 22; break;
        case O_K: dst = &s.k, hi = 1 << 22; break;
        case O_TOKENS:
        case O_SEED: {
            int64_t v;
            if (qk_parse_int64(optarg, c == O_SEED ? 0 : 1, c == O_SEED ? QK_SEED_MAX : INT64_MAX, &v)) {
                fprintf(stderr, "qkscope random: --%s '%s': expected %s\n", c == O_SEED ? "seed" : "tokens", optarg,
                        c == O_SEED ? "an integer in [0, 2^53)" : "a positive integer");
                return QK_EXIT_USAGE;
            }
            if (c == O_SEED) s.seed = (uint64_t)v;
            else s.tokens = v;
            continue;
        }
        default: usage(stderr); return QK_EXIT_USAGE;
        }
        int64_t v;
        if (qk_parse_int64(optarg, lo, hi, &v)) {
            fprintf(stderr, "qkscope random: --%s '%s': expected an integer in [%d, %d]\n", longs[c - O_LAYERS + 1].name,
                    optarg, lo, hi);
            return QK_EXIT_USAGE;
        }
        *dst = (int)v;
    }
    if (!out || optind < argc) {
        usage(stderr);
        return QK_EXIT_USAGE;
    }
    if (!s.d_mlp) s.d_mlp = 4 * s.d_model;
    double t0 = qk_now();
    if (qk_out_check_folder(out) || write_random(out, &s)) {
        fprintf(stderr, "qkscope random: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    if (!quiet)
        printf("qkscope random: %d layers x %d heads, d_model %d, d_sae %d (k %d), %lld tokens -> %s (%.1f s)\n", s.layers,
               s.heads, s.d_model, s.d_sae, s.k, (long long)s.tokens, out, qk_now() - t0);
    return QK_EXIT_OK;
}
