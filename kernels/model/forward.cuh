// forward.cuh: the CUDA forward pass's kernel families, one file each, mirroring
// host/model/forward_cpu.c (llm.c's llmc/ layout):
//   forward_encoder.cu    x (N, C) = wte[tokens] + wpe[pos]
//   forward_layernorm.cu  LayerNorm (N, C) -> (N, C) fp32 or bf16 + scale (N); stats in double
//   forward_matmul.cu     cuBLASLt GEMMs with bias / GELU epilogues and a fused residual (beta = 1),
//                         algorithms chosen once per shape and pinned
//   forward_attention.cu  causal attention: qkv (B, T, 3C) -> hooks q, k (B, T, C), scores and
//                         pattern (B, H, T, T), z (B, T, C) fp32 or bf16
//   backend_cuda.cu       the backend: weights, activations (sizes: forward_mem.h), streams, the layer loop
// Every launcher returns 0 or -1 after qk_err naming the kernel or call and its shapes.  All
// launches go to the stream given; none synchronises.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_try.h"

// Arithmetic of the GEMMs (issue 14): fp32 (no TF32; the parity mode), tf32 (tensor cores on
// fp32 data), bf16 (weights and GEMM inputs bf16, fp32 accumulation and outputs).  LayerNorm,
// softmax, GELU inputs and the residual stream are fp32 in every mode.  QkPrecision: topk.h.
extern "C" {
#include "analysis/topk.h"
}

// -- finite_check.cu
// flags (N) = which of row n's resid (ld_r) / sigma / q / k (ld_qk), C columns, hold a non-finite
// value: bits 1, 2, 4, 8 (0: finite).
int fwd_nonfinite_rows(cudaStream_t s, const float *resid, long long ld_r, const float *sigma, const float *q,
                       const float *k, long long ld_qk, int C, int N, unsigned char *flags);

// -- forward_encoder.cu
int fwd_embed(cudaStream_t s, float *x, const int *tokens, const float *wte, const float *wpe, int N, int T, int C);
// out (n) bf16 = in (n) fp32, rounded to nearest even (weights for the bf16 mode)
int fwd_to_bf16(cudaStream_t s, __nv_bfloat16 *out, const float *in, size_t n);
// x (n) = gelu_new(x), fp32 in place (the fp32 mode: forward_math.h's qk_gelu_new with CUDA's tanhf,
// within 2 ulp of the C library's: close to the CPU, not its bits)
int fwd_gelu(cudaStream_t s, float *x, size_t n);

// -- forward_layernorm.cu: out (N, C) = (x - mean) / scale * w + b, scale (N) = sqrt(var + eps);
// out is float or __nv_bfloat16 (bf16 != 0).
int fwd_layernorm(cudaStream_t s, void *out, int bf16, float *scale, const float *x, const float *w, const float *b,
                  int N, int C, float eps);

// -- forward_attention.cu
typedef struct {
    int B, T, C, H;  // dh = C / H
    int bf16_z;      // z written as bf16 (the bf16 mode) instead of fp32
    cublasComputeType_t compute;  // of the two batched GEMMs
} AttnShape;
// qkv (B, T, 3C) -> hq, hk (B, T, C) hooks; scratch qkvp (3, B, H, T, dh), zp (B, H, T, dh);
// scores, pattern (B, H, T, T) (scores -inf and pattern 0 above the diagonal); z (B, T, C).
int fwd_attention(cudaStream_t s, cublasHandle_t blas, const AttnShape *a, const float *qkv, float *hq, float *hk,
                  float *qkvp, float *zp, float *scores, float *pattern, void *z);

// -- forward_matmul.cu: row-major D (N, Cout) = X (N, Cin) @ W (Cin, Cout) [+ bias (Cout)]
// [+ R (N, Cout), the residual: beta = 1] [then GELU].  X, W: fp32, or bf16 in the bf16 mode
// (ab_bf16); D fp32 or bf16 (d_bf16; bias of D's type); R fp32 like D.  transw: W is given as
// (Cout, Cin) row-major instead (the tied unembedding wte).
enum { QK_EPI_NONE = 0, QK_EPI_BIAS = 1, QK_EPI_GELU_BIAS = 2 };
typedef struct {
    int N, Cin, Cout;
    int transw, ab_bf16, d_bf16, epilogue, residual;
    cublasComputeType_t compute;
} GemmShape;

typedef struct LtPlans LtPlans;
// workspace: device scratch of ws_bytes shared by every GEMM on one stream.
int lt_plans_new(LtPlans **p, void *workspace, size_t ws_bytes);
void lt_plans_free(LtPlans *p);
int fwd_matmul(LtPlans *p, cudaStream_t s, const GemmShape *g, void *D, const void *X, const void *W, const void *bias,
               const float *R, const char *what);
