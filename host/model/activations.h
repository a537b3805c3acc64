// activations.h: the forward pass's activation cache (what TransformerLens's run_with_cache keeps
// and the analysis reads), allocated once per batch shape and reused for every batch.
#pragma once
#include "model/gpt2.h"

// Where host buffers come from: a backend's allocator (QkBackend.host_mem: page-locked memory
// for CUDA, so device-to-host copies run at full bus speed and can overlap with kernels), or
// aligned malloc when alloc is NULL.
typedef struct {
    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *p);
    void *ctx;
} QkHostMem;

void *qk_host_alloc(const QkHostMem *mem, size_t bytes);
void qk_host_free(const QkHostMem *mem, void *p);

typedef struct {
    int B, T;          // batch shape the buffers were allocated for
    QkHostMem mem;     // the allocator of every buffer below
    int keep_attn;     // keep scores and pattern of every layer (else only the current layer's)
    int want_logits;
    int n_run;         // layers to compute, 0 = all (the analysis stops after its last layer)
    // Kept (TransformerLens hook -> buffer):
    float *resid;      // (L+1, B, T, C): [l] = blocks.l.hook_resid_pre; [l+1] = blocks.l.hook_resid_post
    float *ln1_scale;  // (L, B, T): blocks.l.ln1.hook_scale
    float *q, *k;      // (L, B, T, H, dh): blocks.l.attn.hook_q / hook_k
    float *scores;     // (L or 1, B, H, T, T): blocks.l.attn.hook_attn_scores, -inf above the diagonal
    float *pattern;    // (L or 1, B, H, T, T): blocks.l.attn.hook_pattern, 0 above the diagonal
    float *logits;     // (B, T, V) when want_logits
    // Scratch for one layer:
    float *ln;         // (B, T, C) LayerNorm output
    float *qkv;        // (B, T, 3C)
    float *z;          // (B, T, C) heads' weighted values, concatenated
    float *fc;         // (B, T, d_mlp)
    float *lnf_scale;  // (B, T) final LayerNorm scale
} GPT2Acts;

void gpt2_acts_alloc(GPT2Acts *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits);
// The same with the buffers from `mem` (NULL: aligned malloc), e.g. a backend's pinned memory.
void gpt2_acts_alloc_in(GPT2Acts *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits,
                        const QkHostMem *mem);
void gpt2_acts_free(GPT2Acts *a);

// Index helpers: the start of layer l's block in each kept buffer.
static inline float *acts_resid(const GPT2Acts *a, const GPT2Config *c, int l) {
    return a->resid + (size_t)l * a->B * a->T * c->d_model;
}
static inline float *acts_scores(const GPT2Acts *a, const GPT2Config *c, int l) {
    return a->scores + (size_t)(a->keep_attn ? l : 0) * a->B * c->n_head * a->T * a->T;
}
static inline float *acts_pattern(const GPT2Acts *a, const GPT2Config *c, int l) {
    return a->pattern + (size_t)(a->keep_attn ? l : 0) * a->B * c->n_head * a->T * a->T;
}
