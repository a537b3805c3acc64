// backend_cuda.cu: the CUDA backend's entry points (device probe, context with a cuBLAS handle).
// The GPU forward pass and analysis kernels arrive with the CUDA backend issue; until then this
// backend reports that it cannot run a forward pass, and `--backend auto` uses the CPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "backend.h"
#include "util.h"
}

// Every CUDA / cuBLAS call is checked; the error names the call.
#define CUDA_TRY(call)                                                                        \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) return qk_err("%s: %s", #call, cudaGetErrorString(e_));        \
    } while (0)
#define CUBLAS_TRY(call)                                                                      \
    do {                                                                                      \
        cublasStatus_t s_ = (call);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS) return qk_err("%s: cuBLAS status %d", #call, (int)s_); \
    } while (0)

struct CudaCtx {
    int device;
    cublasHandle_t blas;
};

extern "C" int qk_cuda_probe(char *why, int why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) snprintf(why, why_len, "no CUDA device found");
    return n;
}

static int cuda_forward(QkBackend *be, const GPT2Model *m, const int *tokens, GPT2Acts *a) {
    (void)be; (void)m; (void)tokens; (void)a;
    return qk_err("the CUDA forward pass is not implemented in this version; use --backend cpu");
}

static void cuda_destroy(QkBackend *be) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if (ctx) {
        cublasDestroy(ctx->blas);
        free(ctx);
    }
    free(be);
}

static int cuda_ctx_init(CudaCtx *ctx, int device) {
    ctx->device = device;
    CUDA_TRY(cudaSetDevice(device));
    CUBLAS_TRY(cublasCreate(&ctx->blas));
    return 0;
}

extern "C" int qk_backend_cuda_new(QkBackend **out, int device) {
    *out = NULL;
    CudaCtx *ctx = (CudaCtx *)qk_calloc(1, sizeof(CudaCtx));
    if (cuda_ctx_init(ctx, device)) {
        free(ctx);
        return -1;
    }
    QkBackend *be = (QkBackend *)qk_calloc(1, sizeof(QkBackend));
    be->name = "cuda";
    be->ctx = ctx;
    be->forward = cuda_forward;
    be->destroy = cuda_destroy;
    *out = be;
    return 0;
}
