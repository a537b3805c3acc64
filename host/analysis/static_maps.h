// static_maps.h: the weights-only feature-to-feature maps of a head (docs/ANALYSIS.md §6).
// S[f, g] = Qd[f] . Kd[g] / sqrt(dh) is streamed through the bilinear top-k primitive in column
// blocks; the m x m matrix is never materialised.
#pragma once
#include <stdint.h>

#include "analysis/head_tables.h"
#include "analysis/topk.h"

typedef struct QkBackend QkBackend;

typedef struct {
    int m, k;
    int32_t *q2k_idx;     // (m, k): for every query feature f, the top-k key features g
    float *q2k_val;       // (m, k)
    int32_t *k2q_idx;     // (m, k): for every key feature g, the top-k query features f
    float *k2q_val;       // (m, k)
    float *key_prior;     // (m): bq' . Kd[g] / sqrt(dh)
    int32_t *prior_idx;   // (k): top-k of key_prior
    float *prior_val;     // (k)
} StaticMaps;

// The maps of one head.  be (may be NULL: the host) computes q2k and k2q through its static_maps
// hook when it has one, at precision prec; otherwise the host does (fp32 only).  The key prior's
// top-k is always the host's.
int static_maps_compute(StaticMaps *s, const HeadTables *t, int k, QkBackend *be, QkPrecision prec);
void static_maps_free(StaticMaps *s);
