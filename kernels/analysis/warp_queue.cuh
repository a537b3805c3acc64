// warp_queue.cuh: the register bitonic networks of a warp's running top-64 queue, shared by the
// device selections (kernels/bilinear_topk.cu after its GEMM tiles, kernels/analysis/
// topk_fused_kernel.cuh in its MMA epilogue).  The rules they apply (key order, which lane keeps
// the max, the mirror partner) are select.h's, checked lane by lane on the CPU by
// tests/test_select.c.
//
// Shapes: a queue is 64 uint64 keys sorted descending across the warp, lane l holding slots l
// (q0) and 32 + l (q1); a batch b is 32 keys, one per lane, in any order.
#pragma once
#include "analysis/select.h"

#define QK_WQ_FULL 0xffffffffu

__device__ __forceinline__ unsigned long long qk_wq_shfl_xor(unsigned long long x, int m) {
    return __shfl_xor_sync(QK_WQ_FULL, x, m);
}

// 32 keys, one per lane, sorted descending (lane 0 the best).
__device__ __forceinline__ unsigned long long qk_wq_sort32(unsigned long long x, int lane) {
#pragma unroll
    for (int size = 2; size <= QK_SEL_WARP; size *= 2)
#pragma unroll
        for (int stride = size / 2; stride > 0; stride /= 2)
            x = qk_sel_cmpx(x, qk_wq_shfl_xor(x, stride), qk_sel_keeps_max(lane, size, stride));
    return x;
}

// A bitonic sequence of 32 keys sorted descending.
__device__ __forceinline__ unsigned long long qk_wq_merge32(unsigned long long x, int lane) {
#pragma unroll
    for (int stride = QK_SEL_WARP / 2; stride > 0; stride /= 2)
        x = qk_sel_cmpx(x, qk_wq_shfl_xor(x, stride), qk_sel_keeps_max(lane, 2 * QK_SEL_WARP, stride));
    return x;
}

// (q0, q1) <- the best 64 of the queue and the batch b (EMPTY pads a short batch):
// Q' = q0 U top32(q1 U sort(b)), both halves re-sorted (select.h, QK_SEL_MIRROR).
__device__ __forceinline__ void qk_wq_insert32(unsigned long long &q0, unsigned long long &q1, unsigned long long b,
                                               int lane) {
    b = qk_wq_sort32(b, lane);
    const unsigned long long m = qk_wq_merge32(qk_sel_cmpx(q1, qk_wq_shfl_xor(b, QK_SEL_MIRROR), 1), lane);
    const unsigned long long r = qk_wq_shfl_xor(m, QK_SEL_MIRROR);
    const unsigned long long hi = qk_sel_cmpx(q0, r, 1), lo = qk_sel_cmpx(q0, r, 0);
    q0 = qk_wq_merge32(hi, lane);
    q1 = qk_wq_merge32(lo, lane);
}

// Slot k-1 of the queue, in every lane: the running threshold.
__device__ __forceinline__ unsigned long long qk_wq_kth(unsigned long long q0, unsigned long long q1, int k) {
    return __shfl_sync(QK_WQ_FULL, qk_sel_thr_in_q1(k) ? q1 : q0, qk_sel_thr_lane(k));
}

// Writes slots < k of the queue to idx/val [k] (qk_sel_output: sign -1 for a bottom queue, relu
// for QK_TOPK_RELU); returns, in every lane, how many slots count.
__device__ __forceinline__ int qk_wq_output(unsigned long long q0, unsigned long long q1, int lane, int k, float sign,
                                            int relu, int32_t *idx, float *val) {
    int32_t i0, i1;
    float v0, v1;
    const int c0 = qk_sel_output(q0, sign, relu, &i0, &v0) && lane < k;
    const int c1 = qk_sel_output(q1, sign, relu, &i1, &v1) && lane + QK_SEL_WARP < k;
    if (lane < k) idx[lane] = i0, val[lane] = v0;
    if (lane + QK_SEL_WARP < k) idx[lane + QK_SEL_WARP] = i1, val[lane + QK_SEL_WARP] = v1;
    return __popc(__ballot_sync(QK_WQ_FULL, c0)) + __popc(__ballot_sync(QK_WQ_FULL, c1));
}
