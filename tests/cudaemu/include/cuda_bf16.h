// cuda_bf16.h of the emulated CUDA device: the bfloat16 type and the conversions kernels/ uses
// (CUDA Math API, "Bfloat16 Precision Conversion"): round to nearest even, NaN to the canonical
// quiet NaN 0x7fff, as the header's own host fallback does.
#pragma once
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f);
    operator float() const {
        const uint32_t u = (uint32_t)__x << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.__x = 0x7fff;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.__x = (unsigned short)(u >> 16);
    }
    return r;
}
inline __nv_bfloat16::__nv_bfloat16(float f) : __x(__float2bfloat16_rn(f).__x) {}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return (float)h; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 r;
    r.__x = u;
    return r;
}
