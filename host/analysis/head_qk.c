// head_qk.c: see head_qk.h.
#include "analysis/head_qk.h"

#include <stdlib.h>
#include <string.h>

#include "base/gemm.h"
#include "base/util.h"

// Folds one of Q (which = 0) or K (which = 1) of head h: W (C, dh) and b (dh).
static void fold(const GPT2Model *m, int layer, int head, int which, float *W, float *bias) {
    const GPT2Config *c = &m->cfg;
    const GPT2Layer *ly = &m->layers[layer];
    const int C = c->d_model, dh = c->d_head, C3 = 3 * C, col0 = which * C + head * dh;
    for (int j = 0; j < dh; j++) {
        // bq' = b Wq + bq, and Wq' = diag(g) Wq, both in double to keep the fold exact to fp32.
        double acc = ly->attn_b[col0 + j], mean = 0;
        for (int i = 0; i < C; i++) {
            double w = ly->attn_w[(size_t)i * C3 + col0 + j];
            acc += (double)ly->ln1_b[i] * w;
            mean += (double)ly->ln1_w[i] * w;
        }
        mean /= C;
        bias[j] = (float)acc;
        for (int i = 0; i < C; i++)
            W[(size_t)i * dh + j] = (float)((double)ly->ln1_w[i] * ly->attn_w[(size_t)i * C3 + col0 + j] - mean);
    }
}

void head_qk_fold(HeadQK *h, const GPT2Model *m, int layer, int head) {
    const int C = m->cfg.d_model, dh = m->cfg.d_head;
    h->layer = layer;
    h->head = head;
    h->d_model = C;
    h->d_head = dh;
    h->Wq = qk_malloc(sizeof(float) * C * dh);
    h->Wk = qk_malloc(sizeof(float) * C * dh);
    h->bq = qk_malloc(sizeof(float) * dh);
    h->bk = qk_malloc(sizeof(float) * dh);
    fold(m, layer, head, 0, h->Wq, h->bq);
    fold(m, layer, head, 1, h->Wk, h->bk);
}

void head_qk_free(HeadQK *h) {
    free(h->Wq);
    free(h->Wk);
    free(h->bq);
    free(h->bk);
    memset(h, 0, sizeof *h);
}

void head_qk_project(const HeadQK *h, int key, const float *x, const float *sigma, int n, float *out) {
    const int C = h->d_model, dh = h->d_head;
    const float *W = key ? h->Wk : h->Wq, *b = key ? h->bk : h->bq;
    qk_gemm(QK_GEMM_N, n, dh, C, 1.0f, x, C, W, dh, 0, out, dh);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dh; j++) out[(size_t)i * dh + j] = out[(size_t)i * dh + j] / sigma[i] + b[j];
}
