// test_emu_device.cu: the emulated CUDA device's own tests (make test-emu): that it runs correct
// kernels correctly, and that each kind of fault it exists to catch makes a kernel with that one
// planted fault fail: a barrier removed, a lane missing from a shuffle mask, a stream wait
// removed, a host read before its copy was waited for, a read of unwritten shared memory, a
// launch over the shared-memory opt-in, an exited thread at a barrier, an index one past the end
// (AddressSanitizer build: make test-emu-asan).  Compiled like kernels/ (tests/cudaemu/rewrite.py).
#include <criterion/criterion.h>
#include <cuda_runtime.h>
#include <stdlib.h>

#include <string>

#include "emu.h"

#define CK(call) cr_assert_eq((call), cudaSuccess, "%s", #call)

// ---------------------------------------------------------------------------------------------
// Kernels

// out[b] = sum of in[b * n + i]: shared-memory tree then warp shuffles.  barrier = 0 leaves out
// the barrier between the threads' stores and the tree's first reads (the planted fault).
__global__ void block_sum(const float *in, int n, float *out, int barrier) {
    __shared__ float part[256];
    const int t = threadIdx.x;
    float v = 0.0f;
    for (int i = t; i < n; i += blockDim.x) v += in[blockIdx.x * n + i];
    part[t] = v;
    if (barrier) __syncthreads();
    if (t < 32) {
        float w = 0.0f;
        for (int i = t; i < (int)blockDim.x; i += 32) w += part[i];
        for (int o = 16; o > 0; o /= 2) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (t == 0) out[blockIdx.x] = w;
    }
    if (!barrier) __syncthreads();  // the same number of barriers either way
}

// A warp's ballot and a shuffle with `mask` (all lanes call): mask without lane 5 is the fault.
__global__ void masked_shuffle(unsigned mask, int *out) {
    const int lane = threadIdx.x;
    const int v = __shfl_sync(mask, lane * 10, 0);
    out[lane] = v + (int)__popc(__ballot_sync(0xffffffffu, lane & 1));
}

// out[t] = t + 1 with a warp-synchronous exchange through shared memory: sync = 0 omits the
// __syncwarp between a lane's store and its neighbour's load (implicit lock-step: the fault).
__global__ void neighbour_exchange(int *out, int sync) {
    __shared__ int s[32];
    const int t = threadIdx.x;
    s[t] = t;
    if (sync) __syncwarp();
    out[t] = s[(t + 1) % 32];
}

// Reads shared memory that no thread wrote when `skip` (the fault): poison.
__global__ void unwritten_shared(int *out, int skip) {
    __shared__ int s[64];
    if (!skip) s[threadIdx.x] = 7;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

__global__ void scale_by(float *x, int n, float f) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= f;
}

__global__ void early_exit_then_barrier(int *out) {
    if (threadIdx.x == 3) return;  // the fault: thread 3 never reaches the barrier
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void uses_dynamic(int *out) {
    extern __shared__ int dyn[];
    dyn[threadIdx.x] = (int)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x];
}

__global__ void one_past_the_end(const float *in, int n, float *out) { out[0] = in[n]; }

__global__ void mma_tile(const uint32_t *a, const uint32_t *b, float *d) {
    const int l = threadIdx.x;
    float c[4] = {0, 0, 0, 0};
    ::cudaemu::mma_m16n8k16_bf16(c, a[l * 4], a[l * 4 + 1], a[l * 4 + 2], a[l * 4 + 3], b[l * 2], b[l * 2 + 1], __LINE__,
                                 __FILE__);
    for (int e = 0; e < 4; e++) d[l * 4 + e] = c[e];
}

// ---------------------------------------------------------------------------------------------
// Helpers

static void fresh(void) {
    cudaemu::clear_fault();
    (void)cudaGetLastError();
}

static float *dev_floats(const float *h, size_t n) {
    float *d = nullptr;
    cr_assert_eq(cudaMalloc((void **)&d, n * sizeof(float)), cudaSuccess);
    if (h) cr_assert_eq(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

// ---------------------------------------------------------------------------------------------
// Correct kernels run correctly

Test(emu_device, block_reduction_with_barrier_is_exact) {
    fresh();
    const int B = 5, n = 1000;
    float *h = (float *)malloc(sizeof(float) * B * n), want[B], got[B];
    for (int b = 0; b < B; b++) {
        want[b] = 0;
        for (int i = 0; i < n; i++) h[b * n + i] = (float)((i * 7 + b) % 13), want[b] += h[b * n + i];
    }
    float *in = dev_floats(h, (size_t)B * n), *out = dev_floats(nullptr, B);
    block_sum<<<B, 256>>>(in, n, out, 1);
    CK(cudaGetLastError());
    CK(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost));
    for (int b = 0; b < B; b++) cr_assert_eq(got[b], want[b], "block %d: %g, want %g", b, got[b], want[b]);
    cudaFree(in), cudaFree(out), free(h);
}

Test(emu_device, shuffles_and_ballot) {
    fresh();
    int *d, h[32];
    CK(cudaMalloc((void **)&d, sizeof h));
    masked_shuffle<<<1, 32>>>(0xffffffffu, d);
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int l = 0; l < 32; l++) cr_assert_eq(h[l], 16, "lane %d: %d", l, h[l]);
    cudaFree(d);
}

Test(emu_device, dynamic_shared_memory) {
    fresh();
    int *d, h[64];
    CK(cudaMalloc((void **)&d, sizeof h));
    uses_dynamic<<<1, 64, 64 * sizeof(int)>>>(d);
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int t = 0; t < 64; t++) cr_assert_eq(h[t], 63 - t);
    cudaFree(d);
}

// mma.m16n8k16 against D = A B computed here from the PTX ISA's fragment tables read the other
// way: element (row, k) of A is in lane 4 g + t per its table, so the test builds the fragments
// from A and B and compares D with the plain product.
Test(emu_device, mma_m16n8k16_matches_the_product) {
    fresh();
    float A[16][16], B[16][8];
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++) A[i][k] = (float)((i * 3 + k * 5) % 7 - 3);
    for (int k = 0; k < 16; k++)
        for (int j = 0; j < 8; j++) B[k][j] = (float)((k * 2 + j * 3) % 5 - 2);
    auto bf = [](float x) {
        uint32_t u;
        memcpy(&u, &x, 4);
        return u >> 16;  // small integers: exact in bf16
    };
    auto pack = [&](float lo, float hi) { return bf(lo) | bf(hi) << 16; };
    uint32_t ha[32 * 4], hb[32 * 2];
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        ha[l * 4 + 0] = pack(A[g][2 * t], A[g][2 * t + 1]);
        ha[l * 4 + 1] = pack(A[g + 8][2 * t], A[g + 8][2 * t + 1]);
        ha[l * 4 + 2] = pack(A[g][2 * t + 8], A[g][2 * t + 9]);
        ha[l * 4 + 3] = pack(A[g + 8][2 * t + 8], A[g + 8][2 * t + 9]);
        hb[l * 2 + 0] = pack(B[2 * t][g], B[2 * t + 1][g]);
        hb[l * 2 + 1] = pack(B[2 * t + 8][g], B[2 * t + 9][g]);
    }
    uint32_t *da, *db;
    float *dd, hd[128];
    CK(cudaMalloc((void **)&da, sizeof ha));
    CK(cudaMalloc((void **)&db, sizeof hb));
    CK(cudaMalloc((void **)&dd, sizeof hd));
    CK(cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    mma_tile<<<1, 32>>>(da, db, dd);
    CK(cudaMemcpy(hd, dd, sizeof hd, cudaMemcpyDeviceToHost));
    for (int l = 0; l < 32; l++)
        for (int e = 0; e < 4; e++) {
            const int row = l / 4 + (e >= 2 ? 8 : 0), col = 2 * (l % 4) + (e & 1);
            float want = 0;
            for (int k = 0; k < 16; k++) want += A[row][k] * B[k][col];
            cr_assert_eq(hd[l * 4 + e], want, "D[%d][%d] = %g, want %g", row, col, hd[l * 4 + e], want);
        }
    cudaFree(da), cudaFree(db), cudaFree(dd);
}

Test(emu_device, stream_capture_replays_with_the_captured_arguments) {
    fresh();
    const int n = 100;
    float h[n];
    for (int i = 0; i < n; i++) h[i] = 1.0f;
    float *d = dev_floats(h, n);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    scale_by<<<1, 128, 0, s>>>(d, n, 2.0f);
    scale_by<<<1, 128, 0, s>>>(d, n, 3.0f);
    cudaGraph_t g;
    CK(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t x;
    CK(cudaGraphInstantiate(&x, g, 0));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    cr_assert_eq(h[0], 1.0f, "capture ran the kernels: %g", h[0]);
    CK(cudaGraphLaunch(x, s));
    CK(cudaGraphLaunch(x, s));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) cr_assert_eq(h[i], 36.0f, "x[%d] = %g after two replays", i, h[i]);
    cudaGraphExecDestroy(x), cudaGraphDestroy(g), cudaStreamDestroy(s), cudaFree(d);
}

Test(emu_device, memory_limit_and_poison) {
    fresh();
    size_t fr, tot;
    CK(cudaMemGetInfo(&fr, &tot));
    void *p = nullptr;
    cr_assert_eq(cudaMalloc(&p, tot + 1), cudaErrorMemoryAllocation, "an allocation over the device's memory");
    cr_assert_eq(cudaGetLastError(), cudaErrorMemoryAllocation);
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "not sticky");
    unsigned char *d, h[16];
    CK(cudaMalloc((void **)&d, 16));
    CK(cudaMemcpy(h, d, 16, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 16; i++) cr_assert_eq(h[i], 0xff, "fresh device memory is poisoned");
    cudaPointerAttributes at;
    CK(cudaPointerGetAttributes(&at, d + 3));
    cr_assert_eq(at.type, cudaMemoryTypeDevice);
    CK(cudaPointerGetAttributes(&at, h));
    cr_assert_eq(at.type, cudaMemoryTypeUnregistered);
    cudaFree(d);
}

// ---------------------------------------------------------------------------------------------
// Planted faults: each fails

Test(emu_faults, barrier_removed_gives_wrong_sums) {
    fresh();
    const int B = 64, n = 256;
    float *h = (float *)malloc(sizeof(float) * B * n), got[B];
    for (int i = 0; i < B * n; i++) h[i] = 1.0f;
    float *in = dev_floats(h, (size_t)B * n), *out = dev_floats(nullptr, B);
    block_sum<<<B, 256>>>(in, n, out, 0);
    CK(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int b = 0; b < B; b++) wrong += got[b] != (float)n;
    cr_assert_gt(wrong, 0, "without the barrier every block still summed right: the schedule is not random");
    cudaFree(in), cudaFree(out), free(h);
}

Test(emu_faults, missing_syncwarp_gives_wrong_exchange) {
    fresh();
    int *d, h[32], wrong = 0;
    CK(cudaMalloc((void **)&d, sizeof h));
    for (int rep = 0; rep < 8; rep++) {
        neighbour_exchange<<<1, 32>>>(d, 0);
        CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
        for (int t = 0; t < 32; t++) wrong += h[t] != (t + 1) % 32;
    }
    cr_assert_gt(wrong, 0, "implicit warp lock-step went unnoticed");
    neighbour_exchange<<<1, 32>>>(d, 1);
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int t = 0; t < 32; t++) cr_assert_eq(h[t], (t + 1) % 32, "with __syncwarp");
    cudaFree(d);
}

Test(emu_faults, lane_missing_from_shuffle_mask_is_reported) {
    fresh();
    int *d;
    CK(cudaMalloc((void **)&d, 32 * sizeof(int)));
    masked_shuffle<<<1, 32>>>(0xffffffffu & ~(1u << 5), d);
    cr_assert_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
    const std::string f = cudaemu::last_fault();
    cr_assert(f.find("masked_shuffle") != std::string::npos && f.find("lane 5 is not in the mask") != std::string::npos,
              "report: %s", f.c_str());
    cr_assert(f.find("thread (5,0,0)") != std::string::npos, "names the thread: %s", f.c_str());
    fresh();
}

Test(emu_faults, thread_exited_before_barrier_is_reported) {
    fresh();
    int *d;
    CK(cudaMalloc((void **)&d, 64 * sizeof(int)));
    early_exit_then_barrier<<<2, 64>>>(d);
    cr_assert_eq(cudaStreamSynchronize(0), cudaErrorLaunchFailure);
    const std::string f = cudaemu::last_fault();
    cr_assert(f.find("early_exit_then_barrier") != std::string::npos && f.find("__syncthreads") != std::string::npos &&
                  f.find("(3,0,0)") != std::string::npos,
              "report: %s", f.c_str());
    fresh();
}

Test(emu_faults, unwritten_shared_memory_reads_poison) {
    fresh();
    int *d, h[64];
    CK(cudaMalloc((void **)&d, sizeof h));
    unwritten_shared<<<1, 64>>>(d, 1);
    CK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int t = 0; t < 64; t++) cr_assert_eq(h[t], -1, "unwritten shared memory reads the poison");
    cudaFree(d);
}

Test(emu_faults, launch_over_the_shared_memory_opt_in_is_refused) {
    fresh();
    int *d;
    CK(cudaMalloc((void **)&d, 64 * sizeof(int)));
    int optin = 0;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    uses_dynamic<<<1, 64, 48 * 1024 + 16>>>(d);  // over the 48 KiB default without an opt-in
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
    cr_assert(cudaemu::last_fault().find("uses_dynamic") != std::string::npos, "%s", cudaemu::last_fault().c_str());
    cr_assert_eq(cudaFuncSetAttribute(uses_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, optin + 1),
                 cudaErrorInvalidValue, "an opt-in over the device's");
    (void)cudaGetLastError();
    CK(cudaFuncSetAttribute(uses_dynamic, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    uses_dynamic<<<1, 64, (size_t)optin>>>(d);
    CK(cudaGetLastError());
    uses_dynamic<<<1, 64, (size_t)optin + 1>>>(d);
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue, "over the opt-in");
    CK(cudaDeviceSynchronize());
    cudaFree(d);
}

// A consumer on stream b of what a producer on stream a writes: without the event wait (the
// fault) some seeds run the consumer first.
static int producer_consumer(int wait) {
    const int n = 64;
    float h[n], *x = nullptr, *y = nullptr;
    for (int i = 0; i < n; i++) h[i] = 1.0f;
    cudaStream_t a, b;
    cudaEvent_t e;
    cr_assert_eq(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
    x = dev_floats(h, n);
    y = dev_floats(h, n);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    scale_by<<<1, 64, 0, a>>>(x, n, 2.0f);
    cudaEventRecord(e, a);
    if (wait) cudaStreamWaitEvent(b, e, 0);
    cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice, b);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cudaMemcpy(h, y, sizeof h, cudaMemcpyDeviceToHost);
    cudaFree(x), cudaFree(y), cudaEventDestroy(e), cudaStreamDestroy(a), cudaStreamDestroy(b);
    return h[0] == 2.0f;
}

Test(emu_faults, stream_wait_removed_gives_wrong_results) {
    fresh();
    int right = 0, reps = 24;
    for (int r = 0; r < reps; r++) right += producer_consumer(0);
    cr_assert_lt(right, reps, "without cudaStreamWaitEvent the consumer never ran first");
    for (int r = 0; r < 8; r++) cr_assert(producer_consumer(1), "with the wait");
}

Test(emu_faults, host_read_before_the_copy_completes_reads_old_data) {
    fresh();
    float *pin = nullptr, *d = nullptr;
    CK(cudaHostAlloc((void **)&pin, 4 * sizeof(float), cudaHostAllocPortable));
    const float h[4] = {1, 2, 3, 4};
    d = dev_floats(h, 4);
    pin[0] = -7.0f;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaMemcpyAsync(pin, d, 4 * sizeof(float), cudaMemcpyDeviceToHost, s));
    cr_assert_eq(pin[0], -7.0f, "the copy landed before anything waited for it");
    CK(cudaStreamSynchronize(s));
    cr_assert_eq(pin[0], 1.0f);
    cudaStreamDestroy(s), cudaFreeHost(pin), cudaFree(d);
}

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer reports the read of in[n] (the byte after the allocation is a redzone) and
// exits with ASAN_OPTIONS' exitcode (86 in make test-emu-asan).
Test(emu_faults, index_one_past_the_end_is_caught_by_asan, .exit_code = 86) {
    float *in = dev_floats(nullptr, 10), *out = dev_floats(nullptr, 1);
    one_past_the_end<<<1, 1>>>(in, 10, out);
    cudaDeviceSynchronize();
}
#else
Test(emu_faults, index_one_past_the_end_is_caught_by_asan) {
    (void)one_past_the_end;
    cr_skip_test("out-of-bounds device accesses are caught by AddressSanitizer: make test-emu-asan");
}
#endif
