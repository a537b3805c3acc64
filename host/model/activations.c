// activations.c: see activations.h.
#include "model/activations.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

void *qk_host_alloc(const QkHostMem *mem, size_t bytes) {
    return mem && mem->alloc ? mem->alloc(mem->ctx, bytes) : qk_malloc_aligned(bytes);
}

void qk_host_free(const QkHostMem *mem, void *p) {
    if (!p) return;
    if (mem && mem->free) mem->free(mem->ctx, p);
    else free(p);
}

void gpt2_acts_alloc(GPT2Acts *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits) {
    gpt2_acts_alloc_in(a, c, B, T, keep_attn, want_logits, NULL);
}

void gpt2_acts_alloc_in(GPT2Acts *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits,
                        const QkHostMem *mem) {
    memset(a, 0, sizeof *a);
    if (mem) a->mem = *mem;
#define buf(n) ((float *)qk_host_alloc(&a->mem, (n) * sizeof(float)))
    size_t BT = (size_t)B * T, L = c->n_layer, C = c->d_model, H = c->n_head;
    a->B = B;
    a->T = T;
    a->keep_attn = keep_attn;
    a->want_logits = want_logits;
    a->resid = buf((L + 1) * BT * C);
    a->ln1_scale = buf(L * BT);
    a->q = buf(L * BT * C);
    a->k = buf(L * BT * C);
    a->scores = buf((keep_attn ? L : 1) * B * H * T * T);
    a->pattern = buf((keep_attn ? L : 1) * B * H * T * T);
    a->logits = want_logits ? buf(BT * c->vocab_size) : NULL;
    a->ln = buf(BT * C);
    a->qkv = buf(BT * 3 * C);
    a->z = buf(BT * C);
    a->fc = buf(BT * c->d_mlp);
    a->lnf_scale = buf(BT);
#undef buf
}

void gpt2_acts_free(GPT2Acts *a) {
    float *p[] = {a->resid, a->ln1_scale, a->q, a->k, a->scores, a->pattern, a->logits,
                  a->ln, a->qkv, a->z, a->fc, a->lnf_scale};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) qk_host_free(&a->mem, p[i]);
    memset(a, 0, sizeof *a);
}
