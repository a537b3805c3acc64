// test_nccl.cpp: the NCCL shim of the emulated CUDA device (include/nccl.h, nccl.cpp) on 2 and 3
// emulated devices, one std::thread per rank as kernels/run/comm_nccl.cu runs them: all-reduce
// of int64 (wrapping) and double sums (bit-identical to the rank-order sum), other ops and types,
// all-gather (rank r's elements at r * sendcount, in place too), broadcast (in place, from root
// 1), collectives matched by their order of issue, the devlist's order, the NULL stream; argument
// checks at the call; ranks that disagree on a collective are a fault.
//
// QK_EMU_DEVICES (read at the first CUDA call) is set to 3 unless the environment sets it; with 2
// devices the tests run on 2 ranks only, with fewer they skip, saying so.  Criterion asserts on
// the main thread only: a rank thread reports its failures as text.
#include <criterion/criterion.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"

// The number of ranks a test may use: up to `most`, at least 2 (else the test skips).
static int ranks_up_to(int most) {
    const char *env = getenv("QK_EMU_DEVICES");
    if (!env || !*env) setenv("QK_EMU_DEVICES", "3", 1);
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    if (count < 2) cr_skip_test("needs 2 emulated devices, the emulator has %d (QK_EMU_DEVICES)", count);
    return count < most ? count : most;
}

namespace {  // (test_cudaemu links every emulator suite into one binary)

// One rank of a test: its thread has `dev` current and owns `stream` (created on dev).
struct Rank {
    int rank, n, dev;
    ncclComm_t comm;
    cudaStream_t stream;
    std::string why;  // failures, "" when none
    void fail(const char *fmt, ...) __attribute__((format(printf, 2, 3))) {
        char b[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b, sizeof b, fmt, ap);
        va_end(ap);
        if (!why.empty()) why += "; ";
        why += b;
    }
};

}  // namespace
// A failed check records and goes on: the rank still makes the calls its peers wait for.
#define CHECK(k, cond, ...) \
    do {                    \
        if (!(cond)) (k).fail(__VA_ARGS__); \
    } while (0)

// Runs body on one thread per rank of a fresh clique over devlist (NULL: 0..n-1); asserts that
// every rank succeeded, then destroys the communicators.
static void run_ranks(int n, const int *devlist, const std::function<void(Rank &)> &body) {
    std::vector<ncclComm_t> comms(n);
    cr_assert_eq(ncclCommInitAll(comms.data(), n, devlist), ncclSuccess, "%s", ncclGetLastError(nullptr));
    std::vector<Rank> ranks(n);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; r++) {
        ranks[r].rank = r, ranks[r].n = n, ranks[r].dev = devlist ? devlist[r] : r, ranks[r].comm = comms[r];
        threads.emplace_back([&body, &k = ranks[r]] {
            if (cudaSetDevice(k.dev) != cudaSuccess || cudaStreamCreate(&k.stream) != cudaSuccess) {
                k.fail("device %d: no stream", k.dev);
                return;
            }
            body(k);
            cudaStreamDestroy(k.stream);
        });
    }
    for (auto &t : threads) t.join();
    for (int r = 0; r < n; r++) cr_assert(ranks[r].why.empty(), "rank %d of %d: %s", r, n, ranks[r].why.c_str());
    for (int r = 0; r < n; r++) cr_assert_eq(ncclCommDestroy(comms[r]), ncclSuccess);
}

template <class T>
static T *up(const std::vector<T> &h) {
    void *p = nullptr;
    if (cudaMalloc(&p, h.empty() ? 1 : h.size() * sizeof(T)) != cudaSuccess) return nullptr;
    if (!h.empty()) cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    return static_cast<T *>(p);
}

template <class T>
static std::vector<T> down(const T *d, size_t n) {
    std::vector<T> h(n);
    if (n) cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
}

static uint64_t mix(uint64_t x) {  // splitmix64: the ranks' data, reproducible on every rank
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// ---------------------------------------------------------------------------------------------
// All-reduce

static int64_t i64_of(int r, size_t i) { return (int64_t)mix(r * 1000003ull + i); }  // near the limits: sums wrap

Test(emu_nccl, allreduce_int64_sum_2_and_3_ranks) {
    const int most = ranks_up_to(3);
    for (int n = 2; n <= most; n++)
        run_ranks(n, nullptr, [](Rank &k) {
            const size_t count = 1001;
            std::vector<int64_t> x(count), want(count);
            for (size_t i = 0; i < count; i++) {
                x[i] = i64_of(k.rank, i);
                uint64_t s = 0;
                for (int r = 0; r < k.n; r++) s += (uint64_t)i64_of(r, i);
                want[i] = (int64_t)s;
            }
            int64_t *send = up(x), *recv = up(std::vector<int64_t>(count, 0));
            CHECK(k, ncclAllReduce(send, recv, count, ncclInt64, ncclSum, k.comm, k.stream) == ncclSuccess, "out of place: %s", ncclGetLastError(k.comm));
            CHECK(k, ncclAllReduce(send, send, count, ncclInt64, ncclSum, k.comm, k.stream) == ncclSuccess, "in place: %s", ncclGetLastError(k.comm));
            CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
            CHECK(k, down(recv, count) == want, "out-of-place sums differ from the wrapping sum");
            CHECK(k, down(send, count) == want, "in-place sums differ from the wrapping sum");
            cudaFree(send), cudaFree(recv);
        });
}

// Values of magnitudes 1e-6 .. 1e6 and both signs: the order of the additions shows in the bits.
static double f64_of(int r, size_t i) {
    const uint64_t u = mix(r * 7919ull + i * 104729ull);
    return ((double)(u >> 11) / 9007199254740992.0 - 0.5) * __builtin_pow(10.0, (double)(int)(u % 13) - 6);
}
static double rank_order_sum(int n, size_t i) {
    double s = f64_of(0, i);
    for (int r = 1; r < n; r++) s += f64_of(r, i);
    return s;
}

Test(emu_nccl, allreduce_double_sum_is_the_rank_order_sum) {
    const int most = ranks_up_to(3);
    const size_t count = 2000;
    // the test's power: with 3 ranks, reversing the order changes many of these sums
    size_t differ = 0;
    for (size_t i = 0; i < count; i++) {
        const double rev = (f64_of(2, i) + f64_of(1, i)) + f64_of(0, i);
        const double fwd = rank_order_sum(3, i);
        differ += memcmp(&rev, &fwd, sizeof fwd) != 0;
    }
    cr_assert_gt(differ, count / 20, "only %zu of %zu sums depend on the order", differ, count);
    for (int n = 2; n <= most; n++)
        run_ranks(n, nullptr, [count](Rank &k) {
            std::vector<double> x(count), want(count);
            for (size_t i = 0; i < count; i++) x[i] = f64_of(k.rank, i), want[i] = rank_order_sum(k.n, i);
            double *d = up(x);
            CHECK(k, ncclAllReduce(d, d, count, ncclDouble, ncclSum, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
            const std::vector<double> got = down(d, count);
            CHECK(k, memcmp(got.data(), want.data(), count * sizeof(double)) == 0, "double sums are not the rank-order sums bit for bit");
            cudaFree(d);
        });
}

Test(emu_nccl, allreduce_other_ops_and_types) {
    run_ranks(ranks_up_to(3), nullptr, [](Rank &k) {
        const size_t count = 257;
        std::vector<int32_t> a(count);
        std::vector<uint8_t> b(count);
        std::vector<float> f(count);
        for (size_t i = 0; i < count; i++) {
            a[i] = (int32_t)(mix(k.rank * 31 + i) % 2001) - 1000;
            b[i] = (uint8_t)(100 + k.rank + i);
            f[i] = (float)(k.rank + 1) * 0.1f + (float)i;
        }
        int32_t *dmax = up(a), *dmin = up(a), *dprod = up(a);
        uint8_t *db = up(b);
        float *df = up(f);
        CHECK(k, ncclAllReduce(dmax, dmax, count, ncclInt32, ncclMax, k.comm, k.stream) == ncclSuccess, "max");
        CHECK(k, ncclAllReduce(dmin, dmin, count, ncclInt32, ncclMin, k.comm, k.stream) == ncclSuccess, "min");
        CHECK(k, ncclAllReduce(dprod, dprod, count, ncclInt32, ncclProd, k.comm, k.stream) == ncclSuccess, "prod");
        CHECK(k, ncclAllReduce(db, db, count, ncclUint8, ncclSum, k.comm, k.stream) == ncclSuccess, "uint8 sum");
        CHECK(k, ncclAllReduce(df, df, count, ncclFloat, ncclSum, k.comm, k.stream) == ncclSuccess, "float sum");
        CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
        const auto mx = down(dmax, count), mn = down(dmin, count), pr = down(dprod, count);
        const auto sb = down(db, count);
        const auto sf = down(df, count);
        for (size_t i = 0; i < count; i++) {
            int32_t hi = INT32_MIN, lo = INT32_MAX;
            uint32_t p = 1;
            uint8_t s = 0;
            float fs = 0.1f + (float)i;
            for (int r = 0; r < k.n; r++) {
                const int32_t v = (int32_t)(mix(r * 31 + i) % 2001) - 1000;
                hi = v > hi ? v : hi, lo = v < lo ? v : lo, p *= (uint32_t)v;
                s = (uint8_t)(s + 100 + r + i);
                if (r) fs = fs + ((float)(r + 1) * 0.1f + (float)i);
            }
            CHECK(k, mx[i] == hi && mn[i] == lo && pr[i] == (int32_t)p, "element %zu: max %d min %d prod %d, want %d %d %d", i,
                  mx[i], mn[i], pr[i], hi, lo, (int32_t)p);
            CHECK(k, sb[i] == s, "element %zu: uint8 sum %u, want %u (wrapping)", i, sb[i], s);
            CHECK(k, sf[i] == fs, "element %zu: float sum %.9g, want %.9g", i, sf[i], fs);
        }
        cudaFree(dmax), cudaFree(dmin), cudaFree(dprod), cudaFree(db), cudaFree(df);
    });
}

// ---------------------------------------------------------------------------------------------
// All-gather and broadcast

Test(emu_nccl, allgather_puts_rank_r_at_r_times_sendcount) {
    const int most = ranks_up_to(3);
    for (int n = 2; n <= most; n++)
        run_ranks(n, nullptr, [](Rank &k) {
            // one uint64 per rank (comm_nccl's lengths), then 13 chars per rank, out of place and in place
            uint64_t *s1 = up(std::vector<uint64_t>{1000ull + k.rank}), *r1 = up(std::vector<uint64_t>(k.n, 0));
            const size_t m = 13;
            std::vector<char> mine(m), all((size_t)k.n * m, '?');
            for (size_t i = 0; i < m; i++) mine[i] = (char)('a' + k.rank * 3 + i % 5);
            for (size_t i = 0; i < m; i++) all[(size_t)k.rank * m + i] = mine[i];
            char *s2 = up(mine), *r2 = up(std::vector<char>((size_t)k.n * m, '?')), *inp = up(all);
            CHECK(k, ncclAllGather(s1, r1, 1, ncclUint64, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            CHECK(k, ncclAllGather(s2, r2, m, ncclChar, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            CHECK(k, ncclAllGather(inp + (size_t)k.rank * m, inp, m, ncclChar, k.comm, k.stream) == ncclSuccess, "in place: %s",
                  ncclGetLastError(k.comm));
            CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
            std::vector<uint64_t> w1(k.n);
            std::vector<char> w2((size_t)k.n * m);
            for (int r = 0; r < k.n; r++) {
                w1[r] = 1000ull + r;
                for (size_t i = 0; i < m; i++) w2[(size_t)r * m + i] = (char)('a' + r * 3 + i % 5);
            }
            CHECK(k, down(r1, k.n) == w1, "uint64 all-gather");
            CHECK(k, down(r2, (size_t)k.n * m) == w2, "char all-gather");
            CHECK(k, down(inp, (size_t)k.n * m) == w2, "in-place char all-gather");
            CHECK(k, down(s2, m) == mine, "sendbuff changed");
            cudaFree(s1), cudaFree(r1), cudaFree(s2), cudaFree(r2), cudaFree(inp);
        });
}

Test(emu_nccl, broadcast_in_place_from_root_1) {
    const int most = ranks_up_to(3);
    for (int n = 2; n <= most; n++)
        run_ranks(n, nullptr, [](Rank &k) {
            const size_t m = 1001;
            auto pattern = [m](int r) {
                std::vector<char> v(m);
                for (size_t i = 0; i < m; i++) v[i] = (char)(r * 40 + i % 37);
                return v;
            };
            char *buf = up(pattern(k.rank)), *out = up(std::vector<char>(m, 0)), *leg = up(pattern(k.rank));
            std::vector<double> dv(5, k.rank == 0 ? 3.25 : -1.0);
            double *d = up(dv);
            CHECK(k, ncclBroadcast(buf, buf, m, ncclChar, 1, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            // out of place: a non-root's sendbuff is ignored (NULL here)
            CHECK(k, ncclBroadcast(k.rank == 1 ? buf : nullptr, out, m, ncclChar, 1, k.comm, k.stream) == ncclSuccess, "%s",
                  ncclGetLastError(k.comm));
            CHECK(k, ncclBcast(leg, m, ncclInt8, 1, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            CHECK(k, ncclBroadcast(d, d, 5, ncclDouble, 0, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
            CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
            CHECK(k, down(buf, m) == pattern(1), "in-place broadcast from root 1");
            CHECK(k, down(out, m) == pattern(1), "out-of-place broadcast from root 1");
            CHECK(k, down(leg, m) == pattern(1), "ncclBcast from root 1");
            CHECK(k, down(d, 5) == std::vector<double>(5, 3.25), "double broadcast from root 0");
            cudaFree(buf), cudaFree(out), cudaFree(leg), cudaFree(d);
        });
}

// The k-th call of every rank is one collective, whatever the threads' timing: several queued
// back to back without a wait, each reading what the one before it wrote (stream order).
Test(emu_nccl, collectives_match_in_order_of_issue) {
    run_ranks(ranks_up_to(3), nullptr, [](Rank &k) {
        const int64_t S = k.n * (k.n + 1) / 2;  // the sum of the ranks' r + 1
        int64_t *x = up(std::vector<int64_t>{k.rank + 1ll, 10ll * (k.rank + 1)});
        int64_t *all = up(std::vector<int64_t>((size_t)2 * k.n, 0));
        CHECK(k, ncclAllReduce(x, x, 2, ncclInt64, ncclSum, k.comm, k.stream) == ncclSuccess, "allreduce");  // S, 10 S
        CHECK(k, ncclAllReduce(nullptr, nullptr, 0, ncclInt64, ncclSum, k.comm, k.stream) == ncclSuccess, "empty: %s",
              ncclGetLastError(k.comm));
        CHECK(k, ncclAllGather(x, all, 2, ncclInt64, k.comm, k.stream) == ncclSuccess, "allgather");
        const int root = k.n - 1;
        if (k.rank == root) CHECK(k, cudaMemsetAsync(x, 0, 8, k.stream) == cudaSuccess, "memset");  // root's x: 0, 10 S
        CHECK(k, ncclBroadcast(x, x, 2, ncclInt64, root, k.comm, k.stream) == ncclSuccess, "broadcast");
        CHECK(k, ncclAllReduce(x, x, 2, ncclInt64, ncclSum, k.comm, k.stream) == ncclSuccess, "allreduce 2");
        CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
        std::vector<int64_t> want_all;
        for (int r = 0; r < k.n; r++) want_all.push_back(S), want_all.push_back(10 * S);
        CHECK(k, down(all, 2 * k.n) == want_all, "allgather of the first sums");
        CHECK(k, down(x, 2) == std::vector<int64_t>({0, 10 * S * k.n}), "broadcast then sum");
        cudaFree(x), cudaFree(all);
    });
}

Test(emu_nccl, ranks_follow_the_devlist_order) {
    const int n = ranks_up_to(3);
    int devs[3];
    for (int r = 0; r < n; r++) devs[r] = (r + 1) % n;  // rank r on device r + 1, the last on 0
    run_ranks(n, devs, [&devs](Rank &k) {
        int c = 0, d = -1, r = -1;
        CHECK(k, ncclCommCount(k.comm, &c) == ncclSuccess && c == k.n, "count %d", c);
        CHECK(k, ncclCommCuDevice(k.comm, &d) == ncclSuccess && d == devs[k.rank], "device %d", d);
        CHECK(k, ncclCommUserRank(k.comm, &r) == ncclSuccess && r == k.rank, "rank %d", r);
        int32_t *s = up(std::vector<int32_t>{k.dev}), *g = up(std::vector<int32_t>(k.n, -1));
        CHECK(k, ncclAllGather(s, g, 1, ncclInt32, k.comm, k.stream) == ncclSuccess, "%s", ncclGetLastError(k.comm));
        CHECK(k, cudaStreamSynchronize(k.stream) == cudaSuccess, "sync");
        CHECK(k, down(g, k.n) == std::vector<int32_t>(devs, devs + k.n), "rank order is the devlist's");
        cudaFree(s), cudaFree(g);
    });
}

// The NULL stream is the legacy stream of the communicator's device, not of the caller's current
// device (NCCL sets its device around the launch).
Test(emu_nccl, null_stream_is_the_communicators_device) {
    ranks_up_to(2);
    run_ranks(2, nullptr, [](Rank &k) {
        int64_t *x = up(std::vector<int64_t>{k.rank + 5ll});
        cudaSetDevice(1 - k.dev);
        CHECK(k, ncclAllReduce(x, x, 1, ncclInt64, ncclSum, k.comm, nullptr) == ncclSuccess, "%s", ncclGetLastError(k.comm));
        cudaSetDevice(k.dev);
        CHECK(k, cudaStreamSynchronize(nullptr) == cudaSuccess, "sync");
        CHECK(k, down(x, 1)[0] == 11, "sum %lld", (long long)down(x, 1)[0]);
        cudaFree(x);
    });
}

// ---------------------------------------------------------------------------------------------
// Misuse

// Ranks that disagree on the k-th collective: the rank that finds it gets ncclInvalidUsage, the
// collective faults when it runs (naming the ranks and what differs), no data moves, and no rank
// hangs.  The calls are ordered (rank 0 first) so that rank 1 is the one that finds it.
static void mismatch_case(int what, const char *words) {
    std::promise<void> first_called;
    std::shared_future<void> called = first_called.get_future().share();
    ncclResult_t second = ncclSuccess;
    std::string second_error;
    run_ranks(2, nullptr, [&](Rank &k) {
        int64_t *x = up(std::vector<int64_t>(8, 7));
        if (k.rank == 1) called.wait();
        ncclResult_t r;
        if (what == 0)  // counts 4 and 5
            r = ncclAllReduce(x, x, 4 + k.rank, ncclInt64, ncclSum, k.comm, k.stream);
        else if (what == 1)  // roots 0 and 1
            r = ncclBroadcast(x, x, 8, ncclInt64, k.rank, k.comm, k.stream);
        else  // an all-reduce against an all-gather
            r = k.rank ? ncclAllGather(x + 4, x, 4, ncclInt64, k.comm, k.stream)  // in place
                       : ncclAllReduce(x, x, 4, ncclInt64, ncclSum, k.comm, k.stream);
        if (k.rank == 0) {
            CHECK(k, r == ncclSuccess, "rank 0 called first and cannot know: %d", (int)r);
            first_called.set_value();
        } else {
            second = r;
            second_error = ncclGetLastError(k.comm);
        }
        cudaStreamSynchronize(k.stream);  // returns: the collective ran (and faulted)
        // read straight from the emulated device's memory: a faulted device refuses copies
        CHECK(k, std::vector<int64_t>(x, x + 8) == std::vector<int64_t>(8, 7), "a mismatched collective moved data");
        cudaFree(x);
    });
    cr_assert_eq(second, ncclInvalidUsage, "the rank that found the mismatch got %d", (int)second);
    cr_assert(second_error.find(words) != std::string::npos, "its error: %s", second_error.c_str());
    const std::string f = cudaemu::last_fault();
    cr_assert(f.find(words) != std::string::npos && f.find("rank 0") != std::string::npos &&
                  f.find("rank 1") != std::string::npos,
              "the fault: \"%s\"", f.c_str());
    int errors = 0;
    for (int d = 0; d < 2; d++) {
        cudaSetDevice(d);
        errors += cudaDeviceSynchronize() != cudaSuccess;
    }
    cr_assert_gt(errors, 0, "no device reports the fault");
    cudaemu::clear_fault();
}

Test(emu_nccl, mismatched_collectives_fault) {
    ranks_up_to(2);
    mismatch_case(0, "count differ");
    mismatch_case(1, "root differ");
    mismatch_case(2, "kind differ");
}

Test(emu_nccl, invalid_arguments_are_refused_at_the_call) {
    ranks_up_to(2);
    ncclComm_t c[2];
    const int bad_dev[2] = {0, 7}, twice[2] = {1, 1};
    cr_assert_eq(ncclCommInitAll(nullptr, 2, nullptr), ncclInvalidArgument);
    cr_assert_eq(ncclCommInitAll(c, 0, nullptr), ncclInvalidArgument);
    cr_assert_eq(ncclCommInitAll(c, 2, bad_dev), ncclInvalidArgument);
    cr_assert_eq(ncclCommInitAll(c, 2, twice), ncclInvalidUsage);
    cr_assert_eq(ncclCommInitAll(c, 2, nullptr), ncclSuccess);
    cudaSetDevice(0);
    cudaStream_t s0, s1;
    cr_assert_eq(cudaStreamCreate(&s0), cudaSuccess);
    void *a = nullptr, *b = nullptr, *other = nullptr, *b1 = nullptr;
    cr_assert_eq(cudaMalloc(&a, 64), cudaSuccess);
    cr_assert_eq(cudaMalloc(&b, 128), cudaSuccess);
    cudaSetDevice(1);
    cr_assert_eq(cudaMalloc(&other, 64), cudaSuccess);
    cr_assert_eq(cudaMalloc(&b1, 128), cudaSuccess);
    cr_assert_eq(cudaStreamCreate(&s1), cudaSuccess);
    cudaSetDevice(0);
    std::vector<char> host(64);
    char *bc = static_cast<char *>(b);
    struct Case {
        const char *what;
        std::function<ncclResult_t()> call;
        ncclResult_t want;
        const char *words;  // in ncclGetLastError's explanation
    } cases[] = {
        {"NULL comm", [&] { return ncclAllReduce(a, a, 8, ncclInt64, ncclSum, nullptr, s0); }, ncclInvalidArgument, "not a communicator"},
        {"bad type", [&] { return ncclAllReduce(a, a, 8, ncclNumTypes, ncclSum, c[0], s0); }, ncclInvalidArgument, "datatype 10"},
        {"bad op", [&] { return ncclAllReduce(a, a, 8, ncclInt64, (ncclRedOp_t)9, c[0], s0); }, ncclInvalidArgument, "op 9"},
        {"ncclAvg", [&] { return ncclAllReduce(a, a, 8, ncclInt64, ncclAvg, c[0], s0); }, ncclInvalidArgument, "not emulated"},
        {"half sum", [&] { return ncclAllReduce(a, a, 8, ncclHalf, ncclSum, c[0], s0); }, ncclInvalidArgument, "not emulated"},
        {"root -1", [&] { return ncclBroadcast(a, a, 8, ncclChar, -1, c[0], s0); }, ncclInvalidArgument, "root -1"},
        {"root 2", [&] { return ncclBroadcast(a, a, 8, ncclChar, 2, c[0], s0); }, ncclInvalidArgument, "root 2"},
        {"host sendbuff", [&] { return ncclAllReduce(host.data(), a, 8, ncclInt64, ncclSum, c[0], s0); }, ncclInvalidArgument, "sendbuff"},
        {"host recvbuff", [&] { return ncclAllReduce(a, host.data(), 8, ncclInt64, ncclSum, c[0], s0); }, ncclInvalidArgument, "recvbuff"},
        {"recvbuff on device 1", [&] { return ncclAllReduce(a, other, 8, ncclInt64, ncclSum, c[0], s0); }, ncclInvalidArgument, "device 0"},
        {"count past the buffer", [&] { return ncclAllReduce(a, a, 9, ncclInt64, ncclSum, c[0], s0); }, ncclInvalidArgument, "sendbuff"},
        {"allgather recvbuff of one rank's size", [&] { return ncclAllGather(b, a, 8, ncclInt64, c[0], s0); }, ncclInvalidArgument, "recvbuff"},
        {"partial overlap", [&] { return ncclAllReduce(bc, bc + 8, 8, ncclInt64, ncclSum, c[0], s0); }, ncclInvalidArgument, "overlaps"},
        {"rank 1 gathering from offset 0", [&] { return ncclAllGather(b1, b1, 8, ncclInt64, c[1], s1); }, ncclInvalidArgument, "overlaps"},
        {"broadcast root's overlap", [&] { return ncclBroadcast(bc + 1, bc, 8, ncclChar, 0, c[0], s0); }, ncclInvalidArgument, "overlaps"},
        {"stream of device 1", [&] { return ncclAllReduce(a, a, 8, ncclInt64, ncclSum, c[0], s1); }, ncclInvalidUsage, "stream"},
    };
    for (const Case &t : cases) {
        const ncclResult_t got = t.call();
        cr_assert_eq(got, t.want, "%s: %d (%s), want %d", t.what, (int)got, ncclGetErrorString(got), (int)t.want);
        cr_assert_neq(ncclGetErrorString(got)[0], '\0');
        cr_assert(strstr(ncclGetLastError(c[0]), t.words), "%s: the explanation \"%s\" lacks \"%s\"", t.what,
                  ncclGetLastError(c[0]), t.words);
    }
    // no refused call filed a part: destroying now strands nothing, and rank 0 alone cannot go on
    cr_assert_eq(ncclCommDestroy(c[1]), ncclSuccess);
    cr_assert_eq(cudaemu::last_fault(), std::string(), "%s", cudaemu::last_fault().c_str());
    cr_assert_eq(ncclAllReduce(a, a, 8, ncclInt64, ncclSum, c[0], s0), ncclInvalidUsage);
    cr_assert(strstr(ncclGetLastError(c[0]), "destroyed"), "%s", ncclGetLastError(c[0]));
    cr_assert_eq(ncclAllReduce(a, a, 8, ncclInt64, ncclSum, c[1], s0), ncclInvalidArgument, "a destroyed communicator");
    cr_assert_eq(ncclCommDestroy(c[0]), ncclSuccess);
    cr_assert_eq(ncclCommDestroy(c[0]), ncclInvalidArgument);
    cr_assert_eq(ncclGroupStart(), ncclSuccess);
    cr_assert_eq(ncclGroupEnd(), ncclSuccess);
    cr_assert_eq(cudaStreamSynchronize(s0), cudaSuccess);
}
