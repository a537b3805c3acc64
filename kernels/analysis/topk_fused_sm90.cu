// topk_fused_sm90.cu: the fused bilinear top-k's wgmma flavours (topk_fused_kernel.cuh): each k16
// step one warpgroup MMA m64n64k16 from shared memory, bf16 operands, fp32 accumulators, on
// compute capability 9.0.  FT_WGMMA: operands stored by the threads (one stage); FT_WGMMA_TMA:
// operands brought by TMA through a ring of FT_STAGES stages, its tensor maps encoded here.
// Built only for sm_90a (its own -gencode in the Makefile: wgmma does not exist on plain sm_90);
// qk_fused_launch takes them with QK_FUSED_MMA=wgmma-st / wgmma on a 9.0 device.  The SASS
// check wants HGMMA in every instantiation and UTMALDG in the TMA ones.
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000 (the type only)

#include "topk_fused_kernel.cuh"

// A 3-D tensor map over X [batch][rows x r] bf16 (row stride ld, problem stride ps elements):
// dimensions (r, rows, batch), boxes of 64 k x 64 rows x 1 problem, SWIZZLE_128B (the boxes'
// 128-byte rows as ft_word<FT_WGMMA_TMA> and the wgmma descriptors expect them); a box past r,
// rows or batch reads zeros (OOB_FILL_NONE), which is what the n, M and r tails need.
static int ft_tensor_map(CUtensorMap *map, const QkFusedConfig *cfg, const void *X, int rows, int r, long long ld,
                         long long ps, int batch, const char *what, const char *shape) {
    const PFN_cuTensorMapEncodeTiled_v12000 encode = (PFN_cuTensorMapEncodeTiled_v12000)cfg->encode;
    const cuuint64_t dims[3] = {(cuuint64_t)r, (cuuint64_t)rows, (cuuint64_t)batch};
    // (batch 1: any stride that covers the rows below; the encoder checks it, no box reads it)
    const cuuint64_t strides[2] = {(cuuint64_t)ld * 2, (cuuint64_t)(batch > 1 ? ps : ld * rows) * 2};
    const cuuint32_t box[3] = {64, QK_FSEL_BM, 1}, unit[3] = {1, 1, 1};
    const CUresult e = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void *>(X), dims, strides, box, unit,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (e != CUDA_SUCCESS)
        return qk_err("cuTensorMapEncodeTiled(%s: dims %d x %d x %d, strides %lld, %lld bytes) [%s]: CUresult %d", what, r,
                      rows, batch, (long long)strides[0], (long long)strides[1], shape, (int)e);
    return 0;
}

int qk_fused_launch_wgmma(FtParams &p, const QkFusedConfig *cfg, int tma, int batch, cudaStream_t stream,
                          int sync_each, size_t smem, const char *shape, int both) {
    if (!tma)
        return both ? ft_launch<FT_WGMMA, true>(p, batch, stream, sync_each, smem, shape)
                    : ft_launch<FT_WGMMA, false>(p, batch, stream, sync_each, smem, shape);
    if (ft_tensor_map(&p.tmU, cfg, p.U, p.n, p.r, p.ldu, p.U_stride, batch, "U", shape) ||
        ft_tensor_map(&p.tmV, cfg, p.V, p.M, p.r, p.r, p.V_stride, batch, "V", shape))
        return -1;
    return both ? ft_launch<FT_WGMMA_TMA, true>(p, batch, stream, sync_each, smem, shape)
                : ft_launch<FT_WGMMA_TMA, false>(p, batch, stream, sync_each, smem, shape);
}
