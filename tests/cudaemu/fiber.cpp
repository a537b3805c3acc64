// fiber.cpp: the threads of the emulated device.  A launch runs its blocks one after another, in
// a seeded random order; a block runs each of its threads as its own fiber (own stack, own
// registers), one at a time.  A thread runs until it reaches a barrier or a warp collective
// (__syncthreads*, __syncwarp, shuffles, votes, mma.sync) or exits; then the scheduler resumes a
// random ready thread (QK_EMU_SEED).  So the threads of a warp are independent, as on Volta and
// later, and nothing is in lock-step unless the code synchronises it: code that relies on
// implicit warp-synchronous execution or lacks a barrier reads what another thread has not yet
// written (the poison of fresh shared memory, or stale values) and gives wrong results.
//
// Detected, reported with the kernel, block and thread, and made the device's sticky error
// (cudaErrorLaunchFailure; the block and the rest of the launch abandoned):
//   - a __syncthreads that not every thread of the block reaches (a thread exited, or the block
//     is stuck with threads waiting at barriers of different sites or at warp collectives);
//   - a warp collective whose mask leaves out the calling lane, names a lane the block does not
//     have or one that has exited, or that meets a different collective of overlapping mask;
//   - __trap() (and the sm_90a-only instructions, which compile to it here);
//   - static plus dynamic shared memory over the device's limit.
// Shared memory (static per declaration site, dynamic per launch) is fresh per block and filled
// with the poison byte (QK_EMU_POISON, default 0xff: NaN floats, -1 integers).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "emu_internal.h"

extern "C" void cudaemu_fiber_switch(void **save_sp, void *load_sp);
extern "C" void cudaemu_fiber_start(void);

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
extern "C" void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old, size_t *size_old);
#else
#define EMU_ASAN 0
#endif

namespace cudaemu {

thread_local ThreadCtx *t_cur;
thread_local BlockCtx *t_blk;

namespace {

const size_t STACK_BYTES = (EMU_ASAN ? 1024 : 256) * 1024;  // per thread (ASan's frames are larger)
const size_t GUARD_BYTES = 4096;                            // PROT_NONE below each stack

enum TState { T_READY, T_BAR, T_WARP, T_DONE };

struct Coll;

struct EThread : ThreadCtx {
    void *sp = nullptr;  // saved stack pointer while not running
    char *stack = nullptr;
    TState st = T_READY;
    int lane = 0, warp = 0;
    int bar_line = 0;
    const char *bar_file = "";
    int bar_pred = 0, bar_result = 0;
    Coll *coll = nullptr;
    uint64_t out = 0;
    float coll_out[4] = {0, 0, 0, 0};  // mma.sync's D fragment
    void *fake = nullptr;  // ASan's fake stack of this fiber
};

// A warp collective being assembled: the lanes of `mask` that have arrived and their inputs.
struct Coll {
    int op;  // WarpOp, or C_SYNC / C_MMA
    unsigned mask = 0, arrived = 0;
    int line = 0;
    const char *file = "";
    int width = 32;
    uint64_t in[32] = {0};
    int arg[32] = {0};
    uint32_t fa[32][4], fb[32][2];  // mma fragments
    float fc[32][4];
};
const int C_SYNC = 100, C_MMA = 101;

struct Block : BlockCtx {
    const char *kernel = "";
    std::vector<EThread> th;
    std::vector<int> ready;
    int nthreads = 0, exited = 0;
    int bar_arrived = 0, bar_op = 0, bar_acc = 0;
    const EThread *bar_first = nullptr;  // the first thread waiting at the open barrier (its site)
    std::vector<std::vector<Coll *>> pending;  // per warp
    std::vector<unsigned> exited_lanes;        // per warp: the lanes that have exited
    std::map<const void *, void *> statics;
    size_t static_bytes = 0, dyn_bytes = 0, smem_limit = 0;
    void *dyn = nullptr;
    void *sched_sp = nullptr;
    const void *sched_bottom = nullptr;
    size_t sched_size = 0;
    void *sched_fake = nullptr;
    bool failed = false;
    uint64_t rs = 1;  // the block's schedule generator (pick)
    const std::function<void()> *body = nullptr;
    unsigned char poison = 0xff;
};

thread_local Block *t_block;
thread_local EThread *t_thread;

// Stacks of this host thread's fibers, kept for the next block (mmap'd: untouched pages cost nothing).
thread_local std::vector<char *> t_stacks;

char *stack_get(size_t i) {
    while (t_stacks.size() <= i) {
        void *m = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "cudaemu: cannot map a fiber stack of %zu bytes\n", STACK_BYTES);
            abort();
        }
        mprotect(m, GUARD_BYTES, PROT_NONE);
        t_stacks.push_back(static_cast<char *>(m) + GUARD_BYTES);
    }
    return t_stacks[i];
}

// "kernel NAME block (x,y,z)[ thread (x,y,z)]" into buf (no allocation: a faulting fiber is
// abandoned with its stack, and nothing on it is ever destroyed).
struct Where {
    char s[256];
};
Where where(const Block &b, const EThread *t) {
    Where w;
    if (t)
        snprintf(w.s, sizeof w.s, "kernel %s block (%u,%u,%u) thread (%u,%u,%u)", b.kernel, b.bid.x, b.bid.y, b.bid.z,
                 t->tid.x, t->tid.y, t->tid.z);
    else
        snprintf(w.s, sizeof w.s, "kernel %s block (%u,%u,%u)", b.kernel, b.bid.x, b.bid.y, b.bid.z);
    return w;
}

const char *op_name(int op) {
    switch (op) {
    case W_SHFL: return "__shfl_sync";
    case W_SHFL_XOR: return "__shfl_xor_sync";
    case W_SHFL_UP: return "__shfl_up_sync";
    case W_SHFL_DOWN: return "__shfl_down_sync";
    case W_BALLOT: return "__ballot_sync";
    case W_ANY: return "__any_sync";
    case W_ALL: return "__all_sync";
    case C_SYNC: return "__syncwarp";
    case C_MMA: return "mma.sync.m16n8k16";
    }
    return "?";
}

// A random ready thread of the block, taken off the ready list (nullptr: none, or the block
// failed).  xorshift64* on the block's own state, seeded from the launch's generator.
EThread *pick(Block *b) {
    if (b->failed || b->ready.empty()) return nullptr;
    b->rs ^= b->rs >> 12, b->rs ^= b->rs << 25, b->rs ^= b->rs >> 27;
    const size_t k = (size_t)((b->rs * 2685821657736338717ull) >> 32) % b->ready.size();
    EThread *t = &b->th[b->ready[k]];
    b->ready[k] = b->ready.back();
    b->ready.pop_back();
    return t;
}

// Leaves the running fiber t for `next` (another fiber of the block) or, with next == nullptr,
// the scheduler; exiting: t is never resumed.  Returns when t is resumed.
void switch_from(EThread *t, EThread *next, bool exiting) {
    Block *b = t_block;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &t->fake, next ? next->stack : b->sched_bottom,
                                   next ? STACK_BYTES : b->sched_size);
#else
    (void)exiting;
#endif
    if (next) t_cur = next, t_thread = next;
    cudaemu_fiber_switch(&t->sp, next ? next->sp : b->sched_sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake, nullptr, nullptr);
#endif
    t_cur = t;
    t_thread = t;
}

// Switches from the running fiber to the scheduler (exiting: the fiber is never resumed).
void to_sched(EThread *t, bool exiting) { switch_from(t, nullptr, exiting); }

// A fault inside the block: reported once, the block abandoned (the running fiber goes back to
// the scheduler and is never resumed).
[[noreturn]] void block_fault(EThread *t, const char *msg) {
    Block *b = t_block;
    if (!b->failed) fault(cudaErrorLaunchFailure, "%s: %s", where(*b, t).s, msg);
    b->failed = true;
    if (t) to_sched(t, true);
    abort();  // not reached
}

void fiber_main(void *arg) {
    EThread *t = static_cast<EThread *>(arg);
    Block *b = t_block;
#if EMU_ASAN
    // the first fiber of a block is entered from the scheduler: its stack's bounds, kept for the
    // switches back to it
    const void *from = nullptr;
    size_t from_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &from, &from_size);
    if (!b->sched_bottom) b->sched_bottom = from, b->sched_size = from_size;
#endif
    t_cur = t;
    t_thread = t;
    (*b->body)();
    t->st = T_DONE;
    b->exited++;
    b->exited_lanes[t->warp] |= 1u << t->lane;
    if (b->bar_arrived) {
        char m[160];
        snprintf(m, sizeof m, "exited while %d thread(s) of the block wait at a __syncthreads (%s:%d)", b->bar_arrived,
                 b->bar_first->bar_file, b->bar_first->bar_line);
        block_fault(t, m);
    }
    for (Coll *c : b->pending[t->warp])
        if (c->mask >> t->lane & 1u) {
            char m[200];
            snprintf(m, sizeof m, "exited while lanes 0x%08x of its warp wait for it at %s(mask 0x%08x) %s:%d",
                     c->arrived, op_name(c->op), c->mask, c->file, c->line);
            block_fault(t, m);
        }
    switch_from(t, pick(b), true);
}

void start_fiber(EThread *t, char *stack) {
    // Initial frame (fiber_switch_x86_64.S): [mxcsr | x87 cw][r15][r14][r13 = entry][r12 = arg]
    // [rbx][rbp][ret = cudaemu_fiber_start]; after the return rsp is 16-byte aligned.
    uintptr_t top = reinterpret_cast<uintptr_t>(stack + STACK_BYTES) & ~uintptr_t(15);
    uint64_t *f = reinterpret_cast<uint64_t *>(top - 16 - 64);
    f[0] = 0x1f80ull | (0x037full << 32);  // the ABI's initial MXCSR and x87 control word
    f[1] = 0;
    f[2] = 0;
    f[3] = reinterpret_cast<uint64_t>(&fiber_main);
    f[4] = reinterpret_cast<uint64_t>(t);
    f[5] = 0;
    f[6] = 0;
    f[7] = reinterpret_cast<uint64_t>(&cudaemu_fiber_start);
    t->sp = f;
    t->stack = stack;
}

void make_ready(Block *b, EThread *t) {
    t->st = T_READY;
    b->ready.push_back((int)(t - b->th.data()));
}

// Parks the running thread (its state already set; READY when it only yields) and runs others,
// handing over straight to a random ready thread, until it is resumed.
void park(EThread *t) {
    EThread *next = pick(t_block);
    if (next == t) {  // it yielded and was picked again
        t->st = T_READY;
        return;
    }
    switch_from(t, next, false);
}

// The scheduler: a random ready thread at a time, until all exited, the block failed, or none
// can run (a barrier or collective that cannot complete: reported).
void schedule(Block &b) {
    while (!b.failed) {
        if (b.ready.empty()) {
            if (b.exited == b.nthreads) return;
            // Stuck: name the first waiting thread and what it waits for.
            std::string msg = "deadlock: no thread can run;";
            int shown = 0;
            for (auto &t : b.th) {
                if (t.st == T_DONE || shown >= 3) continue;
                char m[240];
                if (t.st == T_BAR)
                    snprintf(m, sizeof m, " thread (%u,%u,%u) waits at __syncthreads %s:%d (%d of %d threads arrived, %d exited);",
                             t.tid.x, t.tid.y, t.tid.z, t.bar_file, t.bar_line, b.bar_arrived, b.nthreads, b.exited);
                else
                    snprintf(m, sizeof m, " thread (%u,%u,%u) waits at %s(mask 0x%08x) %s:%d (lanes arrived 0x%08x);",
                             t.tid.x, t.tid.y, t.tid.z, op_name(t.coll->op), t.coll->mask, t.coll->file, t.coll->line,
                             t.coll->arrived);
                msg += m;
                shown++;
            }
            b.failed = true;
            fault(cudaErrorLaunchFailure, "%s: %s", where(b, nullptr).s, msg.c_str());
            return;
        }
        EThread *t = pick(&b);
        t_cur = t;
        t_thread = t;
#if EMU_ASAN
        __sanitizer_start_switch_fiber(&b.sched_fake, t->stack, STACK_BYTES);
#endif
        cudaemu_fiber_switch(&b.sched_sp, t->sp);
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(b.sched_fake, nullptr, nullptr);
#endif
        t_cur = nullptr;
        t_thread = nullptr;
    }
}

EThread *running(const char *what, int line, const char *file) {
    EThread *t = t_thread;
    if (!t) {
        fprintf(stderr, "cudaemu: %s called outside a kernel (%s:%d)\n", what, file, line);
        abort();
    }
    return t;
}

// Lanes of warp w that the block has.
unsigned lanes_present(const Block &b, int w) {
    const int n = b.nthreads - w * 32;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1u;
}

// Joins (or opens) the collective of the running thread's warp for `mask`; returns it once
// complete (the caller then reads its own result), having parked until then.
Coll *join(EThread *t, int op, unsigned mask, int line, const char *file) {
    Block &b = *t_block;
    char m[240];
    if (!(mask >> t->lane & 1u)) {
        snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d: the calling lane %d is not in the mask", op_name(op), mask, file,
                 line, t->lane);
        block_fault(t, m);
    }
    const unsigned have = lanes_present(b, t->warp);
    if (mask & ~have) {
        snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d names lanes 0x%08x that the block does not have (%d threads)",
                 op_name(op), mask, file, line, mask & ~have, b.nthreads);
        block_fault(t, m);
    }
    if (mask & b.exited_lanes[t->warp]) {
        snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d names lane %d, which has exited", op_name(op), mask, file, line,
                 __builtin_ctz(mask & b.exited_lanes[t->warp]));
        block_fault(t, m);
    }
    auto &pend = b.pending[t->warp];
    Coll *c = nullptr;
    for (Coll *p : pend) {
        if (!(p->mask & mask)) continue;
        if (p->mask != mask || p->op != op) {
            snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d meets %s(mask 0x%08x) at %s:%d of lanes 0x%08x", op_name(op), mask,
                     file, line, op_name(p->op), p->mask, p->file, p->line, p->arrived);
            block_fault(t, m);
        }
        if (p->arrived >> t->lane & 1u) {
            snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d: lane %d arrives twice", op_name(op), mask, file, line, t->lane);
            block_fault(t, m);
        }
        c = p;
    }
    if (!c) {
        c = new Coll();
        c->op = op, c->mask = mask, c->line = line, c->file = file;
        pend.push_back(c);
    }
    t->coll = c;
    return c;
}

// Completes collective c when its last lane has arrived: results computed, waiting lanes
// released, c taken off the warp's list (freed by the last lane to read it: here, the caller).
bool complete_if_full(EThread *t, Coll *c) {
    Block &b = *t_block;
    c->arrived |= 1u << t->lane;
    if (c->arrived != c->mask) {
        t->st = T_WARP;
        park(t);
        return false;
    }
    auto &pend = b.pending[t->warp];
    pend.erase(std::find(pend.begin(), pend.end(), c));
    for (int l = 0; l < 32; l++) {
        if (!(c->mask >> l & 1u)) continue;
        EThread *o = &b.th[t->warp * 32 + l];
        if (o != t) make_ready(&b, o);
    }
    return true;
}

// A segmentation fault inside a kernel (an illegal address: freed or unmapped memory) names the
// kernel, block and thread before the process dies as it would have (the default action).
// (Under AddressSanitizer, which reports these itself with the access and the allocation: none.)
#if !EMU_ASAN
void on_segv(int sig) {
    const Block *b = t_block;
    const EThread *t = t_thread;
    if (b) {
        char m[400];
        const int n = snprintf(m, sizeof m, "cudaemu: %s: %s (an illegal address: freed, unmapped or foreign memory)\n",
                               where(*b, t).s, sig == SIGBUS ? "bus error" : "segmentation fault");
        if (write(2, m, n > 0 ? (size_t)n : 0) < 0) {
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

struct SegvHandler {
    SegvHandler() {
        signal(SIGSEGV, on_segv);
        signal(SIGBUS, on_segv);
    }
} g_segv;
#endif

}  // namespace

int bar_sync(int op, int pred, int line, const char *file) {
    EThread *t = running("__syncthreads", line, file);
    Block &b = *t_block;
    char m[240];
    if (b.exited) {
        for (auto &o : b.th)
            if (o.st == T_DONE) {
                snprintf(m, sizeof m, "__syncthreads at %s:%d: thread (%u,%u,%u) of the block has exited and never reaches it",
                         file, line, o.tid.x, o.tid.y, o.tid.z);
                block_fault(t, m);
            }
    }
    if (b.bar_arrived == 0) {
        b.bar_op = op;
        b.bar_acc = op == 2 ? 1 : 0;
        b.bar_first = t;
    } else {
        const EThread *first = b.bar_first;
        if (first->bar_line != line || strcmp(first->bar_file, file) || b.bar_op != op) {
            snprintf(m, sizeof m, "__syncthreads at %s:%d meets thread (%u,%u,%u) waiting at a different barrier %s:%d", file,
                     line, first->tid.x, first->tid.y, first->tid.z, first->bar_file, first->bar_line);
            block_fault(t, m);
        }
    }
    t->bar_line = line, t->bar_file = file;
    if (op == 1) b.bar_acc |= pred;
    else if (op == 2) b.bar_acc &= pred;
    else if (op == 3) b.bar_acc += pred;
    if (++b.bar_arrived < b.nthreads) {
        t->st = T_BAR;
        park(t);
        return t->bar_result;
    }
    const int result = b.bar_acc;
    b.bar_arrived = 0;
    for (auto &o : b.th)
        if (o.st == T_BAR) o.bar_result = result, make_ready(&b, &o);
    // The last to arrive yields too, so that who runs first after a barrier is random.
    make_ready(&b, t);
    park(t);
    return result;
}

void warp_sync(unsigned mask, int line, const char *file) {
    EThread *t = running("__syncwarp", line, file);
    Coll *c = join(t, C_SYNC, mask, line, file);
    if (complete_if_full(t, c)) {
        delete c;
        make_ready(t_block, t);
        park(t);
    }
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t in, int arg, int width, int line, const char *file) {
    EThread *t = running(op_name(op), line, file);
    if (width < 1 || width > 32 || (width & (width - 1))) {
        char m[160];
        snprintf(m, sizeof m, "%s at %s:%d: width %d is not a power of 2 in 1..32", op_name(op), file, line, width);
        block_fault(t, m);
    }
    Coll *c = join(t, op, mask, line, file);
    c->in[t->lane] = in;
    c->arg[t->lane] = arg;
    c->width = width;
    if (!complete_if_full(t, c)) return t->out;
    // Every lane's result (PTX ISA shfl.sync: a source lane outside the segment or the mask
    // returns the lane's own value for up/down; idx/xor wrap within the segment).
    Block &b = *t_block;
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        if (c->mask >> l & 1u && c->in[l]) ballot |= 1u << l;
    for (int l = 0; l < 32; l++) {
        if (!(c->mask >> l & 1u)) continue;
        const int seg = l & ~(width - 1), a = c->arg[l];
        int src = l;
        uint64_t r = 0;
        switch (op) {
        case W_SHFL: src = seg + (a & (width - 1)); break;
        case W_SHFL_XOR: src = l ^ a; if (src >= seg + width || src < seg) src = l; break;
        case W_SHFL_UP: src = l - a; if (src < seg) src = l; break;
        case W_SHFL_DOWN: src = l + a; if (src >= seg + width) src = l; break;
        default: break;
        }
        if (op <= W_SHFL_DOWN) {
            if (!(c->mask >> src & 1u)) {
                char m[200];
                snprintf(m, sizeof m, "%s(mask 0x%08x) at %s:%d: lane %d reads lane %d, which is not in the mask", op_name(op),
                         c->mask, c->file, c->line, l, src);
                block_fault(&b.th[t->warp * 32 + l], m);
            }
            r = c->in[src];
        } else if (op == W_BALLOT) {
            r = ballot;
        } else if (op == W_ANY) {
            r = ballot != 0;
        } else {
            r = ballot == c->mask;
        }
        b.th[t->warp * 32 + l].out = r;
    }
    const uint64_t mine = t->out;
    delete c;
    make_ready(&b, t);
    park(t);
    return mine;
}

// mma.m16n8k16 .bf16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"): groupID g = lane >> 2, t = lane % 4.  A (16 x 16, row): reg0 = A[g][2t..2t+1], reg1 =
// A[g+8][2t..], reg2 = A[g][2t+8..], reg3 = A[g+8][2t+8..] (low half first).  B (16 x 8, col):
// reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g].  C, D (16 x 8 f32): c0, c1 = row g, columns 2t,
// 2t+1; c2, c3 = row g+8.  D = C + A B: every bf16 product is exact in fp32; the sum is taken in
// k order with fp32 rounding (the tensor core's own order and rounding are the hardware's).
void mma_m16n8k16_bf16(float (&cf)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                       int line, const char *file) {
    EThread *t = running("mma.sync", line, file);
    Coll *c = join(t, C_MMA, 0xffffffffu, line, file);
    const int L = t->lane;
    c->fa[L][0] = a0, c->fa[L][1] = a1, c->fa[L][2] = a2, c->fa[L][3] = a3;
    c->fb[L][0] = b0, c->fb[L][1] = b1;
    for (int e = 0; e < 4; e++) c->fc[L][e] = cf[e];
    if (!complete_if_full(t, c)) {  // the last lane to arrive wrote every lane's D
        for (int e = 0; e < 4; e++) cf[e] = t->coll_out[e];
        return;
    }
    auto bf = [](uint32_t w, int hi) {
        const uint32_t u = (hi ? w & 0xffff0000u : w << 16);
        float f;
        memcpy(&f, &u, 4);
        return f;
    };
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, q = l & 3;
        for (int h = 0; h < 2; h++) {
            A[g][2 * q + h] = bf(c->fa[l][0], h);
            A[g + 8][2 * q + h] = bf(c->fa[l][1], h);
            A[g][2 * q + 8 + h] = bf(c->fa[l][2], h);
            A[g + 8][2 * q + 8 + h] = bf(c->fa[l][3], h);
            B[2 * q + h][g] = bf(c->fb[l][0], h);
            B[2 * q + 8 + h][g] = bf(c->fb[l][1], h);
            C[g][2 * q + h] = c->fc[l][h];
            C[g + 8][2 * q + h] = c->fc[l][2 + h];
        }
    }
    Block &b = *t_block;
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, q = l & 3;
        float *o = b.th[t->warp * 32 + l].coll_out;
        for (int e = 0; e < 4; e++) {
            const int row = g + (e >= 2 ? 8 : 0), col = 2 * q + (e & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; k++) acc = acc + A[row][k] * B[k][col];
            o[e] = acc;
        }
    }
    for (int e = 0; e < 4; e++) cf[e] = t->coll_out[e];
    delete c;
    make_ready(&b, t);
    park(t);
}

void trap(const char *why, int line, const char *file) {
    EThread *t = running(why, line, file);
    char m[200];
    snprintf(m, sizeof m, "%s at %s:%d (an sm_90a-only path, or a kernel's own trap: only a real GPU runs the former)", why,
             file, line);
    block_fault(t, m);
}

void *shared_static(const void *site, size_t bytes, size_t align) {
    Block &b = *t_block;
    auto it = b.statics.find(site);
    if (it != b.statics.end()) return it->second;
    b.static_bytes += bytes;
    if (b.static_bytes > 48 * 1024 || b.static_bytes + b.dyn_bytes > b.smem_limit) {
        char m[200];
        snprintf(m, sizeof m, "shared memory: %zu B static + %zu B dynamic, over the limit (48 KiB static, %zu B in all)",
                 b.static_bytes, b.dyn_bytes, b.smem_limit);
        block_fault(t_thread, m);
    }
    void *p = nullptr;
    if (posix_memalign(&p, align < 16 ? 16 : align, bytes ? bytes : 1)) abort();
    memset(p, b.poison, bytes);
    b.statics[site] = p;
    return p;
}

void *shared_dynamic() { return t_block->dyn; }

// Runs a whole launch (runtime.cpp calls it from the executor): blocks in a seeded random order.
// Returns false when a block faulted (reported; the rest of the launch is not run).
bool run_grid(const char *kernel, dim3 grid, dim3 block, size_t smem, size_t smem_limit, unsigned char poison,
              const std::function<void()> &body) {
    const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
    const int nt = (int)(block.x * block.y * block.z);
    std::vector<unsigned long long> order(nb);
    for (unsigned long long i = 0; i < nb; i++) order[i] = i;
    for (unsigned long long i = nb; i > 1; i--) std::swap(order[i - 1], order[rng() % i]);
    for (unsigned long long o : order) {
        Block b;
        b.kernel = kernel;
        b.bid = uint3{(unsigned)(o % grid.x), (unsigned)(o / grid.x % grid.y), (unsigned)(o / ((unsigned long long)grid.x * grid.y))};
        b.bdim = block, b.gdim = grid;
        b.nthreads = nt;
        b.th.resize(nt);
        b.pending.resize((nt + 31) / 32);
        b.exited_lanes.assign((nt + 31) / 32, 0u);
        b.smem_limit = smem_limit;
        b.dyn_bytes = smem;
        b.poison = poison;
        b.body = &body;
        b.rs = rng() | 1;
        if (smem) {
            if (posix_memalign(&b.dyn, 128, smem)) abort();
            memset(b.dyn, poison, smem);
        }
        for (int i = 0; i < nt; i++) {
            EThread &t = b.th[i];
            t.tid = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y), (unsigned)(i / (block.x * block.y))};
            t.lane = i % 32, t.warp = i / 32;
            start_fiber(&t, stack_get(i));
            b.ready.push_back(i);
        }
        Block *saved = t_block;
        BlockCtx *saved_ctx = t_blk;
        t_block = &b;
        t_blk = &b;
        schedule(b);
        t_block = saved;
        t_blk = saved_ctx;
        for (auto &w : b.pending)
            for (Coll *c : w) delete c;
        for (auto &s : b.statics) free(s.second);
        free(b.dyn);
        if (b.failed) return false;
    }
    return true;
}

}  // namespace cudaemu
