// head_qk.h: an attention head's query and key maps with LayerNorm folded in (SPEC §2).
//
// With ln_1 weight g, bias b and the per-token LN scale sigma (hook_scale) frozen:
//     Wq' = diag(g) Wq,   bq' = b Wq + bq,   Wq~ = P Wq'   (P = I - 11^T/d: centre each column)
//     q = x Wq~ / sigma + bq'        exactly, for the raw residual x (hook_resid_pre)
// and the same for K.  The score s_ij = q_i . k_j / sqrt(d_h) is then bilinear in the residuals.
#pragma once
#include "model/gpt2.h"

typedef struct {
    int layer, head;
    int d_model, d_head;  // C, dh
    float *Wq, *Wk;       // (C, dh) each: Wq~ and Wk~ (folded and centred)
    float *bq, *bk;       // (dh) each: bq' and bk'
} HeadQK;

void head_qk_fold(HeadQK *h, const GPT2Model *m, int layer, int head);
void head_qk_free(HeadQK *h);

// q (n, dh) = x (n, C) Wq~ / sigma + bq'  (the head's query from raw residuals and LN scales);
// with Wq~, bq' swapped for Wk~, bk' when key != 0.
void head_qk_project(const HeadQK *h, int key, const float *x, const float *sigma, int n, float *out);
