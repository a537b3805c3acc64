// topk_fused_kernel.cuh: the fused bilinear top-k kernel (API and shapes: topk_fused.h), one
// template for its three ways of making scores (FtFlavor), included by topk_fused_sm80.cu (fp32
// FMA and mma.sync bf16, built for every target) and topk_fused_sm90.cu (wgmma bf16, built for
// sm_90a only).  One block owns 64 rows of one problem and walks every column of V in tiles of 64;
// each tile's scores are made in registers, compared once with their row's bar, and only the
// survivors go to the row's queue in shared memory, merged into the row's running top-64 by a warp
// bitonic network (warp_queue.cuh).  A queue that overflows is rescanned from the registers it
// came from (topk_fused_select.h): exact, whatever the order of the columns.
//
// Warp w owns rows 16w .. 16w+15 of the block and all 64 columns of a tile, so a row's scores,
// queue and merge stay inside one warp.  Lane (g = lane/4, t = lane%4) holds, per n8 tile nt,
// the mma accumulator layout: acc[nt][0..1] = row 16w+g, columns 8nt+2t, +1; acc[nt][2..3] =
// row 16w+g+8, same columns (PTX ISA, mma.m16n8k16 C fragment; wgmma m64nNk16's D fragment is the
// same per warp of the warpgroup); the FP32 flavour computes the same layout with FMAs so the
// epilogue is shared.
//
// Shared memory (dynamic; one "side" = the top queue, two with top + bottom):
//   per side  T [64 x ts] u64 (ts = 32 or 64), queue [64 x qcap] u64, thr [64] u64, pthr [64] u64,
//             cnt [64] int
//   operands  Us [64 x 36] and Vs [64 x 36] 32-bit words: a k chunk of 64 bf16 or 32 fp32 per row
//             (128 bytes) in rows of 144 bytes, so the fragment loads hit 32 distinct banks
//             (WGMMA: the same 128 bytes per row in wgmma's core-matrix layout, ft_word).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_try.h"
#include "topk_fused.h"
#include "topk_fused_select.h"
#include "warp_queue.cuh"

typedef unsigned long long u64;

// How a tile's scores are made: fp32 FMAs (the parity mode), bf16 mma.sync (sm_80 and later), or
// bf16 wgmma from shared memory (sm_90a only: topk_fused_sm90.cu).
enum FtFlavor { FT_FP32 = 0, FT_MMA = 1, FT_WGMMA = 2 };

#define FT_THREADS 128
#define FT_WARPS 4
#define FT_WROWS 16                 // rows per warp
#define FT_NT (QK_FSEL_BN / 8)      // n8 accumulator tiles per warp per column tile
#define FT_LDS 36                   // 32-bit words per operand row in shared memory (32 + 4 pad)
#define FT_VECS 8                   // 16-byte vectors per operand row of a k chunk
#define FT_TSLOTS 64                // T slots per row at most (the warp queue; qk_fsel_tslots)

struct FtSide {
    u64 *T, *q, *thr, *pthr;  // T [64 x ts]
    int *cnt;
    int ts;                   // T slots per row: qk_fsel_tslots(k)
};

// Carves one side out of shared memory at p (u64 arrays first: 8-byte aligned).
__device__ __forceinline__ FtSide ft_side(u64 *&p, int *&ip, int qcap, int ts) {
    FtSide s;
    s.ts = ts;
    s.T = p, p += QK_FSEL_BM * ts;
    s.q = p, p += QK_FSEL_BM * qcap;
    s.thr = p, p += QK_FSEL_BM;
    s.pthr = p, p += QK_FSEL_BM;
    s.cnt = ip, ip += QK_FSEL_BM;
    return s;
}

// Queue and count of every row emptied, T empty, thr EMPTY (every key passes the first tile).
__device__ __forceinline__ void ft_side_init(const FtSide &s) {
    for (int e = threadIdx.x; e < QK_FSEL_BM * s.ts; e += FT_THREADS) s.T[e] = QK_SEL_EMPTY;
    for (int e = threadIdx.x; e < QK_FSEL_BM; e += FT_THREADS) s.thr[e] = QK_SEL_EMPTY, s.pthr[e] = 0, s.cnt[e] = 0;
}

// A survivor of row `row` (block-local) takes a queue slot; past qcap it is counted, not stored.
__device__ __forceinline__ void ft_offer(const FtSide &s, int row, int qcap, u64 key, u64 bar) {
    if (!qk_sel_passes(key, bar)) return;
    const int slot = atomicAdd(&s.cnt[row], 1);
    qk_fsel_store(reinterpret_cast<uint64_t *>(s.q) + (long long)row * qcap, qcap, slot, key);
}

// Row `row`'s T as a warp queue (q0: slots 0-31, q1: 32-63; EMPTY past the slots kept).
__device__ __forceinline__ void ft_load_T(const FtSide &s, int row, int lane, u64 &q0, u64 &q1) {
    q0 = s.T[row * s.ts + lane];
    q1 = s.ts > QK_SEL_WARP ? s.T[row * s.ts + QK_SEL_WARP + lane] : QK_SEL_EMPTY;
}

// Merges the queues of warp w's rows into their T (topk_fused_select.h: commit or rescan);
// returns, in every lane, whether a row of the warp must be rescanned.
__device__ __forceinline__ int ft_merge_rows(const FtSide &s, int qcap, int k, int w, int lane) {
    int again = 0;
    for (int rr = 0; rr < FT_WROWS; rr++) {
        const int row = w * FT_WROWS + rr;
        const int c = s.cnt[row];  // the same in every lane: the branch is warp-uniform
        if (c == 0) {
            __syncwarp();
            if (lane == 0) s.pthr[row] = QK_FSEL_DONE;
            continue;
        }
        const int held = qk_fsel_held(c, qcap);
        u64 q0, q1;
        ft_load_T(s, row, lane, q0, q1);
        for (int base = 0; base < held; base += QK_SEL_WARP) {
            const u64 x = base + lane < held ? s.q[(long long)row * qcap + base + lane] : QK_SEL_EMPTY;
            qk_wq_insert32(q0, q1, x, lane);
        }
        const u64 kth = qk_wq_kth(q0, q1, k);
        uint64_t thr = s.thr[row], pthr;
        const int commit = qk_fsel_resolve(c, qcap, kth, &thr, &pthr);
        __syncwarp();  // every lane has read cnt, thr and the queue before they are rewritten
        if (commit) {
            s.T[row * s.ts + lane] = q0;
            if (s.ts > QK_SEL_WARP) s.T[row * s.ts + QK_SEL_WARP + lane] = q1;
        }
        if (lane == 0) s.thr[row] = thr, s.pthr[row] = pthr, s.cnt[row] = 0;
        again |= !commit;
    }
    __syncwarp();
    return again;
}

// One k chunk of rows [base, base + 64) of X (row stride ld elements, `lim` rows, r columns),
// fetched into registers (x [4]: this thread's 16-byte vectors), zero past the rows and past r;
// then stored to S [64 x FT_LDS] words.  Split so that the next tile's fetch is in flight while
// this one is multiplied and selected.  Element type: bf16 (8 per vector) or fp32 (4).
#define FT_LOADS (QK_FSEL_BM * FT_VECS / FT_THREADS)
template <bool BF16>
__device__ __forceinline__ void ft_fetch(uint4 (&x)[FT_LOADS], const void *X, long long ld, int base, int lim, int k0,
                                         int r) {
    constexpr int PER = BF16 ? 8 : 4, ESZ = BF16 ? 2 : 4;
#pragma unroll
    for (int i = 0; i < FT_LOADS; i++) {
        const int e = threadIdx.x + FT_THREADS * i, row = e / FT_VECS, v = e % FT_VECS;
        const int kk = k0 + v * PER;
        x[i] = make_uint4(0u, 0u, 0u, 0u);
        if (base + row < lim && kk < r)
            x[i] = __ldg(reinterpret_cast<const uint4 *>(static_cast<const char *>(X) +
                                                         ((long long)(base + row) * ld + kk) * ESZ));
    }
}

// Where vector v (16 bytes) of operand row `row` goes in S, in 32-bit words.  FP32 / MMA: padded
// rows of FT_LDS words (conflict-free fragment loads).  WGMMA: wgmma's K-major layout without
// swizzle, 8 x 16-byte "core matrices" of 128 contiguous bytes, core (row / 8, v) at
// ((row / 8) * 8 + v) * 128 bytes: K-adjacent cores 128 bytes apart (the descriptor's leading
// byte offset), 8-row groups 1024 bytes apart (its stride byte offset).
template <int FL>
__device__ __forceinline__ int ft_word(int row, int v) {
    return FL == FT_WGMMA ? (((row >> 3) * FT_VECS + v) * 128 + (row & 7) * 16) / 4 : row * FT_LDS + v * 4;
}

template <int FL>
__device__ __forceinline__ void ft_store(uint32_t *S, const uint4 (&x)[FT_LOADS]) {
#pragma unroll
    for (int i = 0; i < FT_LOADS; i++) {
        const int e = threadIdx.x + FT_THREADS * i;
        *reinterpret_cast<uint4 *>(S + ft_word<FL>(e / FT_VECS, e % FT_VECS)) = x[i];
    }
    // wgmma reads shared memory through the async proxy: these generic stores must be made visible
    // to it (then the block barrier that follows every store orders them for all warps).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (FL == FT_WGMMA) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void ft_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// wgmma's shared-memory matrix descriptor (no swizzle; PTX ISA "Matrix Descriptor Format"):
// start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29, stride byte offset >> 4 in
// 32-45, layout type (0: no swizzle) in 62-63.
__device__ __forceinline__ unsigned long long ft_wg_desc(const void *smem, unsigned byte_off) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(smem) + byte_off;
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | (unsigned long long)(128u >> 4) << 16 |
           (unsigned long long)(1024u >> 4) << 32;
}

// acc += A B^T for one k16 step: wgmma m64n64k16, A = the block's 64 rows, B = the tile's 64
// columns, both K-major in shared memory.  The accumulator layout of warp w of the warpgroup is
// mma.sync's m16n8 layout for rows 16w.., per n8 tile: acc[nt][e] is d[4 nt + e].
__device__ __forceinline__ void ft_wgmma(float (&d)[FT_NT][4], unsigned long long da, unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
          "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(da), "l"(db));
#else
    (void)d, (void)da, (void)db;
    __trap();  // built for sm_90a only (topk_fused_sm90.cu); never launched elsewhere
#endif
}

// acc += this chunk's products.  MMA: 4 k-steps of 16 (word offsets ks*8 + t and + 4, the
// m16n8k16 A / B fragments); WGMMA: the same 4 k-steps as warpgroup MMAs from shared memory
// (a k16 step is 2 core matrices along K: 256 bytes), waited for before the epilogue reads acc;
// FP32: 32 k, in order, one fmaf each.
template <int FL>
__device__ __forceinline__ void ft_chunk(float (&acc)[FT_NT][4], const uint32_t *Us, const uint32_t *Vs, int w, int g,
                                         int t, int left) {
    if (FL == FT_WGMMA) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            if (ks * 16 >= left) break;  // block-uniform
            ft_wgmma(acc, ft_wg_desc(Us, ks * 256), ft_wg_desc(Vs, ks * 256));
        }
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
        return;
    }
    const uint32_t *ua = Us + (w * FT_WROWS + g) * FT_LDS, *ub = ua + 8 * FT_LDS;
    if (FL == FT_MMA) {
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            if (ks * 16 >= left) break;  // r not a multiple of 64: the chunk's tail is zeros anyway
            const int o = ks * 8 + t;
            const uint32_t a0 = ua[o], a1 = ub[o], a2 = ua[o + 4], a3 = ub[o + 4];
#pragma unroll
            for (int nt = 0; nt < FT_NT; nt++) {
                const uint32_t *vb = Vs + (nt * 8 + g) * FT_LDS;
                ft_mma(acc[nt], a0, a1, a2, a3, vb[o], vb[o + 4]);
            }
        }
    } else {
        const float *fa = reinterpret_cast<const float *>(ua), *fb = reinterpret_cast<const float *>(ub);
        const float *fv = reinterpret_cast<const float *>(Vs);
        const int kn = left < 32 ? left : 32;
        for (int kk = 0; kk < kn; kk++) {
            const float x0 = fa[kk], x1 = fb[kk];
#pragma unroll
            for (int nt = 0; nt < FT_NT; nt++) {
                const float v0 = fv[(nt * 8 + 2 * t) * FT_LDS + kk], v1 = fv[(nt * 8 + 2 * t + 1) * FT_LDS + kk];
                acc[nt][0] = fmaf(x0, v0, acc[nt][0]), acc[nt][1] = fmaf(x0, v1, acc[nt][1]);
                acc[nt][2] = fmaf(x1, v0, acc[nt][2]), acc[nt][3] = fmaf(x1, v1, acc[nt][3]);
            }
        }
    }
}

struct FtParams {
    const void *U, *V;
    long long ldu, U_stride, V_stride, a_stride, c_stride, g_stride;
    const float *a, *c, *gates;
    float gate, sign;
    int n, M, r, k, qcap, gated, relu;
    int32_t *idx, *count, *bidx;
    float *val, *bval;
};

template <int FL, bool BOTH>
__global__ void __launch_bounds__(FT_THREADS, 1) topk_fused(const FtParams p) {
    constexpr bool BF16 = FL != FT_FP32;
    extern __shared__ __align__(16) u64 smem[];
    const int lane = threadIdx.x % QK_SEL_WARP, w = threadIdx.x / QK_SEL_WARP, g = lane / 4, t = lane % 4;
    const int b = blockIdx.y, row0 = blockIdx.x * QK_FSEL_BM;
    u64 *up = smem;
    int *ip;
    // Layout: sides' u64 arrays, then the operand words, then the counts (all 16-byte multiples).
    const int sides = BOTH ? 2 : 1;
    const int ts = qk_fsel_tslots(p.k);
    uint32_t *Us = reinterpret_cast<uint32_t *>(smem + sides * QK_FSEL_BM * (ts + p.qcap + 2));
    uint32_t *Vs = Us + QK_FSEL_BM * FT_LDS;
    ip = reinterpret_cast<int *>(Vs + QK_FSEL_BN * FT_LDS);
    const FtSide top = ft_side(up, ip, p.qcap, ts);
    FtSide bot = top;
    if (BOTH) bot = ft_side(up, ip, p.qcap, ts);
    ft_side_init(top);
    if (BOTH) ft_side_init(bot);

    const int esz = BF16 ? 2 : 4;
    const char *U = static_cast<const char *>(p.U) + b * p.U_stride * esz;
    const char *V = static_cast<const char *>(p.V) + b * p.V_stride * esz;
    const float *c = p.c ? p.c + b * p.c_stride : nullptr;
    const float *gt = p.gates ? p.gates + b * p.g_stride : nullptr;
    const int rA = w * FT_WROWS + g, rB = rA + 8;
    const float aA = p.a && row0 + rA < p.n ? p.a[b * p.a_stride + row0 + rA] : 1.0f;
    const float aB = p.a && row0 + rB < p.n ? p.a[b * p.a_stride + row0 + rB] : 1.0f;
    unsigned actA = 0, actB = 0;
    constexpr int kchunk = BF16 ? 64 : 32;

    // r within one k chunk (look-for, static maps: r = 64 in bf16): the row block stays in Us for
    // the whole walk and the next tile of V is fetched while this one is used.
    // Otherwise (SAE encodes: r = 768) each k chunk of U and V is fetched into registers while the
    // previous chunk is multiplied: the chunk after (k0, j0) is (k0 + kchunk, j0), or (0, j0 + BN).
    const bool resident = p.r <= kchunk;
    uint4 xu[FT_LOADS], xv[FT_LOADS];
    ft_fetch<BF16>(xu, U, p.ldu, row0, p.n, 0, p.r);
    ft_fetch<BF16>(xv, V, p.r, 0, p.M, 0, p.r);
    if (resident) ft_store<FL>(Us, xu);  // read after the loop's first barrier
    for (int j0 = 0; j0 < p.M; j0 += QK_FSEL_BN) {
        float acc[FT_NT][4];
#pragma unroll
        for (int nt = 0; nt < FT_NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        if (resident) {
            __syncthreads();  // the previous tile's (and the init's) readers are done
            ft_store<FL>(Vs, xv);
            __syncthreads();
            if (j0 + QK_FSEL_BN < p.M) ft_fetch<BF16>(xv, V, p.r, j0 + QK_FSEL_BN, p.M, 0, p.r);
            ft_chunk<FL>(acc, Us, Vs, w, g, t, p.r);
        } else {
            for (int k0 = 0; k0 < p.r; k0 += kchunk) {
                __syncthreads();  // the previous chunk's (and the init's) readers are done
                ft_store<FL>(Us, xu);
                ft_store<FL>(Vs, xv);
                __syncthreads();
                const bool last_k = k0 + kchunk >= p.r;
                if (!last_k || j0 + QK_FSEL_BN < p.M) {
                    const int nk = last_k ? 0 : k0 + kchunk, nj = last_k ? j0 + QK_FSEL_BN : j0;
                    ft_fetch<BF16>(xu, U, p.ldu, row0, p.n, nk, p.r);
                    ft_fetch<BF16>(xv, V, p.r, nj, p.M, nk, p.r);
                }
                ft_chunk<FL>(acc, Us, Vs, w, g, t, p.r - k0);
            }
        }
        // Epilogue, warp-local from here: the warp's 16 rows, every score compared with its bar:
        // first as a float against the bar's value (fA.. : qk_fsel_bar_value), and only a score
        // that may pass gets its key, compared exactly.
        u64 pA = top.thr[rA], pB = top.thr[rB], qA = 0, qB = 0;
        if (BOTH) qA = bot.thr[rA], qB = bot.thr[rB];
        for (int pass = 0;; pass++) {
            const float fA = qk_fsel_bar_value(pA), fB = qk_fsel_bar_value(pB);
            const float gA = BOTH ? qk_fsel_bar_value(qA) : 0.0f, gB = BOTH ? qk_fsel_bar_value(qB) : 0.0f;
#pragma unroll
            for (int nt = 0; nt < FT_NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = j0 + nt * 8 + 2 * t + (e & 1), row = e < 2 ? rA : rB;
                    const bool ok = j < p.M;
                    const float cj = c && ok ? __ldg(c + j) : 0.0f, gj = gt && ok ? __ldg(gt + j) : p.gate;
                    const float v = qk_sel_score(acc[nt][e], e < 2 ? aA : aB, cj);
                    if (pass == 0 && p.gated && ok && v > gj) (e < 2 ? actA : actB)++;
                    if (ok && qk_fsel_may_pass(p.sign * v, e < 2 ? fA : fB))
                        ft_offer(top, row, p.qcap, qk_sel_key(v, j, p.sign, p.gated, gj), e < 2 ? pA : pB);
                    if (BOTH && ok && qk_fsel_may_pass(-v, e < 2 ? gA : gB))
                        ft_offer(bot, row, p.qcap, qk_sel_key(v, j, -1.0f, 0, 0.0f), e < 2 ? qA : qB);
                }
            __syncwarp();
            int again = ft_merge_rows(top, p.qcap, p.k, w, lane);
            if (BOTH) again |= ft_merge_rows(bot, p.qcap, p.k, w, lane);
            if (!__any_sync(QK_WQ_FULL, again)) break;
            pA = top.pthr[rA], pB = top.pthr[rB];  // DONE for rows already committed
            if (BOTH) qA = bot.pthr[rA], qB = bot.pthr[rB];
        }
    }

    // Outputs: the warp's rows one by one, the active counts summed over a row's 4 lanes.
#pragma unroll
    for (int m = 1; m < 4; m *= 2) actA += __shfl_xor_sync(QK_WQ_FULL, actA, m), actB += __shfl_xor_sync(QK_WQ_FULL, actB, m);
    for (int rr = 0; rr < FT_WROWS; rr++) {
        const int row = w * FT_WROWS + rr, i = row0 + row;
        const unsigned act = __shfl_sync(QK_WQ_FULL, rr < 8 ? actA : actB, (rr % 8) * 4);
        if (i >= p.n) continue;  // warp-uniform
        const long long o = ((long long)b * p.n + i) * p.k;
        u64 q0, q1;
        ft_load_T(top, row, lane, q0, q1);
        const int counted = qk_wq_output(q0, q1, lane, p.k, p.sign, p.relu, p.idx + o, p.val + o);
        if (BOTH) {
            ft_load_T(bot, row, lane, q0, q1);
            qk_wq_output(q0, q1, lane, p.k, -1.0f, 0, p.bidx + o, p.bval + o);
        }
        if (lane == 0 && p.count) p.count[(long long)b * p.n + i] = p.gated ? (int32_t)act : counted;
    }
}

template <int FL, bool BOTH>
static int ft_launch(const FtParams &p, int batch, cudaStream_t stream, int sync_each, size_t smem, const char *shape) {
    const dim3 grid((p.n + QK_FSEL_BM - 1) / QK_FSEL_BM, batch);
    static const char *names[3][2] = {{"topk_fused<fp32>", "topk_fused<fp32,both>"},
                                      {"topk_fused<mma.sync bf16>", "topk_fused<mma.sync bf16,both>"},
                                      {"topk_fused<wgmma bf16>", "topk_fused<wgmma bf16,both>"}};
    const char *name = names[FL][BOTH];
    cudaError_t e = cudaFuncSetAttribute(topk_fused<FL, BOTH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess) {
        topk_fused<FL, BOTH><<<grid, FT_THREADS, smem, stream>>>(p);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess && sync_each) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess)
        return qk_err("kernel %s<<<(%u,%u),%d,%zu>>> [%s]: %s", name, grid.x, grid.y, FT_THREADS, smem, shape,
                      cudaGetErrorString(e));
    return 0;
}

// The wgmma flavour's launch (topk_fused_sm90.cu, built for sm_90a only).
int qk_fused_launch_wgmma(const FtParams &p, int batch, cudaStream_t stream, int sync_each, size_t smem,
                          const char *shape, int both);
