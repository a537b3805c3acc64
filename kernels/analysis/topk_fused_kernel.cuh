// topk_fused_kernel.cuh: the fused bilinear top-k kernel (API and shapes: topk_fused.h), one
// template for its four ways of making scores (FtFlavor), included by topk_fused_sm80.cu (fp32
// FMA and mma.sync bf16, built for every target) and topk_fused_sm90.cu (the two wgmma flavours,
// built for sm_90a only).  One block owns 64 rows of one problem and walks every column of V in
// tiles of 64; each tile's scores are made in registers, compared once with their row's bar, and
// only the survivors go to the row's queue in shared memory, merged into the row's running top-64
// by a warp bitonic network (warp_queue.cuh).  A queue that overflows is rescanned from the
// registers it came from (topk_fused_select.h): exact, whatever the order of the columns.
// With a seed list (topk_fused_select.h, "Seeding") the block first scores the seed tile (the
// columns with the best c_j, gathered), then walks every tile skipping those columns.
//
// Warp w owns rows 16w .. 16w+15 of the block and all 64 columns of a tile, so a row's scores,
// queue and merge stay inside one warp.  Lane (g = lane/4, t = lane%4) holds, per n8 tile nt,
// the mma accumulator layout: acc[nt][0..1] = row 16w+g, columns 8nt+2t, +1; acc[nt][2..3] =
// row 16w+g+8, same columns (PTX ISA, mma.m16n8k16 C fragment; wgmma m64nNk16's D fragment is the
// same per warp of the warpgroup); the FP32 flavour computes the same layout with FMAs so the
// epilogue is shared.
//
// Shared memory (dynamic, in this order; ft_smem_bytes):
//   operands  FP32 / MMA / WGMMA: Us [64 x 36] and Vs [64 x 36] 32-bit words, a k chunk of 64 bf16
//             or 32 fp32 per row (128 bytes) in rows of 144 bytes, so the fragment loads hit 32
//             distinct banks (WGMMA: the same 128 bytes per row in wgmma's core-matrix layout,
//             ft_word).  WGMMA_TMA: from a 1024-byte boundary, FT_STAGES stages of (U box, V box),
//             each box 64 rows x 128 bytes (64 bf16 of one k chunk) as TMA's SWIZZLE_128B writes
//             it; stage 0's boxes double as Us / Vs of the seed tile.
//   barriers  2 x FT_STAGES + 1 mbarriers (u64; used by WGMMA_TMA only): full, empty, U resident
//   per side  T [64 x ts] u64 (ts = 32 or 64), queue [64 x qcap] u64, thr [64] u64, pthr [64] u64
//             (one side = the top queue, two with top + bottom)
//   ints      cnt [64] per side, then the seed list [QK_FSEL_SEEDS] (QK_FSEL_NOSEED when unseeded)
#pragma once
#include <cuda.h>  // CUtensorMap, the type only: the encoder comes through cudaGetDriverEntryPointByVersion
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_try.h"
#include "topk_fused.h"
#include "topk_fused_select.h"
#include "warp_queue.cuh"

typedef unsigned long long u64;

// How a tile's scores are made: fp32 FMAs (the parity mode), bf16 mma.sync (sm_80 and later),
// bf16 wgmma from operands stored to shared memory by the threads (one stage, sm_90a only), or
// bf16 wgmma from operands that TMA brings into a FT_STAGES ring (sm_90a only; topk_fused_sm90.cu).
enum FtFlavor { FT_FP32 = 0, FT_MMA = 1, FT_WGMMA = 2, FT_WGMMA_TMA = 3 };

#define FT_THREADS 128
#define FT_WARPS 4
#define FT_WROWS 16                 // rows per warp
#define FT_NT (QK_FSEL_BN / 8)      // n8 accumulator tiles per warp per column tile
#define FT_LDS 36                   // 32-bit words per operand row in shared memory (32 + 4 pad)
#define FT_VECS 8                   // 16-byte vectors per operand row of a k chunk
#define FT_TSLOTS 64                // T slots per row at most (the warp queue; qk_fsel_tslots)
#define FT_STAGES 3                 // WGMMA_TMA ring stages: 3 x 16 KiB; with k <= 32 and one side a
                                    // block needs ~99 KiB (ft_smem_bytes), so two blocks share an SM
#define FT_BOX_BYTES (QK_FSEL_BM * 128)  // one TMA box: 64 rows x 64 bf16 (8 KiB)
#define FT_SW_ALIGN 1024            // SWIZZLE_128B repeats every 8 rows x 128 bytes: boxes start there
#define FT_BARS (2 * FT_STAGES + 1)  // WGMMA_TMA's mbarriers: full [FT_STAGES], empty [FT_STAGES], U

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

// One k chunk of 64 rows of X (row stride ld elements, `lim` rows, r columns): rows base + e, or
// rows list[e] when list is given (the seed tile's gather; an entry >= lim is a zero row),
// fetched into registers (x [4]: this thread's 16-byte vectors), zero past the rows and past r;
// then stored to shared memory (ft_store).  Split so that the next tile's fetch is in flight while
// this one is multiplied and selected.  Element type: bf16 (8 per vector) or fp32 (4).
#define FT_LOADS (QK_FSEL_BM * FT_VECS / FT_THREADS)
template <bool BF16>
__device__ __forceinline__ void ft_fetch(uint4 (&x)[FT_LOADS], const void *X, long long ld, const int *list, int base,
                                         int lim, int k0, int r) {
    constexpr int PER = BF16 ? 8 : 4, ESZ = BF16 ? 2 : 4;
#pragma unroll
    for (int i = 0; i < FT_LOADS; i++) {
        const int e = threadIdx.x + FT_THREADS * i, row = e / FT_VECS, v = e % FT_VECS;
        const int kk = k0 + v * PER, src = list ? list[row] : base + row;
        x[i] = make_uint4(0u, 0u, 0u, 0u);
        if (src < lim && kk < r)
            x[i] = __ldg(reinterpret_cast<const uint4 *>(static_cast<const char *>(X) + ((long long)src * ld + kk) * ESZ));
    }
}

// Where vector v (16 bytes) of operand row `row` goes in S, in 32-bit words.  FP32 / MMA: padded
// rows of FT_LDS words (conflict-free fragment loads).  WGMMA: wgmma's K-major layout without
// swizzle, 8 x 16-byte "core matrices" of 128 contiguous bytes, core (row / 8, v) at
// ((row / 8) * 8 + v) * 128 bytes: K-adjacent cores 128 bytes apart (the descriptor's leading
// byte offset), 8-row groups 1024 bytes apart (its stride byte offset).  WGMMA_TMA: what TMA's
// SWIZZLE_128B writes for a box of 128-byte rows at a 1024-byte boundary: row r at r * 128 bytes,
// its 16-byte vector v at position v ^ (r % 8) (cuda.h, CU_TENSOR_MAP_SWIZZLE_128B: "16B chunks
// within 128B span"; CUTLASS / CuTe's Swizzle<3,4,3>: byte-offset bits 4-6 ^= bits 7-9), so the
// seed tile's gathered rows land where a TMA load would put them.
template <int FL>
__device__ __forceinline__ int ft_word(int row, int v) {
    if (FL == FT_WGMMA_TMA) return row * 32 + (v ^ (row & 7)) * 4;
    return FL == FT_WGMMA ? (((row >> 3) * FT_VECS + v) * 128 + (row & 7) * 16) / 4 : row * FT_LDS + v * 4;
}

template <int FL>
__device__ __forceinline__ void ft_store(uint32_t *S, const uint4 (&x)[FT_LOADS]) {
#pragma unroll
    for (int i = 0; i < FT_LOADS; i++) {
        const int e = threadIdx.x + FT_THREADS * i;
        *reinterpret_cast<uint4 *>(S + ft_word<FL>(e / FT_VECS, e % FT_VECS)) = x[i];
    }
    // wgmma reads shared memory through the async proxy (and TMA later writes the same boxes):
    // these generic stores must be made visible to it (then the block barrier that follows every
    // store orders them for all warps).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (FL >= FT_WGMMA) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void ft_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
#if defined(QK_CUDA_EMU)  // the emulated device (tests/cudaemu): the same fragments, per the PTX ISA's tables
    ::cudaemu::mma_m16n8k16_bf16(c, a0, a1, a2, a3, b0, b1, __LINE__, __FILE__);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// wgmma's shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format", sm_90): start
// address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29, stride byte offset >> 4 in 32-45,
// base offset in 49-51 (0: every buffer starts at a 1024-byte boundary), layout type in 62-63.
// WGMMA (no swizzle, type 0): LBO 128 (K-adjacent core matrices), SBO 1024 (8-row groups).
// WGMMA_TMA (SWIZZLE_128B, type 1): SBO 1024 (8 rows x 128 bytes), LBO unused for K-major
// swizzled layouts ("assumed to be 1", PTX ISA "Leading Dimension Byte Offset"; CUTLASS's
// make_gmma_desc sets 1 too); a k16 step inside the 128-byte swizzle atom advances the start
// address by 32 bytes (ft_wg_step), the hardware applying the swizzle to the full address (as
// DeepGEMM's and CUTLASS's SM90 mainloops advance their K-major SW128 descriptors).
template <int FL>
__device__ __forceinline__ unsigned long long ft_wg_desc(const void *smem, unsigned byte_off) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(smem) + byte_off;
    const unsigned long long start = (addr & 0x3FFFFu) >> 4;
    if (FL == FT_WGMMA_TMA) return start | 1ull << 16 | (unsigned long long)(1024u >> 4) << 32 | 1ull << 62;
    return start | (unsigned long long)(128u >> 4) << 16 | (unsigned long long)(1024u >> 4) << 32;
}

// Bytes between the k16 steps of a chunk: 2 core matrices along K (WGMMA), 16 bf16 (WGMMA_TMA).
template <int FL>
__device__ __forceinline__ unsigned ft_wg_step() { return FL == FT_WGMMA_TMA ? 32u : 256u; }

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

// Elements of one k chunk: a 128-byte operand row, 64 bf16 or 32 fp32.
__host__ __device__ constexpr int ft_kchunk(int fl) { return fl == FT_FP32 ? 32 : 64; }

// A tile's accumulators, zeroed before its first k chunk.
__device__ __forceinline__ void ft_acc_zero(float (&acc)[FT_NT][4]) {
#pragma unroll
    for (int nt = 0; nt < FT_NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
}

// Pins the accumulators in their registers around asynchronous wgmma (as CUTLASS's
// warpgroup_fence_operand): the compiler may not move or copy them while a wgmma writes them.
__device__ __forceinline__ void ft_acc_fence(float (&acc)[FT_NT][4]) {
#pragma unroll
    for (int nt = 0; nt < FT_NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
#if defined(QK_CUDA_EMU)  // the emulated device: no registers to pin (and no wgmma runs there)
            (void)acc[nt][e];
#else
            asm volatile("" : "+f"(acc[nt][e])::"memory");
#endif
        }
}

// Issues this chunk's k16 steps (at most 4, `left` k columns left in r) as one wgmma group;
// returns without waiting for it.
template <int FL>
__device__ __forceinline__ void ft_wg_issue(float (&acc)[FT_NT][4], const void *Us, const void *Vs, int left) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    ft_acc_fence(acc);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        if (ks * 16 >= left) break;  // block-uniform
        ft_wgmma(acc, ft_wg_desc<FL>(Us, ks * ft_wg_step<FL>()), ft_wg_desc<FL>(Vs, ks * ft_wg_step<FL>()));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
    (void)acc, (void)Us, (void)Vs, (void)left;
    __trap();  // built for sm_90a only (topk_fused_sm90.cu): never a silent empty product elsewhere
#endif
}

// Waits until at most N of this warp's wgmma groups are in flight.
template <int N>
__device__ __forceinline__ void ft_wg_wait(float (&acc)[FT_NT][4]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
    ft_acc_fence(acc);
}

// acc += this chunk's products.  MMA: 4 k-steps of 16 (word offsets ks*8 + t and + 4, the
// m16n8k16 A / B fragments); WGMMA / WGMMA_TMA: the same 4 k-steps as warpgroup MMAs from shared
// memory, waited for before the epilogue reads acc; FP32: 32 k, in order, one fmaf each.
template <int FL>
__device__ __forceinline__ void ft_chunk(float (&acc)[FT_NT][4], const uint32_t *Us, const uint32_t *Vs, int w, int g,
                                         int t, int left) {
    if (FL >= FT_WGMMA) {
        ft_wg_issue<FL>(acc, Us, Vs, left);
        ft_wg_wait<0>(acc);
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
    CUtensorMap tmU, tmV;  // WGMMA_TMA only: U (r, n, batch) and V (r, M, batch), boxes 64 x 64 x 1
    const void *U, *V;
    long long ldu, U_stride, V_stride, a_stride, c_stride, g_stride, s_stride;
    const float *a, *c, *gates;
    const int32_t *seeds;  // [problems][QK_FSEL_SEEDS] column-sorted seed lists (problem b at b * s_stride), or NULL
    float gate, sign;
    int n, M, r, k, qcap, gated, relu;
    int32_t *idx, *count, *bidx;
    float *val, *bval;
};

// Bytes of the operand region of a flavour (see the layout at the top).
__host__ __device__ inline size_t ft_operand_bytes(int fl) {
    return fl == FT_WGMMA_TMA ? (size_t)FT_STAGES * 2 * FT_BOX_BYTES : (size_t)(QK_FSEL_BM + QK_FSEL_BN) * FT_LDS * 4;
}

// A block's dynamic shared memory for flavour fl, this k and 1 or 2 sides (the layout at the top;
// WGMMA_TMA adds the slack that brings its boxes to a 1024-byte boundary).
__host__ __device__ inline size_t ft_smem_bytes(int fl, int k, int sides) {
    const size_t ts = (size_t)qk_fsel_tslots(k), qcap = (size_t)qk_fsel_qcap(k);
    const size_t u64s = FT_BARS + (size_t)sides * QK_FSEL_BM * (ts + qcap + 2);
    const size_t ints = (size_t)sides * QK_FSEL_BM + QK_FSEL_SEEDS;
    return (fl == FT_WGMMA_TMA ? FT_SW_ALIGN : 0) + ft_operand_bytes(fl) + u64s * sizeof(u64) + ints * sizeof(int);
}

struct FtSmem {
    unsigned char *ops;  // operand region (WGMMA_TMA: stage s's U box at s * 2 boxes, its V box after)
    uint32_t *Us, *Vs;   // the one-stage operands (WGMMA_TMA: stage 0's boxes, for the seed tile)
    u64 *bar;            // [FT_BARS]
    FtSide top, bot;
    int *seeds;          // [QK_FSEL_SEEDS]
};

template <int FL, bool BOTH>
__device__ __forceinline__ FtSmem ft_carve(unsigned char *raw, int qcap, int ts) {
    FtSmem s;
    s.ops = raw;
    if (FL == FT_WGMMA_TMA) {
        const unsigned a = (unsigned)__cvta_generic_to_shared(raw);
        s.ops += (FT_SW_ALIGN - (a & (FT_SW_ALIGN - 1))) & (FT_SW_ALIGN - 1);
    }
    s.Us = reinterpret_cast<uint32_t *>(s.ops);
    s.Vs = s.Us + (FL == FT_WGMMA_TMA ? FT_BOX_BYTES / 4 : QK_FSEL_BM * FT_LDS);
    u64 *up = reinterpret_cast<u64 *>(s.ops + ft_operand_bytes(FL));
    s.bar = up, up += FT_BARS;
    int *ip = reinterpret_cast<int *>(up + (BOTH ? 2 : 1) * QK_FSEL_BM * (ts + qcap + 2));
    s.top = ft_side(up, ip, qcap, ts);
    s.bot = s.top;
    if (BOTH) s.bot = ft_side(up, ip, qcap, ts);
    s.seeds = ip;
    return s;
}

// What a thread knows of its rows: problem b, the block's first row, warp w, lane (g, t), its two
// rows rA, rB (block-local) with their a_i, c and gates of the problem, GATED active counts.
struct FtRow {
    int b, row0, w, lane, g, t, rA, rB;
    float aA, aB;
    const float *c, *gt;
    unsigned actA, actB;
};

__device__ __forceinline__ FtRow ft_row(const FtParams &p) {
    FtRow x;
    x.b = blockIdx.y, x.row0 = blockIdx.x * QK_FSEL_BM;
    x.lane = threadIdx.x % QK_SEL_WARP, x.w = threadIdx.x / QK_SEL_WARP, x.g = x.lane / 4, x.t = x.lane % 4;
    x.rA = x.w * FT_WROWS + x.g, x.rB = x.rA + 8;
    x.aA = p.a && x.row0 + x.rA < p.n ? p.a[x.b * p.a_stride + x.row0 + x.rA] : 1.0f;
    x.aB = p.a && x.row0 + x.rB < p.n ? p.a[x.b * p.a_stride + x.row0 + x.rB] : 1.0f;
    x.c = p.c ? p.c + x.b * p.c_stride : nullptr;
    x.gt = p.gates ? p.gates + x.b * p.g_stride : nullptr;
    x.actA = x.actB = 0;
    return x;
}

// The epilogue of one tile, warp-local: the warp's 16 rows, every score compared with its bar:
// first as a float against the bar's value (fA.. : qk_fsel_bar_value), and only a score that may
// pass gets its key, compared exactly; then the merges (and rescans) of topk_fused_select.h.
// Column of accumulator position pos (0..63): SEED: sj[pos] (the seed tile; NOSEED: none);
// else j0 + pos, offered unless past M or a seed (bit pos of `seeded`).
template <bool BOTH, bool SEED>
__device__ __forceinline__ void ft_epilogue(const FtParams &p, FtRow &x, const FtSide &top, const FtSide &bot,
                                            const float (&acc)[FT_NT][4], int j0, const int *sj, u64 seeded) {
    u64 pA = top.thr[x.rA], pB = top.thr[x.rB], qA = 0, qB = 0;
    if (BOTH) qA = bot.thr[x.rA], qB = bot.thr[x.rB];
    for (int pass = 0;; pass++) {
        const float fA = qk_fsel_bar_value(pA), fB = qk_fsel_bar_value(pB);
        const float gA = BOTH ? qk_fsel_bar_value(qA) : 0.0f, gB = BOTH ? qk_fsel_bar_value(qB) : 0.0f;
#pragma unroll
        for (int nt = 0; nt < FT_NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int pos = nt * 8 + 2 * x.t + (e & 1), row = e < 2 ? x.rA : x.rB;
                const int j = SEED ? sj[pos] : j0 + pos;
                const bool ok = SEED ? j < p.M : qk_fsel_walk_col(j0, pos, p.M, seeded);
                const float cj = x.c && ok ? __ldg(x.c + j) : 0.0f, gj = x.gt && ok ? __ldg(x.gt + j) : p.gate;
                const float v = qk_sel_score(acc[nt][e], e < 2 ? x.aA : x.aB, cj);
                if (pass == 0 && p.gated && ok && v > gj) (e < 2 ? x.actA : x.actB)++;
                if (ok && qk_fsel_may_pass(p.sign * v, e < 2 ? fA : fB))
                    ft_offer(top, row, p.qcap, qk_sel_key(v, j, p.sign, p.gated, gj), e < 2 ? pA : pB);
                if (BOTH && ok && qk_fsel_may_pass(-v, e < 2 ? gA : gB))
                    ft_offer(bot, row, p.qcap, qk_sel_key(v, j, -1.0f, 0, 0.0f), e < 2 ? qA : qB);
            }
        __syncwarp();
        int again = ft_merge_rows(top, p.qcap, p.k, x.w, x.lane);
        if (BOTH) again |= ft_merge_rows(bot, p.qcap, p.k, x.w, x.lane);
        if (!__any_sync(QK_WQ_FULL, again)) break;
        pA = top.pthr[x.rA], pB = top.pthr[x.rB];  // DONE for rows already committed
        if (BOTH) qA = bot.pthr[x.rA], qB = bot.pthr[x.rB];
    }
}

// The seed tile (topk_fused_select.h, "Seeding"): the block's rows against the seed columns,
// gathered by ordinary loads into the one-stage operands (WGMMA_TMA: stage 0's boxes, in the
// swizzled layout TMA would write), chunk by chunk, then offered as the walk's first tile.
template <int FL, bool BOTH>
__device__ __forceinline__ void ft_seed_tile(const FtParams &p, FtRow &x, const FtSmem &s, const char *U,
                                             const char *V) {
    constexpr bool BF16 = FL != FT_FP32;
    constexpr int kchunk = ft_kchunk(FL);
    float acc[FT_NT][4];
    ft_acc_zero(acc);
    for (int k0 = 0; k0 < p.r; k0 += kchunk) {
        uint4 xu[FT_LOADS], xv[FT_LOADS];
        ft_fetch<BF16>(xu, U, p.ldu, nullptr, x.row0, p.n, k0, p.r);
        ft_fetch<BF16>(xv, V, p.r, s.seeds, 0, p.M, k0, p.r);
        __syncthreads();  // the previous chunk's readers are done
        ft_store<FL>(s.Us, xu);
        ft_store<FL>(s.Vs, xv);
        __syncthreads();
        ft_chunk<FL>(acc, s.Us, s.Vs, x.w, x.g, x.t, p.r - k0);
    }
    ft_epilogue<BOTH, true>(p, x, s.top, s.bot, acc, 0, s.seeds, 0);
    __syncthreads();  // every warp's reads of the operands are done before the walk overwrites them
}

// The walk of FP32 / MMA / WGMMA: operands fetched into registers while the previous chunk is
// multiplied, stored to the one-stage Us / Vs between two block barriers.
// r within one k chunk (look-for, static maps: r = 64 in bf16): the row block stays in Us for
// the whole walk and the next tile of V is fetched while this one is used.
// Otherwise (SAE encodes: r = 768) each k chunk of U and V is fetched into registers while the
// previous chunk is multiplied: the chunk after (k0, j0) is (k0 + kchunk, j0), or (0, j0 + BN).
template <int FL, bool BOTH>
__device__ __forceinline__ void ft_walk_regs(const FtParams &p, FtRow &x, const FtSmem &s, const char *U,
                                             const char *V) {
    constexpr bool BF16 = FL != FT_FP32;
    constexpr int kchunk = ft_kchunk(FL);
    const bool resident = p.r <= kchunk;
    uint32_t *Us = s.Us, *Vs = s.Vs;
    uint4 xu[FT_LOADS], xv[FT_LOADS];
    ft_fetch<BF16>(xu, U, p.ldu, nullptr, x.row0, p.n, 0, p.r);
    ft_fetch<BF16>(xv, V, p.r, nullptr, 0, p.M, 0, p.r);
    if (resident) ft_store<FL>(Us, xu);  // read after the loop's first barrier
    int sp = 0;                          // the first seed not yet behind the walk
    for (int j0 = 0; j0 < p.M; j0 += QK_FSEL_BN) {
        float acc[FT_NT][4];
        ft_acc_zero(acc);
        if (resident) {
            __syncthreads();  // the previous tile's (and the init's) readers are done
            ft_store<FL>(Vs, xv);
            __syncthreads();
            if (j0 + QK_FSEL_BN < p.M) ft_fetch<BF16>(xv, V, p.r, nullptr, j0 + QK_FSEL_BN, p.M, 0, p.r);
            ft_chunk<FL>(acc, Us, Vs, x.w, x.g, x.t, p.r);
        } else {
            for (int k0 = 0; k0 < p.r; k0 += kchunk) {
                __syncthreads();  // the previous chunk's (and the init's) readers are done
                ft_store<FL>(Us, xu);
                ft_store<FL>(Vs, xv);
                __syncthreads();
                const bool last_k = k0 + kchunk >= p.r;
                if (!last_k || j0 + QK_FSEL_BN < p.M) {
                    const int nk = last_k ? 0 : k0 + kchunk, nj = last_k ? j0 + QK_FSEL_BN : j0;
                    ft_fetch<BF16>(xu, U, p.ldu, nullptr, x.row0, p.n, nk, p.r);
                    ft_fetch<BF16>(xv, V, p.r, nullptr, nj, p.M, nk, p.r);
                }
                ft_chunk<FL>(acc, Us, Vs, x.w, x.g, x.t, p.r - k0);
            }
        }
        ft_epilogue<BOTH, false>(p, x, s.top, s.bot, acc, j0, nullptr, qk_fsel_seed_mask(s.seeds, &sp, j0));
    }
}

// ---------------------------------------------------------------------------------------------
// TMA and mbarriers (WGMMA_TMA; PTX ISA: "mbarrier", "cp.async.bulk.tensor"; the same
// instructions CUTLASS's ClusterTransactionBarrier and SM90_TMA_LOAD_3D issue).  A stage's "full"
// barrier (count 1) completes when thread 0 has armed it with the stage's bytes
// (arrive.expect_tx) and TMA has written them (complete_tx); its "empty" barrier (count 128)
// when every thread's wgmma reading the stage has completed.  Use u of a barrier is phase u:
// waits test parity u & 1.

__device__ __forceinline__ unsigned ft_saddr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ft_bar_init(u64 *bar, unsigned count) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(ft_saddr(bar)), "r"(count) : "memory");
#else
    (void)bar, (void)count;
#endif
}

__device__ __forceinline__ void ft_bar_expect(u64 *bar, unsigned bytes) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(ft_saddr(bar)), "r"(bytes) : "memory");
#else
    (void)bar, (void)bytes;
#endif
}

__device__ __forceinline__ void ft_bar_arrive(u64 *bar) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(ft_saddr(bar)) : "memory");
#else
    (void)bar;
#endif
}

__device__ __forceinline__ void ft_bar_wait(u64 *bar, unsigned parity) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    unsigned done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(ft_saddr(bar)), "r"(parity)
            : "memory");
    } while (!done);
#else
    (void)bar, (void)parity;
#endif
}

// Box (c0 = k, c1 = row, c2 = problem) of a 3-D tensor map into dst, completing on bar.
__device__ __forceinline__ void ft_tma_load(void *dst, const CUtensorMap *map, int c0, int c1, int c2, u64 *bar) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
            ft_saddr(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(ft_saddr(bar))
        : "memory");
#else
    (void)dst, (void)map, (void)c0, (void)c1, (void)c2, (void)bar;
#endif
}

// Thread 0 initialises the barriers, made visible to the async proxy (TMA's complete_tx) before
// the block barrier that follows.
__device__ __forceinline__ void ft_bars_init(u64 *bar) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (threadIdx.x == 0) {
        for (int st = 0; st < FT_STAGES; st++) ft_bar_init(bar + st, 1), ft_bar_init(bar + FT_STAGES + st, FT_THREADS);
        ft_bar_init(bar + 2 * FT_STAGES, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
    }
#else
    (void)bar;
#endif
}

// The WGMMA_TMA walk.  Loads L = 0, 1, .. in walk order go to stage L % FT_STAGES: r <= 64
// (resident): load L is V's tile L, U's box loaded once before (barrier U, into stage 0's U box,
// which the ring then leaves alone); else load L is (tile L / KC, k chunk L % KC) of U and V.
// Thread 0 issues the first FT_STAGES loads, then each refill as soon as every thread has
// released the stage (its empty barrier); r = 768 keeps two chunks' wgmma in flight (the
// previous chunk is waited for, and its stage released, after the next is issued).
template <bool BOTH>
__device__ __forceinline__ void ft_walk_tma(const FtParams &p, FtRow &x, const FtSmem &s) {
    constexpr int kchunk = ft_kchunk(FT_WGMMA_TMA);
    const int KC = (p.r + kchunk - 1) / kchunk, ntiles = (p.M + QK_FSEL_BN - 1) / QK_FSEL_BN;
    const bool resident = KC == 1;
    const long long total = (long long)ntiles * KC;
    u64 *full = s.bar, *empty = s.bar + FT_STAGES, *ubar = s.bar + 2 * FT_STAGES;
    unsigned char *const ops = s.ops;
    const auto ubox = [ops](int st) { return ops + st * 2 * FT_BOX_BYTES; };
    const auto vbox = [ops](int st) { return ops + st * 2 * FT_BOX_BYTES + FT_BOX_BYTES; };
    const auto issue = [&](long long L) {  // thread 0
        const int st = (int)(L % FT_STAGES), tile = (int)(L / KC), kc = (int)(L % KC);
        ft_bar_expect(full + st, resident ? FT_BOX_BYTES : 2 * FT_BOX_BYTES);
        if (!resident) ft_tma_load(ubox(st), &p.tmU, kc * kchunk, x.row0, x.b, full + st);
        ft_tma_load(vbox(st), &p.tmV, kc * kchunk, tile * QK_FSEL_BN, x.b, full + st);
    };
    const auto release = [&](long long L) {  // every thread, once its wgmma reading load L completed
        const int st = (int)(L % FT_STAGES);
        ft_bar_arrive(empty + st);
        if (threadIdx.x == 0 && L + FT_STAGES < total) {
            ft_bar_wait(empty + st, (unsigned)(L / FT_STAGES) & 1u);
            issue(L + FT_STAGES);
        }
        __syncwarp();
    };
    // The seed tile (if any) is done with stage 0 (ft_seed_tile's last barrier; its generic stores
    // were fenced for the async proxy by ft_store).
    if (threadIdx.x == 0) {
        if (resident) {
            ft_bar_expect(ubar, FT_BOX_BYTES);
            ft_tma_load(ubox(0), &p.tmU, 0, x.row0, x.b, ubar);
        }
        for (long long L = 0; L < total && L < FT_STAGES; L++) issue(L);
    }
    __syncwarp();
    if (resident) ft_bar_wait(ubar, 0);
    int sp = 0;  // the first seed not yet behind the walk
    for (int tile = 0; tile < ntiles; tile++) {
        float acc[FT_NT][4];
        ft_acc_zero(acc);
        const long long L0 = (long long)tile * KC;
        for (int kc = 0; kc < KC; kc++) {
            const int st = (int)((L0 + kc) % FT_STAGES);
            ft_bar_wait(full + st, (unsigned)((L0 + kc) / FT_STAGES) & 1u);
            ft_wg_issue<FT_WGMMA_TMA>(acc, resident ? ubox(0) : ubox(st), vbox(st), p.r - kc * kchunk);
            if (kc > 0) {
                ft_wg_wait<1>(acc);
                release(L0 + kc - 1);
            }
        }
        ft_wg_wait<0>(acc);
        release(L0 + KC - 1);
        const int j0 = tile * QK_FSEL_BN;
        ft_epilogue<BOTH, false>(p, x, s.top, s.bot, acc, j0, nullptr, qk_fsel_seed_mask(s.seeds, &sp, j0));
    }
}

// Outputs: the warp's rows one by one, the active counts summed over a row's 4 lanes.
template <bool BOTH>
__device__ __forceinline__ void ft_output(const FtParams &p, FtRow &x, const FtSmem &s) {
#pragma unroll
    for (int m = 1; m < 4; m *= 2)
        x.actA += __shfl_xor_sync(QK_WQ_FULL, x.actA, m), x.actB += __shfl_xor_sync(QK_WQ_FULL, x.actB, m);
    for (int rr = 0; rr < FT_WROWS; rr++) {
        const int row = x.w * FT_WROWS + rr, i = x.row0 + row;
        const unsigned act = __shfl_sync(QK_WQ_FULL, rr < 8 ? x.actA : x.actB, (rr % 8) * 4);
        if (i >= p.n) continue;  // warp-uniform
        const long long o = ((long long)x.b * p.n + i) * p.k;
        u64 q0, q1;
        ft_load_T(s.top, row, x.lane, q0, q1);
        const int counted = qk_wq_output(q0, q1, x.lane, p.k, p.sign, p.relu, p.idx + o, p.val + o);
        if (BOTH) {
            ft_load_T(s.bot, row, x.lane, q0, q1);
            qk_wq_output(q0, q1, x.lane, p.k, -1.0f, 0, p.bidx + o, p.bval + o);
        }
        if (x.lane == 0 && p.count) p.count[(long long)x.b * p.n + i] = p.gated ? (int32_t)act : counted;
    }
}

template <int FL, bool BOTH>
__global__ void __launch_bounds__(FT_THREADS, 1) topk_fused(const __grid_constant__ FtParams p) {
    extern __shared__ __align__(16) unsigned char ft_raw[];
    const FtSmem s = ft_carve<FL, BOTH>(ft_raw, p.qcap, qk_fsel_tslots(p.k));
    FtRow x = ft_row(p);
    ft_side_init(s.top);
    if (BOTH) ft_side_init(s.bot);
    for (int e = threadIdx.x; e < QK_FSEL_SEEDS; e += FT_THREADS)
        s.seeds[e] = p.seeds ? p.seeds[x.b * p.s_stride + e] : QK_FSEL_NOSEED;
    if (FL == FT_WGMMA_TMA) ft_bars_init(s.bar);
    __syncthreads();
    const int esz = FL != FT_FP32 ? 2 : 4;
    const char *U = static_cast<const char *>(p.U) + x.b * p.U_stride * esz;
    const char *V = static_cast<const char *>(p.V) + x.b * p.V_stride * esz;
    if (p.seeds) ft_seed_tile<FL, BOTH>(p, x, s, U, V);
    if (FL == FT_WGMMA_TMA) ft_walk_tma<BOTH>(p, x, s);
    else ft_walk_regs<FL, BOTH>(p, x, s, U, V);
    ft_output<BOTH>(p, x, s);
}

template <int FL, bool BOTH>
static int ft_launch(const FtParams &p, int batch, cudaStream_t stream, int sync_each, size_t smem, const char *shape) {
    const dim3 grid((p.n + QK_FSEL_BM - 1) / QK_FSEL_BM, batch);
    static const char *names[4][2] = {{"topk_fused<fp32>", "topk_fused<fp32,both>"},
                                      {"topk_fused<mma.sync bf16>", "topk_fused<mma.sync bf16,both>"},
                                      {"topk_fused<wgmma bf16>", "topk_fused<wgmma bf16,both>"},
                                      {"topk_fused<wgmma+tma bf16>", "topk_fused<wgmma+tma bf16,both>"}};
    const char *name = names[FL][BOTH];
    cudaError_t e = cudaFuncSetAttribute(topk_fused<FL, BOTH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess) {
        topk_fused<FL, BOTH><<<grid, FT_THREADS, smem, stream>>>(p);
        e = qk_launch_status(stream, sync_each);
    }
    if (e != cudaSuccess)
        return qk_err("kernel %s<<<(%u,%u),%d,%zu>>> [%s]: %s", name, grid.x, grid.y, FT_THREADS, smem, shape,
                      cudaGetErrorString(e));
    return 0;
}

// The wgmma flavours' launch (topk_fused_sm90.cu, built for sm_90a only): store-based (tma 0) or
// TMA (tma 1: encodes p's tensor maps with cfg's encoder first).
int qk_fused_launch_wgmma(FtParams &p, const QkFusedConfig *cfg, int tma, int batch, cudaStream_t stream,
                          int sync_each, size_t smem, const char *shape, int both);
