// nccl.cpp of the emulated CUDA device (tests/cudaemu/README.md): NCCL over the emulated devices
// of one process (include/nccl.h), for kernels/run/comm_nccl.cu compiled as C++ (make test-emu).
// Written from the NCCL User Guide; not NCCL's code.
//
// A clique (ncclCommInitAll) numbers each rank's collective calls: the k-th call of every rank is
// one collective.  Each call checks its arguments (as NCCL does at the call, pointers included,
// as with NCCL_CHECK_POINTERS=1), files its part under the clique's mutex, and queues the part on
// its stream as part `rank` of the collective's gang (cudaemu::gang_new / enqueue_gang): when
// every rank's part is at the head of its stream, the gang's run performs the whole collective
// at once (every rank's send buffer read, every rank's receive buffer written), then every part
// completes.  Ranks that disagree on the k-th collective (kind, count, type, op, root) are a
// fault, reported when it runs; the data is then not moved, and the rank that found the mismatch
// gets ncclInvalidUsage from its call.
//
// Reductions combine the ranks in rank order, ((r0 op r1) op r2) ..., the same for every element;
// the real NCCL's order depends on the algorithm (ring, tree) and the chunk, so floating-point
// sums may differ from the GPU's in the last bits (comm_nccl.cu sums float64 on the host for this
// reason).  Integer sums and products wrap, as the GPU's integer arithmetic does.
#include <nccl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "emu.h"

namespace {

enum Kind { ALLREDUCE = 0, BROADCAST = 1, ALLGATHER = 2 };
const char *const KIND_NAME[] = {"ncclAllReduce", "ncclBroadcast", "ncclAllGather"};

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

const char *type_name(ncclDataType_t t) {
    static const char *const names[] = {"ncclInt8",    "ncclUint8",   "ncclInt32",   "ncclUint32",
                                        "ncclInt64",   "ncclUint64",  "ncclFloat16", "ncclFloat32",
                                        "ncclFloat64", "ncclBfloat16"};
    return (int)t >= 0 && t < ncclNumTypes ? names[t] : "?";
}

const char *op_name(ncclRedOp_t op) {
    static const char *const names[] = {"ncclSum", "ncclProd", "ncclMax", "ncclMin", "ncclAvg"};
    return (int)op >= 0 && op < ncclNumOps ? names[op] : "?";
}

// What every rank must agree on for one collective.  op: allreduce only (ncclSum otherwise);
// root: broadcast only (-1 otherwise).
struct Desc {
    Kind kind;
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t op;
    int root;
};

std::string describe(const Desc &d) {
    char b[160];
    if (d.kind == ALLREDUCE)
        snprintf(b, sizeof b, "%s of %zu x %s (%s)", KIND_NAME[d.kind], d.count, type_name(d.type), op_name(d.op));
    else if (d.kind == BROADCAST)
        snprintf(b, sizeof b, "%s of %zu x %s from root %d", KIND_NAME[d.kind], d.count, type_name(d.type), d.root);
    else
        snprintf(b, sizeof b, "%s of %zu x %s per rank", KIND_NAME[d.kind], d.count, type_name(d.type));
    return b;
}

// The fields in which a and b differ ("" when none), e.g. "count, root".
std::string differences(const Desc &a, const Desc &b) {
    std::string s;
    auto add = [&](bool differ, const char *what) {
        if (!differ) return;
        if (!s.empty()) s += ", ";
        s += what;
    };
    add(a.kind != b.kind, "kind");
    add(a.count != b.count, "count");
    add(a.type != b.type, "type");
    add(a.op != b.op, "op");
    add(a.root != b.root, "root");
    return s;
}

// One rank's buffers for its part (sendbuff NULL where it is not read: a broadcast's non-roots).
struct Part {
    const void *send = nullptr;
    void *recv = nullptr;
};

// One collective: the seq-th call of every rank of a clique.
struct Coll {
    uint64_t seq = 0;
    int n = 0;
    Desc desc{};    // as the first rank to call gave it
    int first = 0;  // that rank
    std::vector<Part> parts;
    std::vector<char> filed;
    int nfiled = 0;
    std::string bad;  // the mismatch, if the ranks disagreed: reported when it runs
    // Until every rank has filed (then dropped: the gang's run holds the Coll, not the reverse).
    std::shared_ptr<cudaemu::Gang> gang;
};

struct Clique {
    int n = 0;
    std::vector<int> devices;
    std::mutex mu;  // the fields below; held only for bookkeeping, never while waiting
    std::vector<uint64_t> issued;                     // (n) collectives each rank has called
    std::vector<char> gone;                           // (n) ranks destroyed
    std::map<uint64_t, std::shared_ptr<Coll>> open;  // by seq: not yet called by every rank
};

// The host thread's last error (ncclGetLastError), recorded and, with NCCL_DEBUG set, printed.
thread_local std::string last_error;

ncclResult_t fail(ncclResult_t r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t fail(ncclResult_t r, const char *fmt, ...) {
    char b[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    last_error = b;
    const char *dbg = getenv("NCCL_DEBUG");
    if (dbg && *dbg && strcmp(dbg, "VERSION") != 0) fprintf(stderr, "cudaemu: NCCL WARN %s\n", b);
    return r;
}

// Live communicators: a call with anything else (NULL, destroyed) is an invalid argument.
std::mutex live_mu;
std::set<const ncclComm *> live;

bool is_live(const ncclComm *c) {
    std::lock_guard<std::mutex> lk(live_mu);
    return c && live.count(c);
}

// Whether [p, p + bytes) lies in one allocation of device `dev` (empty ranges are never touched).
bool on_device(const void *p, size_t bytes, int dev) {
    if (bytes == 0) return true;
    int d = -1;
    return cudaemu::device_range(p, bytes, &d) && d == dev;
}

bool overlap(const void *a, size_t na, const void *b, size_t nb) {
    uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
    return na && nb && x < y + nb && y < x + na;
}

// a op b for one element; integer sums and products wrap (computed unsigned: no overflow).
template <class T>
T combine(T a, T b, ncclRedOp_t op) {
    switch (op) {
    case ncclSum:
        if constexpr (std::is_integral<T>::value) return (T)((uint64_t)a + (uint64_t)b);
        else return a + b;
    case ncclProd:
        if constexpr (std::is_integral<T>::value) return (T)((uint64_t)a * (uint64_t)b);
        else return a * b;
    case ncclMax: return a < b ? b : a;
    case ncclMin: return b < a ? b : a;
    default: return a;  // refused at the call
    }
}

// acc[i] = acc[i] op in[i] for count elements of T (bytes: device buffers need not be T-aligned).
template <class T>
void reduce_as(unsigned char *acc, const unsigned char *in, size_t count, ncclRedOp_t op) {
    for (size_t i = 0; i < count; i++) {
        T a, b;
        memcpy(&a, acc + i * sizeof(T), sizeof(T));
        memcpy(&b, in + i * sizeof(T), sizeof(T));
        a = combine(a, b, op);
        memcpy(acc + i * sizeof(T), &a, sizeof(T));
    }
}

void reduce(ncclDataType_t t, unsigned char *acc, const void *in, size_t count, ncclRedOp_t op) {
    const unsigned char *p = static_cast<const unsigned char *>(in);
    switch (t) {
    case ncclInt8: reduce_as<int8_t>(acc, p, count, op); break;
    case ncclUint8: reduce_as<uint8_t>(acc, p, count, op); break;
    case ncclInt32: reduce_as<int32_t>(acc, p, count, op); break;
    case ncclUint32: reduce_as<uint32_t>(acc, p, count, op); break;
    case ncclInt64: reduce_as<int64_t>(acc, p, count, op); break;
    case ncclUint64: reduce_as<uint64_t>(acc, p, count, op); break;
    case ncclFloat32: reduce_as<float>(acc, p, count, op); break;
    case ncclFloat64: reduce_as<double>(acc, p, count, op); break;
    default: break;  // 16-bit floats: refused at the call
    }
}

// The gang's run: the whole collective, every rank's part at the head of its stream.  Every
// input is read (copied) before any output is written, so in-place buffers need no care.
void perform(const Coll &c) {
    if (!c.bad.empty()) {
        cudaemu::fault(cudaErrorLaunchFailure, "%s", c.bad.c_str());
        return;
    }
    const Desc &d = c.desc;
    const size_t bytes = d.count * type_size(d.type);
    if (!bytes) return;
    const int n = c.n;
    switch (d.kind) {
    case ALLREDUCE: {
        const unsigned char *s0 = static_cast<const unsigned char *>(c.parts[0].send);
        std::vector<unsigned char> acc(s0, s0 + bytes);
        for (int r = 1; r < n; r++) reduce(d.type, acc.data(), c.parts[r].send, d.count, d.op);
        for (int r = 0; r < n; r++) memcpy(c.parts[r].recv, acc.data(), bytes);
        break;
    }
    case BROADCAST: {
        const unsigned char *s = static_cast<const unsigned char *>(c.parts[d.root].send);
        std::vector<unsigned char> v(s, s + bytes);
        for (int r = 0; r < n; r++) memcpy(c.parts[r].recv, v.data(), bytes);
        break;
    }
    case ALLGATHER: {  // rank r's sendcount elements at offset r * sendcount of every recvbuff
        std::vector<unsigned char> all((size_t)n * bytes);
        for (int r = 0; r < n; r++) memcpy(all.data() + (size_t)r * bytes, c.parts[r].send, bytes);
        for (int r = 0; r < n; r++) memcpy(c.parts[r].recv, all.data(), all.size());
        break;
    }
    }
}

}  // namespace

// A communicator: rank `rank` of its clique, on device `device`.
struct ncclComm {
    std::shared_ptr<Clique> clique;
    int rank;
    int device;
};

namespace {

// One rank's call of a collective: checks, files the part, queues it.
ncclResult_t collective(Kind kind, const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    const char *fn = KIND_NAME[kind];
    if (!is_live(comm)) return fail(ncclInvalidArgument, "%s: comm %p is not a communicator (NULL or destroyed)", fn, (void *)comm);
    if ((int)type < 0 || type >= ncclNumTypes)
        return fail(ncclInvalidArgument, "%s: datatype %d is not an ncclDataType_t", fn, (int)type);
    Clique &q = *comm->clique;
    const int n = q.n, rank = comm->rank, dev = comm->device;
    if (kind == ALLREDUCE) {
        if ((int)op < 0 || op >= ncclNumOps) return fail(ncclInvalidArgument, "%s: op %d is not an ncclRedOp_t", fn, (int)op);
        if (op == ncclAvg) return fail(ncclInvalidArgument, "%s: ncclAvg is not emulated", fn);
        if (type == ncclFloat16 || type == ncclBfloat16)
            return fail(ncclInvalidArgument, "%s: reductions of %s are not emulated", fn, type_name(type));
    } else {
        op = ncclSum;
    }
    if (kind == BROADCAST) {
        if (root < 0 || root >= n) return fail(ncclInvalidArgument, "%s: root %d is not a rank of the %d", fn, root, n);
    } else {
        root = -1;
    }
    if (stream && cudaemu::stream_device(stream) != dev)
        return fail(ncclInvalidUsage, "%s: the stream is on device %d, rank %d's communicator on device %d", fn,
                    cudaemu::stream_device(stream), rank, dev);
    const size_t bytes = count * type_size(type), recv_bytes = kind == ALLGATHER ? bytes * n : bytes;
    const bool reads_send = kind != BROADCAST || rank == root;  // a broadcast's non-roots ignore sendbuff
    if (reads_send && !on_device(send, bytes, dev))
        return fail(ncclInvalidArgument, "%s: sendbuff [%p, +%zu bytes) is not in one allocation of rank %d's device %d",
                    fn, send, bytes, rank, dev);
    if (!on_device(recv, recv_bytes, dev))
        return fail(ncclInvalidArgument, "%s: recvbuff [%p, +%zu bytes) is not in one allocation of rank %d's device %d",
                    fn, recv, recv_bytes, rank, dev);
    if (reads_send) {
        // In place (the User Guide, "In-place Operations"): sendbuff == recvbuff, or for the
        // all-gather sendbuff == recvbuff + rank * sendcount.  Other overlaps are undefined.
        const void *in_place = kind == ALLGATHER ? static_cast<unsigned char *>(recv) + (size_t)rank * bytes : recv;
        if (send != in_place && overlap(send, bytes, recv, recv_bytes))
            return fail(ncclInvalidArgument, "%s: sendbuff %p overlaps recvbuff %p without being in place (rank %d)", fn,
                        send, recv, rank);
    }
    const Desc d{kind, count, type, op, root};
    std::shared_ptr<cudaemu::Gang> gang;
    std::string mismatch;
    {
        std::lock_guard<std::mutex> lk(q.mu);
        for (int r = 0; r < n; r++)
            if (q.gone[r])
                return fail(ncclInvalidUsage, "%s: rank %d of the clique has been destroyed: no collective can complete",
                            fn, r);
        const uint64_t seq = q.issued[rank]++;
        std::shared_ptr<Coll> c;
        auto it = q.open.find(seq);
        if (it == q.open.end()) {
            c = std::make_shared<Coll>();
            c->seq = seq, c->n = n, c->desc = d, c->first = rank;
            c->parts.resize(n);
            c->filed.assign(n, 0);
            c->gang = cudaemu::gang_new(n, fn, [c] { perform(*c); });
            q.open.emplace(seq, c);
        } else {
            c = it->second;
            const std::string diff = differences(c->desc, d);
            if (!diff.empty()) {
                char b[512];
                snprintf(b, sizeof b, "%s: collective #%llu of the clique of %d: rank %d called %s, rank %d called %s (%s differ)",
                         fn, (unsigned long long)seq, n, c->first, describe(c->desc).c_str(), rank, describe(d).c_str(),
                         diff.c_str());
                mismatch = b;
                if (c->bad.empty()) c->bad = mismatch;
            }
        }
        c->parts[rank].send = reads_send ? send : nullptr;
        c->parts[rank].recv = recv;
        c->filed[rank] = 1;
        gang = c->gang;
        if (++c->nfiled == n) {
            c->gang.reset();
            q.open.erase(seq);
        }
    }
    // The NULL stream is the legacy stream of the communicator's device (NCCL sets its device
    // around the launch), whichever device the calling thread has current.
    const int prev = cudaemu::current_device();
    if (!stream && prev != dev) cudaSetDevice(dev);
    const cudaError_t e = cudaemu::enqueue_gang(stream, gang, rank);
    if (!stream && prev != dev) cudaSetDevice(prev);
    if (e != cudaSuccess)
        return fail(ncclUnhandledCudaError, "%s: queuing rank %d's part: %s", fn, rank, cudaGetErrorString(e));
    if (!mismatch.empty()) return fail(ncclInvalidUsage, "%s", mismatch.c_str());
    return ncclSuccess;
}

}  // namespace

extern "C" {

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=WARN for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=WARN for details)";
    case ncclInternalError: return "internal error (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t) { return last_error.c_str(); }

ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitAll: comm is NULL");
    if (ndev < 1) return fail(ncclInvalidArgument, "ncclCommInitAll: ndev %d", ndev);
    int visible = 0;
    const cudaError_t e = cudaGetDeviceCount(&visible);
    if (e != cudaSuccess) return fail(ncclUnhandledCudaError, "ncclCommInitAll: cudaGetDeviceCount: %s", cudaGetErrorString(e));
    std::vector<int> devs(ndev);
    for (int r = 0; r < ndev; r++) {
        devs[r] = devlist ? devlist[r] : r;
        if (devs[r] < 0 || devs[r] >= visible)
            return fail(ncclInvalidArgument, "ncclCommInitAll: device %d (rank %d) is not one of the %d devices", devs[r],
                        r, visible);
        for (int s = 0; s < r; s++)
            if (devs[s] == devs[r])
                return fail(ncclInvalidUsage, "ncclCommInitAll: ranks %d and %d both on device %d (one rank per device)", s,
                            r, devs[r]);
    }
    auto q = std::make_shared<Clique>();
    q->n = ndev;
    q->devices = devs;
    q->issued.assign(ndev, 0);
    q->gone.assign(ndev, 0);
    std::lock_guard<std::mutex> lk(live_mu);
    for (int r = 0; r < ndev; r++) {
        comm[r] = new ncclComm{q, r, devs[r]};
        live.insert(comm[r]);
    }
    return ncclSuccess;
}

// Destroying a rank while a collective of its clique is still open (called by some ranks, not
// all) is reported as a fault: no rank can call it any more, so its parts would never complete
// (on the GPU: a hang).  Its own queued parts of complete collectives stay valid (a part needs
// only the Coll, not the communicator).
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    {
        std::lock_guard<std::mutex> lk(live_mu);
        if (!comm || !live.erase(comm)) return fail(ncclInvalidArgument, "ncclCommDestroy: %p is not a communicator", (void *)comm);
    }
    std::string stranded;
    {
        Clique &q = *comm->clique;
        std::lock_guard<std::mutex> lk(q.mu);
        q.gone[comm->rank] = 1;
        for (auto &kv : q.open) {
            Coll &c = *kv.second;
            if (stranded.empty()) {
                char b[400];
                snprintf(b, sizeof b, "ncclCommDestroy: rank %d destroyed while collective #%llu (%s) has been called by %d of the %d ranks: it can never complete",
                         comm->rank, (unsigned long long)c.seq, describe(c.desc).c_str(), c.nfiled, c.n);
                stranded = b;
            }
            c.gang.reset();  // no Coll <-> gang cycle left behind
        }
    }
    if (!stranded.empty()) cudaemu::fault(cudaErrorLaunchFailure, "%s", stranded.c_str());
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (!is_live(comm) || !count) return fail(ncclInvalidArgument, "ncclCommCount: comm %p, count %p", (void *)comm, (void *)count);
    *count = comm->clique->n;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
    if (!is_live(comm) || !device)
        return fail(ncclInvalidArgument, "ncclCommCuDevice: comm %p, device %p", (void *)comm, (void *)device);
    *device = comm->device;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!is_live(comm) || !rank) return fail(ncclInvalidArgument, "ncclCommUserRank: comm %p, rank %p", (void *)comm, (void *)rank);
    *rank = comm->rank;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    return collective(ALLREDUCE, sendbuff, recvbuff, count, datatype, op, -1, comm, stream);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    return collective(BROADCAST, sendbuff, recvbuff, count, datatype, ncclSum, root, comm, stream);
}

ncclResult_t ncclBcast(void *buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                       cudaStream_t stream) {
    return collective(BROADCAST, buff, buff, count, datatype, ncclSum, root, comm, stream);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    return collective(ALLGATHER, sendbuff, recvbuff, sendcount, datatype, ncclSum, -1, comm, stream);
}

ncclResult_t ncclGroupStart(void) { return ncclSuccess; }
ncclResult_t ncclGroupEnd(void) { return ncclSuccess; }

}  // extern "C"
