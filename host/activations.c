// activations.c: see activations.h.
#include "activations.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

static float *buf(size_t n) { return qk_malloc_aligned(n * sizeof(float)); }

void gpt2_acts_alloc(GPT2Acts *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits) {
    memset(a, 0, sizeof *a);
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
}

void gpt2_acts_free(GPT2Acts *a) {
    float *p[] = {a->resid, a->ln1_scale, a->q, a->k, a->scores, a->pattern, a->logits,
                  a->ln, a->qkv, a->z, a->fc, a->lnf_scale};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
    memset(a, 0, sizeof *a);
}
