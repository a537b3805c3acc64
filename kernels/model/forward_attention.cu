// forward_attention.cu: causal self-attention of one layer (host/model/forward_cpu.c's attention).
//   qkv (B, T, 3C) fp32 [columns: Q | K | V, head h owning h*dh .. (h+1)*dh of each]
//   -> hooks hq, hk (B, T, C) (blocks.l.attn.hook_q / hook_k, [pos, head, d_head] per token)
//   -> qkvp (3, B, H, T, dh) per-head copies (permute_kernel)
//   -> scores (B, H, T, T) = Q K^T / sqrt(dh)   (cuBLAS strided-batched GEMM, B*H batches)
//   -> causal softmax (softmax_kernel): scores -inf and pattern 0 above the diagonal, as
//      TransformerLens's hook_attn_scores / hook_pattern; max, exp and the sum (double) per row
//   -> zp (B, H, T, dh) = pattern V   (strided-batched GEMM)
//   -> z (B, T, C) fp32, or bf16 for the bf16 mode's projection GEMM (unpermute_kernel)
// The whole T x T block is multiplied (the masked half is overwritten): at T = 128 the two GEMMs
// are ~3% of a layer's FLOPs.  Scores and pattern are written in full because the analysis and
// the cache read them.  Index maps and the row reductions are forward_math.h's.
#include "model/forward.cuh"
#include "model/forward_math.h"

__global__ void permute_kernel(float *qkvp, float *hq, float *hk, const float *qkv, int N, int T, int C, int dh) {
    const size_t NC = (size_t)N * C, all = 3 * NC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < all; i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / (3 * (size_t)C);
        const int r = (int)(i % (3 * (size_t)C)), part = r / C, e = r % C;
        const float v = qkv[i];
        qkvp[part * NC + qk_qkv_perm_index(n, e, T, C, dh)] = v;
        if (part == 0) hq[n * C + e] = v;
        else if (part == 1) hk[n * C + e] = v;
    }
}

template <typename OutT>
__global__ void unpermute_kernel(OutT *z, const float *zp, int N, int T, int C, int dh) {
    const size_t NC = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NC; i += (size_t)gridDim.x * blockDim.x) {
        const float v = zp[qk_qkv_perm_index(i / C, (int)(i % C), T, C, dh)];
        if constexpr (sizeof(OutT) == 2) z[i] = __float2bfloat16_rn(v);
        else z[i] = v;
    }
}

static __device__ __forceinline__ double warp_sum(double v) {
    for (int o = QK_WARP / 2; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp per score row (b, h, i) of the rows = B*H*T rows.
__global__ void __launch_bounds__(256) softmax_kernel(float *scores, float *pattern, size_t rows, int T) {
    const size_t row = blockIdx.x * (size_t)(blockDim.x / QK_WARP) + threadIdx.x / QK_WARP;
    const int lane = threadIdx.x % QK_WARP;
    if (row >= rows) return;  // whole warps
    const int i = qk_score_row_query(row, T);
    float *s = scores + row * T, *p = pattern + row * T;
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += QK_WARP) mx = fmaxf(mx, s[j]);
    for (int o = QK_WARP / 2; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float r = (float)(1.0 / warp_sum(qk_lane_expsum(s, i, lane, mx)));
    for (int j = lane; j < T; j += QK_WARP) {
        if (j <= i) p[j] = expf(s[j] - mx) * r;
        else {
            s[j] = -INFINITY;
            p[j] = 0.0f;
        }
    }
}

static unsigned grid_for(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535u * 16u ? (b ? b : 1) : 65535u * 16u);
}

int fwd_attention(cudaStream_t s, cublasHandle_t blas, const AttnShape *a, const float *qkv, float *hq, float *hk,
                  float *qkvp, float *zp, float *scores, float *pattern, void *z) {
    const int B = a->B, T = a->T, C = a->C, H = a->H, dh = C / H, N = B * T;
    const size_t NC = (size_t)N * C, rows = (size_t)B * H * T;
    permute_kernel<<<grid_for(3 * NC, 256), 256, 0, s>>>(qkvp, hq, hk, qkv, N, T, C, dh);
    KERNEL_TRY(permute_kernel, "B %d, T %d, C %d, H %d", B, T, C, H);
    const float *Q = qkvp, *K = qkvp + NC, *V = qkvp + 2 * NC;
    const float inv = 1.0f / sqrtf((float)dh), one = 1.0f, zero = 0.0f;
    BLAS_TRYF(cublasSetStream(blas, s), "attention");
    // Per (b, h): row-major S (T, T) = Q (T, dh) K^T * inv, i.e. column-major S^T = K^T' Q^T:
    // A = K as column-major (dh, T) transposed, B = Q as column-major (dh, T).
    BLAS_TRYF(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, dh, &inv, K, CUDA_R_32F, dh,
                                         (long long)T * dh, Q, CUDA_R_32F, dh, (long long)T * dh, &zero, scores, CUDA_R_32F,
                                         T, (long long)T * T, B * H, a->compute, CUBLAS_GEMM_DEFAULT),
              "scores: %d batches of (%d x %d) x (%d x %d)", B * H, T, dh, dh, T);
    softmax_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, s>>>(scores, pattern, rows, T);
    KERNEL_TRY(softmax_kernel, "rows %zu, T %d", rows, T);
    // Per (b, h): row-major zp (T, dh) = P (T, T) V (T, dh): column-major zp^T = V^T P^T.
    BLAS_TRYF(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, dh, T, T, &one, V, CUDA_R_32F, dh,
                                         (long long)T * dh, pattern, CUDA_R_32F, T, (long long)T * T, &zero, zp, CUDA_R_32F,
                                         dh, (long long)T * dh, B * H, a->compute, CUBLAS_GEMM_DEFAULT),
              "z: %d batches of (%d x %d) x (%d x %d)", B * H, T, T, T, dh);
    if (a->bf16_z) {
        unpermute_kernel<__nv_bfloat16><<<grid_for(NC, 256), 256, 0, s>>>((__nv_bfloat16 *)z, zp, N, T, C, dh);
        KERNEL_TRY(unpermute_kernel<bf16>, "N %d, C %d", N, C);
    } else {
        unpermute_kernel<float><<<grid_for(NC, 256), 256, 0, s>>>((float *)z, zp, N, T, C, dh);
        KERNEL_TRY(unpermute_kernel<fp32>, "N %d, C %d", N, C);
    }
    return 0;
}
