// gemm.c: see gemm.h.
//
// BLIS-shaped: C is cut into tiles of TG x TN that never depend on the thread count; a thread
// owning a tile walks K in blocks of KC, packs B (KC x TN) into column panels of NR, and runs the
// MR x NR micro-kernel over them and MR rows of A read in place (six row streams; blocks of TM rows
// stay in L2 while the B panels pass).  The micro-kernel loads its
// accumulators from C (or zeros on the first block without accumulate) and adds the block's terms
// in increasing k, so a float stored to C and reloaded between blocks continues the same chain.
// Partial tiles go through a zero-padded MR x NR scratch: padding adds 0 * 0 to lanes that are
// thrown away and never touches a real element's chain.
#include "base/gemm.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

enum {
    MR = 6,    // micro-kernel rows: 6 x 2 ymm accumulators + 2 B vectors + 1 broadcast = 15 registers
    NR = 16,   // micro-kernel columns (two 8-lane vectors)
    KC = 256,  // K block: an MR x KC panel of A (6 KB) and an NR x KC panel of B (16 KB) sit in L1
    TM = 96,   // rows of A per pass over the B panels (96 x KC floats: 96 KB in L2)
    TN = 256,  // tile columns (16 panels of B: 256 KB in L2)
    TG = 384,  // tile rows: B is packed once per k block for TG rows, A once for TN columns
};

// C (MR x NR, row stride ldc) = (load ? C : 0) + sum over kc of Ap[k] (x) Bp[k].
// Ap: [kc][MR] packed rows, Bp: [kc][NR] packed columns.
#if defined(__AVX2__) && defined(__FMA__)
static void micro_kernel(int kc, const float *restrict A, int lda, const float *restrict Bp, float *restrict C,
                         int ldc, int load) {
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * (size_t)lda, *a3 = A + 3 * (size_t)lda;
    const float *a4 = A + 4 * (size_t)lda, *a5 = A + 5 * (size_t)lda;
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (load) {
        c00 = _mm256_loadu_ps(C + 0 * ldc), c01 = _mm256_loadu_ps(C + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(C + 1 * ldc), c11 = _mm256_loadu_ps(C + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(C + 2 * ldc), c21 = _mm256_loadu_ps(C + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(C + 3 * ldc), c31 = _mm256_loadu_ps(C + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(C + 4 * ldc), c41 = _mm256_loadu_ps(C + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(C + 5 * ldc), c51 = _mm256_loadu_ps(C + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++, Bp += NR) {
        const __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
        __m256 a = _mm256_broadcast_ss(a0 + k);
        c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(a1 + k);
        c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(a2 + k);
        c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(a3 + k);
        c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(a4 + k);
        c40 = _mm256_fmadd_ps(a, b0, c40), c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(a5 + k);
        c50 = _mm256_fmadd_ps(a, b0, c50), c51 = _mm256_fmadd_ps(a, b1, c51);
    }
    _mm256_storeu_ps(C + 0 * ldc, c00), _mm256_storeu_ps(C + 0 * ldc + 8, c01);
    _mm256_storeu_ps(C + 1 * ldc, c10), _mm256_storeu_ps(C + 1 * ldc + 8, c11);
    _mm256_storeu_ps(C + 2 * ldc, c20), _mm256_storeu_ps(C + 2 * ldc + 8, c21);
    _mm256_storeu_ps(C + 3 * ldc, c30), _mm256_storeu_ps(C + 3 * ldc + 8, c31);
    _mm256_storeu_ps(C + 4 * ldc, c40), _mm256_storeu_ps(C + 4 * ldc + 8, c41);
    _mm256_storeu_ps(C + 5 * ldc, c50), _mm256_storeu_ps(C + 5 * ldc + 8, c51);
}
#else
// Portable form of the same chain (fmaf rounds once, as a vector FMA lane does): same bits.
static void micro_kernel(int kc, const float *restrict A, int lda, const float *restrict Bp, float *restrict C,
                         int ldc, int load) {
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = load ? C[(size_t)i * ldc + j] : 0.0f;
    for (int k = 0; k < kc; k++, Bp += NR)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = fmaf(A[(size_t)i * lda + k], Bp[j], acc[i][j]);
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) C[(size_t)i * ldc + j] = acc[i][j];
}
#endif

#if defined(__AVX2__)
// o[k * NR + j] = b[j * ldb + k] for an 8 x 8 block (j, k < 8): a register transpose.
static void transpose8(const float *b, int ldb, float *o) {
    __m256 r0 = _mm256_loadu_ps(b + 0 * (size_t)ldb), r1 = _mm256_loadu_ps(b + 1 * (size_t)ldb);
    __m256 r2 = _mm256_loadu_ps(b + 2 * (size_t)ldb), r3 = _mm256_loadu_ps(b + 3 * (size_t)ldb);
    __m256 r4 = _mm256_loadu_ps(b + 4 * (size_t)ldb), r5 = _mm256_loadu_ps(b + 5 * (size_t)ldb);
    __m256 r6 = _mm256_loadu_ps(b + 6 * (size_t)ldb), r7 = _mm256_loadu_ps(b + 7 * (size_t)ldb);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(o + 0 * NR, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(o + 1 * NR, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(o + 2 * NR, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(o + 3 * NR, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(o + 4 * NR, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(o + 5 * NR, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(o + 6 * NR, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(o + 7 * NR, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#endif

// Bp [ceil(cols/NR)][kc][NR] = B(k0.., j0..j0+cols), columns past `cols` zero.  B points at
// element (k0, j0) of B (QK_GEMM_N) or of B^T (QK_GEMM_T).  Packing moves values, never rounds.
static void pack_b(QkGemmTrans tr, const float *B, int ldb, int cols, int kc, float *restrict Bp) {
    for (int p = 0; p < cols; p += NR, Bp += (size_t)kc * NR) {
        const int w = cols - p < NR ? cols - p : NR;
        if (tr == QK_GEMM_N && w == NR) {
            for (int k = 0; k < kc; k++) memcpy(Bp + (size_t)k * NR, B + (size_t)k * ldb + p, sizeof(float) * NR);
        } else if (tr == QK_GEMM_N) {
            for (int k = 0; k < kc; k++) {
                const float *b = B + (size_t)k * ldb + p;
                float *o = Bp + (size_t)k * NR;
                for (int j = 0; j < NR; j++) o[j] = j < w ? b[j] : 0.0f;
            }
        } else {
            int k8 = 0;
#if defined(__AVX2__)
            if (w == NR)
                for (; k8 + 8 <= kc; k8 += 8)
                    for (int h = 0; h < NR; h += 8)
                        transpose8(B + (size_t)(p + h) * ldb + k8, ldb, Bp + (size_t)k8 * NR + h);
#endif
            for (int j = 0; j < NR; j++) {
                const float *b = B + (size_t)(p + j) * ldb;
                if (j < w)
                    for (int k = k8; k < kc; k++) Bp[(size_t)k * NR + j] = b[k];
                else
                    for (int k = k8; k < kc; k++) Bp[(size_t)k * NR + j] = 0.0f;
            }
        }
    }
}

// Per-thread packing buffers, kept between calls: the attention calls this once per head.
static _Thread_local float *tls_pack;  // [MR x KC] edge rows of A, then [KC x TN] packed B

static float *pack_buffers(void) {
    if (!tls_pack) tls_pack = qk_malloc_aligned(sizeof(float) * ((size_t)MR * KC + (size_t)KC * TN));
    return tls_pack;
}

// One tile: rows g0..g0+grows, columns c0..c0+cols of C, all of K.
static void gemm_tile(QkGemmTrans tr, int g0, int grows, int c0, int cols, int K, const float *A, int lda,
                      const float *B, int ldb, int accumulate, float *C, int ldc) {
    float *Ae = pack_buffers(), *Bp = Ae + (size_t)MR * KC;
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        const int load = accumulate || k0 > 0;
        const float *Bk = tr == QK_GEMM_N ? B + (size_t)k0 * ldb + c0 : B + (size_t)c0 * ldb + k0;
        pack_b(tr, Bk, ldb, cols, kc, Bp);
        for (int r0 = g0; r0 < g0 + grows; r0 += TM) {
            const int rows = g0 + grows - r0 < TM ? g0 + grows - r0 : TM;
            const int full = rows / MR * MR;  // rows of whole MR panels; the rest via Ae
            if (full < rows) {
                for (int i = 0; i < MR; i++)
                    for (int k = 0; k < kc; k++)
                        Ae[(size_t)i * kc + k] = full + i < rows ? A[(size_t)(r0 + full + i) * lda + k0 + k] : 0.0f;
            }
            for (int jp = 0; jp < cols; jp += NR) {
                const int w = cols - jp < NR ? cols - jp : NR;
                const float *bp = Bp + (size_t)(jp / NR) * kc * NR;
                for (int ip = 0; ip < rows; ip += MR) {
                    const int h = rows - ip < MR ? rows - ip : MR;
                    const float *ap = h == MR ? A + (size_t)(r0 + ip) * lda + k0 : Ae;
                    const int ldap = h == MR ? lda : kc;
                    float *c = C + (size_t)(r0 + ip) * ldc + c0 + jp;
                    if (h == MR && w == NR) {
                        micro_kernel(kc, ap, ldap, bp, c, ldc, load);
                        continue;
                    }
                    float edge[MR * NR];  // the partial tile, zero-padded
                    for (int i = 0; i < MR; i++)
                        for (int j = 0; j < NR; j++)
                            edge[i * NR + j] = load && i < h && j < w ? c[(size_t)i * ldc + j] : 0.0f;
                    micro_kernel(kc, ap, ldap, bp, edge, NR, 1);
                    for (int i = 0; i < h; i++) memcpy(c + (size_t)i * ldc, edge + i * NR, sizeof(float) * w);
                }
            }
        }
    }
}

void qk_gemm(QkGemmTrans tr, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             int accumulate, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // the empty chain: init, times alpha
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = accumulate ? alpha * C[(size_t)i * ldc + j] : 0.0f;
        return;
    }
    const int tm = (M + TG - 1) / TG, tn = (N + TN - 1) / TN, tiles = tm * tn;
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && !omp_in_parallel())
    for (int t = 0; t < tiles; t++) {
        const int r0 = (t / tn) * TG, c0 = (t % tn) * TN;
        const int rows = M - r0 < TG ? M - r0 : TG, cols = N - c0 < TN ? N - c0 : TN;
        gemm_tile(tr, r0, rows, c0, cols, K, A, lda, B, ldb, accumulate, C, ldc);
        if (alpha != 1.0f)
            for (int i = 0; i < rows; i++) {
                float *c = C + (size_t)(r0 + i) * ldc + c0;
                for (int j = 0; j < cols; j++) c[j] *= alpha;
            }
    }
}
