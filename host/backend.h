// backend.h: the compute backend interface.  As in ggml, a backend is a struct of function
// pointers; the pipeline, the CLI and the tests call through it and never know whether the CPU
// or CUDA runs.  The CPU backend (backend_cpu.c) is the reference and the fallback.
#pragma once
#include "analysis/analysis_batch.h"
#include "analysis/static_maps.h"
#include "model/activations.h"
#include "model/gpt2.h"

typedef struct QkComm QkComm;  // comm.h
typedef struct QkBackend QkBackend;
struct QkBackend {
    const char *name;  // "cpu" or "cuda"
    void *ctx;         // backend-private state
    QkHostMem host_mem;  // host buffers the backend copies to and from (page-locked for CUDA)
    // Runs GPT-2 on tokens (a->B, a->T) and fills the host-side activation cache *a.
    int (*forward)(QkBackend *be, const GPT2Model *m, const int *tokens, GPT2Acts *a);
    // The analysis of batches of windows under one plan (analysis_batch.h): open once per run,
    // analyse each batch (records of the recorded heads handed to emit, aggregates accumulated
    // in agg (L*H), seconds per stage added), close before the backend.  The CPU backend runs the
    // host implementation; the CUDA backend keeps the activations on the device and analyses them
    // there (kernels/analysis/analysis_cuda.h).
    QkAnalysis *(*analysis_open)(QkBackend *be, const AnalysisPlan *p);
    int (*analyse)(QkAnalysis *a, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                   QkRecordsFn emit, void *emit_ctx, double *seconds);
    void (*analysis_close)(QkAnalysis *a);
    // Optional (NULL: analyse delivers every batch whole in its own call).  Hands over what the
    // analysis holds back: the dense aggregates added to agg (L*H; sums, counts, histograms,
    // marginals; the CUDA backend keeps them on the device across batches, so that a batch
    // downloads only records and heavy-pair candidates, not 8 x d_sae int64 per head), and, where
    // a batch's records, sketch and examples arrive one call late (the CUDA backend's pipeline:
    // batch i's during the call for batch i + 1, to the emit and agg of batch i's own call), the
    // last batch's.  seconds[QK_N_ANALYSIS_STAGES] (or NULL) takes the stage times of what it
    // finished.  The pipeline calls qk_analysis_flush before anything reads the aggregates or
    // closes the record datasets: a shard's close, a rank's totals, the summary.
    int (*analysis_flush)(QkAnalysis *a, HeadAggregates *agg, double *seconds);
    // Optional (NULL: nothing to do, forward reads the host model).  A multi-rank run: places m's
    // weights on this backend's device, the root uploading them from the host and the other ranks
    // receiving them over comm (the CUDA backend: an NCCL broadcast between GPUs).  A collective:
    // every rank of comm calls it.
    int (*share_weights)(QkBackend *be, const GPT2Model *m, QkComm *comm, int root);
    // Optional (NULL: the host computes them with qk_topk, fp32).  The weights-only maps of one
    // head (static_maps.h): fills s->q2k_* and s->k2q_* (allocated by the caller, m x k) from
    // the head's Qd / Kd at precision prec, never materialising the m x m scores.  Returns 0, -1
    // on error, or 1 when it declines (k beyond what the device selection holds): the host does it.
    int (*static_maps)(QkBackend *be, const HeadTables *t, int k, QkPrecision prec, StaticMaps *s);
    // Optional (NULL: fp32 only, as the CPU backend).  The arithmetic of the forward pass:
    // "fp32" (no TF32: the parity mode, the default), "tf32" or "bf16" (weights and GEMM inputs
    // bf16, fp32 accumulation); LayerNorm, softmax and the residual stream stay fp32 or better.
    // Call before forward; qk_backend_set_precision checks the name and the backend.
    int (*set_precision)(QkBackend *be, const char *precision);
    void (*destroy)(QkBackend *be);
};

typedef enum { QK_BACKEND_AUTO, QK_BACKEND_CPU, QK_BACKEND_CUDA } QkBackendKind;

// Parses "auto", "cpu" or "cuda".
int qk_backend_parse(const char *s, QkBackendKind *kind);

// Opens a backend.  AUTO takes CUDA when a usable device exists, otherwise the CPU with a
// one-line notice on stderr (unless quiet).  CUDA without a device, or in a build without CUDA,
// is an error naming why.  device: the CUDA ordinal (ignored by the CPU backend).
int qk_backend_open(QkBackend **out, QkBackendKind kind, int device, int quiet);
void qk_backend_close(QkBackend *be);
// Sets be's precision ("fp32", "tf32", "bf16"); a backend without set_precision takes only fp32
// (an error naming the backend otherwise).
int qk_backend_set_precision(QkBackend *be, const char *precision);

// The analysis's held-back aggregates into agg (L*H): be->analysis_flush, or nothing to do.
int qk_analysis_flush(QkBackend *be, QkAnalysis *a, HeadAggregates *agg, double *seconds);

// The CPU backend.  With QK_AGG_DEFER=1 in the environment its analysis holds the dense aggregates
// back until qk_analysis_flush, as the CUDA backend does: the CPU tests check with it that every
// place the pipeline reads aggregates flushes first.
QkBackend *qk_backend_cpu_new(void);

// Implemented in kernels/backend_cuda.cu when built with CUDA; stubs otherwise.
// qk_cuda_probe: number of usable devices (0 when none), and a reason in `why` when 0.
int qk_cuda_probe(char *why, int why_len);
int qk_backend_cuda_new(QkBackend **out, int device);
