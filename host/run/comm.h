// comm.h: a communicator between the ranks of one multi-rank run (one host thread per rank), as
// a struct of function pointers like QkBackend: the run and the aggregate reduction call through
// it and never know whether CPU threads (comm_cpu.c) or NCCL over GPUs (kernels/run/comm_nccl.cu)
// move the bytes.
//
// Collectives: every rank of the group calls the same collectives in the same order (a rank that
// skips one leaves the others waiting).  Buffers are host memory, except bcast_device's.
// Reductions are deterministic: each element is summed in rank order 0..size-1 (starting from
// rank 0's value), so the same inputs give bit-identical results on every run and with either
// implementation.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct QkComm QkComm;
struct QkComm {
    const char *name;  // "cpu" or "nccl"
    void *ctx;         // implementation-private state
    int (*rank)(const QkComm *c);
    int (*size)(const QkComm *c);
    // x[n] summed over the ranks, in place on every rank.
    int (*allreduce_f64)(QkComm *c, double *x, size_t n);
    int (*allreduce_i64)(QkComm *c, int64_t *x, size_t n);
    // buf[n] bytes of rank `root` copied to every rank (n must be the same on every rank).
    int (*bcast)(QkComm *c, void *buf, size_t n, int root);
    // Every rank's `len` bytes (len may differ between ranks, 0 included), concatenated in rank
    // order: *out (malloc'd, free it; never NULL on success) and lens[size] the length from each.
    int (*allgatherv)(QkComm *c, const void *buf, size_t len, void **out, size_t *lens);
    int (*barrier)(QkComm *c);
    // Optional (NULL when the communicator moves host memory only): bcast of n bytes of device
    // memory on this rank's device (the NCCL communicator: GPU weights sent once from the root).
    int (*bcast_device)(QkComm *c, void *dev_buf, size_t n, int root);
    void (*free)(QkComm *c);
};

// n ranks as threads of this process: ranks[0..n-1], rank r to be used by one thread.  Free every
// rank with its free(); the group goes with the last.
int qk_comm_cpu_create_group(int n, QkComm **ranks);

// n ranks over NCCL (ncclCommInitAll, no external bootstrap), rank r on CUDA device devices[r]
// (distinct).  In a build without CUDA or NCCL, an error saying so.
int qk_comm_nccl_create_group(int n, const int *devices, QkComm **ranks);

// The reduction both implementations share: out[i] = g[0][i] + g[1][i] + ... + g[size-1][i],
// summed in rank order, where g[r] = gathered + r * stride.
void qk_comm_sum_ranks_f64(double *out, const double *gathered, size_t n, size_t stride, int size);
void qk_comm_sum_ranks_i64(int64_t *out, const int64_t *gathered, size_t n, size_t stride, int size);

// Frees ranks[0..n-1] (NULL entries skipped).
void qk_comm_free_group(QkComm **ranks, int n);
