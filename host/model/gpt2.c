// gpt2.c: see gpt2.h.
#include "model/gpt2.h"

#include <cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/safetensors.h"

// Upper bounds on config.json sizes, far above any GPT-2 (XL: 48 layers, 25 heads, n_embd 1600,
// 50257 tokens, 1024 positions), so sizes derived from them (4 * n_embd, per-layer arrays, the
// tensor shapes checked against them) cannot overflow, and a bad config fails before anything is
// allocated.
static const struct {
    const char *key;
    int max;
} k_caps[] = {{"n_layer", GPT2_MAX_LAYER}, {"n_head", GPT2_MAX_HEAD}, {"n_embd", 1 << 16}, {"vocab_size", 1 << 24},
              {"n_positions", 1 << 20}, {"n_inner", 1 << 20}};

// Reads integer key `key` of the config object (1 <= value <= its cap); `def` < 0 means the key
// is required.
static int cfg_int(const cJSON *root, const char *path, const char *key, int def, int *out) {
    int max = 0;
    for (size_t i = 0; i < sizeof k_caps / sizeof k_caps[0]; i++)
        if (!strcmp(k_caps[i].key, key)) max = k_caps[i].max;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (def < 0) return qk_err("%s: field '%s' is missing", path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 1 || j->valuedouble > max)
        return qk_err("%s: field '%s' must be an integer in [1, %d]", path, key, max);
    *out = (int)j->valuedouble;
    return 0;
}

int gpt2_config_load(GPT2Config *cfg, const char *path) {
    memset(cfg, 0, sizeof *cfg);
    size_t len;
    char *text = qk_read_file(path, &len);
    if (!text) return -1;
    int rc = gpt2_config_parse(cfg, text, len, path);
    free(text);
    return rc;
}

int gpt2_config_parse(GPT2Config *cfg, const char *text, size_t len, const char *path) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = qk_json_parse(text, len, path);
    if (!root) return -1;
    int rc = 0, n_pos = 0;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_by_inverse_layer_idx");
    const cJSON *scl = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_weights");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2")))
        rc = qk_err("%s: field 'model_type' must be \"gpt2\"", path);
    else if (cfg_int(root, path, "n_layer", -1, &cfg->n_layer) || cfg_int(root, path, "n_head", -1, &cfg->n_head) ||
             cfg_int(root, path, "n_embd", -1, &cfg->d_model) || cfg_int(root, path, "vocab_size", -1, &cfg->vocab_size) ||
             cfg_int(root, path, "n_positions", -1, &n_pos))
        rc = -1;
    else if (cfg_int(root, path, "n_inner", 4 * cfg->d_model, &cfg->d_mlp))  // 4 * n_embd <= 2^18: no overflow
        rc = -1;
    else if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "gelu_new")))
        rc = qk_err("%s: field 'activation_function' is \"%.60s\"; only gelu_new (GPT-2) is supported", path,
                    cJSON_IsString(act) ? act->valuestring : "?");
    else if (eps && !(cJSON_IsNumber(eps) && eps->valuedouble > 0 && eps->valuedouble <= 1))
        rc = qk_err("%s: field 'layer_norm_epsilon' must be a number in (0, 1]", path);
    else if (cJSON_IsTrue(inv))
        rc = qk_err("%s: field 'scale_attn_by_inverse_layer_idx' true is not supported", path);
    else if (cJSON_IsFalse(scl))
        rc = qk_err("%s: field 'scale_attn_weights' false is not supported", path);
    else if (cfg->d_model % cfg->n_head)
        rc = qk_err("%s: field 'n_embd' (%d) is not a multiple of 'n_head' (%d)", path, cfg->d_model, cfg->n_head);
    if (!rc) {
        cfg->n_ctx = n_pos;
        cfg->d_head = cfg->d_model / cfg->n_head;
        cfg->ln_eps = eps ? (float)eps->valuedouble : 1e-5f;
    }
    cJSON_Delete(root);
    return rc;
}

// Tensor names are "<prefix>h.N.attn.c_attn.weight" etc., prefix "" or "transformer.".
static float *load(const QkSafetensors *st, const char *prefix, const char *name, int ndim, int64_t d0, int64_t d1) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    int64_t shape[2] = {d0, d1};
    return qk_st_load_f32(st, full, ndim, shape);
}

enum { D_NONE = GPT2_DIM_NONE, D_C = GPT2_DIM_C, D_3C = GPT2_DIM_3C, D_F = GPT2_DIM_F };
const GPT2TensorSpec gpt2_layer_tensors[GPT2_LAYER_TENSORS] = {
    {"ln_1.weight", offsetof(GPT2Layer, ln1_w), D_C, D_NONE},          {"ln_1.bias", offsetof(GPT2Layer, ln1_b), D_C, D_NONE},
    {"attn.c_attn.weight", offsetof(GPT2Layer, attn_w), D_C, D_3C},    {"attn.c_attn.bias", offsetof(GPT2Layer, attn_b), D_3C, D_NONE},
    {"attn.c_proj.weight", offsetof(GPT2Layer, proj_w), D_C, D_C},     {"attn.c_proj.bias", offsetof(GPT2Layer, proj_b), D_C, D_NONE},
    {"ln_2.weight", offsetof(GPT2Layer, ln2_w), D_C, D_NONE},          {"ln_2.bias", offsetof(GPT2Layer, ln2_b), D_C, D_NONE},
    {"mlp.c_fc.weight", offsetof(GPT2Layer, fc_w), D_C, D_F},          {"mlp.c_fc.bias", offsetof(GPT2Layer, fc_b), D_F, D_NONE},
    {"mlp.c_proj.weight", offsetof(GPT2Layer, fcproj_w), D_F, D_C},    {"mlp.c_proj.bias", offsetof(GPT2Layer, fcproj_b), D_C, D_NONE},
};

long long gpt2_dim(const GPT2Config *c, int d) {
    return d == D_C ? c->d_model : d == D_3C ? 3 * (long long)c->d_model : d == D_F ? c->d_mlp : 0;
}

static int load_layer(GPT2Layer *ly, const QkSafetensors *st, const char *pre, int l, const GPT2Config *c) {
    char n[128];
    for (int q = 0; q < GPT2_LAYER_TENSORS; q++) {
        const GPT2TensorSpec *t = &gpt2_layer_tensors[q];
        snprintf(n, sizeof n, "h.%d.%s", l, t->suffix);
        if (!(*gpt2_layer_tensor(ly, q) = load(st, pre, n, t->d1 ? 2 : 1, gpt2_dim(c, t->d0), gpt2_dim(c, t->d1)))) return -1;
    }
    return 0;
}

int gpt2_load(GPT2Model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char *cfg_path = qk_path_join(dir, "config.json");
    char *st_path = qk_path_join(dir, "model.safetensors");
    GPT2Config cfg;
    QkSafetensors st = {0};
    int rc = gpt2_config_load(&cfg, cfg_path);
    if (!rc) rc = qk_st_open(&st, st_path);
    if (!rc) {
        rc = gpt2_load_st(m, &cfg, &st);
        qk_st_close(&st);
    }
    free(cfg_path);
    free(st_path);
    if (rc) return -1;
    m->dir = qk_strdup(dir);
    return 0;
}

// Every tensor the model needs is present with the config's shape: checked before anything is
// allocated, so a config that disagrees with its weights fails at once, naming the tensor.
static int check_shapes(const QkSafetensors *st, const char *pre, const GPT2Config *c) {
    const int64_t C = c->d_model;
    const char *top[4] = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"};
    const int64_t top_shape[4][2] = {{c->vocab_size, C}, {c->n_ctx, C}, {C, 0}, {C, 0}};
    char n[256];
    for (int q = 0; q < 4; q++) {
        snprintf(n, sizeof n, "%s%s", pre, top[q]);
        if (!qk_st_check(st, n, top_shape[q][1] ? 2 : 1, top_shape[q])) return -1;
    }
    for (int l = 0; l < c->n_layer; l++)
        for (int q = 0; q < GPT2_LAYER_TENSORS; q++) {
            const GPT2TensorSpec *t = &gpt2_layer_tensors[q];
            const int64_t want[2] = {gpt2_dim(c, t->d0), gpt2_dim(c, t->d1)};
            snprintf(n, sizeof n, "%sh.%d.%s", pre, l, t->suffix);
            if (!qk_st_check(st, n, want[1] ? 2 : 1, want)) return -1;
        }
    return 0;
}

int gpt2_load_st(GPT2Model *m, const GPT2Config *cfg, const QkSafetensors *st) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const GPT2Config *c = &m->cfg;
    const char *st_path = st->path;
    const char *pre = qk_st_find(st, "transformer.wte.weight") ? "transformer." : "";
    // Tensors of more layers than the config declares mean the config and weights disagree.
    char extra[64];
    snprintf(extra, sizeof extra, "%sh.%d.ln_1.weight", pre, c->n_layer);
    int rc = check_shapes(st, pre, c);
    if (!rc && qk_st_find(st, extra))
        rc = qk_err("%s: tensor '%s' exists but config.json says n_layer = %d", st_path, extra, c->n_layer);
    if (!rc) {
        m->layers = qk_calloc(c->n_layer, sizeof(GPT2Layer));
        if (!(m->wte = load(st, pre, "wte.weight", 2, c->vocab_size, c->d_model)) ||
            !(m->wpe = load(st, pre, "wpe.weight", 2, c->n_ctx, c->d_model)) ||
            !(m->lnf_w = load(st, pre, "ln_f.weight", 1, c->d_model, 0)) ||
            !(m->lnf_b = load(st, pre, "ln_f.bias", 1, c->d_model, 0)))
            rc = -1;
        for (int l = 0; !rc && l < c->n_layer; l++) rc = load_layer(&m->layers[l], st, pre, l, c);
    }
    // A present lm_head must be the tied embedding: qkscope computes logits with wte.
    const QkTensorInfo *lm = qk_st_find(st, "lm_head.weight");
    if (!rc && lm) {
        int64_t shape[2] = {c->vocab_size, c->d_model};
        float *w = qk_st_load_f32(st, "lm_head.weight", 2, shape);
        if (!w) rc = -1;
        else if (memcmp(w, m->wte, sizeof(float) * c->vocab_size * c->d_model))
            rc = qk_err("%s: tensor 'lm_head.weight' differs from 'wte.weight'; only tied GPT-2 heads are supported",
                        st_path);
        free(w);
    }
    if (rc) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        gpt2_free(m);
        return qk_err("%s", keep);
    }
    return 0;
}

void gpt2_free(GPT2Model *m) {
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layer; l++) {
            for (int q = 0; q < GPT2_LAYER_TENSORS; q++) free(*gpt2_layer_tensor(&m->layers[l], q));
        }
    free(m->layers);
    free(m->wte);
    free(m->wpe);
    free(m->lnf_w);
    free(m->lnf_b);
    free(m->dir);
    memset(m, 0, sizeof *m);
}

int gpt2_check_tokens(const GPT2Config *cfg, const int *tokens, int B, int T, const char *what) {
    if (T < 1) return qk_err("%s: empty sequence", what);
    if (T > cfg->n_ctx)
        return qk_err("%s: sequence length %d exceeds the model's n_ctx %d", what, T, cfg->n_ctx);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int id = tokens[(size_t)b * T + t];
            if (id < 0 || id >= cfg->vocab_size)
                return qk_err("%s: sequence %d position %d: token id %d is outside the vocabulary [0, %d)", what, b, t,
                              id, cfg->vocab_size);
        }
    return 0;
}
