// forward_mem.h: the device memory of the CUDA forward pass's activations, as plain host
// arithmetic shared by backend_cuda.cu (allocation, and the batch that fits when one does not)
// and the CPU suite (tests/test_forward_math.c).  Buffers per batch of B windows of T tokens,
// N = B T (float32 unless said): tokens (N) int; the residual stream (L+1 layers, each N C
// rounded up to 256 bytes); ln1 scales (L, N); hooks q, k (L, N, C); scores and pattern (L or 1,
// B, H, T, T); logits (N, V) when wanted; scratch: a scale (N), LayerNorm output, z (N, C), MLP
// hidden (N, F), qkv (N, 3C), per-head q, k, v (3, N, C), per-head z (N, C).  Each allocation is
// counted rounded up to 256 bytes (the driver's own granularity is coarser: "about").
#pragma once
#include <stddef.h>

#include "model/gpt2.h"

static inline size_t qk_round256(size_t b) { return (b + 255) & ~(size_t)255; }

// Device bytes for B windows of T tokens; *stride (when not NULL): floats between the residual
// stream's layers.
static inline size_t qk_cuda_acts_bytes(const GPT2Config *c, size_t B, size_t T, int keep_attn, int want_logits,
                                        size_t *stride) {
    const size_t N = B * T, L = c->n_layer, C = c->d_model, H = c->n_head, F = c->d_mlp, f = sizeof(float);
    const size_t st = qk_round256(N * C * f) / f, attn = (keep_attn ? L : 1) * B * H * T * T;
    if (stride) *stride = st;
    return qk_round256(N * sizeof(int)) + (L + 1) * st * f + qk_round256(L * N * f) + 2 * qk_round256(L * N * C * f) +
           2 * qk_round256(attn * f) + (want_logits ? qk_round256(N * c->vocab_size * f) : 0) + qk_round256(N * f) +
           2 * qk_round256(N * C * f) + qk_round256(N * F * f) + qk_round256(N * 3 * C * f) +
           qk_round256(3 * N * C * f) + qk_round256(N * C * f);
}

// The largest batch whose activations take at most `avail` bytes (0 when not even one window).
static inline long long qk_cuda_batch_fit(const GPT2Config *c, size_t T, int keep_attn, int want_logits, double avail) {
    long long lo = 0, hi = 1 << 24;  // acts_bytes(lo) <= avail < acts_bytes(hi + 1), searched
    if ((double)qk_cuda_acts_bytes(c, 1, T, keep_attn, want_logits, NULL) > avail) return 0;
    while (lo < hi) {
        long long mid = lo + (hi - lo + 1) / 2;
        if ((double)qk_cuda_acts_bytes(c, (size_t)mid, T, keep_attn, want_logits, NULL) <= avail) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}
