// cuda_try.h: the error checks of the .cu files: every CUDA call is checked, and a failure
// returns -1 after qk_err with one line naming the call.
#pragma once
#include <cuda_runtime.h>

extern "C" {
#include "util.h"
}

#define CUDA_TRY(call)                                                                           \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) return qk_err("%s: %s", #call, cudaGetErrorString(e_));           \
    } while (0)
