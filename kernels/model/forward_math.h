// forward_math.h: the per-thread arithmetic of the CUDA forward pass, as __host__ __device__
// functions, so the CPU suite (tests/test_forward_math.c, compiled as C) checks exactly what the
// kernels compute: index maps of the attention layouts, the lane-strided LayerNorm and softmax
// reductions in the order a warp performs them, gelu_new, and bf16 rounding.
//
// Shapes (row-major): qkv (B, T, 3C); q, k, v per head (B, H, T, dh); hooks q, k (B, T, C);
// scores / pattern (B, H, T, T); z (B, T, C).  A warp is QK_WARP lanes; lane l of a row reduction
// handles elements l, l + 32, l + 64, ... and the 32 partial sums are combined by the xor
// butterfly (offsets 16, 8, 4, 2, 1), which gives every lane the same bits (a + b == b + a).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define QK_HD __host__ __device__ __forceinline__
#else
#define QK_HD static inline
#endif

#define QK_WARP 32

// gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as host/model/forward_cpu.c.
QK_HD float qk_gelu_new(float v) { return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); }

// Round to the nearest bfloat16 (ties to even), returned as the float it represents; NaN stays
// NaN, infinities stay.  The device's __float2bfloat16_rn gives the same value.
QK_HD float qk_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {  // inf or NaN: keep (NaN made quiet)
        if (u & 0x007fffffu) u |= 0x00400000u;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
    }
    u &= 0xffff0000u;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

// Element e (0..C) of qkv row n (B*T rows) of part p (0 q, 1 k, 2 v): its index in the per-head
// layout (B, H, T, dh) of that part.
QK_HD size_t qk_qkv_perm_index(size_t n, int e, int T, int C, int dh) {
    size_t b = n / (size_t)T, t = n % (size_t)T;
    int h = e / dh, d = e % dh, H = C / dh;
    return ((b * H + h) * T + t) * dh + d;
}

// The row of a score matrix (B, H, T, T) viewed as B*H*T rows: its query position i.
QK_HD int qk_score_row_query(size_t row, int T) { return (int)(row % (size_t)T); }

// Lane `lane`'s partial sum of x[lane], x[lane + 32], ... (n values), in double.
QK_HD double qk_lane_sum(const float *x, int n, int lane) {
    double s = 0;
    for (int i = lane; i < n; i += QK_WARP) s += x[i];
    return s;
}
// Lane's partial sum of (x[i] - mean)^2 over its elements, in double (the centred two-pass
// variance of torch.nn.LayerNorm and host/model/forward_cpu.c).
QK_HD double qk_lane_sqdev(const float *x, int n, int lane, double mean) {
    double s = 0;
    for (int i = lane; i < n; i += QK_WARP) {
        double d = x[i] - mean;
        s += d * d;
    }
    return s;
}
// Lane's partial sum of expf(s[j] - mx) over its keys j <= last (a causal softmax row).
QK_HD double qk_lane_expsum(const float *s, int last, int lane, float mx) {
    double t = 0;
    for (int j = lane; j <= last; j += QK_WARP) t += expf(s[j] - mx);
    return t;
}

// LayerNorm of one value given the row's mean and scale sqrt(var + eps), as host/model/forward_cpu.c
// but with the final multiply-add fused (fmaf), so host and device round it the same way.
QK_HD float qk_ln_apply(float x, double mean, double scale, float w, float b) {
    return fmaf((float)((x - mean) / scale), w, b);
}

// Host emulation of the warp's xor butterfly over 32 partial sums (v is overwritten): the value
// every lane holds at the end.
static inline double qk_butterfly_sum32(double *v) {
    for (int o = QK_WARP / 2; o; o >>= 1) {
        double t[QK_WARP];
        for (int l = 0; l < QK_WARP; l++) t[l] = v[l] + v[l ^ o];
        for (int l = 0; l < QK_WARP; l++) v[l] = t[l];
    }
    return v[0];
}

// Host emulation of layernorm_kernel for one row: mean, scale and out (C values), bit for bit.
static inline void qk_ln_row_emulated(float *out, float *scale, const float *x, const float *w, const float *b, int C,
                                      float eps) {
    double v[QK_WARP];
    for (int l = 0; l < QK_WARP; l++) v[l] = qk_lane_sum(x, C, l);
    double mean = qk_butterfly_sum32(v) / C;
    for (int l = 0; l < QK_WARP; l++) v[l] = qk_lane_sqdev(x, C, l, mean);
    double sc = sqrt(qk_butterfly_sum32(v) / C + (double)eps);
    *scale = (float)sc;
    for (int i = 0; i < C; i++) out[i] = qk_ln_apply(x[i], mean, sc, w[i], b[i]);
}
