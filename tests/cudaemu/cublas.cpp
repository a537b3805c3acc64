// cublas.cpp: cuBLAS and cuBLASLt of the emulated CUDA device (tests/cudaemu/README.md), what
// kernels/ calls of cublas_v2.h and cublasLt.h (include/), written from NVIDIA's cuBLAS
// documentation.  A call checks its arguments as the library documents (status returned at once),
// captures everything it was given by value (alpha and beta too: host pointer mode reads them
// before returning; the descriptors may change after the call), checks that each operand's extent
// is device memory, and queues the GEMM with cudaemu::enqueue on its stream: the matrices are read
// and written when the stream reaches it, never inside the call.
//
// Arithmetic, per GEMM of a batch: the product alpha op(A) op(B) by OpenBLAS's cblas_sgemm
// (column-major, fp32; bf16 operands widened to fp32 first, TF32 / bf16 compute types rounding
// fp32 inputs first), then in one plain loop beta C, the bias, the activation and D's rounding
// (bf16: to nearest even).  OpenBLAS splits no dot product across threads, so each element's
// summation order, and the result's bits, depend only on the shape: the same run to run.
//
// A non-device operand is what the real library cannot see at call time: its kernel faults with
// an illegal address.  Here nothing is queued, cudaemu::fault makes that the device's sticky error,
// and the call returns CUBLAS_STATUS_EXECUTION_FAILED.
#include <cblas.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <mutex>
#include <new>
#include <set>
#include <vector>

#include "emu.h"

// ---------------------------------------------------------------------------------------------
// The objects behind the handles and descriptors

struct cublasContext {
    int device;  // current at cublasCreate: the handle's device
    cudaStream_t stream;
    void *workspace;  // user workspace (cublasSetWorkspace); unused by the emulated kernels
    size_t workspace_bytes;
    cublasMath_t math;
};

struct cublasLtContext {
    int device;
};

struct cublasLtMatmulDescOpaque_t {
    int32_t compute;  // cublasComputeType_t
    int32_t scale;    // cudaDataType of alpha, beta
    int32_t pointer_mode, transa, transb, transc, fill;
    uint32_t epilogue;
    const void *bias;
    int64_t bias_stride;
    int32_t bias_type;  // -1: D's type
};

struct cublasLtMatrixLayoutOpaque_t {
    uint32_t type;
    int32_t order;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch;
    int64_t stride;
    int64_t plane_offset;
    uint32_t batch_mode;
};

struct cublasLtMatmulPreferenceOpaque_t {
    uint32_t search_mode;
    uint64_t max_workspace;
    uint32_t reduction_mask;
    uint32_t align[4];  // A, B, C, D
    float max_waves;
    uint64_t impl_mask;
};

namespace {

// Live handles and descriptors: a destroyed or never-created one is refused (NOT_INITIALIZED for
// a handle, INVALID_VALUE for a descriptor) instead of being read after free.
std::mutex g_live_mu;
std::set<const void *> g_live;
void live_add(const void *p) {
    std::lock_guard<std::mutex> l(g_live_mu);
    g_live.insert(p);
}
void live_del(const void *p) {
    std::lock_guard<std::mutex> l(g_live_mu);
    g_live.erase(p);
}
bool live(const void *p) {
    if (!p) return false;
    std::lock_guard<std::mutex> l(g_live_mu);
    return g_live.count(p) != 0;
}
// A descriptor's destroy: INVALID_VALUE for one that is not live.
template <class T>
cublasStatus_t destroy_descriptor(T *p) {
    if (!live(p)) return CUBLAS_STATUS_INVALID_VALUE;
    live_del(p);
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// One GEMM problem, everything by value

enum Round { ROUND_NONE, ROUND_TF32, ROUND_BF16 };  // what the inputs are rounded to first
enum Act { ACT_NONE, ACT_RELU, ACT_GELU };

// A stored matrix (before op): rows x cols column-major with leading dimension ld; member b of a
// batch at p + b * stride elements.
struct Mat {
    const void *p;
    cudaDataType_t type;
    int64_t rows, cols, ld, stride;
};

struct Gemm {
    const char *what;  // the API function, for enqueue and the fault messages
    bool ta, tb;       // op(A) = A^T, op(B) = B^T
    int64_t m, n, k, batch;
    float alpha, beta;
    Mat A, B, C, D;  // C is read only when beta != 0
    Round round;
    bool has_bias;
    Mat bias;  // m x 1, member b at stride
    Act act;
};

size_t esize(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

const void *member(const Mat &M, int64_t b) {
    return (const char *)M.p + (ptrdiff_t)(b * M.stride) * (ptrdiff_t)esize(M.type);
}

float load(const void *p, cudaDataType_t t, int64_t i) {
    if (t == CUDA_R_16BF) return (float)((const __nv_bfloat16 *)p)[i];
    return ((const float *)p)[i];
}

// fp32 to TF32 (1 + 8 + 10 bits), to nearest even; Inf and NaN unchanged.  Which rounding the
// tensor cores' input conversion uses is not documented; nearest even is assumed.
float round_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

// GPT-2's gelu_new, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x / (1 + e^(-2y))
// (the same function: 1 + tanh y = 2 / (1 + e^(-2y))), exact in both tails and faster than tanhf.
float gelu(float x) {
    const float y = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * y));
}

float *grow(std::vector<float> &v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

// Operand M's member at `base` as fp32 for cblas_sgemm: the memory itself when it is fp32 and not
// rounded, else a packed copy (ld = rows) widened / rounded.
const float *as_fp32(const Mat &M, const void *base, Round r, std::vector<float> &buf, int64_t *ld) {
    if (M.type == CUDA_R_32F && r == ROUND_NONE) {
        *ld = M.ld;
        return (const float *)base;
    }
    float *out = grow(buf, (size_t)(M.rows * M.cols));
    for (int64_t j = 0; j < M.cols; j++)
        for (int64_t i = 0; i < M.rows; i++) {
            float v = load(base, M.type, i + j * M.ld);
            if (r == ROUND_TF32) v = round_tf32(v);
            else if (r == ROUND_BF16) v = (float)__float2bfloat16_rn(v);
            out[i + j * M.rows] = v;
        }
    *ld = M.rows;
    return out;
}

// One cblas_sgemm at a time: the emulated device may run several streams' work on several host
// threads, and OpenBLAS's OpenMP build is not documented as safe for concurrent callers (each
// call uses every core anyway).
std::mutex g_blas_mu;

// The queued work: every member of the batch, in order.
void run(const Gemm &g) {
    thread_local std::vector<float> ba, bb, bt;
    const int64_t m = g.m, n = g.n;
    // A and B are not read when the product is zero (alpha == 0 or k == 0), as BLAS specifies.
    const bool product = g.k > 0 && g.alpha != 0.0f;
    // D is sgemm's output itself when it is fp32 and C is either not read or D (in place, same
    // layout): sgemm applies beta.  Otherwise the product goes to scratch and the loop adds beta C.
    const bool direct = g.D.type == CUDA_R_32F &&
                        (g.beta == 0.0f || (g.C.p == g.D.p && g.C.type == g.D.type && g.C.ld == g.D.ld &&
                                            g.C.stride == g.D.stride));
    for (int64_t b = 0; b < g.batch; b++) {
        void *pd = (void *)member(g.D, b);
        float *t;
        int64_t ldt;
        float beta_in = 0.0f;
        if (direct) {
            t = (float *)pd;
            ldt = g.D.ld;
            beta_in = g.beta;
        } else {
            t = grow(bt, (size_t)(m * n));
            ldt = m;
        }
        if (product) {
            int64_t lda, ldb;
            const float *fa = as_fp32(g.A, member(g.A, b), g.round, ba, &lda);
            const float *fb = as_fp32(g.B, member(g.B, b), g.round, bb, &ldb);
            std::lock_guard<std::mutex> lock(g_blas_mu);
            cblas_sgemm(CblasColMajor, g.ta ? CblasTrans : CblasNoTrans, g.tb ? CblasTrans : CblasNoTrans,
                        (blasint)m, (blasint)n, (blasint)g.k, g.alpha, fa, (blasint)lda, fb, (blasint)ldb, beta_in, t,
                        (blasint)ldt);
        } else {
            for (int64_t j = 0; j < n; j++)
                for (int64_t i = 0; i < m; i++) t[i + j * ldt] = beta_in == 0.0f ? 0.0f : beta_in * t[i + j * ldt];
        }
        const bool add_c = !direct && g.beta != 0.0f;
        if (direct && !g.has_bias && g.act == ACT_NONE) continue;
        const void *pc = add_c ? member(g.C, b) : nullptr;
        const void *pb = g.has_bias ? member(g.bias, b) : nullptr;
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < m; i++) {
                float v = t[i + j * ldt];
                if (add_c) v += g.beta * load(pc, g.C.type, i + j * g.C.ld);
                if (pb) v += load(pb, g.bias.type, i);
                if (g.act == ACT_GELU) v = gelu(v);
                else if (g.act == ACT_RELU) v = v > 0.0f ? v : 0.0f;
                if (g.D.type == CUDA_R_32F) ((float *)pd)[i + j * g.D.ld] = v;
                else ((__nv_bfloat16 *)pd)[i + j * g.D.ld] = __float2bfloat16_rn(v);
            }
    }
}

// Whether every element that `batch` members of M span lies in one device allocation of `dev`,
// aligned to its element size; else the fault the real kernel would raise.
bool on_device(const Gemm &g, const char *name, const Mat &M, int64_t batch, int dev) {
    const size_t es = esize(M.type);
    __int128 lo = 0, hi = (__int128)(M.cols - 1) * M.ld + M.rows;  // [lo, hi) in elements
    const __int128 last = (__int128)(batch - 1) * M.stride;
    if (last < 0) lo += last;
    else hi += last;
    const __int128 bytes = (hi - lo) * (__int128)es;
    const uintptr_t start = (uintptr_t)M.p + (uintptr_t)(intptr_t)(lo * (__int128)es);
    int d = -1;
    if (!M.p || bytes > (__int128)SIZE_MAX || !cudaemu::device_range((const void *)start, (size_t)bytes, &d)) {
        cudaemu::fault(cudaErrorIllegalAddress,
                       "%s: %s [%p, %lld x %lld elements of %zu bytes, ld %lld, batch %lld, stride %lld: %lld "
                       "bytes] is not inside one device allocation (the real library's kernel faults: illegal "
                       "address)",
                       g.what, name, M.p, (long long)M.rows, (long long)M.cols, es, (long long)M.ld, (long long)batch,
                       (long long)M.stride, (long long)bytes);
        return false;
    }
    if (d != dev) {
        cudaemu::fault(cudaErrorIllegalAddress, "%s: %s at %p is memory of device %d, the stream is device %d's",
                       g.what, name, M.p, d, dev);
        return false;
    }
    if ((uintptr_t)M.p % es) {
        cudaemu::fault(cudaErrorMisalignedAddress, "%s: %s at %p is not aligned to its %zu-byte elements", g.what,
                       name, M.p, es);
        return false;
    }
    return true;
}

// Checks the memory of every operand the GEMM touches, then queues it on s.
cublasStatus_t submit(cudaStream_t s, const Gemm &g) {
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    const int dev = cudaemu::stream_device(s);
    const bool product = g.k > 0 && g.alpha != 0.0f;
    if (product && (!on_device(g, "A", g.A, g.batch, dev) || !on_device(g, "B", g.B, g.batch, dev)))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (g.beta != 0.0f && !on_device(g, "C", g.C, g.batch, dev)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!on_device(g, "D", g.D, g.batch, dev)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (g.has_bias && !on_device(g, "the bias", g.bias, g.batch, dev)) return CUBLAS_STATUS_EXECUTION_FAILED;
    const cudaError_t e = cudaemu::enqueue(s, g.what, [g] { run(g); });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

bool valid_op(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

const char *status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// The meaning of each status, as the cuBLAS API reference's "cublasStatus_t" table describes it.
const char *status_string(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed to the function";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "the function requires a feature absent from the device architecture";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "the functionality requested requires some license";
    }
    return "unknown cuBLAS status";
}

// Synchronises `device` (cublasDestroy / cublasLtDestroy: "implicitly calls cudaDeviceSynchronize").
void sync_device(int device) {
    int cur = 0;
    if (cudaGetDevice(&cur) != cudaSuccess) return;
    if (cur != device) cudaSetDevice(device);
    (void)cudaDeviceSynchronize();
    if (cur != device) cudaSetDevice(cur);
}

// ---------------------------------------------------------------------------------------------
// cuBLAS's GEMMs (cublasSgemm, cublasGemmEx, cublasGemmStridedBatchedEx)

// The arithmetic cublasGemmEx's types and compute type ask for (cuBLAS API reference,
// cublasGemmEx's table of supported combinations), or NOT_SUPPORTED.  Emulated: fp32 and bf16
// data; fp16 and int8 data, and compute types other than 32F / 32F_PEDANTIC / 32F_FAST_TF32 /
// 32F_FAST_16BF, are refused as unsupported here although the real library has them.
cublasStatus_t ex_types(cudaDataType a, cudaDataType b, cudaDataType c, int compute, cublasMath_t math, Round *r) {
    const int mode = (int)math & 15;
    switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        if (a != b) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (a == CUDA_R_32F && c == CUDA_R_32F) {
            // CUBLAS_TF32_TENSOR_OP_MATH lets the 32F compute type (not the pedantic one) use TF32.
            *r = compute == CUBLAS_COMPUTE_32F && mode == CUBLAS_TF32_TENSOR_OP_MATH ? ROUND_TF32 : ROUND_NONE;
            return CUBLAS_STATUS_SUCCESS;
        }
        if (a == CUDA_R_16BF && (c == CUDA_R_16BF || c == CUDA_R_32F)) {
            *r = ROUND_NONE;
            return CUBLAS_STATUS_SUCCESS;
        }
        return CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
        if (a != CUDA_R_32F || b != CUDA_R_32F || c != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
        *r = compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? ROUND_TF32 : ROUND_BF16;
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

bool valid_algo(int algo) {
    return (algo >= CUBLAS_GEMM_DEFAULT && algo <= CUBLAS_GEMM_ALGO23) ||
           (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP) ||
           algo == CUBLAS_GEMM_AUTOTUNE;
}

// compute -1: cublasSgemm's (fp32, TF32 where the handle's math mode allows it).
cublasStatus_t blas_gemm(const char *what, cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                         int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
                         long long sA, const void *B, cudaDataType Btype, int ldb, long long sB, const void *beta,
                         void *C, cudaDataType Ctype, int ldc, long long sC, int batch, int compute, int algo) {
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    // INVALID_VALUE as cublas<t>gemm / cublasGemmEx document it.
    if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || batch < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    const int arows = ta ? k : m, brows = tb ? n : k;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    Round r = ROUND_NONE;
    if (compute < 0) {
        r = ((int)h->math & 15) == CUBLAS_TF32_TENSOR_OP_MATH ? ROUND_TF32 : ROUND_NONE;
    } else {
        if (!valid_algo(algo)) return CUBLAS_STATUS_NOT_SUPPORTED;
        const cublasStatus_t st = ex_types(Atype, Btype, Ctype, compute, h->math, &r);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    Gemm g;
    g.what = what;
    g.ta = ta, g.tb = tb;
    g.m = m, g.n = n, g.k = k, g.batch = batch;
    // Host pointer mode: the scale type of every supported combination is fp32.
    memcpy(&g.alpha, alpha, 4);
    memcpy(&g.beta, beta, 4);
    g.A = Mat{A, Atype, arows, ta ? m : k, lda, sA};
    g.B = Mat{B, Btype, brows, tb ? k : n, ldb, sB};
    g.C = Mat{C, Ctype, m, n, ldc, sC};
    g.D = g.C;
    g.round = r;
    g.has_bias = false;
    g.bias = Mat{nullptr, CUDA_R_32F, 0, 0, 0, 0};
    g.act = ACT_NONE;
    // BLAS's quick return: nothing to do when C stays as it is.
    if (m == 0 || n == 0 || batch == 0 || ((k == 0 || g.alpha == 0.0f) && g.beta == 1.0f)) return CUBLAS_STATUS_SUCCESS;
    return submit(h->stream, g);
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt's matmul: the checks of the descriptors (cublasLtMatmul and the heuristic share them)

const uint64_t ALGO_MAGIC = 0x63756461656d754cull;  // "cudaemuL": an algorithm this file made

// The problem a matmul call (or a heuristic query) describes, checked.  Statuses: INVALID_VALUE
// for descriptors in conflict (shapes, leading dimensions, batch counts, C against D), as
// cublasLtMatmul documents ("parameters are in conflict or in an impossible configuration");
// NOT_SUPPORTED for type combinations outside cublasLtMatmul's table of supported data types and
// for what this emulation leaves out (orders other than COL, pointer modes other than HOST,
// the AUX and gradient epilogues, fp16 / int8 / fp8 data).
cublasStatus_t lt_problem(const char *what, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la,
                          cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, cublasLtMatrixLayout_t lD, Gemm *g) {
    if (!live(op) || !live(la) || !live(lb) || !live(lc) || !live(lD)) return CUBLAS_STATUS_INVALID_VALUE;
    if (!valid_op(op->transa) || !valid_op(op->transb) || !valid_op(op->transc)) return CUBLAS_STATUS_INVALID_VALUE;
    if (op->transc != CUBLAS_OP_N || op->fill != CUBLAS_FILL_MODE_FULL) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (op->pointer_mode != CUBLASLT_POINTER_MODE_HOST) return CUBLAS_STATUS_NOT_SUPPORTED;
    const cublasLtMatrixLayoutOpaque_t *L[4] = {la, lb, lc, lD};
    for (const cublasLtMatrixLayoutOpaque_t *l : L) {
        if (l->order != CUBLASLT_ORDER_COL || l->plane_offset != 0 || l->batch_mode != 0)
            return CUBLAS_STATUS_NOT_SUPPORTED;
        if (l->ld < 0 || (uint64_t)l->ld < l->rows || l->batch < 1) return CUBLAS_STATUS_INVALID_VALUE;
        // "Usually only values that can be expressed as int32_t are supported" (and cblas's ints).
        if (l->rows > INT_MAX || l->cols > INT_MAX || l->ld > INT_MAX) return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const bool ta = op->transa != CUBLAS_OP_N, tb = op->transb != CUBLAS_OP_N;
    const int64_t m = (int64_t)lD->rows, n = (int64_t)lD->cols;
    const int64_t am = (int64_t)(ta ? la->cols : la->rows), ak = (int64_t)(ta ? la->rows : la->cols);
    const int64_t bk = (int64_t)(tb ? lb->cols : lb->rows), bn = (int64_t)(tb ? lb->rows : lb->cols);
    if (am != m || bn != n || ak != bk) return CUBLAS_STATUS_INVALID_VALUE;
    // C and D: the same type, shape and batch count (cublasLtMatmul: out of place, only the
    // leading dimensions may differ).
    if (lc->rows != lD->rows || lc->cols != lD->cols || lc->type != lD->type || lc->batch != lD->batch)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (la->batch != lD->batch || lb->batch != lD->batch) return CUBLAS_STATUS_INVALID_VALUE;
    // Types (cublasLtMatmul's table): 32F compute: fp32 -> fp32, bf16 -> bf16 or fp32; the fast
    // compute types: fp32 only.  The scale type (alpha, beta) is fp32 for all of them.
    const uint32_t at = la->type, bt = lb->type, dt = lD->type;
    Round r = ROUND_NONE;
    switch (op->compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        if (at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (!((at == CUDA_R_32F && dt == CUDA_R_32F) || (at == CUDA_R_16BF && (dt == CUDA_R_16BF || dt == CUDA_R_32F))))
            return CUBLAS_STATUS_NOT_SUPPORTED;
        break;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
        if (at != CUDA_R_32F || bt != CUDA_R_32F || dt != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
        r = op->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? ROUND_TF32 : ROUND_BF16;
        break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (op->scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    Act act = ACT_NONE;
    bool bias = false;
    switch (op->epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: break;
    case CUBLASLT_EPILOGUE_BIAS: bias = true; break;
    case CUBLASLT_EPILOGUE_RELU: act = ACT_RELU; break;
    case CUBLASLT_EPILOGUE_RELU_BIAS: act = ACT_RELU, bias = true; break;
    case CUBLASLT_EPILOGUE_GELU: act = ACT_GELU; break;
    case CUBLASLT_EPILOGUE_GELU_BIAS: act = ACT_GELU, bias = true; break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    // The bias is of D's type unless CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE says otherwise (fp32 or
    // bf16 here; whether the real library takes every such pairing is not documented: lenient).
    const int32_t biast = op->bias_type == -1 ? (int32_t)dt : op->bias_type;
    if (bias && biast != CUDA_R_32F && biast != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    g->what = what;
    g->ta = ta, g->tb = tb;
    g->m = m, g->n = n, g->k = ak, g->batch = lD->batch;
    g->alpha = 0.0f, g->beta = 0.0f;
    g->A = Mat{nullptr, (cudaDataType_t)at, (int64_t)la->rows, (int64_t)la->cols, la->ld, la->stride};
    g->B = Mat{nullptr, (cudaDataType_t)bt, (int64_t)lb->rows, (int64_t)lb->cols, lb->ld, lb->stride};
    g->C = Mat{nullptr, (cudaDataType_t)lc->type, m, n, lc->ld, lc->stride};
    g->D = Mat{nullptr, (cudaDataType_t)dt, m, n, lD->ld, lD->stride};
    g->round = r;
    g->has_bias = bias;
    g->bias = Mat{bias ? op->bias : nullptr, (cudaDataType_t)biast, m, 1, m > 1 ? m : 1, op->bias_stride};
    g->act = act;
    return CUBLAS_STATUS_SUCCESS;
}

// A digest of everything about a problem that an algorithm is chosen for: shapes, types,
// transposes, epilogue, leading dimensions and batch strides (FNV-1a over the fields).
uint64_t problem_digest(const Gemm &g) {
    const int64_t f[] = {g.m, g.n, g.k, g.batch, (int64_t)g.A.type, (int64_t)g.D.type, (int64_t)g.round, (int64_t)g.act,
                         (int64_t)g.has_bias, (int64_t)g.ta, (int64_t)g.tb, g.A.ld, g.B.ld, g.C.ld, g.D.ld,
                         g.batch > 1 ? g.A.stride : 0, g.batch > 1 ? g.B.stride : 0, g.batch > 1 ? g.C.stride : 0,
                         g.batch > 1 ? g.D.stride : 0};
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : f)
        for (int b = 0; b < 8; b++) h = (h ^ (uint64_t)((v >> (8 * b)) & 0xff)) * 1099511628211ull;
    return h;
}

// What an algorithm remembers of the query that made it: the problem (data[1..5], its digest in
// data[5]) and the preference's alignments (data[6..7]).  cublasLtMatmul refuses an algorithm
// chosen for another problem (cublasLtMatmulAlgoCheck's question: an algorithm is valid for the
// problem it was found for; pinning one per shape must key on everything the heuristic saw).
void algo_make(cublasLtMatmulAlgo_t *a, const Gemm &g, const uint32_t align[4]) {
    memset(a, 0, sizeof *a);
    a->data[0] = ALGO_MAGIC;
    a->data[1] = (uint64_t)g.m, a->data[2] = (uint64_t)g.n, a->data[3] = (uint64_t)g.k;
    a->data[4] = (uint64_t)g.batch;
    a->data[5] = problem_digest(g);
    a->data[6] = (uint64_t)align[0] | (uint64_t)align[1] << 32;
    a->data[7] = (uint64_t)align[2] | (uint64_t)align[3] << 32;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// cuBLAS

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasContext *h = new (std::nothrow) cublasContext();
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->device = cudaemu::current_device();
    h->stream = nullptr;
    h->workspace = nullptr;
    h->workspace_bytes = 0;
    h->math = CUBLAS_DEFAULT_MATH;
    live_add(h);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    live_del(handle);
    // The handle's resources are still the caller's to have kept: its stream and its workspace
    // (cublasSetWorkspace: "the user must ensure the workspace stays valid for the handle's
    // lifetime"); a stream or workspace freed first is reported (the destroy uses them).
    if (!cudaemu::stream_alive(handle->stream))
        cudaemu::fault(cudaErrorInvalidResourceHandle, "cublasDestroy: the handle's stream %p was destroyed before it",
                       (void *)handle->stream);
    if (handle->workspace && !cudaemu::device_range(handle->workspace, handle->workspace_bytes))
        cudaemu::fault(cudaErrorIllegalAddress, "cublasDestroy: the handle's workspace %p (%zu bytes) was freed before it",
                       handle->workspace, handle->workspace_bytes);
    // Queued GEMMs hold copies of what they need, not the handle; the sync is the documented one.
    sync_device(handle->device);
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

// "cublasSetStream unconditionally resets the cuBLAS library workspace back to the default
// workspace pool."
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    handle->workspace = nullptr;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

// The workspace must be aligned to at least 256 bytes (cublasSetWorkspace: INVALID_VALUE
// otherwise).  The emulated GEMMs need none, so it is only remembered.
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((uintptr_t)workspace % 256) return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH && base != CUBLAS_PEDANTIC_MATH &&
        base != CUBLAS_TF32_TENSOR_OP_MATH && base != CUBLAS_FP32_EMULATED_BF16X9_MATH &&
        base != CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

// Only the host pointer mode is emulated (there is no cublasSetPointerMode).
cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t *mode) {
    if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = CUBLAS_POINTER_MODE_HOST;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status) { return status_name(status); }
const char *cublasGetStatusString(cublasStatus_t status) { return status_string(status); }

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
    return blas_gemm("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb,
                     0, beta, C, CUDA_R_32F, ldc, 0, 1, -1, CUBLAS_GEMM_DEFAULT);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return blas_gemm("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta,
                     C, Ctype, ldc, 0, 1, (int)computeType, (int)algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return blas_gemm("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B,
                     Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, (int)computeType, (int)algo);
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtContext *h = new (std::nothrow) cublasLtContext();
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->device = cudaemu::current_device();
    live_add(h);
    *lightHandle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    if (!live(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    live_del(lightHandle);
    sync_device(lightHandle->device);
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasLtGetStatusName(cublasStatus_t status) { return status_name(status); }
const char *cublasLtGetStatusString(cublasStatus_t status) { return status_string(status); }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulDescOpaque_t *d = new (std::nothrow) cublasLtMatmulDescOpaque_t();
    if (!d) return CUBLAS_STATUS_ALLOC_FAILED;
    d->compute = (int32_t)computeType;
    d->scale = (int32_t)scaleType;
    d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->transa = d->transb = d->transc = CUBLAS_OP_N;
    d->fill = CUBLAS_FILL_MODE_FULL;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->bias = nullptr;
    d->bias_stride = 0;
    d->bias_type = -1;
    live_add(d);
    *matmulDesc = d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) { return destroy_descriptor(matmulDesc); }

}  // extern "C"

namespace {
// An attribute's value: INVALID_VALUE "if buf is NULL or sizeInBytes doesn't match size of
// internal storage for selected attribute".
template <class T>
cublasStatus_t set_field(T *field, const void *buf, size_t size) {
    if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(field, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}
// One this emulation accepts and ignores (it matters only to what it refuses as NOT_SUPPORTED).
cublasStatus_t ignore_field(size_t want, const void *buf, size_t size) {
    return !buf || size != want ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_SUCCESS;
}
}  // namespace

extern "C" {

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes) {
    if (!live(d)) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return set_field(&d->compute, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return set_field(&d->scale, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return set_field(&d->pointer_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSA: return set_field(&d->transa, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set_field(&d->transb, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSC: return set_field(&d->transc, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_FILL_MODE: return set_field(&d->fill, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_field(&d->epilogue, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_field(&d->bias, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return set_field(&d->bias_stride, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set_field(&d->bias_type, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
    case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER:
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER:
    case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER: return ignore_field(sizeof(void *), buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE:
    case CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE: return ignore_field(sizeof(int64_t), buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: return ignore_field(sizeof(int32_t), buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return ignore_field(sizeof(int8_t), buf, sizeInBytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

// No check of the arguments at creation (the documentation lists only ALLOC_FAILED); an
// impossible layout (ld < rows) is refused by the matmul and the heuristic.
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatrixLayoutOpaque_t *l = new (std::nothrow) cublasLtMatrixLayoutOpaque_t();
    if (!l) return CUBLAS_STATUS_ALLOC_FAILED;
    l->type = (uint32_t)type;
    l->order = CUBLASLT_ORDER_COL;
    l->rows = rows, l->cols = cols, l->ld = ld;
    l->batch = 1;
    l->stride = 0;
    l->plane_offset = 0;
    l->batch_mode = 0;
    live_add(l);
    *matLayout = l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) { return destroy_descriptor(matLayout); }

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes) {
    if (!live(l)) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return set_field(&l->type, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return set_field(&l->order, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return set_field(&l->rows, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return set_field(&l->cols, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_LD: return set_field(&l->ld, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return set_field(&l->batch, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return set_field(&l->stride, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: return set_field(&l->plane_offset, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: return set_field(&l->batch_mode, buf, sizeInBytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulPreferenceOpaque_t *p = new (std::nothrow) cublasLtMatmulPreferenceOpaque_t();
    if (!p) return CUBLAS_STATUS_ALLOC_FAILED;
    p->search_mode = CUBLASLT_SEARCH_BEST_FIT;
    p->max_workspace = 0;
    p->reduction_mask = 0xffffffffu;
    for (uint32_t &a : p->align) a = 256;  // the documented default
    p->max_waves = 0.0f;
    p->impl_mask = ~0ull;
    live_add(p);
    *pref = p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) { return destroy_descriptor(pref); }

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!live(p)) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return set_field(&p->search_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return set_field(&p->max_workspace, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return set_field(&p->reduction_mask, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return set_field(&p->align[0], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return set_field(&p->align[1], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return set_field(&p->align[2], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return set_field(&p->align[3], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: return set_field(&p->max_waves, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: return set_field(&p->impl_mask, buf, sizeInBytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

// One algorithm for any problem lt_problem accepts: it needs no workspace; it remembers the
// preference's minimum alignments, and cublasLtMatmul holds the pointers to them (which
// alignments the real algorithms need is not documented: the promise is what is checked).  A
// preference of NULL means the defaults.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    if (!live(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount) return CUBLAS_STATUS_INVALID_VALUE;
    *returnAlgoCount = 0;
    if (preference && !live(preference)) return CUBLAS_STATUS_INVALID_VALUE;
    Gemm g;
    const cublasStatus_t st =
        lt_problem("cublasLtMatmulAlgoGetHeuristic", operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const uint32_t dflt[4] = {256, 256, 256, 256};
    cublasLtMatmulHeuristicResult_t *r = &heuristicResultsArray[0];
    memset(r, 0, sizeof *r);
    algo_make(&r->algo, g, preference ? preference->align : dflt);
    r->workspaceSize = 0;
    r->state = CUBLAS_STATUS_SUCCESS;
    r->wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

// In place (C == D) needs Cdesc to describe D as Ddesc does (cublasLtMatmul: "in-place matrix
// multiplication (C == D and Cdesc == Ddesc)"); out of place only the leading dimensions may
// differ.  When beta == 0, C is not read and may be NULL.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
    (void)workspace, (void)workspaceSizeInBytes;  // the algorithm needs none
    if (!live(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    Gemm g;
    const cublasStatus_t st = lt_problem("cublasLtMatmul", computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    // An algorithm not made by cublasLtMatmulAlgoGetHeuristic (e.g. left zeroed) is refused;
    // NULL asks for the implicit heuristic query, which always finds this one.
    if (algo && algo->data[0] != ALGO_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    if (algo && algo->data[5] != problem_digest(g)) {
        fprintf(stderr,
                "cudaemu: cublasLtMatmul: the algorithm was chosen for another problem (heuristic asked for m %llu n %llu k "
                "%llu batch %llu; now m %lld n %lld k %lld batch %lld, lda %lld ldb %lld ldc %lld ldd %lld, strides %lld %lld "
                "%lld %lld, or other types or epilogue)\n",
                (unsigned long long)algo->data[1], (unsigned long long)algo->data[2], (unsigned long long)algo->data[3],
                (unsigned long long)algo->data[4], (long long)g.m, (long long)g.n, (long long)g.k, (long long)g.batch,
                (long long)g.A.ld, (long long)g.B.ld, (long long)g.C.ld, (long long)g.D.ld, (long long)g.A.stride,
                (long long)g.B.stride, (long long)g.C.stride, (long long)g.D.stride);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (C == D && (Cdesc->ld != Ddesc->ld || Cdesc->stride != Ddesc->stride)) return CUBLAS_STATUS_INVALID_VALUE;
    // The heuristic chose among algorithms that work with the alignments the preference promised
    // (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES, 256 by default: "selecting a smaller value will
    // exclude algorithms that can not work with" less aligned matrices); a pointer aligned below
    // its promise is refused (the same problem needs another algorithm, or a smaller promise).
    if (algo) {
        const void *ptr[4] = {A, B, beta && *(const float *)beta != 0.0f ? C : nullptr, D};
        const char *nm[4] = {"A", "B", "C", "D"};
        for (int q = 0; q < 4; q++) {
            const uint32_t promised = (uint32_t)(algo->data[6 + q / 2] >> (32 * (q % 2)));
            if (ptr[q] && promised && (uintptr_t)ptr[q] % promised) {
                fprintf(stderr, "cudaemu: cublasLtMatmul: %s at %p is not %u-byte aligned, as the preference promised "
                                "when the algorithm was chosen (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%s_BYTES)\n",
                        nm[q], ptr[q], promised, nm[q]);
                return CUBLAS_STATUS_NOT_SUPPORTED;
            }
        }
    }
    memcpy(&g.alpha, alpha, 4);
    memcpy(&g.beta, beta, 4);
    g.A.p = A, g.B.p = B, g.C.p = C, g.D.p = D;
    return submit(stream, g);
}

}  // extern "C"
