// emu.h: the emulated device's interface for its library shims (cuBLAS, cuBLASLt, CUB, NCCL) and
// its own tests.  A shim checks its arguments when called (as the library does), then queues the
// work with enqueue(): it runs in stream order, when the emulated device reaches it (never inside
// the call), on the device memory the caller passed.
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>

namespace cudaemu {

// Queues fn on stream s (nullptr: the current device's legacy default stream) as one operation
// named `what`; while s is being captured, the operation goes into the graph instead.  Returns
// cudaSuccess, or the device's sticky error, or a capture error.
cudaError_t enqueue(cudaStream_t s, const char *what, std::function<void()> fn);

// A collective over n streams (NCCL): part `rank` of the gang is queued on its stream with
// enqueue_gang; `run` is called once, when every part has been queued and every one is at the
// head of its stream (all that its stream ordered before it has completed); then every part
// completes.  A host thread that waits for a part waits for the other ranks' host threads too.
struct Gang;
std::shared_ptr<Gang> gang_new(int n, const char *what, std::function<void()> run);
cudaError_t enqueue_gang(cudaStream_t s, const std::shared_ptr<Gang> &g, int rank);

// Whether [p, p + bytes) lies inside one live device allocation (cudaMalloc); *device its device.
bool device_range(const void *p, size_t bytes, int *device = nullptr);
// Whether p is page-locked host memory (cudaHostAlloc / cudaMallocHost).
bool pinned_range(const void *p, size_t bytes);

int current_device();
// Whether s is a stream that has not been destroyed (nullptr, the legacy stream: always).
bool stream_alive(cudaStream_t s);
// The device of a stream (nullptr: the current device).
int stream_device(cudaStream_t s);

// Reports a fault of the emulated device (one line on stderr: "cudaemu: ..."), makes `e` the
// sticky error of the current device, and keeps the message for last_fault().  Inside a kernel
// the faulting block is abandoned (fiber.cpp); from a queued operation the rest of it is skipped
// by the caller.
void fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// The last fault's message ("" when none since clear_fault); for the emulator's own tests.
std::string last_fault();
// Clears every device's sticky error and the last fault (the emulator's own tests: a fresh
// device after a planted fault, as a new process would have).
void clear_fault();

// The seeded generator of the schedule (QK_EMU_SEED): stream interleaving, block order, thread
// order.  Deterministic for a seed and one host thread.
uint64_t rng();

}  // namespace cudaemu
