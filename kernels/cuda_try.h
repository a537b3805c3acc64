// cuda_try.h: the error checks of the .cu files.  Every CUDA / cuBLAS / NCCL call is checked, and
// a failure returns -1 after qk_err with one line naming the call (and, with the F forms and
// KERNEL_TRY, the shapes it was given, printf-style).
#pragma once
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "base/util.h"
}

// The core: r_ = call; when `failed`, the error "WHAT (shapes): why".
#define QK_TRY_(what, call, failed, why, ...)                                                    \
    do {                                                                                         \
        auto r_ = (call);                                                                        \
        if (failed) {                                                                            \
            char where_[256];                                                                    \
            snprintf(where_, sizeof where_, __VA_ARGS__);                                        \
            return qk_err("%s (%s): %s", what, where_, why);                                     \
        }                                                                                        \
    } while (0)

#define CUDA_TRY(call)                                                                           \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) return qk_err("%s: %s", #call, cudaGetErrorString(e_));           \
    } while (0)

// CUDA_TRYF(cudaMemcpy(...), "layer %d, %zu bytes", l, n)
#define CUDA_TRYF(call, ...) QK_TRY_(#call, call, r_ != cudaSuccess, cudaGetErrorString(r_), __VA_ARGS__)

// After a launch: the kernel's name and its shapes, e.g.
// KERNEL_TRY(layernorm_kernel, "N %d, C %d", N, C).  Launch errors (bad configuration) show here;
// faults inside the kernel show at the next synchronising call, which names itself.
#define KERNEL_TRY(kernel, ...)                                                                  \
    QK_TRY_("kernel " #kernel, cudaGetLastError(), r_ != cudaSuccess, cudaGetErrorString(r_), __VA_ARGS__)

// After a launch on `stream`: its launch error (bad configuration), and with sync_each (the
// QK_CUDA_SYNC=1 debugging mode) the error of its execution too, the stream waited for.  For
// callers that name the kernel in their own message.
static inline cudaError_t qk_launch_status(cudaStream_t stream, int sync_each) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && sync_each) e = cudaStreamSynchronize(stream);
    return e;
}

// cuBLAS / cuBLASLt (include cublas_v2.h or cublasLt.h first)
#define BLAS_TRYF(call, ...)                                                                     \
    QK_TRY_(#call, call, r_ != CUBLAS_STATUS_SUCCESS, cublasGetStatusString(r_), __VA_ARGS__)
