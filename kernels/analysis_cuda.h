// analysis_cuda.h: the analysis of docs/ANALYSIS.md on a CUDA device (kernels/analysis_cuda.cu),
// plain C: everything qk_analysis_host_run computes after the forward pass, from activations
// already on the device.  host/analysis_batch.c (qk_analysis_host_run) stays the reference.
//
// Per batch of B windows of T tokens (N = B*T), for every layer with an SAE: the SAE code of its
// resid_pre (normalisation in double as host/sae.c, the bilinear top-k of kernels/bilinear_topk.h
// for topk / ReLU / JumpReLU, decode and error in double), then for every analysed head: look-for
// top-k (and bottom-k for recorded heads) with the same top-k, the encoder projection (recorded
// heads, plan->encoder), the four score rows (real, reconstructed both / query / key sides), the
// attended keys, decomposition, metrics, and the aggregates.  Recorded heads' records are
// downloaded into host HeadRecords and handed to emit (layer-then-head order, as on the host).
//
// Aggregates: metric sums and marginals as exact limbs (exact_sum.h) summed with 64-bit integer
// atomics (order-free, so bit-identical run to run), counts and histograms likewise; they stay on
// the device and are added to the host HeadAggregates by qk_ana_cuda_flush (run flushes after
// every batch unless opened with defer_flush).  The heavy-pair sketch: each batch's pair
// candidates are downloaded and added to the host sketch in token order, exactly as the host.
//
// Numerics: fp32 everywhere (the .cu is compiled with -fmad=false; explicit FMA chains where
// host/gemm.h has them); the SAE encodes and look-for GEMMs run in the QkPrecision given to open.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "analysis_batch.h"
#include "topk.h"

// One layer's activations on the device, for the batch's N tokens in (window, position) order.
typedef struct {
    const float *resid;   // (N, ld_resid): blocks.l.hook_resid_pre
    long long ld_resid;   // row stride in elements (>= d_model)
    const float *sigma;   // (N): blocks.l.ln1.hook_scale
    const float *q, *k;   // (N, ld_qk): hook_q / hook_k, head h in columns [h*dh, (h+1)*dh)
    long long ld_qk;
} QkAnaLayerActs;

typedef struct QkAnaCuda QkAnaCuda;

// Uploads the SAEs of the layers with analysed heads and the analysed heads' tables; allocates
// the batch buffers for p->max_batch windows.  NULL with qk_errmsg() set.  d_model and d_head
// must be multiples of 16 (the top-k's GEMM alignment), d_head <= 64.
QkAnaCuda *qk_ana_cuda_open(const AnalysisPlan *p, int device, QkPrecision prec, int defer_flush);
// acts (L): entries of layers without an SAE are ignored.  valid_len (B, host) or NULL as in
// qk_analysis_host_run; agg (L*H, host).  seconds[QK_N_ANALYSIS_STAGES] accumulates the SAE and
// heads stages (the forward is the caller's).
int qk_ana_cuda_run(QkAnaCuda *a, const QkAnaLayerActs *acts, const int32_t *valid_len, int B, HeadAggregates *agg,
                    QkRecordsFn emit, void *emit_ctx, double *seconds);
// Adds the device accumulators to agg (L*H) and zeroes them.
int qk_ana_cuda_flush(QkAnaCuda *a, HeadAggregates *agg);
void qk_ana_cuda_close(QkAnaCuda *a);

// Device memory for callers without CUDA headers (the tests): cudaMalloc / cudaMemcpy host to
// device / cudaFree on the current device; 0 or -1 with qk_errmsg() set.
int qk_ana_cuda_malloc(void **p, size_t bytes);
int qk_ana_cuda_upload(void *dst, const void *src, size_t bytes);
void qk_ana_cuda_free(void *p);
