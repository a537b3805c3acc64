// comm_nccl.cu: the NCCL communicator of comm.h.  One process, one host thread per rank, rank r
// on CUDA device devices[r]; the communicators come from ncclCommInitAll (no external
// bootstrap).  Host arrays are staged through device buffers on the rank's stream, in chunks of
// CHUNK bytes, so any size goes through a fixed amount of device memory.
//
// Determinism: the float64 sum is an all-gather followed by qk_comm_sum_ranks_f64 on the host
// (rank order 0..size-1, as the CPU communicator), not ncclAllReduce, whose summation order
// depends on the algorithm NCCL picks: the same inputs give bit-identical sums on every run and
// with either communicator.  Integer sums are exact in any order and use ncclAllReduce.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_try.h"
extern "C" {
#include "run/comm.h"
}

// A failed NCCL call: the call, the sizes it was given (printf-style), NCCL's reason.
#define NCCL_TRY(call, ...) QK_TRY_(#call, call, r_ != ncclSuccess, ncclGetErrorString(r_), __VA_ARGS__)

static const size_t CHUNK = (size_t)8 << 20;  // bytes per staged piece

typedef struct {
    ncclComm_t comm;
    int rank, size, device;
    cudaStream_t stream;
    uint8_t *dsend;  // (CHUNK) device staging: this rank's piece
    uint8_t *drecv;  // (size * CHUNK) device staging: every rank's piece
    uint8_t *hrecv;  // (size * CHUNK) host copy of drecv
} Nccl;

static Nccl *ctx_of(const QkComm *c) { return (Nccl *)c->ctx; }
static int nccl_rank(const QkComm *c) { return ctx_of(c)->rank; }
static int nccl_size(const QkComm *c) { return ctx_of(c)->size; }

static int sync_stream(Nccl *k) {
    CUDA_TRY(cudaStreamSynchronize(k->stream));
    return 0;
}

static int nccl_allreduce_i64(QkComm *c, int64_t *x, size_t n) {
    Nccl *k = ctx_of(c);
    CUDA_TRY(cudaSetDevice(k->device));
    const size_t per = CHUNK / sizeof(int64_t);
    for (size_t off = 0; off < n; off += per) {
        size_t m = n - off < per ? n - off : per;
        CUDA_TRY(cudaMemcpyAsync(k->dsend, x + off, m * sizeof(int64_t), cudaMemcpyHostToDevice, k->stream));
        NCCL_TRY(ncclAllReduce(k->dsend, k->dsend, m, ncclInt64, ncclSum, k->comm, k->stream), "%zu int64 of %zu, rank %d of %d", m, n, k->rank, k->size);
        CUDA_TRY(cudaMemcpyAsync(x + off, k->dsend, m * sizeof(int64_t), cudaMemcpyDeviceToHost, k->stream));
        if (sync_stream(k)) return -1;
    }
    return 0;
}

static int nccl_allreduce_f64(QkComm *c, double *x, size_t n) {
    Nccl *k = ctx_of(c);
    CUDA_TRY(cudaSetDevice(k->device));
    const size_t per = CHUNK / sizeof(double);
    for (size_t off = 0; off < n; off += per) {
        size_t m = n - off < per ? n - off : per;
        CUDA_TRY(cudaMemcpyAsync(k->dsend, x + off, m * sizeof(double), cudaMemcpyHostToDevice, k->stream));
        NCCL_TRY(ncclAllGather(k->dsend, k->drecv, m, ncclDouble, k->comm, k->stream), "%zu doubles of %zu, rank %d of %d", m, n, k->rank, k->size);
        CUDA_TRY(cudaMemcpyAsync(k->hrecv, k->drecv, k->size * m * sizeof(double), cudaMemcpyDeviceToHost, k->stream));
        if (sync_stream(k)) return -1;
        qk_comm_sum_ranks_f64(x + off, (const double *)k->hrecv, m, m, k->size);
    }
    return 0;
}

static int nccl_bcast(QkComm *c, void *buf, size_t n, int root) {
    Nccl *k = ctx_of(c);
    if (root < 0 || root >= k->size) return qk_err("comm bcast: root %d is not a rank of %d", root, k->size);
    CUDA_TRY(cudaSetDevice(k->device));
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        if (k->rank == root)
            CUDA_TRY(cudaMemcpyAsync(k->dsend, (uint8_t *)buf + off, m, cudaMemcpyHostToDevice, k->stream));
        NCCL_TRY(ncclBroadcast(k->dsend, k->dsend, m, ncclChar, root, k->comm, k->stream), "%zu bytes from root %d, rank %d of %d", (size_t)m, root, k->rank, k->size);
        if (k->rank != root)
            CUDA_TRY(cudaMemcpyAsync((uint8_t *)buf + off, k->dsend, m, cudaMemcpyDeviceToHost, k->stream));
        if (sync_stream(k)) return -1;
    }
    return 0;
}

// Variable sizes: an all-gather of the lengths, then padded all-gathers of CHUNK-byte pieces.
static int nccl_allgatherv(QkComm *c, const void *buf, size_t len, void **out, size_t *lens) {
    Nccl *k = ctx_of(c);
    *out = NULL;
    CUDA_TRY(cudaSetDevice(k->device));
    uint64_t mine = len;
    CUDA_TRY(cudaMemcpyAsync(k->dsend, &mine, sizeof mine, cudaMemcpyHostToDevice, k->stream));
    NCCL_TRY(ncclAllGather(k->dsend, k->drecv, 1, ncclUint64, k->comm, k->stream), "1 uint64, rank %d of %d", k->rank, k->size);
    CUDA_TRY(cudaMemcpyAsync(k->hrecv, k->drecv, k->size * sizeof(uint64_t), cudaMemcpyDeviceToHost, k->stream));
    if (sync_stream(k)) return -1;
    size_t total = 0, longest = 0;
    size_t *first = (size_t *)qk_malloc(sizeof(size_t) * k->size);
    for (int r = 0; r < k->size; r++) {
        lens[r] = (size_t)((const uint64_t *)k->hrecv)[r];
        first[r] = total;
        total += lens[r];
        longest = lens[r] > longest ? lens[r] : longest;
    }
    uint8_t *o = (uint8_t *)qk_malloc(total + 1);
    int rc = 0;
    for (size_t off = 0; !rc && off < longest; off += CHUNK) {
        size_t m = longest - off < CHUNK ? longest - off : CHUNK;
        size_t have = len > off ? (len - off < m ? len - off : m) : 0;  // the rest of the piece is padding
        cudaError_t e = have ? cudaMemcpyAsync(k->dsend, (const uint8_t *)buf + off, have, cudaMemcpyHostToDevice, k->stream)
                             : cudaSuccess;
        ncclResult_t ne = e == cudaSuccess ? ncclAllGather(k->dsend, k->drecv, m, ncclChar, k->comm, k->stream) : ncclSuccess;
        if (e == cudaSuccess && ne == ncclSuccess)
            e = cudaMemcpyAsync(k->hrecv, k->drecv, k->size * m, cudaMemcpyDeviceToHost, k->stream);
        if (e == cudaSuccess && ne == ncclSuccess) e = cudaStreamSynchronize(k->stream);
        if (e != cudaSuccess) rc = qk_err("comm allgatherv: %s", cudaGetErrorString(e));
        else if (ne != ncclSuccess) rc = qk_err("comm allgatherv: ncclAllGather (%zu bytes per rank, rank %d of %d): %s", (size_t)m, k->rank, k->size, ncclGetErrorString(ne));
        for (int r = 0; !rc && r < k->size; r++) {
            size_t take = lens[r] > off ? (lens[r] - off < m ? lens[r] - off : m) : 0;
            if (take) memcpy(o + first[r] + off, k->hrecv + (size_t)r * m, take);
        }
    }
    free(first);
    if (rc) {
        free(o);
        return -1;
    }
    *out = o;
    return 0;
}

static int nccl_barrier(QkComm *c) {
    Nccl *k = ctx_of(c);
    CUDA_TRY(cudaSetDevice(k->device));
    NCCL_TRY(ncclAllReduce(k->dsend, k->dsend, 1, ncclInt64, ncclSum, k->comm, k->stream), "barrier, rank %d of %d", k->rank, k->size);
    return sync_stream(k);
}

static int nccl_bcast_device(QkComm *c, void *dev_buf, size_t n, int root) {
    Nccl *k = ctx_of(c);
    if (root < 0 || root >= k->size) return qk_err("comm bcast_device: root %d is not a rank of %d", root, k->size);
    CUDA_TRY(cudaSetDevice(k->device));
    CUDA_TRY(cudaDeviceSynchronize());  // the root's uploads (other streams) are complete
    NCCL_TRY(ncclBroadcast(dev_buf, dev_buf, n, ncclChar, root, k->comm, k->stream), "%zu bytes from root %d, rank %d of %d", n, root, k->rank, k->size);
    return sync_stream(k);
}

static void nccl_free(QkComm *c) {
    Nccl *k = ctx_of(c);
    if (k) {
        cudaSetDevice(k->device);
        if (k->comm) ncclCommDestroy(k->comm);
        if (k->stream) cudaStreamDestroy(k->stream);
        cudaFree(k->dsend);
        cudaFree(k->drecv);
        free(k->hrecv);
        free(k);
    }
    free(c);
}

// The stream and staging buffers of one rank, on its device.
static int rank_init(Nccl *k) {
    CUDA_TRY(cudaSetDevice(k->device));
    CUDA_TRY(cudaStreamCreate(&k->stream));  // a blocking stream: ordered after legacy-stream work
    CUDA_TRY(cudaMalloc((void **)&k->dsend, CHUNK));
    CUDA_TRY(cudaMalloc((void **)&k->drecv, CHUNK * k->size));
    k->hrecv = (uint8_t *)qk_malloc(CHUNK * k->size);
    return 0;
}

extern "C" int qk_comm_nccl_create_group(int n, const int *devices, QkComm **ranks) {
    int visible = 0;
    cudaError_t e = cudaGetDeviceCount(&visible);
    if (e != cudaSuccess) return qk_err("NCCL communicator: no usable CUDA device (%s)", cudaGetErrorString(e));
    if (n < 1) return qk_err("NCCL communicator: %d ranks", n);
    for (int r = 0; r < n; r++) {
        if (devices[r] < 0 || devices[r] >= visible)
            return qk_err("NCCL communicator: device %d is not one of the %d visible CUDA device(s)", devices[r], visible);
        for (int q = 0; q < r; q++)
            if (devices[q] == devices[r]) return qk_err("NCCL communicator: device %d listed twice (one rank per GPU)", devices[r]);
    }
    ncclComm_t *comms = (ncclComm_t *)qk_calloc(n, sizeof(ncclComm_t));
    ncclResult_t ne = ncclCommInitAll(comms, n, devices);
    if (ne != ncclSuccess) {
        free(comms);
        return qk_err("ncclCommInitAll over %d device(s): %s", n, ncclGetErrorString(ne));
    }
    int rc = 0;
    for (int r = 0; r < n; r++) {
        Nccl *k = (Nccl *)qk_calloc(1, sizeof(Nccl));
        k->comm = comms[r], k->rank = r, k->size = n, k->device = devices[r];
        QkComm *c = (QkComm *)qk_calloc(1, sizeof(QkComm));
        c->name = "nccl";
        c->ctx = k;
        c->rank = nccl_rank;
        c->size = nccl_size;
        c->allreduce_f64 = nccl_allreduce_f64;
        c->allreduce_i64 = nccl_allreduce_i64;
        c->bcast = nccl_bcast;
        c->allgatherv = nccl_allgatherv;
        c->barrier = nccl_barrier;
        c->bcast_device = nccl_bcast_device;
        c->free = nccl_free;
        ranks[r] = c;
        if (!rc && rank_init(k)) rc = -1;
    }
    free(comms);
    if (rc) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        qk_comm_free_group(ranks, n);
        return qk_err("NCCL communicator: %s", keep);
    }
    return 0;
}
