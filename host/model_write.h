// model_write.h: writes models and SAEs in the real file formats (a Hugging Face GPT-2 folder, a
// SAELens TopKSAE folder) for the synthetic generators (`qkscope planted`, `qkscope random`).
#pragma once
#include <cJSON.h>

#include "gpt2.h"

// mkdir -p.
int qk_make_dirs(const char *path);
// dir/name from root (cJSON_Print); frees root.
int qk_write_json(const char *dir, const char *name, cJSON *root);

// model_dir/config.json (Hugging Face GPT2LMHeadModel, tied embeddings, with `note` as
// "qkscope_note") and model_dir/model.safetensors (float32, HF names without prefix).
int qk_write_gpt2(const char *model_dir, const GPT2Model *m, const char *note);

// A SAELens 6 TopKSAE: sae_dir/cfg.json and sae_dir/sae_weights.safetensors (float32),
// normalize_activations "none", apply_b_dec_to_input.
typedef struct {
    int d_in, d_sae, k, context_size;
    const char *hook;        // e.g. "blocks.3.hook_resid_pre"
    const char *model_name;  // metadata.model_name
    const float *W_enc;      // (d_in, d_sae)
    const float *W_dec;      // (d_sae, d_in)
    const float *b_enc;      // (d_sae)
    const float *b_dec;      // (d_in)
} QkTopkSaeSpec;
int qk_write_topk_sae(const char *sae_dir, const QkTopkSaeSpec *s);
