// analysis_cuda.h: the analysis of docs/ANALYSIS.md on a CUDA device (kernels/analysis/analysis_cuda.cu),
// plain C: everything qk_analysis_host_run computes after the forward pass, from activations
// already on the device.  host/analysis/analysis_batch.c (qk_analysis_host_run) stays the reference.
//
// Per batch of B windows of T tokens (N = B*T), for every layer with an SAE: the SAE code of its
// resid_pre (normalisation in double as host/model/sae.c, the bilinear top-k of kernels/analysis/bilinear_topk.h
// for topk / ReLU / JumpReLU, decode and error in double), then for every analysed head: look-for
// top-k (and bottom-k for recorded heads) with the same top-k, the encoder projection (recorded
// heads, plan->encoder), the four score rows (real, reconstructed both / query / key sides), the
// attended keys, decomposition, metrics, and the aggregates.  Recorded heads' records are
// downloaded into host HeadRecords and handed to emit (layer-then-head order, as on the host).
//
// The batch pipeline: a batch is enqueued whole on the analysis's stream (the top-k included:
// qk_btk_use_stream), with no host wait inside it; its downloads land in page-locked memory of
// one of two slots.  With defer_flush the host takes a batch's results (heavy-pair and example
// merges into the sketch and examples, records handed to emit) one batch late: in the next
// qk_ana_cuda_run, after the next batch is enqueued, so the host's merges and the caller's writes
// overlap the device's next batch; qk_ana_cuda_flush takes the last one.  So emit sees batch i's
// records during the call for batch i + 1 (with that batch's B and the emit and emit_ctx given
// with batch i), and agg's sketch and examples hold batch i after that call.  Without
// defer_flush (or with QK_CUDA_PIPELINE=0 in the environment: the pipeline off, to compare) every
// call finishes its own batch.  The activations a batch reads must stay
// unchanged until qk_ana_cuda_acts_event (the forward of the next batch waits for it).
//
// Aggregates: metric sums and marginals as exact limbs (exact_sum.h) summed with 64-bit integer
// atomics (order-free, so bit-identical run to run), counts and histograms likewise; they stay on
// the device and are added to the host HeadAggregates by qk_ana_cuda_flush (run flushes after
// every batch unless opened with defer_flush).  The heavy-pair sketch: each batch's pair
// candidates are reduced by pair on the device and the distinct pairs merged into the host sketch
// heaviest first, as pair_sketch_merge.  The example contexts: the batch's R of pair_examples.h
// (each pair's 4 strongest occurrences, the strongest 1024 of those) computed on the device and
// added to the host's examples: R is composable, so the result is the host analysis's.
//
// Numerics: fp32 everywhere (the .cu is compiled with -fmad=false; explicit FMA chains where
// host/base/gemm.h has them); the SAE encodes and look-for GEMMs run in the QkPrecision given to open;
// the error projections e Wq~, e Wk~ of a layer's heads are one cuBLAS fp32 GEMM (no TF32; another
// summation order than qk_gemm: equal within float rounding).
//
// Wiring into the CUDA backend (kernels/backend_cuda.cu), per QkBackend.analysis_* call:
//   analysis_open(be, p):   dev = qk_ana_cuda_open(p, device, precision, 1, the activations' bytes); the forward's device
//                           activations for p->max_batch windows of p->T tokens, for the layers up
//                           to the last l with p->sae[l] (no attention rows are needed: the
//                           analysis recomputes its score rows from q and k in fp32).
//   analyse(an, tokens, valid_len, B, agg, emit, ctx, seconds):
//                           qk_analysis_check_batch; the forward on the device, its kernels after
//                           qk_ana_cuda_acts_event (the last batch's analysis done reading the
//                           activations they overwrite), seconds[QK_STAGE_FORWARD] += its device
//                           time; the non-finite check of every analysed layer; then
//                           acts[l] = {resid_pre_l, C, ln1_scale_l, q_l, k_l, ld} (q and k straight
//                           out of the fused QKV output work too: q = qkv_l, k = qkv_l + C, ld = 3C)
//                           and qk_ana_cuda_run(dev, acts, valid_len, B, agg, emit, ctx, seconds).
//   analysis_flush(an, agg, seconds): qk_ana_cuda_flush, which the run loop calls before anything
//                           reads the aggregates or closes the record datasets (a shard's close, a
//                           rank's totals, the summary; the CPU backend's QK_AGG_DEFER=1 holds
//                           batches back the same way, to check those places on the CPU).
//   analysis_close(an):     qk_ana_cuda_close(dev), then free the activations.
// With defer_flush = 0 every run finishes its batch and adds its dense aggregates to agg (one
// download of 8 x d_sae int64 per analysed head: ~300 MB per batch for 144 heads at m = 32768).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "analysis/analysis_batch.h"
#include "analysis/topk.h"

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
// the batch buffers for p->max_batch windows.  reserve: device bytes the caller allocates later
// for a batch of p->max_batch windows (the forward pass's activations), counted with the buffers
// so that a batch that does not fit is refused here, naming the batch that fits.  NULL with
// qk_errmsg() set.  d_model and d_head must be multiples of 16 (the top-k's GEMM alignment),
// d_head <= 64.
QkAnaCuda *qk_ana_cuda_open(const AnalysisPlan *p, int device, QkPrecision prec, int defer_flush, size_t reserve);
// acts (L): entries of layers without an SAE are ignored.  valid_len (B, host) or NULL as in
// qk_analysis_host_run; agg (L*H, host).  seconds[QK_N_ANALYSIS_STAGES] accumulates the SAE and
// heads stages of the batches this call finished, as device time between events (the forward is
// the caller's; qk_ana_cuda_flush hands over the times of the batches it finishes).
// An error of the batch before (its kernels, its merges, emit) is returned by this call.
int qk_ana_cuda_run(QkAnaCuda *a, const QkAnaLayerActs *acts, const int32_t *valid_len, int B, HeadAggregates *agg,
                    QkRecordsFn emit, void *emit_ctx, double *seconds);
// Finishes the pending batches (records to their emit, merges into their agg; their stage times
// into seconds, or NULL), then adds the device accumulators to agg (L*H) and zeroes them.
int qk_ana_cuda_flush(QkAnaCuda *a, HeadAggregates *agg, double *seconds);
// After the last batch's last reader of its activations (a cudaEvent_t; NULL before any batch):
// the stream that overwrites them waits for it.  qk_ana_cuda_acts_wait: the host waits for it.
void *qk_ana_cuda_acts_event(QkAnaCuda *a);
int qk_ana_cuda_acts_wait(QkAnaCuda *a);
void qk_ana_cuda_close(QkAnaCuda *a);

// Device memory for callers without CUDA headers (the tests): cudaMalloc / cudaMemcpy host to
// device / cudaFree on the current device; 0 or -1 with qk_errmsg() set.
int qk_ana_cuda_malloc(void **p, size_t bytes);
int qk_ana_cuda_upload(void *dst, const void *src, size_t bytes);
void qk_ana_cuda_free(void *p);

// Tests: the aggregation kernels alone (ana_agg, ana_carry) on given host records of N tokens
// (windows of T; code idx (N, S) and live (N); metrics (N, N_METRICS); qmarg, kmarg (N, S);
// att_idx (N, a); valid_len (B) or NULL), added to agg (agg->m = d_sae): the same integers as
// host/analysis/analysis.c's aggregation of the same records.
int qk_ana_cuda_aggregate_test(int device, int N, int T, int S, int a, const int32_t *valid_len, int B,
                               const float *metrics, const float *qmarg, const float *kmarg, const int32_t *idx,
                               const int32_t *live, const int32_t *att_idx, HeadAggregates *agg);
