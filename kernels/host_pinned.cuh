// host_pinned.cuh: page-locked host memory for the .cu files: device-to-host copies at bus speed
// and truly asynchronous.  Where the driver refuses it (locked-memory limits), ordinary memory:
// copies still land, staged by the driver and slower (and a CUDA graph cannot capture them).
#pragma once
#include <cuda_runtime.h>
#include <stdlib.h>

extern "C" {
#include "base/util.h"
}

// `bytes` of host memory (at least 1), page-locked when the driver allows; *pinned (when not
// NULL) says which.  Free with qk_pinned_free.
static inline void *qk_pinned_alloc(size_t bytes, int *pinned) {
    void *p = NULL;
    const int ok = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) == cudaSuccess;
    if (pinned) *pinned = ok;
    if (ok) return p;
    (void)cudaGetLastError();
    return qk_malloc_aligned(bytes ? bytes : 1);
}

// Either kind from qk_pinned_alloc (told apart by cudaPointerGetAttributes); NULL is a no-op.
static inline void qk_pinned_free(void *p) {
    if (!p) return;
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) == cudaSuccess && at.type == cudaMemoryTypeHost) {
        cudaFreeHost(p);
    } else {
        (void)cudaGetLastError();
        free(p);
    }
}
