// gpt2.h: GPT-2 configuration and weights, loaded from a Hugging Face model folder
// (config.json + model.safetensors).  Conv1D weights are [in, out]: y = x @ W + b.
#pragma once
#include <stddef.h>

#include "io/safetensors.h"

typedef struct {
    int n_layer;     // L
    int n_head;      // H
    int d_model;     // C
    int d_head;      // C / H
    int d_mlp;       // 4C unless config says n_inner
    int n_ctx;       // maximum sequence length (n_positions)
    int vocab_size;  // V
    float ln_eps;    // layer_norm_epsilon
} GPT2Config;

typedef struct {
    float *ln1_w, *ln1_b;      // (C), (C)
    float *attn_w, *attn_b;    // (C, 3C), (3C): columns [0,C) Q, [C,2C) K, [2C,3C) V; head h owns h*dh..(h+1)*dh
    float *proj_w, *proj_b;    // (C, C), (C)
    float *ln2_w, *ln2_b;      // (C), (C)
    float *fc_w, *fc_b;        // (C, d_mlp), (d_mlp)
    float *fcproj_w, *fcproj_b;// (d_mlp, C), (C)
} GPT2Layer;

// The tensors of a layer, in Hugging Face's order (the fields of GPT2Layer): the one list that
// loading, writing, freeing and the device copy go through.  Name "h.L." + suffix; shape in
// units of the config (GPT2_DIM_NONE as d1: a 1-D tensor).
enum { GPT2_DIM_NONE, GPT2_DIM_C, GPT2_DIM_3C, GPT2_DIM_F };
#define GPT2_LAYER_TENSORS 12
typedef struct {
    const char *suffix;
    size_t field;  // offsetof(GPT2Layer, ...)
    unsigned char d0, d1;
} GPT2TensorSpec;
extern const GPT2TensorSpec gpt2_layer_tensors[GPT2_LAYER_TENSORS];
// A dimension of the table (GPT2_DIM_*) for config c (GPT2_DIM_NONE: 0).
long long gpt2_dim(const GPT2Config *c, int d);
// Elements of layer tensor q.
static inline size_t gpt2_layer_tensor_numel(const GPT2Config *c, int q) {
    const GPT2TensorSpec *t = &gpt2_layer_tensors[q];
    return (size_t)gpt2_dim(c, t->d0) * (size_t)(t->d1 ? gpt2_dim(c, t->d1) : 1);
}
// The field of layer tensor q in ly.
static inline float **gpt2_layer_tensor(GPT2Layer *ly, int q) { return (float **)((char *)ly + gpt2_layer_tensors[q].field); }

typedef struct {
    GPT2Config cfg;
    float *wte;        // (V, C); the unembedding is tied: logits = ln_f(x) @ wte^T
    float *wpe;        // (n_ctx, C)
    GPT2Layer *layers; // (L)
    float *lnf_w, *lnf_b;  // (C), (C)
    char *dir;
} GPT2Model;

// Caps of config.json's n_layer and n_head (gpt2.c has every size's): a file that names a head
// beyond them (a run's summary/) names no head of any model qkscope loads.
#define GPT2_MAX_LAYER 1024
#define GPT2_MAX_HEAD 4096

// Parses config.json (model_type gpt2, activation gelu_new) into *cfg.  Sizes are capped far
// above any GPT-2 (host/model/gpt2.c), so a bad file fails here, naming the field.
int gpt2_config_load(GPT2Config *cfg, const char *config_json_path);
// The same on the file's text in memory (text[len]); `path` names it in errors.
int gpt2_config_parse(GPT2Config *cfg, const char *text, size_t len, const char *path);

// Loads DIR/config.json and DIR/model.safetensors.  Tensor names with or without the
// `transformer.` prefix; a tied lm_head is checked against wte, an absent one is fine; buffers
// (attn.bias, attn.masked_bias) are ignored.  Every shape is checked against the config.
// Every weight must be finite (an error names the tensor and element).
int gpt2_load(GPT2Model *m, const char *dir);
// The weights of an open safetensors file under a parsed config (gpt2_load's second half; m->dir
// stays NULL).  Every tensor's shape is checked before any is copied.
int gpt2_load_st(GPT2Model *m, const GPT2Config *cfg, const QkSafetensors *st);
void gpt2_free(GPT2Model *m);

// Checks token ids (< vocab) and window length (1..n_ctx); `what` names the source in errors.
int gpt2_check_tokens(const GPT2Config *cfg, const int *tokens, int B, int T, const char *what);
