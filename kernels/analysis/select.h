// select.h: the selection rules of the device bilinear top-k (kernels/analysis/bilinear_topk.cu) as
// __host__ __device__ functions, so the CPU suite (tests/test_select.c) checks the very rules
// the kernel runs, lane by lane, against host/analysis/topk.c.  Plain C when not compiled by nvcc.
//
// Shapes (one warp selects for one row, 32 lanes):
//   key        uint64: (value, index) packed so that unsigned order IS topk.h's total order
//              (larger value first, then lower index); 0 (QK_SEL_EMPTY) is below every key.
//   queue Q    64 keys sorted descending across the warp: lane l holds slots l (q0) and 32+l (q1).
//              Its slot k-1 is the running threshold: a key must be above it to matter.
//   step       a warp scores 128 columns: lane l the float4 at base + 4l (e < 4: column
//              base + 4l + e); every key is compared with the threshold as it stood at the
//              start of the step.
//   buffer B   160 keys per warp in shared memory: the step's candidates above the threshold,
//              appended in (e, ballot) order.  Then, while B holds >= 32, its first 32 are sorted
//              (bitonic, one per lane) and merged into Q, the rest moving down.  B holds < 32
//              before a step and a step adds <= 128: B never overflows, no candidate is lost.
#pragma once
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define QK_HD static __host__ __device__ __forceinline__
#else
#define QK_HD static inline
#endif

#define QK_SEL_WARP 32
#define QK_SEL_QUEUE 64  // queue slots: k <= 64
#define QK_SEL_VEC 4     // columns per lane per step
#define QK_SEL_BUF (QK_SEL_WARP + QK_SEL_WARP * QK_SEL_VEC)  // buffer slots per warp
#define QK_SEL_EMPTY 0ull

QK_HD uint32_t qk_sel_bits(float v) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(v);
#else
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
#endif
}

QK_HD float qk_sel_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float v;
    memcpy(&v, &u, 4);
    return v;
#endif
}

// s = a * dot + c, rounded twice (no FMA), as host/analysis/topk.c computes it.
QK_HD float qk_sel_score(float dot, float a, float c) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(__fmul_rn(a, dot), c);
#else
    return a * dot + c;
#endif
}

// Packs a non-NaN value and its column: -0 folds into +0 (they compare equal, the index decides).
QK_HD uint64_t qk_sel_pack(float v, int32_t j) {
#ifdef __CUDA_ARCH__
    v = __fadd_rn(v, 0.0f);
#else
    v += 0.0f;
#endif
    uint32_t u = qk_sel_bits(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)j;
}

QK_HD float qk_sel_unpack_v(uint64_t key) {
    uint32_t u = (uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
    return qk_sel_float(u);
}

QK_HD int32_t qk_sel_unpack_i(uint64_t key) { return (int32_t)~(uint32_t)key; }

// The key under which score v of column j competes: sign -1 selects the bottom (the order of -v).
// EMPTY when it may never be selected: NaN, or gated and not above its gate.
QK_HD uint64_t qk_sel_key(float v, int32_t j, float sign, int gated, float gate_j) {
    if (v != v) return QK_SEL_EMPTY;
    if (gated && !(v > gate_j)) return QK_SEL_EMPTY;
    return qk_sel_pack(sign * v, j);
}

// Whether a candidate enters the buffer: strictly above the threshold (keys are unique).
QK_HD int qk_sel_passes(uint64_t key, uint64_t thr) { return key > thr; }

// The threshold is queue slot k-1: in q1 when k > 32, at lane (k-1) % 32.
QK_HD int qk_sel_thr_in_q1(int k) { return k > QK_SEL_WARP; }
QK_HD int qk_sel_thr_lane(int k) { return (k - 1) & (QK_SEL_WARP - 1); }

// Buffer slot of this lane's candidate: after the nb held and the lower lanes that pass (ballot).
QK_HD int qk_sel_buf_slot(int nb, uint32_t ballot, int lane) {
    uint32_t below = ballot & ((1u << lane) - 1u);
#ifdef __CUDA_ARCH__
    return nb + __popc(below);
#else
    return nb + __builtin_popcount(below);
#endif
}

// Bitonic networks over the 32 lanes (partner = lane ^ stride).  Sorting descending, at stage
// (size, stride) a lane keeps the larger of its key and its partner's iff it is the lower of the
// pair in a descending block (blocks of `size` alternate direction; size 64: the whole warp
// descending, which is the merge of a bitonic sequence).
QK_HD int qk_sel_keeps_max(int lane, int size, int stride) {
    return ((lane & stride) == 0) == ((lane & size) == 0);
}

QK_HD uint64_t qk_sel_cmpx(uint64_t mine, uint64_t other, int keep_max) {
    uint64_t hi = mine > other ? mine : other, lo = mine > other ? other : mine;
    return keep_max ? hi : lo;
}

// Merging a sorted B into Q (the half-cleaners): a lane compares its key with lane 31 - lane's,
// i.e. partner = lane ^ QK_SEL_MIRROR.  Q' = q0 U top32(q1 U B): q0 stays whole because only
// 32 new keys can pass it.
#define QK_SEL_MIRROR 31

// What a row's queue slot becomes in the output (act as in topk.h, sign -1 for bottom).  Writes
// the index and value; returns 1 when the slot counts (PLAIN: a valid entry; RELU: positive).
QK_HD int qk_sel_output(uint64_t key, float sign, int relu, int32_t *idx, float *val) {
    if (key == QK_SEL_EMPTY) {
        *idx = -1, *val = 0.0f;
        return 0;
    }
    *idx = qk_sel_unpack_i(key);
    float v = sign * qk_sel_unpack_v(key);
    if (relu && !(v > 0.0f)) {
        *val = 0.0f;
        return 0;
    }
    *val = v;
    return 1;
}
