// head_tables.c: see head_tables.h.
#include "head_tables.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

// out (rows, dh) = A (rows, C) @ W (C, dh)
static float *project(const float *A, int rows, int C, const float *W, int dh) {
    float *out = qk_malloc(sizeof(float) * (size_t)rows * dh);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, dh, C, 1.0f, A, C, W, dh, 0.0f, out, dh);
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
    t->G = qk_malloc(sizeof(float) * dh * dh);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dh, dh, C, 1.0f, t->qk.Wk, dh, t->qk.Wk, dh, 0.0f, t->G, dh);
    t->key_prior = qk_malloc(sizeof(float) * M);
    const float inv = 1.0f / sqrtf((float)dh);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M, dh, inv, t->Kd, dh, t->qk.bq, 1, 0.0f, t->key_prior, 1);
}

void head_tables_free(HeadTables *t) {
    head_qk_free(&t->qk);
    free(t->Qd), free(t->Kd), free(t->qb), free(t->kb), free(t->E), free(t->G), free(t->key_prior);
    memset(t, 0, sizeof *t);
}
