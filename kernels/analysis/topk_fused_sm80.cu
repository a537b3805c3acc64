// topk_fused_sm80.cu: the fused bilinear top-k's host side (topk_fused.h) and its kernels for
// every target: fp32 FMA (the parity mode) and bf16 mma.sync m16n8k16 (sm_80 and later).  The
// kernel itself is topk_fused_kernel.cuh; the wgmma flavour (sm_90a) is topk_fused_sm90.cu.
#include <stdlib.h>
#include <string.h>

#include "topk_fused_kernel.cuh"

// The wgmma flavour (topk_fused_sm90.cu) on a compute capability 9.0 device when
// QK_FUSED_MMA=wgmma; mma.sync otherwise (until a GPU run has checked it).
static int qk_fused_wgmma(void) {
    const char *e = getenv("QK_FUSED_MMA");
    if (!e || strcmp(e, "wgmma")) return 0;
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return major == 9 && minor == 0;
}

// ---------------------------------------------------------------------------------------------
// Host side

extern "C" size_t qk_fused_smem_bytes(int k, int both) {
    const size_t sides = both ? 2 : 1, qcap = (size_t)qk_fsel_qcap(k), ts = (size_t)qk_fsel_tslots(k);
    return sides * QK_FSEL_BM * (ts + qcap + 2) * sizeof(u64) +
           (size_t)(QK_FSEL_BM + QK_FSEL_BN) * FT_LDS * sizeof(uint32_t) + sides * QK_FSEL_BM * sizeof(int);
}

static int misaligned(const void *p) { return p && ((uintptr_t)p & 15); }

extern "C" int qk_fused_supported(const QkFusedArgs *a, int device, const char **why) {
    const int per = a->bf16 ? 8 : 4;  // elements per 16-byte vector
    const int both = a->bidx != NULL;
    *why = NULL;
    if (a->k < 1 || a->k > FT_TSLOTS) *why = "k outside 1..64";
    else if (a->r % 16) *why = "r not a multiple of 16";
    else if (a->ldu % per || a->U_stride % per || a->V_stride % per) *why = "row or problem strides not 16-byte multiples";
    else if (misaligned(a->U) || misaligned(a->V)) *why = "U or V not 16-byte aligned";
    else if (a->M > 0x7fffffff - QK_FSEL_BN) *why = "M too large for int column indices";
    else if (a->batch < 1 || a->batch > 65535) *why = "batch outside 1..65535";
    if (*why) return 0;
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
        (void)cudaGetLastError();
        *why = "cudaDevAttrMaxSharedMemoryPerBlockOptin unavailable";
        return 0;
    }
    if (qk_fused_smem_bytes(a->k, both) > (size_t)optin) {
        *why = "shared memory per block too small for this k (top + bottom)";
        return 0;
    }
    return 1;
}

extern "C" int qk_fused_launch(const QkFusedArgs *a, cudaStream_t stream, int sync_each) {
    if (a->n == 0) return 0;
    const int both = a->bidx != NULL;
    FtParams p;
    p.U = a->U, p.V = a->V, p.ldu = a->ldu, p.U_stride = a->U_stride, p.V_stride = a->V_stride;
    p.a = a->a, p.c = a->c, p.gates = a->gates, p.a_stride = a->a_stride, p.c_stride = a->c_stride;
    p.g_stride = a->g_stride, p.gate = a->gate, p.sign = a->bottom ? -1.0f : 1.0f;
    p.n = a->n, p.M = a->M, p.r = a->r, p.k = a->k, p.qcap = qk_fsel_qcap(a->k);
    p.gated = a->act == QK_TOPK_GATED, p.relu = a->act == QK_TOPK_RELU;
    p.idx = a->idx, p.val = a->val, p.count = a->count, p.bidx = a->bidx, p.bval = a->bval;
    const size_t smem = qk_fused_smem_bytes(a->k, both);
    char shape[200];
    snprintf(shape, sizeof shape, "%s batch %d n %d M %d r %d k %d act %d bottom %d both %d", a->bf16 ? "bf16" : "fp32",
             a->batch, a->n, a->M, a->r, a->k, (int)a->act, a->bottom, both);
    if (a->bf16 && qk_fused_wgmma())
        return qk_fused_launch_wgmma(p, a->batch, stream, sync_each, smem, shape, both);
    if (a->bf16)
        return both ? ft_launch<FT_MMA, true>(p, a->batch, stream, sync_each, smem, shape)
                    : ft_launch<FT_MMA, false>(p, a->batch, stream, sync_each, smem, shape);
    return both ? ft_launch<FT_FP32, true>(p, a->batch, stream, sync_each, smem, shape)
                : ft_launch<FT_FP32, false>(p, a->batch, stream, sync_each, smem, shape);
}
