// forward_encoder.cu: the elementwise kernels of the forward pass (host/model/forward_cpu.c's
// embedding and gelu_new), and the fp32 -> bf16 conversion of the weights.
//   embed:   tokens (N) int, wte (V, C), wpe (n_ctx, C) -> x (N, C); position = n mod T
//   to_bf16: in (n) fp32 -> out (n) bf16, round to nearest even
//   gelu:    x (n) fp32 in place (the fp32 mode; tf32 / bf16 use cuBLASLt's GELU epilogue)
// One thread per element, grid-stride loops (any n fits a grid).
#include "model/forward.cuh"
#include "model/forward_math.h"

static unsigned grid_for(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535u * 16u ? (b ? b : 1) : 65535u * 16u);
}

__global__ void embed_kernel(float *x, const int *tokens, const float *wte, const float *wpe, int N, int T, int C) {
    const size_t n_all = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_all; i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / C, c = i % C;
        x[i] = wte[(size_t)tokens[n] * C + c] + wpe[(n % T) * C + c];
    }
}

__global__ void to_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void gelu_kernel(float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = qk_gelu_new(x[i]);
}

int fwd_embed(cudaStream_t s, float *x, const int *tokens, const float *wte, const float *wpe, int N, int T, int C) {
    embed_kernel<<<grid_for((size_t)N * C, 256), 256, 0, s>>>(x, tokens, wte, wpe, N, T, C);
    KERNEL_TRY(embed_kernel, "N %d, T %d, C %d", N, T, C);
    return 0;
}

int fwd_to_bf16(cudaStream_t s, __nv_bfloat16 *out, const float *in, size_t n) {
    to_bf16_kernel<<<grid_for(n, 256), 256, 0, s>>>(out, in, n);
    KERNEL_TRY(to_bf16_kernel, "n %zu", n);
    return 0;
}

int fwd_gelu(cudaStream_t s, float *x, size_t n) {
    gelu_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n);
    KERNEL_TRY(gelu_kernel, "n %zu", n);
    return 0;
}
