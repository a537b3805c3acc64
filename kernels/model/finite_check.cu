// finite_check.cu: which token rows of a layer's activations hold a non-finite value, so a run
// stops (naming layer, window and position) before such a value reaches any aggregate, as the
// host's check in host/analysis/analysis_batch.c does.
//   resid (N, ld_r), sigma (N), q, k (N, ld_qk) with C columns each -> flags (N) uint8:
//   1 resid_pre, 2 ln1 scale, 4 q, 8 k (0: the row is finite)
// One block of 128 threads per row; __syncthreads_or folds the block's findings.
#include "model/forward.cuh"

__global__ void __launch_bounds__(128) nonfinite_rows_kernel(const float *resid, long long ld_r, const float *sigma,
                                                             const float *q, const float *k, long long ld_qk, int C,
                                                             int N, unsigned char *flags) {
    for (int n = blockIdx.x; n < N; n += gridDim.x) {  // block-uniform loop: every thread reaches the barriers
        int r = 0, qb = 0, kb = 0;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            r |= !isfinite(resid[n * ld_r + c]);
            qb |= !isfinite(q[n * ld_qk + c]);
            kb |= !isfinite(k[n * ld_qk + c]);
        }
        r = __syncthreads_or(r), qb = __syncthreads_or(qb), kb = __syncthreads_or(kb);
        if (threadIdx.x == 0) flags[n] = (unsigned char)(r | (!isfinite(sigma[n]) << 1) | (qb << 2) | (kb << 3));
    }
}

int fwd_nonfinite_rows(cudaStream_t s, const float *resid, long long ld_r, const float *sigma, const float *q,
                       const float *k, long long ld_qk, int C, int N, unsigned char *flags) {
    const int blocks = N < 65535 ? (N > 0 ? N : 1) : 65535;
    nonfinite_rows_kernel<<<blocks, 128, 0, s>>>(resid, ld_r, sigma, q, k, ld_qk, C, N, flags);
    KERNEL_TRY(nonfinite_rows_kernel, "N %d, C %d", N, C);
    return 0;
}
