// model_write.c: see model_write.h.
#include "model/model_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/util.h"
#include "io/safetensors_write.h"

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
    int n = 4 + GPT2_LAYER_TENSORS * c->n_layer, k = 0;
    QkStTensor *t = qk_calloc(n, sizeof(QkStTensor));
    char (*names)[64] = qk_calloc(n, 64);
#define ADD(nm, p, d0, d1)                                              \
    do {                                                                \
        snprintf(names[k], 64, "%s", nm);                               \
        t[k] = (QkStTensor){names[k], (d1) ? 2 : 1, {(d0), (d1)}, (p)}; \
        k++;                                                            \
    } while (0)
    const int C = c->d_model;
    ADD("wte.weight", m->wte, c->vocab_size, C);
    ADD("wpe.weight", m->wpe, c->n_ctx, C);
    ADD("ln_f.weight", m->lnf_w, C, 0);
    ADD("ln_f.bias", m->lnf_b, C, 0);
    for (int l = 0; l < c->n_layer; l++)
        for (int q = 0; q < GPT2_LAYER_TENSORS; q++) {
            const GPT2TensorSpec *ts = &gpt2_layer_tensors[q];
            char nm[64];
            snprintf(nm, sizeof nm, "h.%d.%s", l, ts->suffix);
            ADD(nm, *gpt2_layer_tensor(&m->layers[l], q), gpt2_dim(c, ts->d0), gpt2_dim(c, ts->d1));
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

int qk_write_tied_topk_sae(const char *dir, int layer, int d_in, int d_sae, int k, int context_size, const char *model_name,
                           const float *W_dec) {
    char sub[64], hook[64];
    snprintf(sub, sizeof sub, "sae/layer_%d", layer);
    snprintf(hook, sizeof hook, "blocks.%d.hook_resid_pre", layer);
    char *sae_dir = qk_path_join(dir, sub);
    int rc = qk_make_dirs(sae_dir);
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddNumberToObject(cfg, "d_in", d_in);
    cJSON_AddNumberToObject(cfg, "d_sae", d_sae);
    cJSON_AddStringToObject(cfg, "dtype", "float32");
    cJSON_AddStringToObject(cfg, "device", "cpu");
    cJSON_AddBoolToObject(cfg, "apply_b_dec_to_input", 1);
    cJSON_AddStringToObject(cfg, "normalize_activations", "none");
    cJSON_AddStringToObject(cfg, "reshape_activations", "none");
    cJSON *meta = cJSON_AddObjectToObject(cfg, "metadata");
    cJSON_AddStringToObject(meta, "sae_lens_version", "6.54.12");
    cJSON_AddStringToObject(meta, "sae_lens_training_version", "6.54.12");
    cJSON_AddStringToObject(meta, "hook_name", hook);
    cJSON_AddStringToObject(meta, "model_name", model_name);
    cJSON_AddNumberToObject(meta, "context_size", context_size);
    cJSON_AddBoolToObject(meta, "prepend_bos", 0);
    cJSON_AddNumberToObject(cfg, "k", k);
    cJSON_AddBoolToObject(cfg, "rescale_acts_by_decoder_norm", 0);
    cJSON_AddStringToObject(cfg, "architecture", "topk");
    if (rc) cJSON_Delete(cfg);
    else rc = qk_write_json(sae_dir, "cfg.json", cfg);  // frees cfg
    float *W_enc = qk_malloc(sizeof(float) * d_sae * d_in);
    float *b_enc = qk_calloc(d_sae, sizeof(float)), *b_dec = qk_calloc(d_in, sizeof(float));
    for (int f = 0; f < d_sae; f++)
        for (int i = 0; i < d_in; i++) W_enc[(size_t)i * d_sae + f] = W_dec[(size_t)f * d_in + i];
    QkStTensor t[4] = {{"W_dec", 2, {d_sae, d_in}, W_dec},
                       {"W_enc", 2, {d_in, d_sae}, W_enc},
                       {"b_dec", 1, {d_in}, b_dec},
                       {"b_enc", 1, {d_sae}, b_enc}};
    char *path = qk_path_join(sae_dir, "sae_weights.safetensors");
    if (!rc) rc = qk_st_write_f32(path, t, 4, NULL);
    free(path), free(sae_dir), free(W_enc), free(b_enc), free(b_dec);
    return rc;
}
