// forward_layernorm.cu: LayerNorm, one warp per row (host/model/forward_cpu.c's layernorm).
//   x (N, C) fp32, w, b (C) -> out (N, C) fp32 or bf16 (the GEMM input of the bf16 mode),
//   scale (N) = sqrt(var + eps): blocks.l.ln1.hook_scale
// Statistics in double, two passes (mean, then the centred variance: torch.nn.LayerNorm's biased
// variance, eps inside the root), each lane summing its strided elements and the warp combining
// them by the xor butterfly: forward_math.h's functions, so the CPU suite checks this order.  The
// residual add that precedes each LayerNorm is fused into the GEMM before it (cuBLASLt, beta = 1
// with C = the residual), so the residual stream makes one trip through memory per sublayer.
// Rows are independent: 8 warps a block; the row (3 KB at C = 768) stays in L1 between passes.
#include "model/forward.cuh"
#include "model/forward_math.h"

static __device__ __forceinline__ double warp_sum(double v) {
    for (int o = QK_WARP / 2; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename OutT>
__global__ void __launch_bounds__(256) layernorm_kernel(OutT *out, float *scale, const float *x, const float *w,
                                                        const float *b, int N, int C, float eps) {
    const int row = blockIdx.x * (blockDim.x / QK_WARP) + threadIdx.x / QK_WARP, lane = threadIdx.x % QK_WARP;
    if (row >= N) return;  // whole warps leave together: the shuffles below see full warps
    const float *xr = x + (size_t)row * C;
    const double mean = warp_sum(qk_lane_sum(xr, C, lane)) / C;
    const double sc = sqrt(warp_sum(qk_lane_sqdev(xr, C, lane, mean)) / C + (double)eps);
    if (lane == 0) scale[row] = (float)sc;
    OutT *o = out + (size_t)row * C;
    for (int i = lane; i < C; i += QK_WARP) {
        float v = qk_ln_apply(xr[i], mean, sc, w[i], b[i]);
        if constexpr (sizeof(OutT) == 2) o[i] = __float2bfloat16_rn(v);
        else o[i] = v;
    }
}

int fwd_layernorm(cudaStream_t s, void *out, int bf16, float *scale, const float *x, const float *w, const float *b,
                  int N, int C, float eps) {
    const int warps = 8;
    const unsigned grid = (unsigned)((N + warps - 1) / warps);
    if (bf16) {
        layernorm_kernel<__nv_bfloat16><<<grid, warps * QK_WARP, 0, s>>>((__nv_bfloat16 *)out, scale, x, w, b, N, C, eps);
        KERNEL_TRY(layernorm_kernel<bf16>, "N %d, C %d", N, C);
    } else {
        layernorm_kernel<float><<<grid, warps * QK_WARP, 0, s>>>((float *)out, scale, x, w, b, N, C, eps);
        KERNEL_TRY(layernorm_kernel<fp32>, "N %d, C %d", N, C);
    }
    return 0;
}
