// planted.h: a synthetic GPT-2 and SAEs with planted query-feature -> key-feature circuits, written
// in the real file formats (Hugging Face model folder, SAELens SAE folders, .npy corpus), for the
// offline demo and the end-to-end check that `run` and `static` find what was planted.  The
// design (dimensions, how the circuits are built, how strong they are) is described at the top of
// planted.c.
#pragma once
#include <stdint.h>

#define QK_PLANTED_MAX_HEADS 64

typedef struct {
    int layer, head;
    int query_feature, key_feature;  // SAE feature indices (the SAE of that layer's resid_pre)
} QkPlantedCircuit;

typedef struct {
    int layer, head;
} QkPlantedHead;

typedef struct {
    uint64_t seed;  // RNG seed (default 1); the same seed gives byte-identical files
    int n_tokens;   // corpus size in tokens, rounded up to whole windows of n_ctx (default 4096)
} QkPlantedOpts;

// What was written (and what planted.json lists).
typedef struct {
    int n_layer, n_head, d_model, d_head, n_ctx, vocab_size;
    int d_sae, k;           // every layer's SAE: topk with this k, normalize_activations "none"
    int n_windows;          // corpus.npy is int32 [n_windows, n_ctx]
    uint64_t seed;
    double score;           // the typical score a planted (query f, key g) pair adds
    int n_circuits;
    QkPlantedCircuit circuits[QK_PLANTED_MAX_HEADS];
    int n_null;             // heads with small random Q/K and no circuit
    QkPlantedHead null_heads[QK_PLANTED_MAX_HEADS];
} QkPlanted;

void qk_planted_default_opts(QkPlantedOpts *o);

// Writes into dir (created if missing; existing files of the same names are replaced):
//   model/config.json, model/model.safetensors        the GPT-2 (HF names, no prefix)
//   sae/layer_L/cfg.json, sae_weights.safetensors     a SAELens topk SAE on blocks.L.hook_resid_pre
//   corpus.npy                                        token ids, int32 [n_windows, n_ctx]
//   planted.json                                      the circuits and the null heads
// info (may be NULL) receives the same facts as planted.json.  Returns 0, or -1 with qk_errmsg().
int qk_planted_write(const char *dir, const QkPlantedOpts *opts, QkPlanted *info);

// Reads dir/planted.json back (what qk_planted_write wrote).  Returns 0, or -1 with qk_errmsg().
int qk_planted_read(const char *dir, QkPlanted *info);
