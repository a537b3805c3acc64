// topk_fused.h: the fused bilinear top-k (kernel: topk_fused_kernel.cuh; host side, the seed
// lists and the mma.sync / fp32 kernels: topk_fused_sm80.cu; the wgmma kernels:
// topk_fused_sm90.cu): the scores of SPEC §5, s_ij = a_i * (U_i . V_j) + c_j, made tile by tile
// on the tensor cores (BF16, fp32 accumulation) or by fp32 FMAs (FP32, the parity mode), and
// selected in the same kernel's epilogue: no score leaves the chip.
//
// BF16 flavours (QK_FUSED_MMA, read once per context; a wgmma flavour asked on a device that is
// not compute capability 9.0 runs mma.sync):
//   mma        (default) mma.sync m16n8k16 (sm_80 and later): operands fetched into registers one
//              chunk ahead, stored to padded shared memory; the default on every device until a
//              GPU run has timed the wgmma flavours against it.
//   wgmma-st   wgmma m64n64k16 (sm_90a) on the same one-stage pipeline, operands stored by the
//              threads in wgmma's unswizzled core-matrix layout (kept to compare with wgmma).
//   wgmma      wgmma m64n64k16 (sm_90a) fed by TMA (cp.async.bulk.tensor, 3-D tensor maps over
//              (r, rows, problem), boxes of 64 rows x 64 bf16 with SWIZZLE_128B) through a ring of
//              FT_STAGES stages with full / empty mbarriers: r <= 64 loads U's box once and streams
//              V's tiles; r = 768 streams (U, V) chunk pairs with two chunks' wgmma in flight.
// Seeding (QK_FUSED_SEED=0 turns it off; on by default): with c and M > 64, a small kernel per
// launch picks each problem's 64 columns with the best c_j; every block scores them first, so its
// thresholds start high, and skips them in the walk (topk_fused_select.h, "Seeding"): the
// output is the unseeded one exactly, with fewer survivors.  Without c there is no seed: the
// largest ||V_j|| says nothing about the sign of U_i . V_j, so it would seed the top and the
// bottom of a row alike.
//
// Semantics: host/topk.h (kernels/bilinear_topk.h's qk_btk_run dispatches here; QK_BTK_PATH
// chooses).  Selection rules: topk_fused_select.h.
//
// Shapes (row-major, b < batch):
//   U  [batch][n x r]  element stride ldu, problem stride U_stride (bf16 for BF16, fp32 for FP32)
//   V  [batch][M x r]  contiguous rows, problem stride V_stride (same element type)
//   a  [batch][n] or NULL, c [batch][M] or NULL, gates [batch][M] or NULL (fp32)
//   idx/val [batch][n x k], count [batch][n], bidx/bval [batch][n x k] (top + bottom) or NULL
//   seeds [batch or 1][64] int32 (scratch): each problem's seed columns, ascending
// Grid (ceil(n / 64), batch), 128 threads: a block owns 64 rows of one problem and walks every
// column of V; its running top-k never leaves shared memory.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "analysis/topk.h"

typedef struct {
    int bf16;  // 1: U, V are __nv_bfloat16 (tensor cores); 0: fp32 (FMA)
    const void *U, *V;
    int ldu;
    long long U_stride, V_stride, a_stride, c_stride, g_stride;
    const float *a, *c, *gates;
    float gate;
    int batch, n, M, r, k;
    int bottom;  // top queue selects the smallest (opts.bottom)
    QkTopkAct act;
    int32_t *idx, *count, *bidx;  // bidx/bval: the bottom of top + bottom, or NULL
    float *val, *bval;
    int32_t *seeds;  // scratch of qk_fused_seed_bytes(batch) device bytes for the seed lists where
                     // qk_fused_seeds says the launch seeds; NULL: no seeding
} QkFusedArgs;

typedef enum { QK_FUSED_MMA_SYNC = 0, QK_FUSED_WGMMA_ST = 1, QK_FUSED_WGMMA_TMA = 2 } QkFusedMma;

// What the fused path reads once per context (QkBtk) rather than per launch: the environment and
// the device.  wgmma: the device has it (compute capability 9.0); encode: cuTensorMapEncodeTiled
// from the driver (cudaGetDriverEntryPointByVersion: nothing links libcuda), NULL where missing.
typedef struct {
    QkFusedMma mma;  // the bf16 flavour asked (QK_FUSED_MMA: mma | wgmma-st | wgmma)
    int seed;        // QK_FUSED_SEED (default 1)
    int wgmma;
    size_t smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
    void *encode;
    char encode_why[128];  // why encode is NULL on a 9.0 device (the refusal of the TMA flavour)
} QkFusedConfig;

// Fills cfg for `device` from the environment; -1 with qk_errmsg() on an unknown QK_FUSED_MMA /
// QK_FUSED_SEED value or a failed device query.
int qk_fused_config(QkFusedConfig *cfg, int device);
// name: mma | wgmma-st | wgmma; -1 when unknown.
int qk_fused_mma_parse(const char *name, QkFusedMma *mma);
// The bf16 flavour cfg gives on its device.
QkFusedMma qk_fused_mma_used(const QkFusedConfig *cfg);

// Whether a launch of these arguments seeds (the one rule: cfg->seed, c given for the seed order,
// and more than one tile of columns to walk); only then does it read a->seeds.
int qk_fused_seeds(const QkFusedArgs *a, const QkFusedConfig *cfg);
// Device bytes of the seed-list scratch of a launch of `batch` problems.
size_t qk_fused_seed_bytes(int batch);

// Whether the fused kernel (the flavour cfg gives) takes this problem (k <= 64, r a multiple of
// 16, 16-byte aligned operands, the shared memory its k needs; TMA: a tensor-map encoder, problem
// strides that do not overlap problems); when not, *why says what is missing.
int qk_fused_supported(const QkFusedArgs *a, const QkFusedConfig *cfg, const char **why);

// Launches on `stream` (the seed lists first, when seeding); with sync_each, waits and reports the
// kernel's own error.  Returns 0 or -1 with qk_errmsg() naming the kernel, its grid and the shape.
int qk_fused_launch(const QkFusedArgs *a, const QkFusedConfig *cfg, cudaStream_t stream, int sync_each);

#ifdef __cplusplus
}
#endif
