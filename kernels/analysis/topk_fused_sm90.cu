// topk_fused_sm90.cu: the fused bilinear top-k's wgmma flavour (topk_fused_kernel.cuh, FT_WGMMA):
// each k16 step one warpgroup MMA m64n64k16 from shared memory, bf16 operands, fp32
// accumulators, on compute capability 9.0.  Built only for sm_90a (its own -gencode in the
// Makefile: wgmma does not exist on plain sm_90); qk_fused_launch takes it with
// QK_FUSED_MMA=wgmma on a 9.0 device.  The SASS check wants HGMMA in both instantiations.
#include "topk_fused_kernel.cuh"

int qk_fused_launch_wgmma(const FtParams &p, int batch, cudaStream_t stream, int sync_each, size_t smem,
                          const char *shape, int both) {
    return both ? ft_launch<FT_WGMMA, true>(p, batch, stream, sync_each, smem, shape)
                : ft_launch<FT_WGMMA, false>(p, batch, stream, sync_each, smem, shape);
}
