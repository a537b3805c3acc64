// bilinear_topk.cu: the bilinear top-k (SPEC §5) on the device: cuBLASLt GEMM tiles, then a
// warp-level selection with a running per-row threshold.  API and semantics: bilinear_topk.h.
//
// Shapes (row-major; b < batch problems, RB x CB the tile of qk_btk_blocks, LD = CB rounded up
// to a multiple of 4):
//   U     [batch][n x r] stride ldu        V  [batch][M x r]      a [batch][n], c [batch][M]
//   Ubf   [batch][n x r] bf16 (BF16 only)  Vbf [batch][M x r] bf16
//   S     [batch][RB x LD] fp32 scores of one (row block, column block) tile, batch*RB*LD*4 bytes
//         within the L2 budget: written by the GEMM, read once by btk_select while still in L2
//   Q     [batch][RB x 64] uint64 running queues carried across column blocks (QB: the bottom's)
//   ACT   [batch][RB] uint32 active counts carried across column blocks (GATED)
//   out   idx/val [batch][n x k], count [batch][n]
// Per (row block, column block): one batched cuBLASLt GEMM S^T = V_blk U_blk^T (column-major view
// of row-major S = U V^T), then btk_select<<<(ceil(rows/4), batch), 128>>>: one warp per row.
// The selection rules (key order, bitonic networks, buffer slots, threshold, outputs) are the
// __host__ __device__ functions of select.h, tested on the CPU by tests/test_select.c.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/select.h"
#include "cuda_try.h"
#include "analysis/topk_fused.h"
#include "analysis/warp_queue.cuh"
extern "C" {
#include "analysis/bilinear_topk.h"
}

#define BTK_WARPS 4          // rows (warps) per selection block
#define BTK_DEFAULT_CB 4096  // columns per tile
#define BTK_MAX_ALGOS 16     // pinned cuBLASLt algorithms per context (one per tile shape)

typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// Warp-level selection

// The running selection of one row: queue (q0, q1), threshold, candidate buffer in shared memory.
struct WarpQueue {
    u64 q0, q1, thr;
    int nb;
    u64 *buf;  // [QK_SEL_BUF]
};

__device__ __forceinline__ void wq_threshold(WarpQueue &w, int k) { w.thr = qk_wq_kth(w.q0, w.q1, k); }

// Moves the first min(nb, 32) buffered keys into the queue (EMPTY pads a short flush); the rest
// of the buffer moves down by 32.
__device__ __forceinline__ void wq_merge(WarpQueue &w, int lane, int k) {
    __syncwarp();
    u64 b = lane < w.nb ? w.buf[lane] : QK_SEL_EMPTY;
    for (int base = 0; base + QK_SEL_WARP < w.nb; base += QK_SEL_WARP) {  // warp-uniform bounds
        const int from = base + QK_SEL_WARP + lane;
        const u64 x = from < w.nb ? w.buf[from] : QK_SEL_EMPTY;
        __syncwarp();
        if (from < w.nb) w.buf[base + lane] = x;
        __syncwarp();
    }
    __syncwarp();
    w.nb = w.nb > QK_SEL_WARP ? w.nb - QK_SEL_WARP : 0;
    qk_wq_insert32(w.q0, w.q1, b, lane);
    wq_threshold(w, k);
}

// Appends this lane's key when it is above the threshold (slots in ballot order).
__device__ __forceinline__ void wq_push(WarpQueue &w, u64 key, int lane) {
    const int pass = qk_sel_passes(key, w.thr);
    const unsigned m = __ballot_sync(QK_WQ_FULL, pass);
    if (pass) w.buf[qk_sel_buf_slot(w.nb, m, lane)] = key;
    w.nb += __popc(m);
}

struct SelArgs {
    const float *S;  // tile [batch][RB x ld]
    long long S_stride;
    int ld, rows, cols, j0, row0, n, k, RB;
    const float *a;
    long long a_stride;
    const float *c;
    long long c_stride;
    const float *gates;
    long long g_stride;
    float gate, sign;
    int gated, relu, first, last;
    u64 *q, *qb;    // [batch][RB][64]
    unsigned *act;  // [batch][RB]
    int32_t *idx, *count, *bidx;
    float *val, *bval;
};

__device__ __forceinline__ void wq_load(WarpQueue &w, const SelArgs &p, const u64 *q, long long at, int lane) {
    w.q0 = p.first ? QK_SEL_EMPTY : q[at + lane];
    w.q1 = p.first ? QK_SEL_EMPTY : q[at + QK_SEL_WARP + lane];
    w.nb = 0;
    wq_threshold(w, p.k);
}

// One warp per row of the tile: scores a_i * S + c_j, each compared once with the threshold;
// survivors buffered and merged; queues stored for the next column block or written out.
template <bool BOTH>
__global__ void __launch_bounds__(BTK_WARPS * QK_SEL_WARP, 8) btk_select(const SelArgs p) {
    __shared__ u64 sbuf[BTK_WARPS][QK_SEL_BUF];
    __shared__ u64 sbufb[BOTH ? BTK_WARPS : 1][QK_SEL_BUF];
    const int lane = threadIdx.x & (QK_SEL_WARP - 1), warp = threadIdx.x / QK_SEL_WARP;
    const int row = blockIdx.x * BTK_WARPS + warp, b = blockIdx.y;
    if (row >= p.rows) return;  // whole warps only
    const long long qat = ((long long)b * p.RB + row) * QK_SEL_QUEUE;
    WarpQueue top, bot;
    top.buf = sbuf[warp];
    wq_load(top, p, p.q, qat, lane);
    if (BOTH) {
        bot.buf = sbufb[warp];
        wq_load(bot, p, p.qb, qat, lane);
    }
    const float *S = p.S + b * p.S_stride + (long long)row * p.ld;
    const float ai = p.a ? p.a[b * p.a_stride + p.row0 + row] : 1.0f;
    const float *c = p.c ? p.c + b * p.c_stride + p.j0 : nullptr;
    const float *g = p.gates ? p.gates + b * p.g_stride + p.j0 : nullptr;
    unsigned act = 0;
    constexpr int STEP = QK_SEL_WARP * QK_SEL_VEC;
    // Software pipelined: the next step's float4 is in flight while this one is filtered.
    float4 next = QK_SEL_VEC * lane < p.cols ? *reinterpret_cast<const float4 *>(S + QK_SEL_VEC * lane)
                                             : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int base = 0; base < p.cols; base += STEP) {
        const int t = base + QK_SEL_VEC * lane;
        const float4 s4 = next;
        if (t + STEP < p.cols) next = *reinterpret_cast<const float4 *>(S + t + STEP);
        const float s[QK_SEL_VEC] = {s4.x, s4.y, s4.z, s4.w};
        u64 key[QK_SEL_VEC], keyb[QK_SEL_VEC];
        int any = 0;
#pragma unroll
        for (int e = 0; e < QK_SEL_VEC; e++) {
            const int ok = t + e < p.cols;
            const float cj = c && ok ? __ldg(c + t + e) : 0.0f;
            const float gj = g && ok ? __ldg(g + t + e) : p.gate;
            const float v = qk_sel_score(s[e], ai, cj);
            act += p.gated && ok && v > gj;
            key[e] = ok ? qk_sel_key(v, p.j0 + t + e, p.sign, p.gated, gj) : QK_SEL_EMPTY;
            any |= qk_sel_passes(key[e], top.thr);
            if (BOTH) {
                keyb[e] = ok ? qk_sel_key(v, p.j0 + t + e, -1.0f, 0, 0.0f) : QK_SEL_EMPTY;
                any |= qk_sel_passes(keyb[e], bot.thr);
            }
        }
        if (!__any_sync(QK_WQ_FULL, any)) continue;  // the common case once the queue is full
#pragma unroll
        for (int e = 0; e < QK_SEL_VEC; e++) {
            wq_push(top, key[e], lane);
            if (BOTH) wq_push(bot, keyb[e], lane);
        }
        while (top.nb >= QK_SEL_WARP) wq_merge(top, lane, p.k);
        while (BOTH && bot.nb >= QK_SEL_WARP) wq_merge(bot, lane, p.k);
    }
    if (top.nb) wq_merge(top, lane, p.k);
    if (BOTH && bot.nb) wq_merge(bot, lane, p.k);
#pragma unroll
    for (int m = QK_SEL_WARP / 2; m > 0; m /= 2) act += __shfl_xor_sync(QK_WQ_FULL, act, m);
    const long long arow = (long long)b * p.RB + row;
    if (p.gated && !p.first) act += p.act[arow];  // same value in every lane
    if (!p.last) {
        p.q[qat + lane] = top.q0, p.q[qat + QK_SEL_WARP + lane] = top.q1;
        if (BOTH) p.qb[qat + lane] = bot.q0, p.qb[qat + QK_SEL_WARP + lane] = bot.q1;
        if (lane == 0 && p.gated) p.act[arow] = act;
        return;
    }
    const long long orow = (long long)b * p.n + p.row0 + row;
    const int counted = qk_wq_output(top.q0, top.q1, lane, p.k, p.sign, p.relu, p.idx + orow * p.k, p.val + orow * p.k);
    if (BOTH) qk_wq_output(bot.q0, bot.q1, lane, p.k, -1.0f, 0, p.bidx + orow * p.k, p.bval + orow * p.k);
    if (lane == 0 && p.count) p.count[orow] = p.gated ? (int32_t)act : counted;
}

// dst [batch][rows x r] bf16 <- src [batch][rows x r] fp32 (row stride ld, problem stride bs).
__global__ void __launch_bounds__(256) btk_to_bf16(const float *src, long long ld, long long bs, int rows, int r,
                                                   long long total, __nv_bfloat16 *dst) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long b = e / ((long long)rows * r), rem = e % ((long long)rows * r);
        long long i = rem / r, t = rem % r;
        dst[e] = __float2bfloat16_rn(src[b * bs + i * ld + t]);
    }
}

// ---------------------------------------------------------------------------------------------
// Host side

// A pinned algorithm and everything the heuristic was asked: the layouts' shapes, leading
// dimensions and batch strides (an algorithm is chosen for one problem: cublasLtMatmulAlgoCheck).
struct AlgoSlot {
    int rows, cols, r, batch, ldb, ldc, out_bf16;
    long long V_stride, U_stride, D_stride;
    cublasLtMatmulAlgo_t algo;
};

struct QkBtk {
    int device, sync_each;
    int fused, last_fused;  // the fused kernel allowed (QK_BTK_PATH); whether the last run took it
    const char *last_why;   // why the last run did not, when allowed
    QkPrecision prec;
    size_t l2_bytes;
    cudaStream_t stream;      // where runs are enqueued: own_stream, or the caller's (qk_btk_use_stream:
                              // then runs return once enqueued)
    cudaStream_t own_stream;  // made at create, destroyed at destroy
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    void *ws;
    size_t ws_bytes, ws_cap;
    AlgoSlot algos[BTK_MAX_ALGOS];
    int n_algos;
    // Scratch, grown on demand (pointer and capacity in bytes; both 0 after a failed growth).
    float *S;
    size_t S_cap;
    u64 *q, *qb;
    size_t q_cap, qb_cap;
    unsigned *act;
    size_t act_cap;
    __nv_bfloat16 *ubf, *vbf;
    size_t ubf_cap, vbf_cap;
    // The fused path's configuration (QK_FUSED_MMA, QK_FUSED_SEED, the device's limits), read once,
    // at its first use (fused_config); its seed-list scratch, grown on demand.
    QkFusedConfig fz;
    int fz_ready;
    int32_t *seeds;
    size_t seeds_cap;
};

static int oom(cudaError_t e, size_t bytes, const char *what) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    (void)cudaGetLastError();
    return qk_err("bilinear top-k: cudaMalloc of %zu bytes for %s failed (%s; %zu MiB free of %zu MiB)", bytes, what,
                  cudaGetErrorString(e), free_b >> 20, total_b >> 20);
}

// Device scratch of at least `bytes`; a failed growth leaves nothing cached.  The old buffer is
// freed once the work queued on `stream` (the only stream that uses it) has completed: cudaFree
// does not promise to wait for it.
static int grow(cudaStream_t stream, void **p, size_t *cap, size_t bytes, const char *what) {
    if (bytes <= *cap) return 0;
    if (*p) {
        const cudaError_t e = cudaStreamSynchronize(stream);
        if (e != cudaSuccess) return qk_err("bilinear top-k: waiting before regrowing %s: %s", what, cudaGetErrorString(e));
    }
    cudaFree(*p);
    *p = NULL, *cap = 0;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        return oom(e, bytes, what);
    }
    *cap = bytes;
    return 0;
}
#define GROW(b, field, bytes, what) grow((b)->stream, (void **)&(b)->field, &(b)->field##_cap, (bytes), (what))

// A launch's error, named with its kernel and shape; with QK_CUDA_SYNC=1 also its execution's.
static int launch_check(QkBtk *b, const char *kernel, dim3 grid, int threads, const char *shape) {
    const cudaError_t e = qk_launch_status(b->stream, b->sync_each);
    if (e != cudaSuccess)
        return qk_err("kernel %s<<<(%u,%u),%d>>> [%s]: %s", kernel, grid.x, grid.y, threads, shape, cudaGetErrorString(e));
    return 0;
}

#define LT_TRY(call)                                                                                         \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            rc = qk_err("%s [%s]: cuBLASLt %s (%s)", #call, shape, cublasLtGetStatusName(s_), cublasLtGetStatusString(s_)); \
            goto done;                                                                                       \
        }                                                                                                    \
    } while (0)

// Column-major D (cols x rows, ldc) = op(A)^T-free form: A = V block stored (r x cols, ld r),
// op(A) = A^T; B = U block stored (r x rows, ldb).  I.e. row-major S [rows x ldc] = U V^T.
static int btk_gemm(QkBtk *b, int batch, int rows, int cols, int r, const void *V, long long V_stride,
                    const void *U, int ldb, long long U_stride, void *D, int ldc, long long D_stride, int out_bf16) {
    const int bf = b->prec == QK_PREC_BF16;
    const cudaDataType ab = bf ? CUDA_R_16BF : CUDA_R_32F, dt = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    char shape[200];
    snprintf(shape, sizeof shape, "GEMM %s batch %d: S[%d x %d] = U[%d x %d] V^T, ldu %d ldc %d", qk_precision_name(b->prec),
             batch, rows, cols, rows, r, ldb, ldc);
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    const float one = 1.0f, zero = 0.0f;
    const cublasLtMatmulAlgo_t *algo = NULL;
    int rc = 0;
    LT_TRY(cublasLtMatrixLayoutCreate(&la, ab, r, cols, r));
    LT_TRY(cublasLtMatrixLayoutCreate(&lb, ab, r, rows, ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&lc, dt, cols, rows, ldc));
    if (batch > 1) {
        const int32_t bc = batch;
        const cublasLtMatrixLayout_t ls[3] = {la, lb, lc};
        const int64_t st[3] = {V_stride, U_stride, D_stride};
        for (int t = 0; t < 3; t++) {
            LT_TRY(cublasLtMatrixLayoutSetAttribute(ls[t], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
            LT_TRY(cublasLtMatrixLayoutSetAttribute(ls[t], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st[t], sizeof st[t]));
        }
    }
    // One algorithm per tile shape, chosen once per context (pinned: not re-chosen per call).
    for (int t = 0; t < b->n_algos && !algo; t++) {
        const AlgoSlot *s = &b->algos[t];
        if (s->rows == rows && s->cols == cols && s->r == r && s->batch == batch && s->ldb == ldb && s->ldc == ldc &&
            s->out_bf16 == out_bf16 && (batch == 1 || (s->V_stride == V_stride && s->U_stride == U_stride && s->D_stride == D_stride)))
            algo = &s->algo;
    }
    if (!algo) {
        cublasLtMatmulHeuristicResult_t h;
        int found = 0;
        const uint64_t ws = b->ws_bytes;
        const uint32_t align = 16;  // tiles start at 16-byte multiples, not at 256 (cuBLASLt's default)
        LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof align));
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align, sizeof align));
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align, sizeof align));
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align, sizeof align));
        LT_TRY(cublasLtMatmulAlgoGetHeuristic(b->lt, b->desc, la, lb, lc, lc, pref, 1, &h, &found));
        if (found < 1) {
            rc = qk_err("cublasLtMatmulAlgoGetHeuristic [%s]: no algorithm", shape);
            goto done;
        }
        AlgoSlot *s = &b->algos[b->n_algos < BTK_MAX_ALGOS ? b->n_algos++ : BTK_MAX_ALGOS - 1];
        *s = AlgoSlot{rows, cols, r, batch, ldb, ldc, out_bf16, V_stride, U_stride, D_stride, h.algo};
        algo = &s->algo;
    }
    LT_TRY(cublasLtMatmul(b->lt, b->desc, &one, V, la, U, lb, &zero, D, lc, D, lc, algo, b->ws, b->ws_bytes, b->stream));
    if (b->sync_each) {
        cudaError_t e = cudaStreamSynchronize(b->stream);
        if (e != cudaSuccess) rc = qk_err("cublasLtMatmul [%s]: %s", shape, cudaGetErrorString(e));
    }
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    return rc;
}

#undef LT_TRY
#define LT_TRY(call)                                                                                 \
    do {                                                                                             \
        cublasStatus_t s_ = (call);                                                                  \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                             \
            return qk_err("%s: cuBLASLt %s (%s)", #call, cublasLtGetStatusName(s_), cublasLtGetStatusString(s_)); \
    } while (0)

static int btk_init(QkBtk *b) {
    CUDA_TRY(cudaSetDevice(b->device));
    if (!b->l2_bytes) {
        int l2 = 0;
        CUDA_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, b->device));
        b->l2_bytes = l2 > 0 ? (size_t)l2 / 2 : (size_t)8 << 20;
    }
    CUDA_TRY(cudaStreamCreateWithFlags(&b->own_stream, cudaStreamNonBlocking));
    b->stream = b->own_stream;
    LT_TRY(cublasLtCreate(&b->lt));
    const cublasComputeType_t ct = b->prec == QK_PREC_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    LT_TRY(cublasLtMatmulDescCreate(&b->desc, ct, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(b->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(b->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    b->ws_bytes = (size_t)32 << 20;
    if (GROW(b, ws, b->ws_bytes, "the cuBLASLt workspace")) return -1;
    return 0;
}
#undef LT_TRY

extern "C" QkBtk *qk_btk_create(int device, QkPrecision prec, size_t l2_bytes) {
    QkBtk *b = (QkBtk *)qk_calloc(1, sizeof(QkBtk));
    b->device = device, b->prec = prec, b->l2_bytes = l2_bytes;
    const char *sync = getenv("QK_CUDA_SYNC");
    b->sync_each = sync && !strcmp(sync, "1");
    const char *path = getenv("QK_BTK_PATH");
    if (path && *path && strcmp(path, "gemm") && strcmp(path, "fused")) {
        free(b);
        qk_err("QK_BTK_PATH=%s: expected gemm or fused", path);
        return NULL;
    }
    b->fused = path && !strcmp(path, "fused");
    if (btk_init(b)) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        qk_btk_destroy(b);
        qk_err("bilinear top-k context on device %d: %s", device, keep);
        return NULL;
    }
    return b;
}

extern "C" void qk_btk_destroy(QkBtk *b) {
    if (!b) return;
    cudaSetDevice(b->device);
    if (b->stream) cudaStreamSynchronize(b->stream);  // the caller's stream too: nothing in flight on what is freed
    void *p[] = {b->ws, b->S, b->q, b->qb, b->act, b->ubf, b->vbf, b->seeds};
    for (size_t t = 0; t < sizeof p / sizeof p[0]; t++) cudaFree(p[t]);
    if (b->desc) cublasLtMatmulDescDestroy(b->desc);
    if (b->lt) cublasLtDestroy(b->lt);
    if (b->own_stream) cudaStreamDestroy(b->own_stream);
    free(b);
}

extern "C" QkPrecision qk_btk_precision(const QkBtk *b) { return b->prec; }

extern "C" void qk_btk_use_stream(QkBtk *b, void *stream) {
    b->stream = stream ? (cudaStream_t)stream : b->own_stream;
}

extern "C" void qk_btk_set_path(QkBtk *b, int fused) { b->fused = fused != 0; }

extern "C" int qk_btk_last_path(const QkBtk *b, const char **why) {
    if (why) *why = b->last_fused ? NULL : !b->fused ? "QK_BTK_PATH is not fused" : b->last_why;
    return b->last_fused;
}

static int round4(int x) { return (x + 3) & ~3; }

extern "C" void qk_btk_blocks(const QkBtk *b, int batch, int n, int M, int *row_block, int *col_block) {
    if (batch < 1) batch = 1;
    const int cb = M < BTK_DEFAULT_CB ? M : BTK_DEFAULT_CB;
    const size_t per_row = (size_t)batch * round4(cb) * sizeof(float);
    size_t rb = b->l2_bytes / per_row;
    if (rb < BTK_WARPS) rb = BTK_WARPS;
    if (rb > (size_t)n) rb = n > 0 ? n : 1;
    *row_block = (int)rb, *col_block = cb;
}

static int check_args(const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu, const float *V,
                      const QkTopkOpts *o, const int32_t *idx, const float *val) {
    if (!o) return qk_err("qk_btk_run: opts: NULL");
    const int batch = bt && bt->batch > 1 ? bt->batch : 1;
    if (n < 0 || M < 1 || r < 1) return qk_err("qk_btk_run: n=%d M=%d r=%d: need n >= 0, M >= 1, r >= 1", n, M, r);
    if (r % 16) return qk_err("qk_btk_run: r=%d: must be a multiple of 16", r);
    if (ldu < r || ldu % 4) return qk_err("qk_btk_run: ldu=%d: need ldu >= r=%d and a multiple of 4", ldu, r);
    if (o->k < 1 || o->k > M || o->k > QK_SEL_QUEUE)
        return qk_err("qk_btk_run: k=%d: need 1 <= k <= min(M=%d, %d)", o->k, M, QK_SEL_QUEUE);
    if (o->act != QK_TOPK_PLAIN && o->act != QK_TOPK_RELU && o->act != QK_TOPK_GATED)
        return qk_err("qk_btk_run: act=%d: unknown activation", (int)o->act);
    if (o->bottom && o->act != QK_TOPK_PLAIN) return qk_err("qk_btk_run: bottom: only with QK_TOPK_PLAIN");
    if (o->bottom_idx && (o->bottom || o->act != QK_TOPK_PLAIN || !o->bottom_val))
        return qk_err("qk_btk_run: bottom_idx/bottom_val need act PLAIN, bottom 0 and both arrays");
    if (o->row_block < 0 || o->col_block < 0)
        return qk_err("qk_btk_run: row_block=%d col_block=%d: negative", o->row_block, o->col_block);
    if (batch > 65535) return qk_err("qk_btk_run: batch=%d: at most 65535", batch);
    if (bt && batch > 1 && (bt->U % 4 || bt->V % 4 || bt->U < 0 || bt->V < 0 || bt->a < 0 || bt->c < 0 || bt->gates < 0))
        return qk_err("qk_btk_run: batch strides U=%lld V=%lld: need multiples of 4, none negative", bt->U, bt->V);
    if (n > 0 && (!U || !V || !idx || !val)) return qk_err("qk_btk_run: U, V, idx, val: NULL");
    return 0;
}

// The fused path's configuration, read at its first use; NULL with qk_errmsg() set on a bad
// environment value or a failed device query.
static const QkFusedConfig *fused_config(QkBtk *b) {
    if (!b->fz_ready) {
        if (qk_fused_config(&b->fz, b->device)) return NULL;
        b->fz_ready = 1;
    }
    return &b->fz;
}

extern "C" int qk_btk_set_fused_mma(QkBtk *b, const char *name) {
    QkFusedMma m;
    if (qk_fused_mma_parse(name, &m)) return qk_err("qk_btk_set_fused_mma: %s: expected mma, wgmma-st or wgmma", name);
    CUDA_TRYF(cudaSetDevice(b->device), "the fused kernel's configuration");
    if (!fused_config(b)) return -1;
    b->fz.mma = m;
    // runs: the device has it, and for TMA the driver's tensor-map encoder (else the fused path
    // declines every bf16 problem, qk_fused_supported)
    return qk_fused_mma_used(&b->fz) == m && (m != QK_FUSED_WGMMA_TMA || b->fz.encode);
}

extern "C" int qk_btk_set_fused_seed(QkBtk *b, int on) {
    CUDA_TRYF(cudaSetDevice(b->device), "the fused kernel's configuration");
    if (!fused_config(b)) return -1;
    b->fz.seed = on != 0;
    return 0;
}

// Waits for the run on the context's stream; an asynchronous error named with the run's shape.
// On the caller's stream (qk_btk_use_stream) nothing waits: the caller's next wait reports it.
static int btk_finish(QkBtk *b, const char *shape) {
    if (b->stream != b->own_stream) return 0;  // the caller's stream
    cudaError_t e = cudaStreamSynchronize(b->stream);
    if (e != cudaSuccess)
        return qk_err("qk_btk_run [%s]: cudaStreamSynchronize: %s (run with QK_CUDA_SYNC=1 to name the kernel)", shape,
                      cudaGetErrorString(e));
    return 0;
}

extern "C" int qk_btk_run(QkBtk *b, const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu, const float *a,
                          const float *V, const float *c, const QkTopkOpts *o, int32_t *idx, float *val,
                          int32_t *count) {
    if (check_args(bt, n, M, r, U, ldu, V, o, idx, val)) return -1;
    if (n == 0) return 0;
    CUDA_TRY(cudaSetDevice(b->device));
    const int batch = bt && bt->batch > 1 ? bt->batch : 1;
    const long long sU = batch > 1 ? bt->U : 0, sV = batch > 1 ? bt->V : 0;
    const int both = o->bottom_idx != NULL;
    int RB, CB;
    qk_btk_blocks(b, batch, n, M, &RB, &CB);
    if (o->row_block) RB = o->row_block < n ? o->row_block : n;
    if (o->col_block) CB = o->col_block < M ? o->col_block : M;
    const int LD = round4(CB);
    char shape[240];
    snprintf(shape, sizeof shape, "batch %d n %d M %d r %d k %d act %d bottom %d both %d tile %d x %d", batch, n, M, r,
             o->k, (int)o->act, o->bottom, both, RB, CB);
    // BF16: the operands rounded once per call into contiguous copies.
    const void *Ug = U, *Vg = V;
    int ldb = ldu;
    long long sUg = sU, sVg = sV;
    if (b->prec == QK_PREC_BF16) {
        const long long nu = (long long)batch * n * r, nv = (long long)batch * M * r;
        if (GROW(b, ubf, nu * sizeof(__nv_bfloat16), "the bf16 rows U") ||
            GROW(b, vbf, nv * sizeof(__nv_bfloat16), "the bf16 table V"))
            return -1;
        const int grid = 1024, threads = 256;
        btk_to_bf16<<<grid, threads, 0, b->stream>>>(U, ldu, sU, n, r, nu, b->ubf);
        if (launch_check(b, "btk_to_bf16(U)", dim3(grid), threads, shape)) return -1;
        btk_to_bf16<<<grid, threads, 0, b->stream>>>(V, r, sV, M, r, nv, b->vbf);
        if (launch_check(b, "btk_to_bf16(V)", dim3(grid), threads, shape)) return -1;
        Ug = b->ubf, Vg = b->vbf, ldb = r, sUg = (long long)n * r, sVg = (long long)M * r;
    }
    if (b->fused) {  // the fused kernel where it takes the problem (QK_BTK_PATH, qk_btk_set_path)
        QkFusedArgs f = {b->prec == QK_PREC_BF16, Ug, Vg, ldb, sUg, sVg, batch > 1 ? bt->a : 0,
                         batch > 1 ? bt->c : 0, batch > 1 ? bt->gates : 0, a, c, o->gates, o->gate, batch, n, M,
                         r, o->k, o->bottom, o->act, idx, count, o->bottom_idx, val, o->bottom_val, NULL};
        const QkFusedConfig *cfg = fused_config(b);
        if (!cfg) return -1;
        const char *why = "no TF32 variant";
        if (b->prec != QK_PREC_TF32 && qk_fused_supported(&f, cfg, &why)) {
            if (qk_fused_seeds(&f, cfg)) {  // QK_FUSED_SEED: the seed lists' scratch
                if (GROW(b, seeds, qk_fused_seed_bytes(batch), "the fused kernel's seed lists")) return -1;
                f.seeds = b->seeds;
            }
            b->last_fused = 1, b->last_why = NULL;
            if (qk_fused_launch(&f, cfg, b->stream, b->sync_each)) return -1;
            return btk_finish(b, shape);
        }
        b->last_why = why;
    }
    b->last_fused = 0;
    const size_t S_cap0 = b->S_cap;
    if (GROW(b, S, (size_t)batch * RB * LD * sizeof(float), "the score tile") ||
        GROW(b, q, (size_t)batch * RB * QK_SEL_QUEUE * sizeof(u64), "the running queues") ||
        (both && GROW(b, qb, (size_t)batch * RB * QK_SEL_QUEUE * sizeof(u64), "the bottom queues")) ||
        GROW(b, act, (size_t)batch * RB * sizeof(unsigned), "the active counts"))
        return -1;
    // A float4 may read up to 3 padding columns past a row's last (ignored): never uninitialised.
    if (b->S_cap != S_cap0) CUDA_TRY(cudaMemsetAsync(b->S, 0, b->S_cap, b->stream));
    const size_t elt = b->prec == QK_PREC_BF16 ? sizeof(__nv_bfloat16) : sizeof(float);
    SelArgs p;
    memset(&p, 0, sizeof p);
    p.S = b->S, p.S_stride = (long long)RB * LD, p.ld = LD, p.n = n, p.k = o->k, p.RB = RB;
    p.a = a, p.a_stride = batch > 1 ? bt->a : 0;
    p.c = c, p.c_stride = batch > 1 ? bt->c : 0;
    p.gates = o->gates, p.g_stride = batch > 1 ? bt->gates : 0, p.gate = o->gate;
    p.sign = o->bottom ? -1.0f : 1.0f, p.gated = o->act == QK_TOPK_GATED, p.relu = o->act == QK_TOPK_RELU;
    p.q = b->q, p.qb = b->qb, p.act = b->act;
    p.idx = idx, p.val = val, p.count = count, p.bidx = o->bottom_idx, p.bval = o->bottom_val;
    const int ncb = (M + CB - 1) / CB;
    for (int r0 = 0; r0 < n; r0 += RB) {
        const int rows = n - r0 < RB ? n - r0 : RB;
        for (int cb = 0; cb < ncb; cb++) {
            const int j0 = cb * CB, cols = M - j0 < CB ? M - j0 : CB;
            if (btk_gemm(b, batch, rows, cols, r, (const char *)Vg + (size_t)j0 * r * elt, sVg,
                         (const char *)Ug + (size_t)r0 * ldb * elt, ldb, sUg, b->S, LD, p.S_stride, 0))
                return -1;
            p.rows = rows, p.cols = cols, p.j0 = j0, p.row0 = r0, p.first = cb == 0, p.last = cb == ncb - 1;
            const dim3 grid((rows + BTK_WARPS - 1) / BTK_WARPS, batch);
            if (both) btk_select<true><<<grid, BTK_WARPS * QK_SEL_WARP, 0, b->stream>>>(p);
            else btk_select<false><<<grid, BTK_WARPS * QK_SEL_WARP, 0, b->stream>>>(p);
            char where[320];
            snprintf(where, sizeof where, "%s; rows %d.., columns %d..", shape, r0, j0);
            if (launch_check(b, both ? "btk_select<both>" : "btk_select", grid, BTK_WARPS * QK_SEL_WARP, where)) return -1;
        }
    }
    return btk_finish(b, shape);
}

// ---------------------------------------------------------------------------------------------
// Host-pointer wrapper

// Device copies of the host arrays of one call, freed together.  Every copy and memset is on the
// context's stream (a non-blocking stream does not order with the legacy default stream).
typedef struct {
    void *p[12];
    int n;
    cudaStream_t stream;
} DevList;

static int dl_alloc(DevList *l, void **out, size_t bytes, const char *what) {
    *out = NULL;
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *out = NULL;
        return oom(e, bytes, what);
    }
    l->p[l->n++] = *out;
    return 0;
}

static int dl_upload(DevList *l, const float **dst, const float *src, size_t count, const char *what) {
    *dst = NULL;
    if (!src) return 0;
    void *d;
    if (dl_alloc(l, &d, count * sizeof(float), what)) return -1;
    CUDA_TRY(cudaMemcpyAsync(d, src, count * sizeof(float), cudaMemcpyHostToDevice, l->stream));
    *dst = (const float *)d;
    return 0;
}

// Outputs poisoned (0x7f bytes: index 2139062143, value 3.4e38) so an unwritten slot shows.
static int dl_output(DevList *l, void **dst, size_t bytes, const char *what) {
    if (dl_alloc(l, dst, bytes, what)) return -1;
    CUDA_TRY(cudaMemsetAsync(*dst, 0x7f, bytes, l->stream));
    return 0;
}

static int dl_download(DevList *l, void *dst, const void *src, size_t bytes) {
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, l->stream));
    return 0;
}

static int run_host(QkBtk *b, DevList *l, const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu,
                    const float *a, const float *V, const float *c, const QkTopkOpts *o, int32_t *idx, float *val,
                    int32_t *count) {
    const int batch = bt && bt->batch > 1 ? bt->batch : 1;
    const long long last = batch - 1;
    const size_t nk = (size_t)batch * n * o->k;
    const float *dU, *dV, *da, *dc, *dg;
    QkTopkOpts d = *o;
    void *didx, *dval, *dcnt = NULL, *dbidx = NULL, *dbval = NULL;
    if (dl_upload(l, &dU, U, last * (batch > 1 ? bt->U : 0) + (size_t)(n - 1) * ldu + r, "U") ||
        dl_upload(l, &dV, V, last * (batch > 1 ? bt->V : 0) + (size_t)M * r, "V") ||
        dl_upload(l, &da, a, last * (batch > 1 ? bt->a : 0) + n, "a") ||
        dl_upload(l, &dc, c, last * (batch > 1 ? bt->c : 0) + M, "c") ||
        dl_upload(l, &dg, o->gates, last * (batch > 1 ? bt->gates : 0) + M, "gates") ||
        dl_output(l, &didx, nk * sizeof(int32_t), "idx") || dl_output(l, &dval, nk * sizeof(float), "val") ||
        (count && dl_output(l, &dcnt, (size_t)batch * n * sizeof(int32_t), "count")) ||
        (o->bottom_idx && (dl_output(l, &dbidx, nk * sizeof(int32_t), "bottom_idx") ||
                           dl_output(l, &dbval, nk * sizeof(float), "bottom_val"))))
        return -1;
    d.gates = dg, d.bottom_idx = (int32_t *)dbidx, d.bottom_val = (float *)dbval;
    if (qk_btk_run(b, bt, n, M, r, dU, ldu, da, dV, dc, &d, (int32_t *)didx, (float *)dval, (int32_t *)dcnt)) return -1;
    if (dl_download(l, idx, didx, nk * sizeof(int32_t)) || dl_download(l, val, dval, nk * sizeof(float)) ||
        (count && dl_download(l, count, dcnt, (size_t)batch * n * sizeof(int32_t))) ||
        (o->bottom_idx && (dl_download(l, o->bottom_idx, dbidx, nk * sizeof(int32_t)) ||
                           dl_download(l, o->bottom_val, dbval, nk * sizeof(float)))))
        return -1;
    CUDA_TRY(cudaStreamSynchronize(l->stream));
    return 0;
}

// [batch][rows x rp] zero-padded copy of [batch][rows x r] (row stride ld, problem stride bs).
static float *pad_copy(const float *src, int batch, long long bs, int rows, int r, long long ld, int rp) {
    float *d = (float *)qk_calloc((size_t)batch * rows * rp, sizeof(float));
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < rows; i++)
            memcpy(d + ((size_t)b * rows + i) * rp, src + b * bs + i * ld, sizeof(float) * r);
    return d;
}

extern "C" int qk_btk_run_host(QkBtk *b, const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu,
                               const float *a, const float *V, const float *c, const QkTopkOpts *o, int32_t *idx,
                               float *val, int32_t *count) {
    if (r >= 1 && r % 16 && n > 0 && U && V && ldu >= r) {  // any r: zero columns leave every dot product as is
        const int rp = (r + 15) / 16 * 16, batch = bt && bt->batch > 1 ? bt->batch : 1;
        float *Up = pad_copy(U, batch, batch > 1 ? bt->U : 0, n, r, ldu, rp);
        float *Vp = pad_copy(V, batch, batch > 1 ? bt->V : 0, M, r, r, rp);
        QkBtkBatch pb = {batch, (long long)n * rp, bt ? bt->a : 0, (long long)M * rp, bt ? bt->c : 0, bt ? bt->gates : 0};
        int rc = qk_btk_run_host(b, &pb, n, M, rp, Up, rp, a, Vp, c, o, idx, val, count);
        free(Up), free(Vp);
        return rc;
    }
    if (check_args(bt, n, M, r, U, ldu, V, o, idx, val)) return -1;
    if (n == 0) return 0;
    CUDA_TRY(cudaSetDevice(b->device));
    DevList l;
    memset(&l, 0, sizeof l);
    l.stream = b->stream;
    int rc = run_host(b, &l, bt, n, M, r, U, ldu, a, V, c, o, idx, val, count);
    cudaStreamSynchronize(b->stream);  // (after a failure: nothing in flight on what is freed)
    for (int t = 0; t < l.n; t++) cudaFree(l.p[t]);
    return rc;
}

extern "C" int qk_btk_gemm_full(QkBtk *b, int n, int M, int r, const float *U, const float *V, void *S, int out_bf16) {
    CUDA_TRY(cudaSetDevice(b->device));
    const void *Ug = U, *Vg = V;
    if (b->prec == QK_PREC_BF16) {
        const long long nu = (long long)n * r, nv = (long long)M * r;
        if (GROW(b, ubf, nu * sizeof(__nv_bfloat16), "the bf16 rows U") ||
            GROW(b, vbf, nv * sizeof(__nv_bfloat16), "the bf16 table V"))
            return -1;
        btk_to_bf16<<<1024, 256, 0, b->stream>>>(U, r, 0, n, r, nu, b->ubf);
        if (launch_check(b, "btk_to_bf16(U)", dim3(1024), 256, "gemm_full")) return -1;
        btk_to_bf16<<<1024, 256, 0, b->stream>>>(V, r, 0, M, r, nv, b->vbf);
        if (launch_check(b, "btk_to_bf16(V)", dim3(1024), 256, "gemm_full")) return -1;
        Ug = b->ubf, Vg = b->vbf;
    }
    if (btk_gemm(b, 1, n, M, r, Vg, 0, Ug, r, 0, S, M, 0, out_bf16)) return -1;
    CUDA_TRY(cudaStreamSynchronize(b->stream));
    return 0;
}
