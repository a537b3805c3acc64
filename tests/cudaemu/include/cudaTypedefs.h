// cudaTypedefs.h of the emulated CUDA device: the driver entry points' function types kernels/ names.
#pragma once
#include <cuda.h>

typedef CUresult (*PFN_cuTensorMapEncodeTiled_v12000)(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank,
                                                      void *addr, const cuuint64_t *dims, const cuuint64_t *strides,
                                                      const cuuint32_t *box, const cuuint32_t *elem_strides,
                                                      CUtensorMapInterleave il, CUtensorMapSwizzle sw,
                                                      CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob);
