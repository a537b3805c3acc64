// runtime.cpp: the host side of the emulated CUDA device (tests/cudaemu/README.md): devices and
// their profiles, memory, streams, events, graphs, launches and the executor that runs queued work.
//
// Nothing queued runs when it is queued.  Work runs when the host waits for something (a stream,
// an event, the device, a synchronous copy): then the executor runs queued operations until what
// is waited for is done, each time picking at random (QK_EMU_SEED) among the streams whose next
// operation may start, i.e. everything its stream ordered before it (stream order; the legacy
// default stream's implicit ordering with blocking streams; cudaStreamWaitEvent) has completed.
// So streams interleave in every order their declared dependencies allow, a missing
// cudaStreamWaitEvent lets a consumer run before its producer, and a host read of page-locked
// memory before the copy into it was waited for reads the old contents.
//
// Environment:
//   QK_EMU_DEVICE   h100 (default: sm_90, 132 SMs, 227 KiB opt-in shared memory) | a100 (sm_80,
//                   108 SMs, 163 KiB opt-in)
//   QK_EMU_DEVICES  number of devices (default 1; 0: no device)
//   QK_EMU_MEM      device memory per device in MiB (default 4096: it is the host's memory)
//   QK_EMU_PINNED   page-locked host memory in MiB that cudaHostAlloc grants (default: unlimited)
//   QK_EMU_SEED     the schedule's seed (default 1)
//   QK_EMU_POISON   the byte fresh device and shared memory is filled with (default 0xff)
//   QK_EMU_ABORT=1  abort() at the first fault, for a debugger
#include <time.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <stdarg.h>
#include <string>
#include <vector>

#include "emu_internal.h"

namespace cudaemu {

struct Profile {
    const char *name;
    int major, minor, sms;
    int smem_optin, smem_block, smem_sm, l2;
};
static const Profile H100 = {"H100 (sm_90)", 9, 0, 132, 232448, 49152, 233472, 52428800};
static const Profile A100 = {"A100 (sm_80)", 8, 0, 108, 166912, 49152, 167936, 41943040};

struct Op {
    std::string what;
    std::function<void()> fn;
    std::vector<std::shared_ptr<Op>> deps;
    std::shared_ptr<Gang> gang;
    int rank = 0;
    bool done = false;
    Stream *stream = nullptr;
};

struct Graph {
    std::vector<std::pair<std::string, std::function<void()>>> nodes;
};
struct GraphExec {
    std::vector<std::pair<std::string, std::function<void()>>> nodes;
};

struct Stream {
    int dev = 0;
    unsigned flags = 0;
    bool legacy = false, destroyed = false;
    std::deque<std::shared_ptr<Op>> q;
    std::shared_ptr<Op> last;  // the last operation queued (implicit ordering)
    Graph *capture = nullptr;
    bool capture_bad = false;
};

struct Event {
    int dev = 0;
    unsigned flags = 0;
    std::shared_ptr<Op> rec;  // the operation of the last record (nullptr: never recorded)
    std::shared_ptr<double> t;  // host time at which the device reached that record
    bool captured = false;  // last recorded into a capture
};

struct Gang {
    int n = 0;
    std::string what;
    std::function<void()> run;
    std::vector<std::shared_ptr<Op>> parts;
    bool ran = false;
};

struct Device {
    const Profile *prof = &H100;
    size_t total = 0, used = 0;
    cudaError_t sticky = cudaSuccess;
    Stream *legacy = nullptr;
    std::map<const void *, int> func_smem;  // cudaFuncSetAttribute's dynamic shared memory opt-in
};

struct Alloc {
    size_t bytes;
    int dev;
};

namespace {
// The emulated devices' state lives as long as the process (never destroyed at exit, so that work
// and memory still held then stay reachable for LeakSanitizer, as a driver's would).
std::recursive_mutex &g_mu = *new std::recursive_mutex;
std::condition_variable_any &g_cv = *new std::condition_variable_any;
std::once_flag g_once;
std::vector<Device> &g_dev = *new std::vector<Device>;
std::vector<Stream *> &g_streams = *new std::vector<Stream *>;
std::map<uintptr_t, Alloc> &g_dmem = *new std::map<uintptr_t, Alloc>;  // device allocations
std::map<uintptr_t, Alloc> &g_hmem = *new std::map<uintptr_t, Alloc>;  // page-locked host allocations
size_t g_pinned_limit = (size_t)-1, g_pinned_used = 0;
uint64_t g_rng = 1;
unsigned char g_poison = 0xff;
bool g_abort = false;
std::string &g_last_fault = *new std::string;
thread_local int t_dev = 0;
thread_local cudaError_t t_last = cudaSuccess;

size_t env_size(const char *name, size_t dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end = nullptr;
    const unsigned long long v = strtoull(s, &end, 0);
    if (*end) {
        fprintf(stderr, "cudaemu: %s=%s: expected a number\n", name, s);
        exit(2);
    }
    return (size_t)v;
}

void init() {
    const char *d = getenv("QK_EMU_DEVICE");
    const Profile *prof = &H100;
    if (d && *d) {
        if (!strcmp(d, "a100")) prof = &A100;
        else if (strcmp(d, "h100")) {
            fprintf(stderr, "cudaemu: QK_EMU_DEVICE=%s: expected h100 or a100\n", d);
            exit(2);
        }
    }
    const size_t n = env_size("QK_EMU_DEVICES", 1), mib = env_size("QK_EMU_MEM", 4096);
    const size_t pinned = env_size("QK_EMU_PINNED", (size_t)-1);
    if (pinned != (size_t)-1) g_pinned_limit = pinned << 20;
    g_rng = env_size("QK_EMU_SEED", 1) * 0x9E3779B97F4A7C15ull + 1;
    g_poison = (unsigned char)env_size("QK_EMU_POISON", 0xff);
    g_abort = env_size("QK_EMU_ABORT", 0) != 0;
    g_dev.resize(n);
    for (size_t i = 0; i < n; i++) {
        g_dev[i].prof = prof;
        g_dev[i].total = mib << 20;
        Stream *s = new Stream();
        s->dev = (int)i;
        s->legacy = true;
        g_dev[i].legacy = s;
        g_streams.push_back(s);
    }
}

struct Lock {
    std::unique_lock<std::recursive_mutex> l;
    Lock() : l(g_mu) { std::call_once(g_once, init); }
};

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) t_last = e;
    return e;
}

Stream *resolve(cudaStream_t s) {
    if (s) return s;
    return t_dev < (int)g_dev.size() ? g_dev[t_dev].legacy : nullptr;
}

bool blocking(const Stream *s) { return !s->legacy && !(s->flags & cudaStreamNonBlocking); }

// An operation's readiness: everything before it in its stream (it is the head), its explicit
// dependencies, and for a gang part every part at the head of its stream.
bool runnable(const std::shared_ptr<Op> &op) {
    for (auto &d : op->deps)
        if (!d->done) return false;
    if (op->gang) {
        Gang &g = *op->gang;
        if ((int)g.parts.size() < g.n) return false;
        for (auto &p : g.parts) {
            if (p->done) continue;
            if (p->stream->q.empty() || p->stream->q.front() != p) return false;
            for (auto &d : p->deps)
                if (!d->done) return false;
        }
    }
    return true;
}

void run_op(const std::shared_ptr<Op> &op) {
    if (op->gang) {
        Gang &g = *op->gang;
        if (!g.ran) {
            g.ran = true;
            bool ok = true;
            for (auto &p : g.parts) ok = ok && g_dev[p->stream->dev].sticky == cudaSuccess;
            if (ok) g.run();
            else fault(cudaErrorLaunchFailure, "%s: not run: a device of its ranks has a sticky error", g.what.c_str());
        }
        for (auto &p : g.parts) p->done = true;
        g.parts.clear();  // the parts point at the gang: break the cycle once it has run
        g.run = nullptr;
    } else {
        if (g_dev[op->stream->dev].sticky == cudaSuccess) op->fn();
        op->done = true;
    }
}

// Pops completed operations; a destroyed stream goes once its work has (cudaStreamDestroy).
void pop_done() {
    for (size_t i = 0; i < g_streams.size(); i++) {
        Stream *s = g_streams[i];
        while (!s->q.empty() && s->q.front()->done) s->q.pop_front();
        if (s->destroyed && s->q.empty()) {
            g_streams.erase(g_streams.begin() + (long)i--);
            delete s;
        }
    }
}

// Runs queued work until done() holds.  False (with a fault reported) when nothing can run and
// no other host thread can unblock it (a deadlock of the declared dependencies).
bool run_until(Lock &lk, const std::function<bool()> &done) {
    double stuck_since = 0;
    while (true) {
        pop_done();
        if (done()) return true;
        std::vector<Stream *> cand;
        bool waiting_gang = false;
        for (Stream *s : g_streams) {
            if (s->q.empty()) continue;
            if (runnable(s->q.front())) cand.push_back(s);
            else if (s->q.front()->gang) waiting_gang = true;
        }
        if (cand.empty()) {
            if (!waiting_gang) {
                fault(cudaErrorLaunchFailure, "deadlock: the host waits for work that can never run (an event or stream "
                                              "dependency that nothing satisfies)");
                return false;
            }
            // A collective waits for other host threads to queue their parts.
            if (stuck_since == 0) stuck_since = now_s();
            if (now_s() - stuck_since > 600) {
                fault(cudaErrorLaunchFailure, "deadlock: a collective has waited 600 s for its other ranks");
                return false;
            }
            g_cv.wait_for(lk.l, std::chrono::milliseconds(50));
            continue;
        }
        stuck_since = 0;
        Stream *s = cand[rng() % cand.size()];
        std::shared_ptr<Op> op = s->q.front();
        run_op(op);
        g_cv.notify_all();
    }
}

cudaError_t sticky() { return t_dev < (int)g_dev.size() ? g_dev[t_dev].sticky : cudaErrorInvalidDevice; }

bool any_capture(int dev) {
    for (Stream *s : g_streams)
        if (s->dev == dev && s->capture) return true;
    return false;
}

cudaError_t push(Stream *s, std::shared_ptr<Op> op) {
    op->stream = s;
    if (s->capture) {
        if (op->gang) {
            s->capture_bad = true;
            return cudaErrorStreamCaptureUnsupported;
        }
        s->capture->nodes.emplace_back(op->what, op->fn);
        return cudaSuccess;
    }
    if (s->legacy) {
        if (any_capture(s->dev)) return cudaErrorStreamCaptureImplicit;
        for (Stream *o : g_streams)
            if (o->dev == s->dev && blocking(o) && o->last && !o->last->done) op->deps.push_back(o->last);
    } else if (blocking(s)) {
        Stream *l = g_dev[s->dev].legacy;
        if (l->last && !l->last->done) op->deps.push_back(l->last);
    }
    s->q.push_back(op);
    s->last = op;
    g_cv.notify_all();
    return cudaSuccess;
}

const Alloc *find(const std::map<uintptr_t, Alloc> &m, const void *p, size_t bytes, uintptr_t *base) {
    const uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return nullptr;
    --it;
    if (a < it->first || a + bytes > it->first + (it->second.bytes ? it->second.bytes : 1)) return nullptr;
    if (base) *base = it->first;
    return &it->second;
}
}  // namespace

uint64_t rng() {
    // splitmix64
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void fault(cudaError_t e, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cudaemu: %s\n", buf);
    fflush(stderr);
    g_last_fault = buf;
    if (g_abort) abort();
    if (t_dev < (int)g_dev.size() && g_dev[t_dev].sticky == cudaSuccess) g_dev[t_dev].sticky = e;
}

std::string last_fault() {
    Lock lk;
    return g_last_fault;
}

void clear_fault() {
    Lock lk;
    g_last_fault.clear();
    for (auto &d : g_dev) d.sticky = cudaSuccess;
    t_last = cudaSuccess;
}

int current_device() { return t_dev; }

bool stream_alive(cudaStream_t s) {
    Lock lk;
    if (!s) return true;
    for (Stream *x : g_streams)  // compared, never dereferenced: a destroyed handle may be gone
        if (x == s) return !x->destroyed;
    return false;
}
int stream_device(cudaStream_t s) {
    Lock lk;
    Stream *r = resolve(s);
    return r ? r->dev : t_dev;
}

bool device_range(const void *p, size_t bytes, int *device) {
    Lock lk;
    const Alloc *a = find(g_dmem, p, bytes, nullptr);
    if (a && device) *device = a->dev;
    return a != nullptr;
}

bool pinned_range(const void *p, size_t bytes) {
    Lock lk;
    return find(g_hmem, p, bytes, nullptr) != nullptr;
}

cudaError_t enqueue(cudaStream_t s, const char *what, std::function<void()> fn) {
    Lock lk;
    if (cudaError_t e = sticky()) return e;
    Stream *st = resolve(s);
    if (!st || st->destroyed) return cudaErrorInvalidResourceHandle;
    auto op = std::make_shared<Op>();
    op->what = what;
    op->fn = std::move(fn);
    return push(st, op);
}

std::shared_ptr<Gang> gang_new(int n, const char *what, std::function<void()> run) {
    auto g = std::make_shared<Gang>();
    g->n = n;
    g->what = what;
    g->run = std::move(run);
    return g;
}

cudaError_t enqueue_gang(cudaStream_t s, const std::shared_ptr<Gang> &g, int rank) {
    Lock lk;
    if (cudaError_t e = sticky()) return e;
    Stream *st = resolve(s);
    if (!st || st->destroyed) return cudaErrorInvalidResourceHandle;
    auto op = std::make_shared<Op>();
    op->what = g->what;
    op->gang = g;
    op->rank = rank;
    op->stream = st;
    if (st->capture) {
        st->capture_bad = true;
        return cudaErrorStreamCaptureUnsupported;
    }
    g->parts.push_back(op);
    return push(st, op);
}

cudaError_t launch_kernel(const void *fn, const char *name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          std::function<void()> body) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    if (t_dev >= (int)g_dev.size()) return ret(cudaErrorNoDevice);
    Stream *st = resolve(stream);
    if (!st || st->destroyed) return ret(cudaErrorInvalidResourceHandle);
    Device &d = g_dev[t_dev];
    char why[300] = "";
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    cudaError_t e = cudaSuccess;
    if (st->dev != t_dev) {
        snprintf(why, sizeof why, "stream of device %d, current device %d", st->dev, t_dev);
        e = cudaErrorInvalidResourceHandle;
    } else if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z) {
        snprintf(why, sizeof why, "a zero grid or block dimension");
        e = cudaErrorInvalidConfiguration;
    } else if (nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
        snprintf(why, sizeof why, "block (%u,%u,%u) over 1024 threads or (1024, 1024, 64)", block.x, block.y, block.z);
        e = cudaErrorInvalidConfiguration;
    } else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        snprintf(why, sizeof why, "grid (%u,%u,%u) over (2^31 - 1, 65535, 65535)", grid.x, grid.y, grid.z);
        e = cudaErrorInvalidConfiguration;
    } else {
        auto it = d.func_smem.find(fn);
        const size_t allowed = it != d.func_smem.end() ? (size_t)it->second : (size_t)d.prof->smem_block;
        if (smem > allowed) {
            snprintf(why, sizeof why, "%zu B of dynamic shared memory, over the kernel's %zu B (%s; opt-in up to %d B "
                     "with cudaFuncSetAttribute)", smem, allowed, it != d.func_smem.end() ? "its cudaFuncSetAttribute" : "the default",
                     d.prof->smem_optin);
            e = cudaErrorInvalidValue;
        }
    }
    if (e != cudaSuccess) {
        char m[600];
        snprintf(m, sizeof m, "launch of kernel %s<<<(%u,%u,%u), (%u,%u,%u), %zu>>> on %s refused: %s", name, grid.x, grid.y,
                 grid.z, block.x, block.y, block.z, smem, d.prof->name, why);
        fprintf(stderr, "cudaemu: %s\n", m);
        g_last_fault = m;
        return ret(e);
    }
    auto op = std::make_shared<Op>();
    op->what = std::string("kernel ") + name;
    const std::string kname = name;
    const size_t limit = (size_t)d.prof->smem_optin;
    const unsigned char poison = g_poison;
    op->fn = [kname, grid, block, smem, limit, poison, body] {
        run_grid(kname.c_str(), grid, block, smem, limit, poison, body);
    };
    return ret(push(st, op));
}

}  // namespace cudaemu

using namespace cudaemu;

// ---------------------------------------------------------------------------------------------
// The Runtime API

extern "C" {

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulated: QK_EMU_DEVICES=0)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulated device: see the cudaemu line above)";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    default: return "unknown error";
    }
}

cudaError_t cudaGetLastError(void) {
    Lock lk;
    cudaError_t e = t_last;
    t_last = cudaSuccess;
    if (e == cudaSuccess) e = sticky();
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    Lock lk;
    return t_last != cudaSuccess ? t_last : sticky();
}

cudaError_t cudaGetDeviceCount(int *n) {
    Lock lk;
    *n = (int)g_dev.size();
    return g_dev.empty() ? ret(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
    Lock lk;
    if (d < 0 || d >= (int)g_dev.size()) return ret(g_dev.empty() ? cudaErrorNoDevice : cudaErrorInvalidDevice);
    t_dev = d;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d) {
    Lock lk;
    *d = t_dev;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr attr, int device) {
    Lock lk;
    if (device < 0 || device >= (int)g_dev.size()) return ret(cudaErrorInvalidDevice);
    const Profile &p = *g_dev[device].prof;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxBlockDimX: *v = 1024; break;
    case cudaDevAttrMaxBlockDimY: *v = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *v = 64; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *v = 65535; break;
    case cudaDevAttrMaxGridDimZ: *v = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = p.smem_block; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = p.sms; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrL2CacheSize: *v = p.l2; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = p.smem_sm; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = p.smem_optin; break;
    default: return ret(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    if (any_capture(t_dev)) return ret(cudaErrorStreamCaptureUnsupported);
    const int dev = t_dev;
    run_until(lk, [dev] {
        for (Stream *s : g_streams)
            if (s->dev == dev && !s->q.empty()) return false;
        return true;
    });
    return ret(sticky());
}

cudaError_t cudaDeviceReset(void) { return cudaDeviceSynchronize(); }

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    Lock lk;
    if (t_dev >= (int)g_dev.size()) return ret(cudaErrorNoDevice);
    const Device &d = g_dev[t_dev];
    *free_bytes = d.total - d.used;
    *total_bytes = d.total;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    Lock lk;
    *p = nullptr;
    if (cudaError_t e = sticky()) return ret(e);
    if (t_dev >= (int)g_dev.size()) return ret(cudaErrorNoDevice);
    Device &d = g_dev[t_dev];
    const size_t rounded = (bytes + 255) & ~(size_t)255;  // the device allocator's granularity, counted
    if (rounded > d.total - d.used) return ret(cudaErrorMemoryAllocation);
    void *m = nullptr;
    // The exact size: under AddressSanitizer the byte after the buffer is a redzone (memcheck).
    if (posix_memalign(&m, 256, bytes ? bytes : 1)) return ret(cudaErrorMemoryAllocation);
    memset(m, g_poison, bytes);
    d.used += rounded;
    g_dmem[(uintptr_t)m] = Alloc{bytes, t_dev};
    *p = m;
    return cudaSuccess;
}

// Frees at once, without waiting for queued work (cudaFree's implicit synchronisation is not
// part of its documented contract): work still queued that reads the buffer reads freed memory
// (AddressSanitizer: heap-use-after-free; otherwise the poison written here).
cudaError_t cudaFree(void *p) {
    Lock lk;
    if (!p) return cudaSuccess;
    auto it = g_dmem.find((uintptr_t)p);
    if (it == g_dmem.end()) {
        fprintf(stderr, "cudaemu: cudaFree(%p): not a device allocation\n", p);
        return ret(cudaErrorInvalidValue);
    }
    g_dev[it->second.dev].used -= (it->second.bytes + 255) & ~(size_t)255;
    memset(p, g_poison, it->second.bytes);
    g_dmem.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags) {
    Lock lk;
    (void)flags;
    *p = nullptr;
    if (g_pinned_limit != (size_t)-1 && bytes > g_pinned_limit - g_pinned_used) return ret(cudaErrorMemoryAllocation);
    void *m = nullptr;
    if (posix_memalign(&m, 4096, bytes ? bytes : 1)) return ret(cudaErrorMemoryAllocation);
    memset(m, g_poison, bytes);
    g_pinned_used += bytes;
    g_hmem[(uintptr_t)m] = Alloc{bytes, t_dev};
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void *p) {
    Lock lk;
    if (!p) return cudaSuccess;
    auto it = g_hmem.find((uintptr_t)p);
    if (it == g_hmem.end()) return ret(cudaErrorInvalidValue);
    g_pinned_used -= it->second.bytes;
    g_hmem.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *at, const void *p) {
    Lock lk;
    memset(at, 0, sizeof *at);
    at->device = -2;
    if (const Alloc *a = find(g_dmem, p, 1, nullptr)) {
        at->type = cudaMemoryTypeDevice, at->device = a->dev, at->devicePointer = const_cast<void *>(p);
    } else if (const Alloc *h = find(g_hmem, p, 1, nullptr)) {
        at->type = cudaMemoryTypeHost, at->device = h->dev, at->hostPointer = const_cast<void *>(p);
        at->devicePointer = const_cast<void *>(p);
    } else {
        at->type = cudaMemoryTypeUnregistered, at->hostPointer = const_cast<void *>(p);
    }
    return cudaSuccess;
}

namespace {
// What a copy touches, checked against its kind: device sides inside one allocation.
cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind &kind, const char *call) {
    const bool dd = find(g_dmem, dst, bytes, nullptr), sd = find(g_dmem, src, bytes, nullptr);
    if (kind == cudaMemcpyDefault)
        kind = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice) : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    const bool want_dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool want_sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (bytes && ((want_dd && !dd) || (want_sd && !sd))) {
        fprintf(stderr, "cudaemu: %s(dst %p, src %p, %zu bytes, kind %d): the %s is not %zu bytes of device memory\n", call,
                dst, src, bytes, (int)kind, want_dd && !dd ? "destination" : "source", bytes);
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t copy_async(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s, bool sync,
                       Lock &lk) {
    if (cudaError_t e = sticky()) return e;
    if (cudaError_t e = check_copy(dst, src, bytes, kind, sync ? "cudaMemcpy" : "cudaMemcpyAsync")) return e;
    Stream *st = resolve(s);
    if (!st || st->destroyed) return cudaErrorInvalidResourceHandle;
    if (!bytes) return cudaSuccess;
    const bool src_host = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost;
    const bool dst_host = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost;
    const bool src_pageable = src_host && !find(g_hmem, src, bytes, nullptr);
    const bool dst_pageable = dst_host && !find(g_hmem, dst, bytes, nullptr);
    if (st->capture && (src_pageable || dst_pageable)) {
        st->capture_bad = true;
        return cudaErrorStreamCaptureUnsupported;
    }
    auto op = std::make_shared<Op>();
    op->what = "memcpy";
    if (src_pageable && !sync) {
        // From pageable memory the driver stages the source before returning (Runtime API,
        // "API synchronization behavior"): the host may reuse it at once.
        auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char *)src, (const unsigned char *)src + bytes);
        op->fn = [dst, staged] { memcpy(dst, staged->data(), staged->size()); };
    } else {
        op->fn = [dst, src, bytes] { memmove(dst, src, bytes); };
    }
    if (cudaError_t e = push(st, op)) return e;
    // Synchronous for the host: cudaMemcpy always; cudaMemcpyAsync into pageable memory.
    if (sync || (dst_pageable && !st->capture)) {
        run_until(lk, [op] { return op->done; });
        if (cudaError_t e = sticky()) return e;
    }
    return cudaSuccess;
}
}  // namespace

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    Lock lk;
    return ret(copy_async(dst, src, bytes, kind, nullptr, true, lk));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s) {
    Lock lk;
    return ret(copy_async(dst, src, bytes, kind, s, false, lk));
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    if (bytes && !find(g_dmem, p, bytes, nullptr)) {
        fprintf(stderr, "cudaemu: cudaMemset(%p, %d, %zu): not %zu bytes of device memory\n", p, value, bytes, bytes);
        return ret(cudaErrorInvalidValue);
    }
    Stream *st = resolve(s);
    if (!st || st->destroyed) return ret(cudaErrorInvalidResourceHandle);
    auto op = std::make_shared<Op>();
    op->what = "memset";
    op->fn = [p, value, bytes] { memset(p, value, bytes); };
    return ret(push(st, op));
}

// Asynchronous with respect to the host for device memory (Runtime API, "API synchronization
// behavior"), on the legacy stream.
cudaError_t cudaMemset(void *p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    Lock lk;
    if (t_dev >= (int)g_dev.size()) return ret(cudaErrorNoDevice);
    Stream *st = new Stream();
    st->dev = t_dev;
    st->flags = flags;
    g_streams.push_back(st);
    *s = st;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

// The stream's queued work still runs (the Runtime API: resources are released once the device
// has completed it); the handle is invalid from now on.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    Lock lk;
    if (!s || s->legacy || s->destroyed) return ret(cudaErrorInvalidResourceHandle);
    s->destroyed = true;
    delete s->capture;
    s->capture = nullptr;
    pop_done();
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    Stream *st = resolve(s);
    if (!st || st->destroyed) return ret(cudaErrorInvalidResourceHandle);
    if (st->capture) {
        st->capture_bad = true;
        return ret(cudaErrorStreamCaptureUnsupported);
    }
    if (st->legacy && any_capture(st->dev)) return ret(cudaErrorStreamCaptureImplicit);
    run_until(lk, [st] { return st->q.empty(); });
    return ret(sticky());
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    Stream *st = resolve(s);
    if (!st || st->destroyed) return ret(cudaErrorInvalidResourceHandle);
    pop_done();
    return st->q.empty() ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    Lock lk;
    (void)flags;
    if (cudaError_t er = sticky()) return ret(er);
    Stream *st = resolve(s);
    if (!st || st->destroyed || !e) return ret(cudaErrorInvalidResourceHandle);
    if (e->captured && !st->capture) {
        fprintf(stderr, "cudaemu: cudaStreamWaitEvent on an event recorded in a capture, from outside it: the emulator "
                        "captures one stream at a time\n");
        return ret(cudaErrorStreamCaptureUnsupported);
    }
    auto op = std::make_shared<Op>();
    op->what = "wait event";
    op->fn = [] {};
    if (e->rec && !e->captured) op->deps.push_back(e->rec);  // never recorded: nothing to wait for
    return ret(push(st, op));
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    Lock lk;
    (void)mode;
    if (!s || s->legacy || s->destroyed) return ret(cudaErrorStreamCaptureUnsupported);
    if (s->capture) return ret(cudaErrorIllegalAddress);
    s->capture = new Graph();
    s->capture_bad = false;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    Lock lk;
    *g = nullptr;
    if (!s || !s->capture) return ret(cudaErrorStreamCaptureUnmatched);
    Graph *graph = s->capture;
    s->capture = nullptr;
    if (s->capture_bad) {
        delete graph;
        return ret(cudaErrorStreamCaptureInvalidated);
    }
    *g = graph;
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *st) {
    Lock lk;
    Stream *r = resolve(s);
    *st = r && r->capture ? (r->capture_bad ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive)
                          : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    Lock lk;
    Event *ev = new Event();
    ev->dev = t_dev;
    ev->flags = flags;
    *e = ev;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t e) {
    Lock lk;
    if (!e) return ret(cudaErrorInvalidResourceHandle);
    delete e;  // operations that wait for its record keep their own reference to it
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    Lock lk;
    if (cudaError_t er = sticky()) return ret(er);
    Stream *st = resolve(s);
    if (!st || st->destroyed || !e) return ret(cudaErrorInvalidResourceHandle);
    auto op = std::make_shared<Op>();
    op->what = "event record";
    Event *ev = e;
    // The time is taken when the device reaches the record (emulated: host time, meaningless
    // as a GPU timing).
    auto tm = std::make_shared<double>(0);
    op->fn = [tm] { *tm = now_s(); };
    if (cudaError_t er = push(st, op)) return ret(er);
    ev->captured = st->capture != nullptr;
    if (!ev->captured) ev->rec = op, ev->t = tm;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    Lock lk;
    if (!e) return ret(cudaErrorInvalidResourceHandle);
    if (cudaError_t er = sticky()) return ret(er);
    std::shared_ptr<Op> op = e->rec;
    if (op) run_until(lk, [op] { return op->done; });
    return ret(sticky());
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
    Lock lk;
    if (!e) return ret(cudaErrorInvalidResourceHandle);
    return !e->rec || e->rec->done ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    Lock lk;
    if (!start || !end || (start->flags & cudaEventDisableTiming) || (end->flags & cudaEventDisableTiming))
        return ret(cudaErrorInvalidResourceHandle);
    if (!start->rec || !end->rec) return ret(cudaErrorInvalidResourceHandle);
    if (!start->rec->done || !end->rec->done) return ret(cudaErrorNotReady);
    *ms = (float)((*end->t - *start->t) * 1e3);
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags) {
    Lock lk;
    (void)flags;
    if (!g) return ret(cudaErrorInvalidValue);
    GraphExec *x = new GraphExec();
    x->nodes = g->nodes;
    *exec = x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    Lock lk;
    if (cudaError_t e = sticky()) return ret(e);
    if (!exec) return ret(cudaErrorInvalidValue);
    Stream *st = resolve(s);
    if (!st || st->destroyed) return ret(cudaErrorInvalidResourceHandle);
    // The graph's nodes (one chain: they were captured from one stream) in order on s.
    for (auto &n : exec->nodes) {
        auto op = std::make_shared<Op>();
        op->what = "graph node " + n.first;
        op->fn = n.second;
        if (cudaError_t e = push(st, op)) return ret(e);
    }
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

// The emulated driver has no tensor-map encoder: every entry point is "not found", as from a
// driver older than the symbol (the TMA flavour of the fused top-k declines).
cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags,
                                    enum cudaDriverEntryPointQueryResult *status) {
    (void)symbol, (void)flags;
    *fn = nullptr;
    if (status) *status = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned version, unsigned long long flags,
                                             enum cudaDriverEntryPointQueryResult *status) {
    (void)version;
    return cudaGetDriverEntryPoint(symbol, fn, flags, status);
}

cudaError_t cudaemuFuncSetAttribute(const void *fn, enum cudaFuncAttribute attr, int value) {
    Lock lk;
    if (t_dev >= (int)g_dev.size()) return ret(cudaErrorNoDevice);
    Device &d = g_dev[t_dev];
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > d.prof->smem_optin) {
            char m[200];
            snprintf(m, sizeof m, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d): over the %s's opt-in of %d B", value,
                     d.prof->name, d.prof->smem_optin);
            fprintf(stderr, "cudaemu: %s\n", m);
            g_last_fault = m;
            return ret(cudaErrorInvalidValue);
        }
        d.func_smem[fn] = value;
        return cudaSuccess;
    }
    return attr == cudaFuncAttributePreferredSharedMemoryCarveout ? cudaSuccess : ret(cudaErrorInvalidValue);
}

}  // extern "C"
