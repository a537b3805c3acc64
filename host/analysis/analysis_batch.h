// analysis_batch.h: the analysis of a batch of windows as a backend runs it: the forward pass,
// each analysed layer's SAE code, and every analysed head (docs/ANALYSIS.md), under one plan fixed
// for the run.  The pipeline calls it through the backend (QkBackend.analysis_open / analyse /
// analysis_close) and never knows where it runs.  qk_analysis_host_* is the implementation that
// runs the analysis on the host after the backend's forward pass: the CPU backend's, and the
// reference the CUDA backend's (kernels/analysis/analysis_cuda.h) is tested against
// (docs/ANALYSIS.md is the spec either way).
#pragma once
#include <stdint.h>

#include "analysis/analysis.h"
#include "analysis/head_tables.h"
#include "model/gpt2.h"
#include "model/sae.h"

// What is fixed for a run: model, SAEs, the heads and what is computed for them.  Everything is
// borrowed and must outlive the QkAnalysis opened on it.
typedef struct {
    const GPT2Model *model;
    const QkSae *const *sae;     // (L) the layer's SAE; NULL where no head is analysed
    const uint8_t *analysed;     // (L*H) heads with aggregates
    const uint8_t *recorded;     // (L*H) heads with per-token records (a subset of analysed)
    const HeadTables *tables;    // (L*H) built for the analysed heads (head_tables_build)
    AnalysisOpts o;
    int T;                       // tokens per window
    int max_batch;               // windows per batch, at most
    int sae_max_active;          // slots of a ReLU / JumpReLU SAE's code
    int encoder;                 // encoder projections for the recorded heads
    int record_patterns;         // whole attention rows for the recorded heads
} AnalysisPlan;

enum { QK_STAGE_FORWARD, QK_STAGE_SAE, QK_STAGE_HEADS, QK_N_ANALYSIS_STAGES };

// Receives the records of recorded head (layer, head) for the batch's B windows: host memory,
// valid until it returns.  Called in layer-then-head order; non-zero stops the batch.
typedef int (*QkRecordsFn)(void *ctx, int layer, int head, const HeadRecords *rec, int B);

typedef struct QkAnalysis QkAnalysis;
struct QkBackend;

// The host implementation (see above).  analyse: B <= max_batch windows of tokens (B, T), the
// first valid_len[b] positions of window b counted in the aggregates (NULL: all); agg (L*H)
// accumulates the analysed heads; seconds[QK_N_ANALYSIS_STAGES] accumulates time per stage.
QkAnalysis *qk_analysis_host_open(struct QkBackend *be, const AnalysisPlan *p);
// What every backend's analyse refuses before any work: more than p->max_batch windows, or a
// token outside the model's vocabulary (gpt2_check_tokens).  0, or -1 with qk_errmsg() set.
int qk_analysis_check_batch(const AnalysisPlan *p, const int32_t *tokens, int B);
int qk_analysis_host_run(QkAnalysis *a, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                         QkRecordsFn emit, void *emit_ctx, double *seconds);
void qk_analysis_host_close(QkAnalysis *a);
