// host_pinned.cuh: page-locked host memory for the .cu files: device-to-host copies at bus speed
// and truly asynchronous.  Where the driver refuses it (locked-memory limits), ordinary memory:
// copies still land, staged by the driver and slower (and a CUDA graph cannot capture them).
#pragma once
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "base/util.h"
}

// The first refusal of the process, said once on stderr: the run goes on, slower (inline, not
// static: one flag for every file that includes this).
inline void qk_pinned_refused(size_t bytes, cudaError_t e) {
    static int said = 0;
    if (__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED)) return;
    fprintf(stderr,
            "qkscope: page-locked host memory refused (%zu bytes: %s; the locked-memory limit, ulimit -l?): using ordinary "
            "memory, so device-to-host copies are synchronous and the analysis launches its aggregation kernels without "
            "CUDA graphs (slower; results unchanged)\n",
            bytes, cudaGetErrorString(e));
}

// `bytes` of host memory (at least 1), page-locked when the driver allows; *pinned (when not
// NULL) says which.  Free with qk_pinned_free.
static inline void *qk_pinned_alloc(size_t bytes, int *pinned) {
    void *p = NULL;
    const cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
    if (pinned) *pinned = e == cudaSuccess;
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    qk_pinned_refused(bytes ? bytes : 1, e);
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
