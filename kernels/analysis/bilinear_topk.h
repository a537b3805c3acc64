// bilinear_topk.h: the bilinear top-k of SPEC §5 on a CUDA device (kernels/analysis/bilinear_topk.cu),
// plain C.  Semantics are those of host/analysis/topk.h (qk_topk), which stays the reference:
//
//     s_ij = a_i * (U_i . V_j) + c_j,   out_i = the k best j of row i (k <= 64)
//
// with the same total order (value, then lower index), NaN never selected, the same activations
// (PLAIN / RELU / GATED with per-column gates), bottom, and top + bottom in one pass
// (opts.bottom_idx / bottom_val).  Batched: `batch` independent problems (e.g. a layer's heads)
// in one call, problem b reading U + b*U_stride etc.; outputs are [batch x n x k] and [batch x n].
//
// Precision: FP32 (the parity mode: fp32 GEMM, no TF32), TF32 (tensor-core GEMM on tf32-rounded
// operands), BF16 (operands rounded to bf16, fp32 accumulation).  Scores, a_i, c_j, the gates and
// the selection are fp32 in every mode.
//
// Memory: U [n x r] rows (stride ldu), V [M x r] contiguous; the scores exist only as
// (row block x column block) tiles sized to stay in L2; n x M is never materialised.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "analysis/topk.h"

typedef struct QkBtk QkBtk;

// Element strides between the problems of a batch; 0 for c or gates: shared by all problems.
typedef struct {
    int batch;  // problems (0 counts as 1)
    long long U, a, V, c, gates;
} QkBtkBatch;

// A context on `device`: stream, cuBLASLt handle, workspace, pinned algorithms, scratch (grown on
// demand).  l2_bytes: the score tile budget (0: half the device's L2).  Returns NULL with
// qk_errmsg() set.  QK_CUDA_SYNC=1 in the environment synchronises after every launch, so an
// error is reported by the kernel that caused it.
QkBtk *qk_btk_create(int device, QkPrecision prec, size_t l2_bytes);
void qk_btk_destroy(QkBtk *b);
// From now on runs are enqueued on `stream` (a cudaStream_t of the context's device, owned by the
// caller) and return without waiting: the caller orders its work after them on that stream and
// waits before it reads results on the host (the device analysis enqueues a whole batch so).
// QK_CUDA_SYNC=1 still waits after every launch.
void qk_btk_use_stream(QkBtk *b, void *stream);
QkPrecision qk_btk_precision(const QkBtk *b);

// Which device path qk_btk_run takes.  GEMM-then-select (cuBLASLt tiles + btk_select), the
// default; or the fused kernel (kernels/analysis/topk_fused.h: scores made and selected on chip,
// BF16 and FP32, k <= 64) wherever it takes the problem, the GEMM path otherwise.  The
// environment's QK_BTK_PATH=gemm|fused sets it at qk_btk_create; this overrides it.
void qk_btk_set_path(QkBtk *b, int fused);
// The fused kernel's bf16 flavour (mma | wgmma-st | wgmma: kernels/analysis/topk_fused.h) and
// its seeding (on by default), read from QK_FUSED_MMA / QK_FUSED_SEED at the first fused run;
// these override them.  set_fused_mma returns 1 when the flavour runs on this device, 0 when the
// device lacks it (mma.sync runs instead) or, for wgmma, the driver gives no tensor-map encoder
// (the fused path declines bf16 problems), -1 with qk_errmsg() on an unknown name.
int qk_btk_set_fused_mma(QkBtk *b, const char *name);
int qk_btk_set_fused_seed(QkBtk *b, int on);
// 1 when the last qk_btk_run used the fused kernel; else 0 and, when why != NULL, *why says why.
int qk_btk_last_path(const QkBtk *b, const char **why);

// Device pointers everywhere (opts->gates, bottom_idx, bottom_val included).  r must be a
// multiple of 16 (cuBLASLt alignment), ldu >= r a multiple of 4.  Returns once the results are
// on the device (after qk_btk_use_stream: once the run is enqueued), or -1 with qk_errmsg() naming
// the call, the kernel or the size.
int qk_btk_run(QkBtk *b, const QkBtkBatch *batch, int n, int M, int r, const float *U, int ldu, const float *a,
               const float *V, const float *c, const QkTopkOpts *opts, int32_t *idx, float *val, int32_t *count);

// The same on host pointers: uploads, runs, downloads (tests, `qkscope static`).  Any r >= 1
// (zero-padded to a multiple of 16 on the host); device outputs are poisoned before the run.
int qk_btk_run_host(QkBtk *b, const QkBtkBatch *batch, int n, int M, int r, const float *U, int ldu,
                    const float *a, const float *V, const float *c, const QkTopkOpts *opts, int32_t *idx,
                    float *val, int32_t *count);

// The tile the run uses for these sizes: rows x cols of scores per problem (what row_block /
// col_block = 0 mean).
void qk_btk_blocks(const QkBtk *b, int batch, int n, int M, int *row_block, int *col_block);

// Benchmark anchor: one cuBLASLt GEMM S = U V^T over the whole n x M (batch 1) in this context's
// precision, written to S [n x M] (fp32, or bf16 when out_bf16; device memory of the caller).
int qk_btk_gemm_full(QkBtk *b, int n, int M, int r, const float *U, const float *V, void *S, int out_bf16);
