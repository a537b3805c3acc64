// test_emu_findings.cu: device-side faults of kernels/ that a review found, each shown here on
// the emulated device, where the CUDA API is at hand (make test-emu; the suites of tests/ reach the
// rest through the C interfaces).  Each test failed before its fix.
#include <criterion/criterion.h>
#include <cuda_runtime.h>
#include <stdlib.h>

#include <vector>

extern "C" {
#include "analysis/bilinear_topk.h"
#include "analysis/topk.h"
#include "base/util.h"
}

#define CK(call) cr_assert_eq((call), cudaSuccess, "%s", #call)

template <class T>
static T *upload(const std::vector<T> &h) {
    T *d = nullptr;
    cr_assert_eq(cudaMalloc((void **)&d, h.size() * sizeof(T) + 16), cudaSuccess);
    cr_assert_eq(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

struct Problem {
    int n, M, r, k;
    std::vector<float> U, V, c;
    float *dU, *dV, *dc;
    int32_t *didx, *dcnt;
    float *dval;
};

// Integer operands, c in halves: every score exact in any summation order, so the device's
// sets equal the host's (ties broken by the lower index) exactly.
static void make(Problem &p, int n, int M, int r, int k, unsigned seed) {
    p.n = n, p.M = M, p.r = r, p.k = k;
    p.U.resize((size_t)n * r), p.V.resize((size_t)M * r), p.c.resize(M);
    for (auto &x : p.U) x = (float)((seed = seed * 1103515245u + 12345u) >> 16 & 3) - 1.5f;
    for (auto &x : p.V) x = (float)((seed = seed * 1103515245u + 12345u) >> 16 & 3) - 1.0f;
    for (auto &x : p.c) x = (float)((int)((seed = seed * 1103515245u + 12345u) >> 16 & 15) - 8) * 0.5f;
    p.dU = upload(p.U), p.dV = upload(p.V), p.dc = upload(p.c);
    CK(cudaMalloc((void **)&p.didx, (size_t)n * k * 4));
    CK(cudaMalloc((void **)&p.dval, (size_t)n * k * 4));
    CK(cudaMalloc((void **)&p.dcnt, (size_t)n * 4));
}

static void check(const Problem &p, const char *what) {
    std::vector<int32_t> hi((size_t)p.n * p.k), di(hi.size()), hc(p.n), dc(p.n);
    std::vector<float> hv(hi.size()), dv(hi.size());
    QkTopkOpts o = {};
    o.k = p.k;
    cr_assert_eq(qk_topk(p.n, p.M, p.r, p.U.data(), p.r, nullptr, p.V.data(), p.c.data(), &o, hi.data(), hv.data(), hc.data()), 0);
    CK(cudaMemcpy(di.data(), p.didx, di.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(dv.data(), p.dval, dv.size() * 4, cudaMemcpyDeviceToHost));
    for (size_t x = 0; x < hi.size(); x++)
        cr_assert(di[x] == hi[x] && dv[x] == hv[x], "%s: row %zu slot %zu: device (%d, %g), host (%d, %g)", what,
                  x / p.k, x % p.k, di[x], dv[x], hi[x], hv[x]);
}

// The bilinear top-k on the caller's stream (the device analysis' way: runs return once
// enqueued) grows its scratch when a larger problem follows: the growth must wait for the work
// already queued that reads the old buffers (cudaFree does not; here it frees at once).
Test(emu_findings, btk_regrowth_waits_for_queued_work) {
    QkBtk *b = qk_btk_create(0, QK_PREC_FP32, 0);
    cr_assert(b, "%s", qk_errmsg());
    qk_btk_set_path(b, 0);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    qk_btk_use_stream(b, s);
    Problem small, large;
    make(small, 40, 200, 64, 8, 7);
    make(large, 200, 3000, 64, 8, 11);
    QkTopkOpts o = {};
    o.k = 8;
    cr_assert_eq(qk_btk_run(b, nullptr, small.n, small.M, small.r, small.dU, small.r, nullptr, small.dV, small.dc, &o,
                            small.didx, small.dval, small.dcnt),
                 0, "%s", qk_errmsg());
    cr_assert_eq(qk_btk_run(b, nullptr, large.n, large.M, large.r, large.dU, large.r, nullptr, large.dV, large.dc, &o,
                            large.didx, large.dval, large.dcnt),
                 0, "%s", qk_errmsg());
    CK(cudaStreamSynchronize(s));
    check(small, "the run queued before the scratch grew");
    check(large, "the run that grew it");
    qk_btk_destroy(b);
    CK(cudaStreamDestroy(s));
}
