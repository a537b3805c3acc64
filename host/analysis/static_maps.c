// static_maps.c: see static_maps.h.
#include "analysis/static_maps.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "base/util.h"

int static_maps_compute(StaticMaps *s, const HeadTables *t, int k, QkBackend *be, QkPrecision prec) {
    memset(s, 0, sizeof *s);
    const int m = t->m, dh = t->qk.d_head;
    if (k < 1 || k > m) return qk_err("static maps: k = %d outside 1..d_sae (%d)", k, m);
    s->m = m, s->k = k;
    s->q2k_idx = qk_malloc(sizeof(int32_t) * (size_t)m * k), s->q2k_val = qk_malloc(sizeof(float) * (size_t)m * k);
    s->k2q_idx = qk_malloc(sizeof(int32_t) * (size_t)m * k), s->k2q_val = qk_malloc(sizeof(float) * (size_t)m * k);
    s->key_prior = qk_malloc(sizeof(float) * m);
    s->prior_idx = qk_malloc(sizeof(int32_t) * k), s->prior_val = qk_malloc(sizeof(float) * k);
    memcpy(s->key_prior, t->key_prior, sizeof(float) * m);
    float *scale = qk_malloc(sizeof(float) * m);
    for (int i = 0; i < m; i++) scale[i] = 1.0f / sqrtf((float)dh);
    QkTopkOpts o = {.k = k};
    int rc = be && be->static_maps ? be->static_maps(be, t, k, prec, s) : 1;  // 1: the host computes them
    if (rc == 1 && prec != QK_PREC_FP32)
        rc = qk_err("static maps: precision %s with k = %d needs device static maps (the %s backend computes fp32 only%s)",
                    qk_precision_name(prec), k, be ? be->name : "host", be && be->static_maps ? " beyond its k" : "");
    else if (rc == 1)  // q2k: rows Qd against the table Kd; k2q: rows Kd against the table Qd (the transpose of S).
        rc = qk_topk(m, m, dh, t->Qd, dh, scale, t->Kd, NULL, &o, s->q2k_idx, s->q2k_val, NULL) ||
             qk_topk(m, m, dh, t->Kd, dh, scale, t->Qd, NULL, &o, s->k2q_idx, s->k2q_val, NULL);
    // The key prior's top-k: one row of ones against a one-column table of the prior values.
    float one = 1.0f;
    if (!rc) rc = qk_topk(1, m, 1, &one, 1, NULL, s->key_prior, NULL, &o, s->prior_idx, s->prior_val, NULL);
    free(scale);
    if (rc) {
        static_maps_free(s);
        return -1;
    }
    return 0;
}

void static_maps_free(StaticMaps *s) {
    free(s->q2k_idx), free(s->q2k_val), free(s->k2q_idx), free(s->k2q_val);
    free(s->key_prior), free(s->prior_idx), free(s->prior_val);
    memset(s, 0, sizeof *s);
}
