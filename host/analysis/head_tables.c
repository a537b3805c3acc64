// head_tables.c: see head_tables.h.
#include "analysis/head_tables.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/gemm.h"
#include "base/util.h"

// out (rows, dh) = A (rows, C) @ W (C, dh)
static float *project(const float *A, int rows, int C, const float *W, int dh) {
    float *out = qk_malloc(sizeof(float) * (size_t)rows * dh);
    qk_gemm(QK_GEMM_N, rows, dh, C, 1.0f, A, C, W, dh, 0, out, dh);
    return out;
}

void head_tables_build(HeadTables *t, const GPT2Model *m, int layer, int head, const QkSae *sae, int with_encoder) {
    memset(t, 0, sizeof *t);
    head_qk_fold(&t->qk, m, layer, head);
    const int C = t->qk.d_model, dh = t->qk.d_head, M = sae->d_sae;
    t->m = M;
    t->Qd = project(sae->W_dec, M, C, t->qk.Wq, dh);
    t->Kd = project(sae->W_dec, M, C, t->qk.Wk, dh);
    t->qb = project(sae->b_dec, 1, C, t->qk.Wq, dh);
    t->kb = project(sae->b_dec, 1, C, t->qk.Wk, dh);
    if (with_encoder) t->E = project(sae->W_encT, M, C, t->qk.Wk, dh);
    // G (dh, dh) = Wk~^T Wk~: with WkT (dh, C) the transpose, G = WkT @ WkT^T.
    float *WkT = qk_malloc(sizeof(float) * (size_t)dh * C);
    for (int i = 0; i < C; i++)
        for (int d = 0; d < dh; d++) WkT[(size_t)d * C + i] = t->qk.Wk[(size_t)i * dh + d];
    t->G = qk_malloc(sizeof(float) * dh * dh);
    qk_gemm(QK_GEMM_T, dh, dh, C, 1.0f, WkT, C, WkT, C, 0, t->G, dh);
    free(WkT);
    // key_prior (M) = Kd (M, dh) @ bq' (dh) / sqrt(dh)
    t->key_prior = qk_malloc(sizeof(float) * M);
    const float inv = 1.0f / sqrtf((float)dh);
    qk_gemm(QK_GEMM_N, M, 1, dh, inv, t->Kd, dh, t->qk.bq, 1, 0, t->key_prior, 1);
}

void head_tables_free(HeadTables *t) {
    head_qk_free(&t->qk);
    free(t->Qd), free(t->Kd), free(t->qb), free(t->kb), free(t->E), free(t->G), free(t->key_prior);
    memset(t, 0, sizeof *t);
}
