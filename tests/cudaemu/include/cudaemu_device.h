// cudaemu_device.h: what device code sees on the emulated device (tests/cudaemu/README.md): the
// built-in variables, the synchronisation and warp intrinsics, atomics, conversions, mma.sync,
// and the launch that tests/cudaemu/rewrite.py puts in place of `kernel<<<grid, block, smem,
// stream>>>(args)`.  Every thread of a block is its own fiber (fiber.cpp): barriers and warp
// collectives rendezvous the threads they name, in a seeded random order (QK_EMU_SEED), and a
// barrier or collective that cannot complete is reported with the kernel, block and thread.
#pragma once
#include <functional>

namespace cudaemu {

// One emulated thread and its block (fiber.cpp).  `t_cur` / `t_blk` are the running fiber's:
// the built-in variables read them.
struct ThreadCtx {
    uint3 tid;
};
struct BlockCtx {
    uint3 bid;
    dim3 bdim, gdim;
};
extern thread_local ThreadCtx *t_cur;
extern thread_local BlockCtx *t_blk;

// Synchronisation (fiber.cpp).  `line` / `file` name the call site: threads of a block meeting at
// barriers of different sites is reported (the Programming Guide: __syncthreads in conditional
// code only when the condition is the same in the whole block).
int bar_sync(int op, int pred, int line, const char *file);  // op 0: plain, 1: or, 2: and, 3: count
void warp_sync(unsigned mask, int line, const char *file);
// A warp collective: every lane of `mask` deposits `in` (8 bytes) and gets back what `pick`
// computes from all of them (lanes indexed 0..31; absent lanes' values unspecified).
enum WarpOp { W_SHFL = 0, W_SHFL_XOR, W_SHFL_UP, W_SHFL_DOWN, W_BALLOT, W_ANY, W_ALL };
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t in, int arg, int width, int line, const char *file);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"): the whole warp, each lane its A, B and C fragments.
void mma_m16n8k16_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                       int line, const char *file);
[[noreturn]] void trap(const char *why, int line, const char *file);

// Static shared memory: one object per declaration site and block (rewrite.py turns
// `__shared__ T name[..];` into a reference to shared_static(site, bytes, align)).
void *shared_static(const void *site, size_t bytes, size_t align);
void *shared_dynamic();

// Launches (runtime.cpp): queues `grid` blocks of `block` threads, each thread running body(),
// on `stream`; the launch errors of the Runtime API (configuration, shared memory) are returned
// and kept for cudaGetLastError.
cudaError_t launch_kernel(const void *fn, const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          std::function<void()> body);

// kernel<<<grid, block, smem, stream>>>(args...) is launcher(kernel, "kernel", grid, block,
// smem, stream)(args...): the arguments are converted to the kernel's parameter types and copied
// at the launch, as the runtime copies them.
template <class... P>
struct Launcher {
    void (*k)(P...);
    const char *name;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    template <class... A>
    void operator()(A &&...a) const {
        auto args = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(a)...);
        auto kk = k;
        launch_kernel(reinterpret_cast<const void *>(k), name, grid, block, smem, stream,
                      [kk, args] { std::apply(kk, *args); });
    }
};
template <class... P>
Launcher<P...> launcher(void (*k)(P...), const char *name, dim3 grid, dim3 block, size_t smem = 0,
                        cudaStream_t stream = nullptr) {
    return Launcher<P...>{k, name, grid, block, smem, stream};
}

template <class T>
static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <class T>
static inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
}  // namespace cudaemu

// ---------------------------------------------------------------------------------------------
// Built-in variables

#define threadIdx (::cudaemu::t_cur->tid)
#define blockIdx (::cudaemu::t_blk->bid)
#define blockDim (::cudaemu::t_blk->bdim)
#define gridDim (::cudaemu::t_blk->gdim)
#define warpSize 32

// ---------------------------------------------------------------------------------------------
// Synchronisation and warp intrinsics (Programming Guide, "Synchronization Functions", "Warp
// Vote Functions", "Warp Shuffle Functions")

static inline void __syncthreads(int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    ::cudaemu::bar_sync(0, 0, line, file);
}
static inline int __syncthreads_or(int p, int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    return ::cudaemu::bar_sync(1, p != 0, line, file);
}
static inline int __syncthreads_and(int p, int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    return ::cudaemu::bar_sync(2, p != 0, line, file);
}
static inline int __syncthreads_count(int p, int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    return ::cudaemu::bar_sync(3, p != 0, line, file);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu, int line = __builtin_LINE(),
                              const char *file = __builtin_FILE()) {
    ::cudaemu::warp_sync(mask, line, file);
}
static inline unsigned __ballot_sync(unsigned mask, int p, int line = __builtin_LINE(),
                                     const char *file = __builtin_FILE()) {
    return (unsigned)::cudaemu::warp_collective(::cudaemu::W_BALLOT, mask, p != 0, 0, 32, line, file);
}
static inline int __any_sync(unsigned mask, int p, int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    return (int)::cudaemu::warp_collective(::cudaemu::W_ANY, mask, p != 0, 0, 32, line, file);
}
static inline int __all_sync(unsigned mask, int p, int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    return (int)::cudaemu::warp_collective(::cudaemu::W_ALL, mask, p != 0, 0, 32, line, file);
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, int line = __builtin_LINE(),
                            const char *file = __builtin_FILE()) {
    return ::cudaemu::from_bits<T>(
        ::cudaemu::warp_collective(::cudaemu::W_SHFL, mask, ::cudaemu::to_bits(v), src, width, line, file));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, int line = __builtin_LINE(),
                                const char *file = __builtin_FILE()) {
    return ::cudaemu::from_bits<T>(
        ::cudaemu::warp_collective(::cudaemu::W_SHFL_XOR, mask, ::cudaemu::to_bits(v), lane_mask, width, line, file));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, int line = __builtin_LINE(),
                               const char *file = __builtin_FILE()) {
    return ::cudaemu::from_bits<T>(
        ::cudaemu::warp_collective(::cudaemu::W_SHFL_UP, mask, ::cudaemu::to_bits(v), (int)delta, width, line, file));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, int line = __builtin_LINE(),
                                 const char *file = __builtin_FILE()) {
    return ::cudaemu::from_bits<T>(
        ::cudaemu::warp_collective(::cudaemu::W_SHFL_DOWN, mask, ::cudaemu::to_bits(v), (int)delta, width, line, file));
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] static inline void __trap(int line = __builtin_LINE(), const char *file = __builtin_FILE()) {
    ::cudaemu::trap("__trap()", line, file);
}

// ---------------------------------------------------------------------------------------------
// Atomics: the threads of the emulated device never run at the same time (one fiber at a time,
// one block at a time), so a read-modify-write is atomic as written.

namespace cudaemu {
// old = *p; *p = f(old); return old (atomic as written: see above).
template <class T, class F>
static inline T rmw(T *p, F f) {
    const T old = *p;
    *p = f(old);
    return old;
}
}  // namespace cudaemu
template <class T>
static inline T atomicAdd(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o + v; }); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return ::cudaemu::rmw(p, [v](unsigned long long o) { return o + v; });
}
template <class T>
static inline T atomicSub(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o - v; }); }
template <class T>
static inline T atomicMax(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o > v ? o : v; }); }
template <class T>
static inline T atomicMin(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o < v ? o : v; }); }
template <class T>
static inline T atomicExch(T *p, T v) { return ::cudaemu::rmw(p, [v](T) { return v; }); }
template <class T>
static inline T atomicCAS(T *p, T cmp, T v) { return ::cudaemu::rmw(p, [cmp, v](T o) { return o == cmp ? v : o; }); }
template <class T>
static inline T atomicOr(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o | v; }); }
template <class T>
static inline T atomicAnd(T *p, T v) { return ::cudaemu::rmw(p, [v](T o) { return o & v; }); }

// ---------------------------------------------------------------------------------------------
// Integer and floating-point intrinsics (CUDA Math API).  The _rn forms round once, as written:
// kernels/ is compiled with -ffp-contract=off here, so no expression is fused behind them.

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline unsigned __float_as_uint(float v) { return ::cudaemu::from_bits<unsigned>(::cudaemu::to_bits(v)); }
static inline int __float_as_int(float v) { return ::cudaemu::from_bits<int>(::cudaemu::to_bits(v)); }
static inline float __uint_as_float(unsigned v) { return ::cudaemu::from_bits<float>(::cudaemu::to_bits(v)); }
static inline float __int_as_float(int v) { return ::cudaemu::from_bits<float>(::cudaemu::to_bits(v)); }
static inline long long __double_as_longlong(double v) { return ::cudaemu::from_bits<long long>(::cudaemu::to_bits(v)); }
static inline double __longlong_as_double(long long v) { return ::cudaemu::from_bits<double>(::cudaemu::to_bits(v)); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::isfinite;
using std::isinf;
using std::isnan;
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

// __ldg: a load through the read-only cache is a load.
template <class T>
static inline T __ldg(const T *p) {
    return *p;
}
// Shared-window addresses: the emulated shared memory is ordinary memory, its address the window's.
static inline size_t __cvta_generic_to_shared(const void *p) { return (size_t)(uintptr_t)p; }
