// cublasLt.h of the emulated CUDA device (tests/cudaemu/README.md): the cuBLASLt API that
// kernels/ uses, for kernels/ compiled as C++ by the host compiler (make test-emu).  Written from
// the cuBLAS documentation ("Using the cuBLASLt API", "cuBLASLt Datatypes Reference", "cuBLASLt
// API Reference"); names and values as the real cublasLt.h, implemented by
// tests/cudaemu/cublas.cpp.  The types it shares with cuBLAS (status, operation, compute type)
// come from cublas_v2.h here (cublas_api.h in the real toolkit).  Not part of the product.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Handles and descriptors.  The descriptors are opaque (cublas.cpp); an algorithm is a value the
// caller keeps (as in the real header: 8 64-bit words).

typedef struct cublasLtContext *cublasLtHandle_t;
typedef struct cublasLtMatmulDescOpaque_t *cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque_t *cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque_t *cublasLtMatmulPreference_t;

typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;

// One answer of cublasLtMatmulAlgoGetHeuristic; its other fields are valid when state is
// CUBLAS_STATUS_SUCCESS.
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

// ---------------------------------------------------------------------------------------------
// Enumerations (values as the real cublasLt.h)

// Memory order of a layout.  Only CUBLASLT_ORDER_COL is emulated.
typedef enum {
    CUBLASLT_ORDER_COL = 0,
    CUBLASLT_ORDER_ROW = 1,
    CUBLASLT_ORDER_COL32 = 2,
    CUBLASLT_ORDER_COL4_4R2_8C = 3,
    CUBLASLT_ORDER_COL32_2R_4R4 = 4,
} cublasLtOrder_t;

typedef enum {
    CUBLASLT_POINTER_MODE_HOST = 0,
    CUBLASLT_POINTER_MODE_DEVICE = 1,
    CUBLASLT_POINTER_MODE_DEVICE_VECTOR = 2,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO = 3,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST = 4,
} cublasLtPointerMode_t;

// Layout attributes; the type of each value in brackets (cublasLtMatrixLayoutSetAttribute checks
// sizeInBytes against it).
typedef enum {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,                   // [uint32_t] cudaDataType
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,                  // [int32_t] cublasLtOrder_t, default COL
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,                   // [uint64_t]
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,                   // [uint64_t]
    CUBLASLT_MATRIX_LAYOUT_LD = 4,                     // [int64_t] column stride in elements, >= rows
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,            // [int32_t] default 1
    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,   // [int64_t] elements to the next matrix, default 0
    CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET = 7,           // [int64_t] planar complex only, default 0
    CUBLASLT_MATRIX_LAYOUT_BATCH_MODE = 8,             // [uint32_t] 0: strided
} cublasLtMatrixLayoutAttribute_t;

// Matmul descriptor attributes, [type] as above.
typedef enum {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,                // [int32_t] cublasComputeType_t
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,                  // [int32_t] cudaDataType of alpha, beta
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,                // [int32_t] cublasLtPointerMode_t, default HOST
    CUBLASLT_MATMUL_DESC_TRANSA = 3,                      // [int32_t] cublasOperation_t, default N
    CUBLASLT_MATMUL_DESC_TRANSB = 4,                      // [int32_t]
    CUBLASLT_MATMUL_DESC_TRANSC = 5,                      // [int32_t] only CUBLAS_OP_N
    CUBLASLT_MATMUL_DESC_FILL_MODE = 6,                   // [int32_t] cublasFillMode_t, default FULL
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,                    // [uint32_t] cublasLtEpilogue_t, default DEFAULT
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,                // [const void *] device, length = rows of D
    CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,          // [int64_t] elements, default 0
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,       // [void *]
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,            // [int64_t]
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE = 13,  // [int64_t]
    CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE = 14,  // [int64_t]
    CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET = 15,            // [int32_t]
    CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17,            // [const void *] fp8 only
    CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18,
    CUBLASLT_MATMUL_DESC_C_SCALE_POINTER = 19,
    CUBLASLT_MATMUL_DESC_D_SCALE_POINTER = 20,
    CUBLASLT_MATMUL_DESC_AMAX_D_POINTER = 21,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE = 22,     // [int32_t]
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER = 23,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER = 24,
    CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25,                 // [int8_t]
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,             // [int32_t] cudaDataType, -1 (default): D's type
} cublasLtMatmulDescAttributes_t;

// What is applied to alpha op(A) op(B) + beta C before D is written: the bias (a vector of D's
// rows, broadcast along the columns) first, then the activation.
typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_RELU = 2,
    CUBLASLT_EPILOGUE_RELU_AUX = (CUBLASLT_EPILOGUE_RELU | 128),
    CUBLASLT_EPILOGUE_BIAS = 4,
    CUBLASLT_EPILOGUE_RELU_BIAS = (CUBLASLT_EPILOGUE_RELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_RELU_AUX_BIAS = (CUBLASLT_EPILOGUE_RELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DRELU = 8 | 128,
    CUBLASLT_EPILOGUE_DRELU_BGRAD = CUBLASLT_EPILOGUE_DRELU | 16,
    CUBLASLT_EPILOGUE_GELU = 32,
    CUBLASLT_EPILOGUE_GELU_AUX = (CUBLASLT_EPILOGUE_GELU | 128),
    CUBLASLT_EPILOGUE_GELU_BIAS = (CUBLASLT_EPILOGUE_GELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_GELU_AUX_BIAS = (CUBLASLT_EPILOGUE_GELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DGELU = 64 | 128,
    CUBLASLT_EPILOGUE_DGELU_BGRAD = CUBLASLT_EPILOGUE_DGELU | 16,
    CUBLASLT_EPILOGUE_BGRADA = 256,
    CUBLASLT_EPILOGUE_BGRADB = 512,
} cublasLtEpilogue_t;

typedef enum {
    CUBLASLT_SEARCH_BEST_FIT = 0,
    CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID = 1,
} cublasLtMatmulSearch_t;

// Heuristic preferences, [type] as above.
typedef enum {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,            // [uint32_t]
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,    // [uint64_t] default 0
    CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,  // [uint32_t]
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,  // [uint32_t] default 256
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,  // [uint32_t]
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,  // [uint32_t]
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,  // [uint32_t]
    CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT = 9,        // [float]
    CUBLASLT_MATMUL_PREF_IMPL_MASK = 12,             // [uint64_t]
} cublasLtMatmulPreferenceAttributes_t;

// ---------------------------------------------------------------------------------------------
// The API (cublas.cpp)

extern "C" {
cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle);
const char *cublasLtGetStatusName(cublasStatus_t status);
const char *cublasLtGetStatusString(cublasStatus_t status);

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes);

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout);
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes);

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes);

// Up to requestedAlgoCount algorithms for the problem the descriptors describe (here: one).
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount);

// D = epilogue(alpha op(A) op(B) + beta C), queued on `stream`; algo NULL: an implicit heuristic
// query.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream);
}
