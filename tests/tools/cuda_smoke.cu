// cuda_smoke.cu: the CUDA smoke test of scripts/gpu.sh's preflight.  Exits 0 only when CUDA is
// usable: a device is found, memory is allocated, a kernel runs and writes what it should, and
// cuBLASLt computes a small fp32 GEMM equal to the host's.  Otherwise it names what failed and
// exits 1 (a machine without a GPU says so plainly).
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define FAIL(...)                                                                                \
    do {                                                                                         \
        printf("cuda_smoke: FAIL: " __VA_ARGS__);                                                \
        printf("\n");                                                                            \
        return 1;                                                                                \
    } while (0)
#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) FAIL("%s: %s", #call, cudaGetErrorString(e_));                    \
    } while (0)
#define LT(call)                                                                                 \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) FAIL("%s: cuBLAS status %d", #call, (int)s_);           \
    } while (0)

__global__ void iota2(float *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = 2.0f * (float)i;
}

int main(void) {
    int n = 0, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("cuda_smoke: FAIL: no usable CUDA device here (%s): this machine has no GPU or no driver\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found 0 devices");
        return 1;
    }
    CK(cudaDriverGetVersion(&drv));
    CK(cudaRuntimeGetVersion(&rt));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("cuda_smoke: %d device(s); device 0: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB; driver %d, runtime %d\n", n,
           p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.l2CacheSize >> 20, drv, rt);
    const int N = 1 << 20;
    float *d, *h = (float *)malloc(N * sizeof(float));
    CK(cudaMalloc(&d, N * sizeof(float)));
    iota2<<<(N + 255) / 256, 256>>>(d, N);
    CK(cudaGetLastError());
    CK(cudaMemcpy(h, d, N * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++)
        if (h[i] != 2.0f * (float)i) FAIL("kernel wrote %g at %d, expected %g", h[i], i, 2.0f * i);
    // cuBLASLt: C (64 x 64) = A (64 x 64) B (64 x 64), column-major, fp32 compute (no TF32).
    const int M = 64;
    float ha[M * M], hb[M * M], hc[M * M];
    for (int i = 0; i < M * M; i++) ha[i] = (float)((i * 7) % 13) - 6, hb[i] = (float)((i * 5) % 11) - 5;
    float *da, *db, *dc;
    CK(cudaMalloc(&da, sizeof ha));
    CK(cudaMalloc(&db, sizeof hb));
    CK(cudaMalloc(&dc, sizeof hc));
    CK(cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    cublasLtHandle_t lt;
    LT(cublasLtCreate(&lt));
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la;
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, M, M, M));
    float one = 1, zero = 0;
    LT(cublasLtMatmul(lt, op, &one, da, la, db, la, &zero, dc, la, dc, la, NULL, NULL, 0, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hc, dc, sizeof hc, cudaMemcpyDeviceToHost));
    for (int j = 0; j < M; j++)
        for (int i = 0; i < M; i++) {
            float s = 0;
            for (int q = 0; q < M; q++) s += ha[i + q * M] * hb[q + j * M];
            if (hc[i + j * M] != s) FAIL("cuBLASLt GEMM gave %g at (%d, %d), expected %g", hc[i + j * M], i, j, s);
        }
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(op);
    cublasLtDestroy(lt);
    cudaFree(da), cudaFree(db), cudaFree(dc), cudaFree(d);
    free(h);
    printf("cuda_smoke: OK (kernel, copies and a cuBLASLt fp32 GEMM checked)\n");
    return 0;
}
