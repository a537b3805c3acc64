// gemm.h: qkscope's own single-precision matrix product, with ONE fixed summation order.
//
//     C[i,j] = alpha * (init[i,j] + A[i,0] B(0,j) + A[i,1] B(1,j) + ... + A[i,K-1] B(K-1,j))
//
// evaluated as a chain of fused multiply-adds in increasing k, starting from init = C[i,j]
// (accumulate = 1) or 0 (accumulate = 0), then multiplied once by alpha (alpha != 1 only with
// accumulate = 0).  Why not BLAS: an optimised BLAS picks its kernel, its K blocking and its
// thread split by CPU model, matrix shape and thread count, so one element's rounding depends on
// the machine, on OMP_NUM_THREADS and on which windows share a batch.  Here every element is the
// same chain whatever the tiling, the thread count, the batch composition or the instruction set
// (an FMA lane of a vector unit rounds exactly as a scalar fmaf), so results are bit-identical on
// every x86-64 CPU with AVX2 + FMA (x86-64-v3), and a row's result does not depend on the other
// rows of the call.
//
// Layouts (row-major, leading dimensions in elements):
//   A (M x K), lda >= K;   B (K x N), ldb >= N (QK_GEMM_N) or B^T stored as (N x K), ldb >= K
//   (QK_GEMM_T);   C (M x N), ldc >= N.
// Threads: outside an OpenMP parallel region the tiles of C are shared among OMP_NUM_THREADS
// threads; inside one (e.g. per attention head) the call runs on the calling thread.
#pragma once

typedef enum { QK_GEMM_N = 0, QK_GEMM_T = 1 } QkGemmTrans;

void qk_gemm(QkGemmTrans trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, int accumulate, float *C, int ldc);
