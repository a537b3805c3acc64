// head_tables.h: a head's weight-only tables in SAE feature space (docs/ANALYSIS.md §1, §3, §6),
// computed once per run from the LN-folded maps and the SAE that serves the head's layer.
#pragma once
#include "analysis/head_qk.h"
#include "model/sae.h"

typedef struct {
    HeadQK qk;        // Wq~, Wk~ (C, dh), bq', bk' (dh)
    int m;            // d_sae
    float *Qd, *Kd;   // (m, dh): W_dec Wq~, W_dec Wk~
    float *qb, *kb;   // (dh): b_dec Wq~, b_dec Wk~
    float *E;         // (m, dh): (Wk~^T W_enc)^T, the encoder-projection table (NULL if not asked)
    float *G;         // (dh, dh): Wk~^T Wk~, for |v_i|^2 = q_i G q_i^T / dh
    float *key_prior; // (m): bq' . Kd[g] / sqrt(dh)
} HeadTables;

void head_tables_build(HeadTables *t, const GPT2Model *m, int layer, int head, const QkSae *sae, int with_encoder);
void head_tables_free(HeadTables *t);
