// model_write.h: writes models and SAEs in the real file formats (a Hugging Face GPT-2 folder, a
// SAELens TopKSAE folder) for the synthetic generators (`qkscope planted`, `qkscope random`).
#pragma once
#include <cJSON.h>

#include "model/gpt2.h"

// mkdir -p.
int qk_make_dirs(const char *path);
// dir/name from root (cJSON_Print); frees root.
int qk_write_json(const char *dir, const char *name, cJSON *root);

// model_dir/config.json (Hugging Face GPT2LMHeadModel, tied embeddings, with `note` as
// "qkscope_note") and model_dir/model.safetensors (float32, HF names without prefix).
int qk_write_gpt2(const char *model_dir, const GPT2Model *m, const char *note);

// A SAELens 6 TopKSAE on blocks.L.hook_resid_pre, as the synthetic generators make them: tied
// (W_enc = W_dec^T), zero biases, normalize_activations "none", apply_b_dec_to_input; written to
// dir/sae/layer_L/cfg.json and sae_weights.safetensors (float32).  W_dec: (d_sae, d_in).
int qk_write_tied_topk_sae(const char *dir, int layer, int d_in, int d_sae, int k, int context_size, const char *model_name,
                           const float *W_dec);
