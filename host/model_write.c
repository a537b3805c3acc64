// model_write.c: see model_write.h.
#include "model_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors_write.h"
#include "util.h"

int qk_make_dirs(const char *path) {
    char *p = qk_strdup(path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        char c = *s;
        if (c && c != '/') continue;
        *s = 0;
        struct stat st;
        if (mkdir(p, 0777) && errno != EEXIST) rc = qk_err("%s: cannot create directory: %s", p, strerror(errno));
        else if (stat(p, &st) || !S_ISDIR(st.st_mode)) rc = qk_err("%s: exists and is not a directory", p);
        *s = c;
        if (rc || !c) break;
    }
    free(p);
    return rc;
}

int qk_write_json(const char *dir, const char *name, cJSON *root) {
    char *path = qk_path_join(dir, name), *text = cJSON_Print(root);
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f) rc = qk_err("%s: cannot create: %s", path, strerror(errno));
    else {
        int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
        if (fclose(f) || !ok) rc = qk_err("%s: write failed", path);
    }
    free(text);
    free(path);
    cJSON_Delete(root);
    return rc;
}

int qk_write_gpt2(const char *model_dir, const GPT2Model *m, const char *note) {
    const GPT2Config *c = &m->cfg;
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "activation_function", "gelu_new");
    cJSON *arch = cJSON_AddArrayToObject(cfg, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    cJSON_AddNumberToObject(cfg, "attn_pdrop", 0.0);
    cJSON_AddNumberToObject(cfg, "bos_token_id", c->vocab_size - 1);
    cJSON_AddNumberToObject(cfg, "embd_pdrop", 0.0);
    cJSON_AddNumberToObject(cfg, "eos_token_id", c->vocab_size - 1);
    cJSON_AddNumberToObject(cfg, "initializer_range", 0.02);
    cJSON_AddNumberToObject(cfg, "layer_norm_epsilon", c->ln_eps);
    cJSON_AddStringToObject(cfg, "model_type", "gpt2");
    cJSON_AddNumberToObject(cfg, "n_ctx", c->n_ctx);
    cJSON_AddNumberToObject(cfg, "n_embd", c->d_model);
    cJSON_AddNumberToObject(cfg, "n_head", c->n_head);
    if (c->d_mlp == 4 * c->d_model) cJSON_AddNullToObject(cfg, "n_inner");  // Hugging Face's default: 4 n_embd
    else cJSON_AddNumberToObject(cfg, "n_inner", c->d_mlp);
    cJSON_AddNumberToObject(cfg, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(cfg, "n_positions", c->n_ctx);
    cJSON_AddNumberToObject(cfg, "resid_pdrop", 0.0);
    cJSON_AddBoolToObject(cfg, "scale_attn_by_inverse_layer_idx", 0);
    cJSON_AddBoolToObject(cfg, "scale_attn_weights", 1);
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", 1);
    cJSON_AddNumberToObject(cfg, "vocab_size", c->vocab_size);
    cJSON_AddStringToObject(cfg, "qkscope_note", note);
    int rc = qk_make_dirs(model_dir);
    if (rc) cJSON_Delete(cfg);
    else rc = qk_write_json(model_dir, "config.json", cfg);  // frees cfg
    enum { PER_LAYER = 12 };
    int n = 4 + PER_LAYER * c->n_layer, k = 0;
    QkStTensor *t = qk_calloc(n, sizeof(QkStTensor));
    char (*names)[64] = qk_calloc(n, 64);
#define ADD(nm, p, d0, d1)                                              \
    do {                                                                \
        snprintf(names[k], 64, "%s", nm);                               \
        t[k] = (QkStTensor){names[k], (d1) ? 2 : 1, {(d0), (d1)}, (p)}; \
        k++;                                                            \
    } while (0)
    const int C = c->d_model, F = c->d_mlp;
    ADD("wte.weight", m->wte, c->vocab_size, C);
    ADD("wpe.weight", m->wpe, c->n_ctx, C);
    ADD("ln_f.weight", m->lnf_w, C, 0);
    ADD("ln_f.bias", m->lnf_b, C, 0);
    for (int l = 0; l < c->n_layer; l++) {
        const GPT2Layer *y = &m->layers[l];
        const struct { const char *suffix; const float *p; int d0, d1; } parts[PER_LAYER] = {
            {"ln_1.weight", y->ln1_w, C, 0},           {"ln_1.bias", y->ln1_b, C, 0},
            {"attn.c_attn.weight", y->attn_w, C, 3 * C}, {"attn.c_attn.bias", y->attn_b, 3 * C, 0},
            {"attn.c_proj.weight", y->proj_w, C, C},   {"attn.c_proj.bias", y->proj_b, C, 0},
            {"ln_2.weight", y->ln2_w, C, 0},           {"ln_2.bias", y->ln2_b, C, 0},
            {"mlp.c_fc.weight", y->fc_w, C, F},        {"mlp.c_fc.bias", y->fc_b, F, 0},
            {"mlp.c_proj.weight", y->fcproj_w, F, C},  {"mlp.c_proj.bias", y->fcproj_b, C, 0}};
        for (int i = 0; i < PER_LAYER; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "h.%d.%s", l, parts[i].suffix);
            ADD(nm, parts[i].p, parts[i].d0, parts[i].d1);
        }
    }
#undef ADD
    static const char *const meta[] = {"format", "pt", NULL};
    char *path = qk_path_join(model_dir, "model.safetensors");
    if (!rc) rc = qk_st_write_f32(path, t, k, meta);
    free(path);
    free(names);
    free(t);
    return rc;
}

int qk_write_topk_sae(const char *sae_dir, const QkTopkSaeSpec *s) {
    if (qk_make_dirs(sae_dir)) return -1;
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddNumberToObject(cfg, "d_in", s->d_in);
    cJSON_AddNumberToObject(cfg, "d_sae", s->d_sae);
    cJSON_AddStringToObject(cfg, "dtype", "float32");
    cJSON_AddStringToObject(cfg, "device", "cpu");
    cJSON_AddBoolToObject(cfg, "apply_b_dec_to_input", 1);
    cJSON_AddStringToObject(cfg, "normalize_activations", "none");
    cJSON_AddStringToObject(cfg, "reshape_activations", "none");
    cJSON *meta = cJSON_AddObjectToObject(cfg, "metadata");
    cJSON_AddStringToObject(meta, "sae_lens_version", "6.54.12");
    cJSON_AddStringToObject(meta, "sae_lens_training_version", "6.54.12");
    cJSON_AddStringToObject(meta, "hook_name", s->hook);
    cJSON_AddStringToObject(meta, "model_name", s->model_name);
    cJSON_AddNumberToObject(meta, "context_size", s->context_size);
    cJSON_AddBoolToObject(meta, "prepend_bos", 0);
    cJSON_AddNumberToObject(cfg, "k", s->k);
    cJSON_AddBoolToObject(cfg, "rescale_acts_by_decoder_norm", 0);
    cJSON_AddStringToObject(cfg, "architecture", "topk");
    int rc = qk_write_json(sae_dir, "cfg.json", cfg);
    QkStTensor t[4] = {{"W_dec", 2, {s->d_sae, s->d_in}, s->W_dec},
                       {"W_enc", 2, {s->d_in, s->d_sae}, s->W_enc},
                       {"b_dec", 1, {s->d_in}, s->b_dec},
                       {"b_enc", 1, {s->d_sae}, s->b_enc}};
    char *path = qk_path_join(sae_dir, "sae_weights.safetensors");
    if (!rc) rc = qk_st_write_f32(path, t, 4, NULL);
    free(path);
    return rc;
}
