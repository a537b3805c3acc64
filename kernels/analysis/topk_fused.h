// topk_fused.h: the fused bilinear top-k (kernel: topk_fused_kernel.cuh; host side and the
// mma.sync / fp32 kernels: topk_fused_sm80.cu; the wgmma kernel: topk_fused_sm90.cu): the scores
// of SPEC §5, s_ij = a_i * (U_i . V_j) + c_j, made tile by tile on the tensor cores (BF16:
// mma.sync m16n8k16, or wgmma m64n64k16 on sm_90a with QK_FUSED_MMA=wgmma; fp32 accumulation)
// or by fp32 FMAs (FP32, the parity mode), and selected in the same kernel's epilogue: no score
// leaves the chip.  Semantics: host/topk.h (kernels/
// bilinear_topk.h's qk_btk_run dispatches here; QK_BTK_PATH chooses).  Selection rules:
// topk_fused_select.h.
//
// Shapes (row-major, b < batch):
//   U  [batch][n x r]  element stride ldu, problem stride U_stride (bf16 for BF16, fp32 for FP32)
//   V  [batch][M x r]  contiguous rows, problem stride V_stride (same element type)
//   a  [batch][n] or NULL, c [batch][M] or NULL, gates [batch][M] or NULL (fp32)
//   idx/val [batch][n x k], count [batch][n], bidx/bval [batch][n x k] (top + bottom) or NULL
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
} QkFusedArgs;

// Whether the fused kernel takes this problem on `device` (k <= 64, r a multiple of 16, 16-byte
// aligned operands, the shared memory its k needs); when not, *why says what is missing.
int qk_fused_supported(const QkFusedArgs *a, int device, const char **why);

// Launches on `stream`; with sync_each, waits and reports the kernel's own error.  Returns 0 or
// -1 with qk_errmsg() naming the kernel, its grid and the shape.
int qk_fused_launch(const QkFusedArgs *a, cudaStream_t stream, int sync_each);

// Dynamic shared memory of one block for this k and top + bottom (bytes).
size_t qk_fused_smem_bytes(int k, int both);

#ifdef __cplusplus
}
#endif
