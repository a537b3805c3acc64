// nccl.h of the emulated CUDA device (tests/cudaemu/README.md): the NCCL API that
// kernels/run/comm_nccl.cu uses, for kernels/ compiled as C++ by the host compiler (make
// test-emu).  Written from the NCCL User Guide (API: communicators, collectives, group calls,
// types); names, values and semantics as documented there, implemented by tests/cudaemu/nccl.cpp
// over the emulated devices of one process (the single-process case, ncclCommInitAll; no
// bootstrap, no ncclCommInitRank).  Not part of the product.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>

// A communicator: one rank of a clique.
typedef struct ncclComm *ncclComm_t;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum {
    ncclInt8 = 0,
    ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclHalf = 6,
    ncclFloat32 = 7,
    ncclFloat = 7,
    ncclFloat64 = 8,
    ncclDouble = 8,
    ncclBfloat16 = 9,
    ncclNumTypes = 10
} ncclDataType_t;

// ncclAvg, and reductions of the 16-bit floating-point types, are refused by the emulator
// (ncclInvalidArgument, saying so); every type moves in broadcasts and all-gathers.
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

#ifdef __cplusplus
extern "C" {
#endif

const char *ncclGetErrorString(ncclResult_t result);
// The last error's explanation, of the calling host thread (comm is not used, as in several NCCL
// versions; with one host thread per rank it is that rank's).  With NCCL_DEBUG set (WARN, INFO,
// ...) errors are also printed on stderr, as NCCL does.
const char *ncclGetLastError(ncclComm_t comm);

// A clique of ndev communicators, rank r on device devlist[r] (devlist NULL: devices 0..ndev-1).
ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommCount(const ncclComm_t comm, int *count);
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank);

// The collectives: every rank of the clique calls each one, in the same order; the k-th call of
// every rank is one collective (a differing kind, count, type, op or root is a fault).  Queued
// on `stream` (NULL: the legacy default stream of the communicator's device); the data moves
// when every rank's part has reached the head of its stream.
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBcast(void *buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                       cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);

// Group calls: no-ops here.  Queuing a part never blocks the calling thread (the gang waits on
// the device side), so one thread may issue every rank's call with or without a group.
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);

#ifdef __cplusplus
}
#endif
