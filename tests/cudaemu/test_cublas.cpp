// test_cublas.cpp: the cuBLAS and cuBLASLt shims of the emulated CUDA device (cublas.cpp) against
// naive triple loops written here from the documented semantics: column-major storage, op() per
// transpose, leading dimensions above the row count (the padding must stay untouched), batch
// strides in elements (with gaps between members), D = epilogue(alpha op(A) op(B) + beta C) with
// the bias added before the activation, beta = 0 reading nothing of C, bf16 inputs and outputs
// (round to nearest even), TF32 / bf16 compute types rounding the inputs; then the documented
// argument errors, non-device operands faulting as the real kernel would, and the work running
// in stream order.  Shapes are small and odd (5 x 7 x 3, 17 x 33 x 9); the naive loops sum in
// double, and fp32 results must agree within 1e-5 of sum |alpha a b| + |beta c| + |bias| (fp32
// summation-order differences are far below that), bf16 results within half a bf16 ulp more.
#include <criterion/criterion.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"

// ---------------------------------------------------------------------------------------------
// Data and device helpers

namespace {

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
    uint64_t next() {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return s;
    }
    float uni(float lo, float hi) { return lo + (hi - lo) * (float)((next() >> 40) * 0x1p-24); }
};

enum RefRound { RR_NONE, RR_TF32, RR_BF16 };

float bf16_of(float x) { return (float)__float2bfloat16_rn(x); }

// TF32 written independently of the shim: 11 significant bits, to nearest even (frexp's mantissa
// in [0.5, 1) times 2^11 rounded by nearbyint, whose default mode is to nearest even).
float tf32_of(float x) {
    if (!isfinite(x) || x == 0.0f) return x;
    int e;
    const double m = frexp((double)x, &e);
    return (float)ldexp(nearbyint(m * 2048.0) / 2048.0, e);
}

float ref_round(float x, RefRound r) { return r == RR_TF32 ? tf32_of(x) : r == RR_BF16 ? bf16_of(x) : x; }

// n values in [lo, hi), exactly representable in `type` (bf16 ones rounded).
std::vector<float> rnd(Rng &g, size_t n, cudaDataType type, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    for (float &x : v) x = type == CUDA_R_16BF ? bf16_of(g.uni(lo, hi)) : g.uni(lo, hi);
    return v;
}

size_t esz(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

// Device copy of h in `type`.
void *dput(const std::vector<float> &h, cudaDataType type) {
    void *p = nullptr;
    cr_assert_eq(cudaMalloc(&p, h.size() * esz(type)), cudaSuccess);
    if (type == CUDA_R_16BF) {
        std::vector<__nv_bfloat16> b(h.size());
        for (size_t i = 0; i < h.size(); i++) b[i] = __float2bfloat16_rn(h[i]);
        cr_assert_eq(cudaMemcpy(p, b.data(), b.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    } else {
        cr_assert_eq(cudaMemcpy(p, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    }
    return p;
}

// n elements of `type` at d, as floats, after the device has finished.
std::vector<float> dget(const void *d, size_t n, cudaDataType type) {
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> h(n);
    if (type == CUDA_R_16BF) {
        std::vector<__nv_bfloat16> b(n);
        cr_assert_eq(cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
        for (size_t i = 0; i < n; i++) h[i] = (float)b[i];
    } else {
        cr_assert_eq(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
}

bool same_bits(float a, float b) { return !memcmp(&a, &b, 4) || (isnan(a) && isnan(b)); }

double gelu_ref(double x) { return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }

// ---------------------------------------------------------------------------------------------
// The naive GEMM: one member of a batch, from the documented definition

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2 };

struct Naive {
    int m, n, k;
    bool ta, tb;
    float alpha, beta;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    const float *C;  // read only when beta != 0
    int ldc;
    const float *bias;  // nullptr: none
    int act;
    RefRound round;  // of A's and B's values before the product
};

// y (m x n, packed): the result; mag: what its rounding error is relative to.
void naive(const Naive &p, std::vector<double> &y, std::vector<double> &mag) {
    y.assign((size_t)p.m * p.n, 0.0);
    mag.assign((size_t)p.m * p.n, 0.0);
    for (int j = 0; j < p.n; j++)
        for (int i = 0; i < p.m; i++) {
            double s = 0.0, a = 0.0;
            for (int l = 0; l < p.k; l++) {
                const double x = ref_round(p.ta ? p.A[l + (size_t)i * p.lda] : p.A[i + (size_t)l * p.lda], p.round);
                const double z = ref_round(p.tb ? p.B[j + (size_t)l * p.ldb] : p.B[l + (size_t)j * p.ldb], p.round);
                s += x * z;
                a += fabs(x * z);
            }
            double v = p.alpha * s, w = fabs(p.alpha) * a;
            if (p.beta != 0.0f) {
                v += (double)p.beta * p.C[i + (size_t)j * p.ldc];
                w += fabs((double)p.beta * p.C[i + (size_t)j * p.ldc]);
            }
            if (p.bias) v += p.bias[i], w += fabs(p.bias[i]);
            if (p.act == ACT_GELU) v = gelu_ref(v), w *= 1.2;  // |gelu'| < 1.13
            else if (p.act == ACT_RELU) v = v > 0.0 ? v : 0.0;
            y[i + (size_t)j * p.m] = v;
            mag[i + (size_t)j * p.m] = w;
        }
}

// D's member (column-major, ldd, from element off of got) against the naive result.  Returns the
// largest |got - y| / mag seen (for the "rounding did happen" checks).
double expect_close(const char *what, const std::vector<float> &got, size_t off, int ldd, const std::vector<double> &y,
                    const std::vector<double> &mag, int m, int n, bool bf16_out) {
    double worst = 0.0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const double g = got[off + i + (size_t)j * ldd], r = y[i + (size_t)j * m];
            double tol = 1e-5 * mag[i + (size_t)j * m] + 1e-6 * fabs(r) + 1e-30;
            if (bf16_out) tol += 0x1p-8 * (fabs(r) + tol);  // round to nearest: at most half an ulp
            cr_assert(fabs(g - r) <= tol, "%s: D(%d, %d) = %.9g, the definition gives %.9g (tolerance %.3g)", what, i,
                      j, g, r, tol);
            if (mag[i + (size_t)j * m] > 0) worst = fmax(worst, fabs(g - r) / mag[i + (size_t)j * m]);
        }
    return worst;
}

// Every element of D outside the members' m x n (ld padding, gaps between members) as before.
void expect_untouched(const char *what, const std::vector<float> &got, const std::vector<float> &before, int m,
                      int n, int ldd, long long stride, int batch) {
    for (size_t e = 0; e < got.size(); e++) {
        const long long b = stride ? (long long)e / stride : 0, r = stride ? (long long)e % stride : (long long)e;
        const bool inside = b < batch && r < (long long)ldd * n && r % ldd < m;
        if (!inside)
            cr_assert(same_bits(got[e], before[e]), "%s: element %zu outside the result was written (%g -> %g)", what,
                      e, before[e], got[e]);
    }
}

// ---------------------------------------------------------------------------------------------
// One cuBLAS GEMM (cublasSgemm, cublasGemmEx or cublasGemmStridedBatchedEx) against the naive one

enum Api { SGEMM, GEMM_EX, STRIDED };

struct BlasCase {
    Api api;
    int m, n, k, batch;
    bool ta, tb;
    cudaDataType ab, c;
    cublasComputeType_t compute;  // GEMM_EX / STRIDED
    cublasMath_t math;
    float alpha, beta;
    RefRound round;  // what the documented arithmetic rounds the inputs to
    bool c_nan;      // C filled with NaN (beta = 0: must not be read)
};

// Returns the worst relative deviation from the unrounded definition (see expect_close).
double blas_case(const char *what, const BlasCase &t, uint64_t seed) {
    Rng g(seed);
    const int ar = t.ta ? t.k : t.m, ac = t.ta ? t.m : t.k, br = t.tb ? t.n : t.k, bc = t.tb ? t.k : t.n;
    const int lda = ar + 3, ldb = br + 1, ldc = t.m + 2;
    const long long sa = t.batch > 1 ? (long long)lda * ac + 7 : 0, sb = t.batch > 1 ? (long long)ldb * bc + 5 : 0,
                    sc = t.batch > 1 ? (long long)ldc * t.n + 3 : 0;
    const size_t na = (size_t)(t.batch > 1 ? sa * t.batch : (long long)lda * ac);
    const size_t nb = (size_t)(t.batch > 1 ? sb * t.batch : (long long)ldb * bc);
    const size_t nc = (size_t)(t.batch > 1 ? sc * t.batch : (long long)ldc * t.n);
    const std::vector<float> A = rnd(g, na, t.ab), B = rnd(g, nb, t.ab);
    std::vector<float> C = rnd(g, nc, t.c);
    if (t.c_nan)
        for (float &x : C) x = NAN;
    void *dA = dput(A, t.ab), *dB = dput(B, t.ab), *dC = dput(C, t.c);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasSetMathMode(h, t.math), CUBLAS_STATUS_SUCCESS);
    const cublasOperation_t oa = t.ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = t.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (t.api == SGEMM)
        st = cublasSgemm(h, oa, ob, t.m, t.n, t.k, &t.alpha, (const float *)dA, lda, (const float *)dB, ldb, &t.beta,
                         (float *)dC, ldc);
    else if (t.api == GEMM_EX)
        st = cublasGemmEx(h, oa, ob, t.m, t.n, t.k, &t.alpha, dA, t.ab, lda, dB, t.ab, ldb, &t.beta, dC, t.c, ldc,
                          t.compute, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasGemmStridedBatchedEx(h, oa, ob, t.m, t.n, t.k, &t.alpha, dA, t.ab, lda, sa, dB, t.ab, ldb, sb,
                                        &t.beta, dC, t.c, ldc, sc, t.batch, t.compute, CUBLAS_GEMM_DEFAULT);
    cr_assert_eq(st, CUBLAS_STATUS_SUCCESS, "%s: %s", what, cublasGetStatusName(st));
    const std::vector<float> D = dget(dC, nc, t.c);
    double dev_unrounded = 0.0;
    for (int b = 0; b < t.batch; b++) {
        Naive p = {t.m, t.n, t.k, t.ta, t.tb, t.alpha, t.beta, A.data() + b * sa, lda, B.data() + b * sb, ldb,
                   C.data() + b * sc, ldc, nullptr, ACT_NONE, t.round};
        std::vector<double> y, mag;
        naive(p, y, mag);
        expect_close(what, D, (size_t)(b * sc), ldc, y, mag, t.m, t.n, t.c == CUDA_R_16BF);
        p.round = RR_NONE;
        naive(p, y, mag);
        for (int j = 0; j < t.n; j++)
            for (int i = 0; i < t.m; i++)
                if (mag[i + (size_t)j * t.m] > 0)
                    dev_unrounded = fmax(dev_unrounded, fabs(D[b * sc + i + (size_t)j * ldc] - y[i + (size_t)j * t.m]) /
                                                            mag[i + (size_t)j * t.m]);
    }
    expect_untouched(what, D, C, t.m, t.n, ldc, sc, t.batch);
    cublasDestroy(h);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    return dev_unrounded;
}

// ---------------------------------------------------------------------------------------------
// One cuBLASLt matmul, set up as kernels/ does (descriptor, layouts, heuristic, matmul)

struct LtCase {
    int m, n, k, batch;
    bool ta, tb;
    cudaDataType ab, cd;
    cublasComputeType_t compute;
    cublasLtEpilogue_t epi;
    float alpha, beta;
    int cmode;  // 0: C is D (kernels/: beta 0, or the residual in place); 1: C separate, ldc != ldd
    bool null_algo;
    RefRound round;
};

bool epi_bias(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS;
}
int epi_act(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_GELU || e == CUBLASLT_EPILOGUE_GELU_BIAS   ? ACT_GELU
           : e == CUBLASLT_EPILOGUE_RELU || e == CUBLASLT_EPILOGUE_RELU_BIAS ? ACT_RELU
                                                                             : ACT_NONE;
}

void lt_batch(cublasLtMatrixLayout_t l, int batch, long long stride) {
    if (batch <= 1) return;
    const int32_t bc = batch;
    const int64_t st = stride;
    cr_assert_eq(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st),
                 CUBLAS_STATUS_SUCCESS);
}

double lt_case(const char *what, const LtCase &t, uint64_t seed) {
    Rng g(seed);
    const int ar = t.ta ? t.k : t.m, ac = t.ta ? t.m : t.k, br = t.tb ? t.n : t.k, bc = t.tb ? t.k : t.n;
    const int lda = ar + 1, ldb = br + 2, ldd = t.m + 3, ldc = t.cmode == 1 ? t.m + 1 : ldd;
    const bool batched = t.batch > 1;
    const long long sa = batched ? (long long)lda * ac + 7 : 0, sb = batched ? (long long)ldb * bc + 5 : 0,
                    sd = batched ? (long long)ldd * t.n + 3 : 0, sc = t.cmode == 1 && batched ? (long long)ldc * t.n + 2 : sd;
    const size_t na = (size_t)(batched ? sa * t.batch : (long long)lda * ac);
    const size_t nb = (size_t)(batched ? sb * t.batch : (long long)ldb * bc);
    const size_t nd = (size_t)(batched ? sd * t.batch : (long long)ldd * t.n);
    const size_t nc = (size_t)(batched ? sc * t.batch : (long long)ldc * t.n);
    const std::vector<float> A = rnd(g, na, t.ab), B = rnd(g, nb, t.ab);
    const std::vector<float> bias = rnd(g, (size_t)t.m, t.cd, -2.0f, 2.0f);  // of D's type
    std::vector<float> C, D0;
    if (t.cmode == 1) {
        C = rnd(g, nc, t.cd);
        D0.assign(nd, NAN);  // out of place: D's old contents are not read
    } else {
        D0 = t.beta != 0.0f ? rnd(g, nd, t.cd) : std::vector<float>(nd, NAN);
        C = D0;
    }
    void *dA = dput(A, t.ab), *dB = dput(B, t.ab), *dD = dput(D0, t.cd), *dbias = dput(bias, t.cd);
    void *dC = t.cmode == 1 ? dput(C, t.cd) : dD;

    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, t.compute, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    const cublasOperation_t oa = t.ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = t.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &t.epi, sizeof t.epi),
                 CUBLAS_STATUS_SUCCESS);
    if (epi_bias(t.epi))
        cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias, sizeof dbias),
                     CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, t.ab, ar, ac, lda), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, t.ab, br, bc, ldb), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, t.cd, t.m, t.n, ldd), CUBLAS_STATUS_SUCCESS);
    lc = ld;
    if (t.cmode == 1) cr_assert_eq(cublasLtMatrixLayoutCreate(&lc, t.cd, t.m, t.n, ldc), CUBLAS_STATUS_SUCCESS);
    lt_batch(la, t.batch, sa), lt_batch(lb, t.batch, sb), lt_batch(ld, t.batch, sd);
    if (t.cmode == 1) lt_batch(lc, t.batch, sc);
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    if (!t.null_algo) {
        cublasLtMatmulPreference_t pref;
        cr_assert_eq(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
        const uint64_t ws = (uint64_t)32 << 20;
        cr_assert_eq(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                     CUBLAS_STATUS_SUCCESS);
        int found = 0;
        cr_assert_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, ld, pref, 1, &res, &found),
                     CUBLAS_STATUS_SUCCESS);
        cr_assert_eq(found, 1);
        cr_assert_eq(res.state, CUBLAS_STATUS_SUCCESS);
        cublasLtMatmulPreferenceDestroy(pref);
    }
    const cublasStatus_t st = cublasLtMatmul(lt, desc, &t.alpha, dA, la, dB, lb, &t.beta, dC, lc, dD, ld,
                                             t.null_algo ? nullptr : &res.algo, nullptr, 0, nullptr);
    cr_assert_eq(st, CUBLAS_STATUS_SUCCESS, "%s: %s", what, cublasLtGetStatusName(st));
    const std::vector<float> D = dget(dD, nd, t.cd);
    double dev_unrounded = 0.0;
    for (int b = 0; b < t.batch; b++) {
        Naive p = {t.m, t.n, t.k, t.ta, t.tb, t.alpha, t.beta, A.data() + b * sa, lda, B.data() + b * sb, ldb,
                   C.data() + b * sc, ldc, epi_bias(t.epi) ? bias.data() : nullptr, epi_act(t.epi), t.round};
        std::vector<double> y, mag;
        naive(p, y, mag);
        expect_close(what, D, (size_t)(b * sd), ldd, y, mag, t.m, t.n, t.cd == CUDA_R_16BF);
        p.round = RR_NONE;
        naive(p, y, mag);
        for (int j = 0; j < t.n; j++)
            for (int i = 0; i < t.m; i++)
                if (mag[i + (size_t)j * t.m] > 0)
                    dev_unrounded = fmax(dev_unrounded, fabs(D[b * sd + i + (size_t)j * ldd] - y[i + (size_t)j * t.m]) /
                                                            mag[i + (size_t)j * t.m]);
    }
    expect_untouched(what, D, D0, t.m, t.n, ldd, sd, t.batch);
    if (t.cmode == 1) {
        const std::vector<float> C1 = dget(dC, nc, t.cd);
        for (size_t e = 0; e < nc; e++) cr_assert(same_bits(C1[e], C[e]), "%s: C was written", what);
        cublasLtMatrixLayoutDestroy(lc);
        cudaFree(dC);
    }
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    cudaFree(dA), cudaFree(dB), cudaFree(dD), cudaFree(dbias);
    return dev_unrounded;
}

const int SHAPES[2][3] = {{5, 7, 3}, {17, 33, 9}};  // m, n, k

}  // namespace

// ---------------------------------------------------------------------------------------------
// cuBLAS

// cublasSgemm, every transpose pair, both shapes, ld > rows, beta != 0 (C read and overwritten).
Test(emu_cublas, sgemm_transposes_ld_beta) {
    for (int s = 0; s < 2; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                char what[64];
                snprintf(what, sizeof what, "cublasSgemm %c%c %dx%dx%d", ta ? 'T' : 'N', tb ? 'T' : 'N', SHAPES[s][0],
                         SHAPES[s][1], SHAPES[s][2]);
                BlasCase t = {SGEMM, SHAPES[s][0], SHAPES[s][1], SHAPES[s][2], 1, ta != 0, tb != 0, CUDA_R_32F,
                              CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH, 1.25f, 0.5f, RR_NONE, false};
                blas_case(what, t, 10 + s * 4 + ta * 2 + tb);
            }
}

// beta = 0: C is not read (NaN there must not reach the result); alpha = 0: A, B not read.
Test(emu_cublas, sgemm_beta_zero_alpha_zero) {
    BlasCase t = {SGEMM, 17, 33, 9, 1, true, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH,
                  0.75f, 0.0f, RR_NONE, true};
    blas_case("cublasSgemm beta 0, C NaN", t, 20);

    // alpha = 0, beta = 2: C = 2 C whatever A holds (NaN here); k = 0 likewise.
    Rng g(21);
    const int m = 5, n = 7, k = 3;
    std::vector<float> A((size_t)m * k, NAN), B = rnd(g, (size_t)k * n, CUDA_R_32F), C = rnd(g, (size_t)m * n, CUDA_R_32F);
    float *dA = (float *)dput(A, CUDA_R_32F), *dB = (float *)dput(B, CUDA_R_32F), *dC = (float *)dput(C, CUDA_R_32F);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const float zero = 0.0f, two = 2.0f, one = 1.0f;
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &zero, dA, m, dB, k, &two, dC, m),
                 CUBLAS_STATUS_SUCCESS);
    std::vector<float> D = dget(dC, C.size(), CUDA_R_32F);
    for (size_t e = 0; e < C.size(); e++) cr_assert_eq(D[e], 2.0f * C[e], "alpha 0: element %zu", e);
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 0, &one, dA, m, dB, 1, &two, dC, m),
                 CUBLAS_STATUS_SUCCESS);
    D = dget(dC, C.size(), CUDA_R_32F);
    for (size_t e = 0; e < C.size(); e++) cr_assert_eq(D[e], 4.0f * C[e], "k 0: element %zu", e);
    // m = 0: nothing to do, nothing touched.
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, n, k, &one, dA, 1, dB, k, &zero, dC, 1),
                 CUBLAS_STATUS_SUCCESS);
    D = dget(dC, C.size(), CUDA_R_32F);
    for (size_t e = 0; e < C.size(); e++) cr_assert_eq(D[e], 4.0f * C[e], "m 0: element %zu", e);
    cublasDestroy(h);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
}

// The default math mode is plain fp32 (analysis_cuda's no-TF32 GEMM); CUBLAS_TF32_TENSOR_OP_MATH
// lets cublasSgemm round its inputs to TF32.
Test(emu_cublas, sgemm_math_modes) {
    BlasCase t = {SGEMM, 17, 33, 9, 1, false, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH,
                  1.0f, 0.0f, RR_NONE, false};
    const double exact = blas_case("cublasSgemm default math", t, 30);
    cr_assert_lt(exact, 1e-5);
    t.math = CUBLAS_TF32_TENSOR_OP_MATH, t.round = RR_TF32;
    const double tf32 = blas_case("cublasSgemm TF32 math", t, 30);
    cr_assert_gt(tf32, 1e-4, "TF32 math mode: the result is the unrounded one (worst deviation %g)", tf32);
    t.math = CUBLAS_PEDANTIC_MATH, t.round = RR_NONE;
    blas_case("cublasSgemm pedantic math", t, 30);
}

// Argument errors, as cublas<t>gemm documents them.
Test(emu_cublas, sgemm_argument_errors) {
    float *d = nullptr;
    cr_assert_eq(cudaMalloc((void **)&d, 4096 * sizeof(float)), cudaSuccess);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f;
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    cr_expect_eq(cublasSgemm(nullptr, N, N, 5, 7, 3, &one, d, 5, d, 3, &one, d, 5), CUBLAS_STATUS_NOT_INITIALIZED);
    cr_expect_eq(cublasSgemm(h, N, N, -1, 7, 3, &one, d, 5, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, N, N, 5, -7, 3, &one, d, 5, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, -3, &one, d, 5, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, (cublasOperation_t)7, N, 5, 7, 3, &one, d, 5, d, 3, &one, d, 5),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, 3, &one, d, 4, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);  // lda < m
    cr_expect_eq(cublasSgemm(h, T, N, 5, 7, 3, &one, d, 2, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);  // lda < k
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, 3, &one, d, 5, d, 2, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);  // ldb < k
    cr_expect_eq(cublasSgemm(h, N, T, 5, 7, 3, &one, d, 5, d, 6, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);  // ldb < n
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, 3, &one, d, 5, d, 3, &one, d, 4), CUBLAS_STATUS_INVALID_VALUE);  // ldc < m
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, 3, nullptr, d, 5, d, 3, &one, d, 5), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, N, N, 5, 7, 3, &one, d, 5, d, 3, nullptr, d, 5), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasSgemm(h, T, T, 5, 7, 3, &one, d, 3, d, 7, &one, d, 5), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_expect_eq(cudaemu::last_fault(), std::string());
    cublasDestroy(h);
    cudaFree(d);
}

// A host operand, or a device one an element short of what the GEMM touches: the real kernel
// faults (illegal address); the call returns EXECUTION_FAILED and nothing is written.
Test(emu_cublas, sgemm_non_device_operands_fault) {
    Rng g(40);
    const int m = 5, n = 7, k = 3;
    std::vector<float> A = rnd(g, (size_t)m * k, CUDA_R_32F), B = rnd(g, (size_t)k * n, CUDA_R_32F),
                       C = rnd(g, (size_t)m * n, CUDA_R_32F);
    float *dA = (float *)dput(A, CUDA_R_32F), *dC = (float *)dput(C, CUDA_R_32F);
    std::vector<float> Bshort(B.begin(), B.end() - 1);
    float *dBshort = (float *)dput(Bshort, CUDA_R_32F);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f;
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, m, B.data(), k, &one, dC, m),
                 CUBLAS_STATUS_EXECUTION_FAILED);
    cr_assert(cudaemu::last_fault().find("cublasSgemm: B") != std::string::npos, "fault: %s",
              cudaemu::last_fault().c_str());
    cr_assert(cudaemu::last_fault().find("not inside one device allocation") != std::string::npos);
    cudaemu::clear_fault();
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, m, dBshort, k, &one, dC, m),
                 CUBLAS_STATUS_EXECUTION_FAILED);
    cr_assert(cudaemu::last_fault().find("cublasSgemm: B") != std::string::npos, "fault: %s",
              cudaemu::last_fault().c_str());
    cudaemu::clear_fault();
    // The exact extent is enough: C with ldc = m + 2 spans (n - 1) ldc + m elements, not n ldc.
    std::vector<float> Cexact((size_t)(m + 2) * (n - 1) + m, 0.0f);
    float *dCexact = (float *)dput(Cexact, CUDA_R_32F);
    float *dB = (float *)dput(B, CUDA_R_32F);
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, m, dB, k, &one, dCexact, m + 2),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert_eq(cudaemu::last_fault(), std::string());
    const std::vector<float> D = dget(dC, C.size(), CUDA_R_32F);
    for (size_t e = 0; e < C.size(); e++) cr_assert(same_bits(D[e], C[e]), "C written by a refused call");
    cublasDestroy(h);
    cudaFree(dA), cudaFree(dB), cudaFree(dBshort), cudaFree(dC), cudaFree(dCexact);
}

// cublasGemmStridedBatchedEx as the attention uses it (A transposed, batch strides with gaps
// between members), fp32 with the 32F, pedantic, TF32 and bf16-fast compute types.
Test(emu_cublas, strided_batched_fp32_compute_types) {
    BlasCase t = {STRIDED, 7, 7, 5, 3, true, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH,
                  0.5f, 0.0f, RR_NONE, true};
    blas_case("strided batched TN fp32, beta 0", t, 50);
    t.compute = CUBLAS_COMPUTE_32F_PEDANTIC, t.c_nan = false, t.beta = 1.0f, t.ta = false;
    t.m = 17, t.n = 33, t.k = 9;
    const double exact = blas_case("strided batched NN pedantic, beta 1", t, 51);
    cr_assert_lt(exact, 1e-5);
    t.compute = CUBLAS_COMPUTE_32F_FAST_TF32, t.round = RR_TF32, t.tb = true;
    const double tf32 = blas_case("strided batched NT fast TF32", t, 52);
    cr_assert_gt(tf32, 1e-4, "FAST_TF32: the result is the unrounded one (worst deviation %g)", tf32);
    t.compute = CUBLAS_COMPUTE_32F_FAST_16BF, t.round = RR_BF16;
    const double bf = blas_case("strided batched NT fast 16BF", t, 53);
    cr_assert_gt(bf, 1e-3, "FAST_16BF: the result is the unrounded one (worst deviation %g)", bf);
    // cublasGemmEx, one GEMM
    t.api = GEMM_EX, t.batch = 1, t.compute = CUBLAS_COMPUTE_32F, t.round = RR_NONE;
    blas_case("cublasGemmEx NT fp32", t, 54);
}

// bf16 operands, bf16 or fp32 C (cublasGemmEx's table), fp32 accumulation.
Test(emu_cublas, strided_batched_bf16) {
    BlasCase t = {STRIDED, 17, 33, 9, 2, true, false, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F,
                  CUBLAS_DEFAULT_MATH, 1.0f, 0.5f, RR_NONE, false};
    blas_case("strided batched bf16 -> bf16, beta 0.5", t, 60);
    t.c = CUDA_R_32F, t.beta = 0.0f, t.c_nan = true, t.ta = false, t.m = 5, t.n = 7, t.k = 3;
    blas_case("strided batched bf16 -> fp32, beta 0", t, 61);
}

// Type combinations outside cublasGemmEx's table are NOT_SUPPORTED; sizes and batch counts
// INVALID_VALUE; zero batches a quick success.
Test(emu_cublas, gemm_ex_argument_errors) {
    void *d = nullptr;
    cr_assert_eq(cudaMalloc(&d, 1 << 16), cudaSuccess);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f;
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    const cublasComputeType_t c32 = CUBLAS_COMPUTE_32F, tf32 = CUBLAS_COMPUTE_32F_FAST_TF32;
    const cublasGemmAlgo_t dflt = CUBLAS_GEMM_DEFAULT;
#define SB(ta, m, n, k, at, lda, bt, ldb, ct, ldc, batch, comp, algo)                                                  \
    cublasGemmStridedBatchedEx(h, ta, N, m, n, k, &one, d, at, lda, 64, d, bt, ldb, 64, &one, d, ct, ldc, 64, batch,   \
                               comp, algo)
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_16BF, 3, CUDA_R_32F, 5, 2, c32, dflt), CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_16BF, 5, 2, c32, dflt), CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_16BF, 5, CUDA_R_16BF, 3, CUDA_R_16BF, 5, 2, tf32, dflt),
                 CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 5, 2, CUBLAS_COMPUTE_64F, dflt),
                 CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 5, 2, c32, (cublasGemmAlgo_t)12345),
                 CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 5, -1, c32, dflt), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(SB(T, 5, 7, 3, CUDA_R_32F, 2, CUDA_R_32F, 3, CUDA_R_32F, 5, 2, c32, dflt), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 4, 2, c32, dflt), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 5, 0, c32, dflt), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(SB(N, 5, 7, 3, CUDA_R_32F, 5, CUDA_R_32F, 3, CUDA_R_32F, 5, 2, tf32, CUBLAS_GEMM_DEFAULT_TENSOR_OP),
                 CUBLAS_STATUS_SUCCESS);
#undef SB
    cr_expect_eq(cublasGemmEx(h, N, N, 5, 7, 3, &one, d, CUDA_R_16BF, 5, d, CUDA_R_16BF, 3, &one, d, CUDA_R_32F, 5,
                              CUBLAS_COMPUTE_32F_FAST_16BF, dflt),
                 CUBLAS_STATUS_NOT_SUPPORTED);
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    cublasDestroy(h);
    cudaFree(d);
}

// The handle's own functions.
Test(emu_cublas, handle_functions) {
    cr_expect_eq(cublasCreate(nullptr), CUBLAS_STATUS_INVALID_VALUE);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cublasMath_t mm;
    cr_expect_eq(cublasGetMathMode(h, &mm), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(mm, CUBLAS_DEFAULT_MATH);
    cr_expect_eq(cublasSetMathMode(h, (cublasMath_t)(CUBLAS_TF32_TENSOR_OP_MATH |
                                                     CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                 CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasSetMathMode(h, (cublasMath_t)7), CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasGetMathMode(h, &mm), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq((int)mm, CUBLAS_TF32_TENSOR_OP_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    cudaStream_t s, got = nullptr;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cr_expect_eq(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasGetStream(h, &got), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(got, s);
    char *ws = nullptr;
    cr_assert_eq(cudaMalloc((void **)&ws, 1 << 20), cudaSuccess);
    cr_expect_eq(cublasSetWorkspace(h, ws + 16, 1 << 16), CUBLAS_STATUS_INVALID_VALUE);  // 256-byte alignment
    cr_expect_eq(cublasSetWorkspace(h, ws, 1 << 20), CUBLAS_STATUS_SUCCESS);
    cublasPointerMode_t pm;
    cr_expect_eq(cublasGetPointerMode(h, &pm), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(pm, CUBLAS_POINTER_MODE_HOST);
    cr_expect_eq(cublasSetStream(nullptr, s), CUBLAS_STATUS_NOT_INITIALIZED);
    cr_expect_eq(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    cudaStreamDestroy(s);
    cudaFree(ws);
}

Test(emu_cublas, status_strings) {
    const cublasStatus_t all[] = {CUBLAS_STATUS_SUCCESS,          CUBLAS_STATUS_NOT_INITIALIZED, CUBLAS_STATUS_ALLOC_FAILED,
                                  CUBLAS_STATUS_INVALID_VALUE,    CUBLAS_STATUS_ARCH_MISMATCH,   CUBLAS_STATUS_MAPPING_ERROR,
                                  CUBLAS_STATUS_EXECUTION_FAILED, CUBLAS_STATUS_INTERNAL_ERROR,  CUBLAS_STATUS_NOT_SUPPORTED,
                                  CUBLAS_STATUS_LICENSE_ERROR};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        cr_assert(cublasGetStatusString(all[i]) && *cublasGetStatusString(all[i]));
        cr_assert_str_eq(cublasLtGetStatusString(all[i]), cublasGetStatusString(all[i]));
        for (size_t j = 0; j < i; j++) cr_assert_str_neq(cublasGetStatusName(all[i]), cublasGetStatusName(all[j]));
    }
    cr_assert_str_eq(cublasLtGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
    cr_assert_str_eq(cublasGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
    cr_assert(cublasGetStatusString((cublasStatus_t)12345) != nullptr);
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt

// The forward pass's GEMMs (kernels/model/forward_matmul.cu): W (Cout, Cin) column-major, X^T;
// plain, bias, bias + residual in place (beta 1, C == D), W transposed (the tied unembedding).
Test(emu_cublas, lt_fp32_epilogues) {
    for (int s = 0; s < 2; s++) {
        const int m = SHAPES[s][0], n = SHAPES[s][1], k = SHAPES[s][2];
        const uint64_t seed = 100 + 10 * s;
        LtCase t = {m, n, k, 1, false, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLASLT_EPILOGUE_DEFAULT,
                    1.0f, 0.0f, 0, false, RR_NONE};
        lt_case("lt NN default, beta 0, C = D", t, seed);
        t.ta = true, t.alpha = 0.75f;
        lt_case("lt TN default (transw)", t, seed + 1);
        t.ta = false, t.alpha = 1.0f, t.epi = CUBLASLT_EPILOGUE_BIAS;
        lt_case("lt NN bias", t, seed + 2);
        t.beta = 1.0f;
        lt_case("lt NN bias + residual in place", t, seed + 3);
        t.cmode = 1, t.beta = 0.5f, t.tb = true;
        lt_case("lt NT bias, C separate (ldc != ldd), beta 0.5", t, seed + 4);
        t.beta = 0.0f;
        lt_case("lt NT bias, C separate NaN, beta 0", t, seed + 5);
        t.cmode = 0, t.tb = false, t.epi = CUBLASLT_EPILOGUE_GELU_BIAS;
        lt_case("lt NN GELU_BIAS", t, seed + 6);
        t.epi = CUBLASLT_EPILOGUE_GELU, t.ta = true;
        lt_case("lt TN GELU", t, seed + 7);
        t.epi = CUBLASLT_EPILOGUE_RELU_BIAS;
        lt_case("lt TN RELU_BIAS", t, seed + 8);
        t.epi = CUBLASLT_EPILOGUE_BIAS, t.null_algo = true;
        lt_case("lt TN bias, algo NULL", t, seed + 9);
    }
}

// The tf32 mode's GEMMs: inputs rounded to TF32 (the result is not the fp32 one), GELU epilogue.
Test(emu_cublas, lt_tf32) {
    LtCase t = {17, 33, 9, 1, false, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32,
                CUBLASLT_EPILOGUE_GELU_BIAS, 1.0f, 0.0f, 0, false, RR_TF32};
    const double dev = lt_case("lt tf32 GELU_BIAS", t, 200);
    cr_assert_gt(dev, 1e-4, "FAST_TF32: the result is the unrounded one (worst deviation %g)", dev);
    t.compute = CUBLAS_COMPUTE_32F, t.round = RR_NONE;
    cr_assert_lt(lt_case("lt fp32 GELU_BIAS", t, 200), 1e-5);
}

// The bf16 mode's GEMMs: bf16 X and W; the MLP's hidden layer bf16 out with a bf16 bias and
// GELU, the others fp32 out (bias fp32, residual in place).
Test(emu_cublas, lt_bf16) {
    for (int s = 0; s < 2; s++) {
        const int m = SHAPES[s][0], n = SHAPES[s][1], k = SHAPES[s][2];
        LtCase t = {m, n, k, 1, false, false, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUBLASLT_EPILOGUE_GELU_BIAS,
                    1.0f, 0.0f, 0, false, RR_NONE};
        lt_case("lt bf16 -> bf16 GELU_BIAS", t, 300 + s);
        t.cd = CUDA_R_32F, t.epi = CUBLASLT_EPILOGUE_BIAS, t.beta = 1.0f;
        lt_case("lt bf16 -> fp32 bias + residual in place", t, 310 + s);
        t.cd = CUDA_R_16BF, t.cmode = 1, t.beta = 0.5f, t.ta = true, t.epi = CUBLASLT_EPILOGUE_DEFAULT;
        lt_case("lt bf16 -> bf16 TN, C bf16 separate", t, 320 + s);
    }
}

// bf16 output rounds to nearest, ties to even: 1 + 2^-8 (a tie) -> 1, 1 + 3 2^-8 (a tie) ->
// 1 + 2^-6, 1 + 2^-8 + 2^-16 (above the tie) -> 1 + 2^-7, and the negatives alike.
Test(emu_cublas, lt_bf16_round_to_nearest_even) {
    const int m = 6, n = 1, k = 3;
    // A (m x k), column-major: row i is the k products' left factors; B = ones.
    const float rows[3][3] = {{1.0f, 0x1p-8f, 0.0f}, {1.0f + 0x1p-7f, 0x1p-8f, 0.0f}, {1.0f, 0x1p-8f, 0x1p-16f}};
    const float want[6] = {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, -1.0f, -(1.0f + 0x1p-6f), -(1.0f + 0x1p-7f)};
    std::vector<float> A((size_t)m * k), B((size_t)k * n, 1.0f), D0((size_t)m * n, 0.0f);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++) A[i + (size_t)l * m] = (i < 3 ? 1.0f : -1.0f) * rows[i % 3][l];
    void *dA = dput(A, CUDA_R_16BF), *dB = dput(B, CUDA_R_16BF), *dD = dput(D0, CUDA_R_16BF);
    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t la, lb, ld;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, m, k, m), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, m, n, m), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f, zero = 0.0f;
    cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_SUCCESS);
    const std::vector<float> D = dget(dD, (size_t)m, CUDA_R_16BF);
    for (int i = 0; i < m; i++) cr_expect_eq(D[i], want[i], "row %d: %.9g, want %.9g", i, D[i], want[i]);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    cudaFree(dA), cudaFree(dB), cudaFree(dD);
}

// The bilinear top-k's tiles (kernels/analysis/bilinear_topk.cu): S^T = V U^T as a batched TN
// GEMM (BATCH_COUNT, STRIDED_BATCH_OFFSET on every layout), fp32 / TF32 / bf16 in, fp32 or bf16 out.
Test(emu_cublas, lt_batched) {
    LtCase t = {7, 5, 3, 3, true, false, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUBLASLT_EPILOGUE_DEFAULT, 1.0f,
                0.0f, 0, false, RR_NONE};
    lt_case("lt batched TN fp32", t, 400);
    t.m = 33, t.n = 17, t.k = 9;
    t.compute = CUBLAS_COMPUTE_32F_FAST_TF32, t.round = RR_TF32;
    lt_case("lt batched TN tf32", t, 401);
    t.compute = CUBLAS_COMPUTE_32F, t.round = RR_NONE, t.ab = CUDA_R_16BF, t.cd = CUDA_R_16BF;
    lt_case("lt batched TN bf16 -> bf16", t, 402);
    t.cd = CUDA_R_32F;
    lt_case("lt batched TN bf16 -> fp32", t, 403);
    t.cmode = 1, t.beta = 1.0f, t.epi = CUBLASLT_EPILOGUE_GELU_BIAS, t.ta = false;
    lt_case("lt batched NN bf16 -> fp32, C separate, GELU_BIAS", t, 404);
}

// The heuristic: one algorithm, no workspace; the documented refusals.
Test(emu_cublas, lt_heuristic) {
    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t la, lb, ld, lbf;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, 17, 9, 17), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, 9, 33, 9), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lbf, CUDA_R_16BF, 9, 33, 9), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, 17, 33, 17), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulPreference_t pref;
    cr_assert_eq(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
    const uint32_t align = 16;
    cr_assert_eq(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align,
                                                      sizeof align),
                 CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t res[4];
    memset(res, 0, sizeof res);
    int found = -1;
    cr_assert_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 4, res, &found), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(found, 1);
    cr_expect_eq(res[0].state, CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(res[0].workspaceSize, 0u);
    cr_expect_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 0, res, &found),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lbf, ld, ld, pref, 1, res, &found),
                 CUBLAS_STATUS_NOT_SUPPORTED);  // fp32 A with bf16 B
    cr_expect_eq(found, 0);
    cr_expect_eq(cublasLtMatmulAlgoGetHeuristic(nullptr, desc, la, lb, ld, ld, pref, 1, res, &found),
                 CUBLAS_STATUS_NOT_INITIALIZED);
    cublasLtMatmulDesc_t tf;
    cr_assert_eq(cublasLtMatmulDescCreate(&tf, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t laf, ldf;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&laf, CUDA_R_16BF, 17, 9, 17), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ldf, CUDA_R_16BF, 17, 33, 17), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatmulAlgoGetHeuristic(lt, tf, laf, lbf, ldf, ldf, pref, 1, res, &found),
                 CUBLAS_STATUS_NOT_SUPPORTED);  // TF32 takes fp32 data only
    cr_expect_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, laf, lbf, ldf, ldf, pref, 1, res, &found),
                 CUBLAS_STATUS_SUCCESS);
    // A zeroed algorithm is not one the heuristic made.
    void *d = nullptr;
    cr_assert_eq(cudaMalloc(&d, 1 << 16), cudaSuccess);
    cublasLtMatmulAlgo_t zero_algo;
    memset(&zero_algo, 0, sizeof zero_algo);
    const float one = 1.0f;
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, d, la, d, lb, &one, d, ld, d, ld, &zero_algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    // The heuristic's algorithm runs the problem it was found for, and no other: the same shapes
    // with another ldc (an algorithm pinned by shape alone) are refused.
    cr_assert_eq(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, res, &found), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, d, la, d, lb, &one, d, ld, d, ld, &res[0].algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t ld2;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld2, CUDA_R_32F, 17, 33, 20), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, d, la, d, lb, &one, d, ld2, d, ld2, &res[0].algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_INVALID_VALUE, "an algorithm found for ldc 17 used with ldc 20");
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    // An algorithm chosen under a preference's alignment promise (16 bytes for A here, 256 by
    // default for the others) refuses pointers aligned below it.
    char *base = (char *)d;
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, base + 16, la, d, lb, &one, d, ld, d, ld, &res[0].algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_SUCCESS, "A 16-byte aligned, as promised");
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, base + 8, la, d, lb, &one, d, ld, d, ld, &res[0].algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_NOT_SUPPORTED, "A 8-byte aligned, 16 promised");
    cr_expect_eq(cublasLtMatmul(lt, desc, &one, d, la, base + 16, lb, &one, d, ld, d, ld, &res[0].algo, nullptr, 0, nullptr),
                 CUBLAS_STATUS_NOT_SUPPORTED, "B 16-byte aligned, 256 promised (the default)");
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    cublasLtMatrixLayoutDestroy(ld2);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatrixLayoutDestroy(lbf), cublasLtMatrixLayoutDestroy(laf), cublasLtMatrixLayoutDestroy(ldf);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatmulDescDestroy(desc), cublasLtMatmulDescDestroy(tf);
    cublasLtDestroy(lt);
    cudaFree(d);
}

// Attribute sizes (INVALID_VALUE when sizeInBytes is not the attribute's), descriptors in
// conflict (INVALID_VALUE), and what the library does not do (NOT_SUPPORTED).
Test(emu_cublas, lt_argument_errors) {
    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtCreate(nullptr), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    const int64_t wide = 1;
    const int32_t narrow = 1;
    const cublasOperation_t T = CUBLAS_OP_T;
    cr_expect_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, nullptr, 4),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &narrow, sizeof narrow),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatmulDescSetAttribute(desc, (cublasLtMatmulDescAttributes_t)9999, &narrow, 4),
                 CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayout_t la, lb, ld, lbad;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, 5, 3, 5), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, 3, 7, 3), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, 5, 7, 5), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &wide, sizeof wide),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &narrow,
                                                  sizeof narrow),
                 CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulPreference_t pref;
    cr_assert_eq(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &narrow,
                                                      sizeof narrow),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &wide,
                                                      sizeof wide),
                 CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulPreferenceDestroy(pref);

    void *d = nullptr;
    cr_assert_eq(cudaMalloc(&d, 1 << 16), cudaSuccess);
    const float one = 1.0f;
#define MM(dsc, A, B, C, D) cublasLtMatmul(lt, dsc, &one, d, A, d, B, &one, d, C, d, D, nullptr, nullptr, 0, nullptr)
    cr_expect_eq(MM(desc, la, lb, ld, ld), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(cublasLtMatmul(nullptr, desc, &one, d, la, d, lb, &one, d, ld, d, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_NOT_INITIALIZED);
    cr_expect_eq(cublasLtMatmul(lt, desc, nullptr, d, la, d, lb, &one, d, ld, d, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_INVALID_VALUE);
    cr_expect_eq(MM(desc, lb, lb, ld, ld), CUBLAS_STATUS_INVALID_VALUE);  // op(A) 3 x 7, D 5 x 7
    cr_expect_eq(MM(desc, la, ld, ld, ld), CUBLAS_STATUS_INVALID_VALUE);  // k: 3 against 5
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof T), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(MM(desc, la, lb, ld, ld), CUBLAS_STATUS_INVALID_VALUE);  // A^T is 3 x 5
    const cublasOperation_t N = CUBLAS_OP_N;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &N, sizeof N), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lbad, CUDA_R_32F, 5, 7, 4), CUBLAS_STATUS_SUCCESS);  // ld < rows
    cr_expect_eq(MM(desc, la, lb, lbad, lbad), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(lbad);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lbad, CUDA_R_32F, 5, 7, 6), CUBLAS_STATUS_SUCCESS);  // C == D, other ld
    cr_expect_eq(MM(desc, la, lb, lbad, ld), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(lbad);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lbad, CUDA_R_16BF, 5, 7, 5), CUBLAS_STATUS_SUCCESS);  // C and D types
    cr_expect_eq(MM(desc, la, lb, lbad, ld), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(lbad);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lbad, CUDA_R_32F, 5, 7, 5), CUBLAS_STATUS_SUCCESS);  // batch counts
    const int32_t two = 2;
    const int64_t stride = 35;
    cr_assert_eq(cublasLtMatrixLayoutSetAttribute(lbad, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two, sizeof two),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutSetAttribute(lbad, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                  sizeof stride),
                 CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(MM(desc, la, lb, lbad, lbad), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(lbad);
    const cublasLtEpilogue_t aux = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &aux, sizeof aux),
                 CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(MM(desc, la, lb, ld, ld), CUBLAS_STATUS_NOT_SUPPORTED);
    const cublasLtEpilogue_t dflt = CUBLASLT_EPILOGUE_DEFAULT;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &dflt, sizeof dflt),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSC, &T, sizeof T), CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(MM(desc, la, lb, ld, ld), CUBLAS_STATUS_NOT_SUPPORTED);  // "only CUBLAS_OP_N is supported"
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSC, &N, sizeof N), CUBLAS_STATUS_SUCCESS);
    const int32_t f16 = CUDA_R_16F;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_SCALE_TYPE, &f16, sizeof f16),
                 CUBLAS_STATUS_SUCCESS);
    cr_expect_eq(MM(desc, la, lb, ld, ld), CUBLAS_STATUS_NOT_SUPPORTED);  // 32F compute scales in fp32
#undef MM
    cr_expect_eq(cudaDeviceSynchronize(), cudaSuccess);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    cudaFree(d);
}

// A host bias, a NULL bias with a bias epilogue, a batched D one element short: the real kernel
// faults (illegal address); EXECUTION_FAILED, nothing queued.
Test(emu_cublas, lt_non_device_operands_fault) {
    const int m = 5, n = 7, k = 3, batch = 2;
    Rng g(500);
    std::vector<float> A = rnd(g, (size_t)m * k * batch, CUDA_R_32F), B = rnd(g, (size_t)k * n * batch, CUDA_R_32F);
    std::vector<float> hbias = rnd(g, (size_t)m, CUDA_R_32F), D0((size_t)m * n * batch, 0.0f);
    void *dA = dput(A, CUDA_R_32F), *dB = dput(B, CUDA_R_32F), *dD = dput(D0, CUDA_R_32F);
    std::vector<float> Dshort(D0.begin(), D0.end() - 1);
    void *dDshort = dput(Dshort, CUDA_R_32F);
    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                 CUBLAS_STATUS_SUCCESS);
    const void *hb = hbias.data();
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &hb, sizeof hb),
                 CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t la, lb, ld;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, m, k, m), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
    lt_batch(la, batch, (long long)m * k), lt_batch(lb, batch, (long long)k * n), lt_batch(ld, batch, (long long)m * n);
    const float one = 1.0f, zero = 0.0f;
    cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_EXECUTION_FAILED);
    cr_assert(cudaemu::last_fault().find("cublasLtMatmul: the bias") != std::string::npos, "fault: %s",
              cudaemu::last_fault().c_str());
    cudaemu::clear_fault();
    const void *nb = nullptr;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &nb, sizeof nb),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_EXECUTION_FAILED);
    cr_assert(cudaemu::last_fault().find("the bias") != std::string::npos);
    cudaemu::clear_fault();
    const cublasLtEpilogue_t plain = CUBLASLT_EPILOGUE_DEFAULT;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &plain, sizeof plain),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dDshort, ld, dDshort, ld, nullptr, nullptr, 0,
                                nullptr),
                 CUBLAS_STATUS_EXECUTION_FAILED);
    cr_assert(cudaemu::last_fault().find("cublasLtMatmul: D") != std::string::npos, "fault: %s",
              cudaemu::last_fault().c_str());
    cudaemu::clear_fault();
    cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0, nullptr),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    cudaFree(dA), cudaFree(dB), cudaFree(dD), cudaFree(dDshort);
}

// The same inputs give the same bits (the pinned plans' premise, kernels/model/forward_matmul.cu).
Test(emu_cublas, deterministic) {
    for (int bf = 0; bf < 2; bf++) {
        const cudaDataType t = bf ? CUDA_R_16BF : CUDA_R_32F;
        const int m = 96, n = 64, k = 80;
        Rng g(600 + bf);
        const std::vector<float> A = rnd(g, (size_t)m * k, t), B = rnd(g, (size_t)k * n, t), bias = rnd(g, m, t);
        void *dA = dput(A, t), *dB = dput(B, t), *dbias = dput(bias, t);
        std::vector<float> first;
        for (int rep = 0; rep < 2; rep++) {
            void *dD = dput(std::vector<float>((size_t)m * n, 0.0f), t);
            cublasLtHandle_t lt;
            cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
            cublasLtMatmulDesc_t desc;
            cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
            const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_GELU_BIAS;
            cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                         CUBLAS_STATUS_SUCCESS);
            cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias, sizeof dbias),
                         CUBLAS_STATUS_SUCCESS);
            cublasLtMatrixLayout_t la, lb, ld;
            cr_assert_eq(cublasLtMatrixLayoutCreate(&la, t, m, k, m), CUBLAS_STATUS_SUCCESS);
            cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, t, k, n, k), CUBLAS_STATUS_SUCCESS);
            cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, t, m, n, m), CUBLAS_STATUS_SUCCESS);
            const float one = 1.0f, zero = 0.0f;
            cr_assert_eq(cublasLtMatmul(lt, desc, &one, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0,
                                        nullptr),
                         CUBLAS_STATUS_SUCCESS);
            const std::vector<float> D = dget(dD, (size_t)m * n, t);
            if (rep == 0) first = D;
            else
                for (size_t e = 0; e < D.size(); e++)
                    cr_assert(same_bits(D[e], first[e]), "%s: element %zu differs between runs", bf ? "bf16" : "fp32",
                              e);
            cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
            cublasLtMatmulDescDestroy(desc);
            cublasLtDestroy(lt);
            cudaFree(dD);
        }
        cudaFree(dA), cudaFree(dB), cudaFree(dbias);
    }
}

// ---------------------------------------------------------------------------------------------
// Stream order.  NEEDS THE REAL RUNTIME (runtime.cpp): it relies on queued work running when the
// stream reaches it, on a host thread of the device or at the synchronisation, never inside the
// call.  A gate queued first holds the stream; while it is closed, D must still hold what it held,
// and what changes after the call must count only as the documentation says: the matrices are read
// when the GEMM runs (A is changed after the call and the result must use the new A), alpha (host
// pointer mode) and the descriptors when the call is made (alpha and the bias pointer changed after
// the call must not count).  The emulated device's memory is the process's own: the test reads
// and writes it directly, so as to order nothing on any stream.
Test(emu_cublas, stream_order_needs_runtime,
     .description = "needs the real runtime (runtime.cpp): queued work runs when the stream reaches it") {
    const int m = 5, n = 7, k = 3;
    Rng g(700);
    std::vector<float> A = rnd(g, (size_t)m * k, CUDA_R_32F), B = rnd(g, (size_t)k * n, CUDA_R_32F);
    const std::vector<float> bias = rnd(g, (size_t)m, CUDA_R_32F, -2.0f, 2.0f);
    const std::vector<float> nan_mn((size_t)m * n, NAN);
    float *dA = (float *)dput(A, CUDA_R_32F), *dB = (float *)dput(B, CUDA_R_32F);
    float *dD = (float *)dput(nan_mn, CUDA_R_32F), *dS = (float *)dput(nan_mn, CUDA_R_32F);
    float *dbias = (float *)dput(bias, CUDA_R_32F), *dbias2 = (float *)dput(std::vector<float>(m, 100.0f), CUDA_R_32F);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);

    std::atomic<bool> open(false), timed_out(false), ran(false);
    cr_assert_eq(cudaemu::enqueue(s, "test gate",
                                  [&] {
                                      ran = true;
                                      const auto t0 = std::chrono::steady_clock::now();
                                      while (!open) {
                                          if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(10)) {
                                              timed_out = true;
                                              return;
                                          }
                                          std::this_thread::sleep_for(std::chrono::milliseconds(1));
                                      }
                                  }),
                 cudaSuccess);

    cublasLtHandle_t lt;
    cr_assert_eq(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t desc;
    cr_assert_eq(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS, plain = CUBLASLT_EPILOGUE_DEFAULT;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias, sizeof dbias),
                 CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t la, lb, ld;
    cr_assert_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, m, k, m), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
    float alpha = 1.0f;
    const float zero = 0.0f;
    cr_assert_eq(cublasLtMatmul(lt, desc, &alpha, dA, la, dB, lb, &zero, dD, ld, dD, ld, nullptr, nullptr, 0, s),
                 CUBLAS_STATUS_SUCCESS);
    cublasHandle_t h;
    cr_assert_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, m, dB, k, &zero, dS, m),
                 CUBLAS_STATUS_SUCCESS);
    // After the calls: alpha, the descriptor and A change.
    alpha = 3.0f;
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &plain, sizeof plain),
                 CUBLAS_STATUS_SUCCESS);
    cr_assert_eq(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias2, sizeof dbias2),
                 CUBLAS_STATUS_SUCCESS);
    for (int e = 0; e < m * n; e++) {
        cr_assert(isnan(dD[e]), "cublasLtMatmul wrote D(%d) before its stream reached it", e);
        cr_assert(isnan(dS[e]), "cublasSgemm wrote C(%d) before its stream reached it", e);
    }
    for (int e = 0; e < m * k; e++) A[e] = dA[e] = -2.0f * A[e];
    cr_assert(!timed_out);
    open = true;
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    cr_assert(ran && !timed_out, "the gate ran inside a call (before cudaStreamSynchronize)");
    const std::vector<float> D(dD, dD + m * n), S(dS, dS + m * n);
    Naive p = {m, n, k, false, false, 1.0f, 0.0f, A.data(), m, B.data(), k, nullptr, m, bias.data(), ACT_NONE, RR_NONE};
    std::vector<double> y, mag;
    naive(p, y, mag);
    expect_close("stream order: cublasLtMatmul", D, 0, m, y, mag, m, n, false);
    p.bias = nullptr;
    naive(p, y, mag);
    expect_close("stream order: cublasSgemm", S, 0, m, y, mag, m, n, false);
    cublasDestroy(h);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    cudaStreamDestroy(s);
    cudaFree(dA), cudaFree(dB), cudaFree(dD), cudaFree(dS), cudaFree(dbias), cudaFree(dbias2);
}
