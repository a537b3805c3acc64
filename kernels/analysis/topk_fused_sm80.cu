// topk_fused_sm80.cu: the fused bilinear top-k's host side (topk_fused.h), its seed lists and its
// kernels for every target: fp32 FMA (the parity mode) and bf16 mma.sync m16n8k16 (sm_80 and
// later).  The kernel itself is topk_fused_kernel.cuh; the wgmma flavours (sm_90a) are
// topk_fused_sm90.cu.
#include <stdlib.h>
#include <string.h>

#include "topk_fused_kernel.cuh"

// ---------------------------------------------------------------------------------------------
// Configuration, read once per context

extern "C" int qk_fused_mma_parse(const char *name, QkFusedMma *mma) {
    if (!strcmp(name, "mma")) *mma = QK_FUSED_MMA_SYNC;
    else if (!strcmp(name, "wgmma-st")) *mma = QK_FUSED_WGMMA_ST;
    else if (!strcmp(name, "wgmma")) *mma = QK_FUSED_WGMMA_TMA;
    else return -1;
    return 0;
}

// cuTensorMapEncodeTiled through the runtime (CUDA 12.0's signature, cudaTypedefs.h's
// PFN_cuTensorMapEncodeTiled_v12000; cudaGetDriverEntryPoint itself is deprecated in CUDA 13);
// NULL with *why filled when the driver lacks it.
static void *ft_encoder(char *why, size_t why_len) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !fn) {
        (void)cudaGetLastError();
        snprintf(why, why_len, "wgmma (TMA): cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled, 12000): %s, query result %d",
                 cudaGetErrorString(e), (int)q);
        return NULL;
    }
    return fn;
}

extern "C" int qk_fused_config(QkFusedConfig *cfg, int device) {
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = 1;
    const char *mma = getenv("QK_FUSED_MMA"), *seed = getenv("QK_FUSED_SEED");
    if (mma && *mma && qk_fused_mma_parse(mma, &cfg->mma))
        return qk_err("QK_FUSED_MMA=%s: expected mma, wgmma-st or wgmma", mma);
    if (seed && *seed) {
        if (strcmp(seed, "0") && strcmp(seed, "1")) return qk_err("QK_FUSED_SEED=%s: expected 0 or 1", seed);
        cfg->seed = seed[0] == '1';
    }
    int major = 0, minor = 0, optin = 0;
    CUDA_TRYF(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "device %d", device);
    CUDA_TRYF(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "device %d", device);
    CUDA_TRYF(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "device %d", device);
#if defined(QK_CUDA_EMU)
    // The emulated device (tests/cudaemu) runs no sm_90a code: its wgmma / TMA flavours compile to
    // stubs there, so it has no wgmma, and only a real Hopper GPU checks those flavours.
    cfg->wgmma = 0;
#else
    cfg->wgmma = major == 9 && minor == 0;
#endif
    cfg->smem_optin = (size_t)optin;
    if (cfg->wgmma) cfg->encode = ft_encoder(cfg->encode_why, sizeof cfg->encode_why);
    return 0;
}

extern "C" QkFusedMma qk_fused_mma_used(const QkFusedConfig *cfg) { return cfg->wgmma ? cfg->mma : QK_FUSED_MMA_SYNC; }

// The kernel template's flavour for these arguments on cfg's device: fp32 operands, or the bf16
// flavour cfg gives.
static int ft_flavour(const QkFusedArgs *a, const QkFusedConfig *cfg) {
    if (!a->bf16) return FT_FP32;
    const QkFusedMma mma = qk_fused_mma_used(cfg);
    return mma == QK_FUSED_WGMMA_TMA ? FT_WGMMA_TMA : mma == QK_FUSED_WGMMA_ST ? FT_WGMMA : FT_MMA;
}

// ---------------------------------------------------------------------------------------------
// Seed lists

// The seed lists of a launch (topk_fused_select.h, "Seeding"): block b (one per problem, or one
// for a c shared by every problem) writes seeds [b][QK_FSEL_SEEDS]: the columns of the best
// min(64, M) seed keys of c [b] (sign: the top queue's order; NaN never), ascending, then
// QK_FSEL_NOSEED.  Each warp keeps a warp queue of the best 64 over its columns (base + lane,
// base stepping by the block's 128), merged into warp 0's; then one thread per slot ranks it.
__global__ void __launch_bounds__(FT_THREADS) ft_seed_lists(const float *c, long long c_stride, int M, float sign,
                                                             int32_t *seeds) {
    __shared__ u64 keys[FT_WARPS][QK_FSEL_SEEDS];
    const int lane = threadIdx.x % QK_SEL_WARP, w = threadIdx.x / QK_SEL_WARP;
    const float *cb = c + blockIdx.x * c_stride;
    u64 q0 = QK_SEL_EMPTY, q1 = QK_SEL_EMPTY, thr = QK_SEL_EMPTY;
    for (int base = w * QK_SEL_WARP; base < M; base += FT_THREADS) {  // warp-uniform bounds
        const int j = base + lane;
        const u64 key = j < M ? qk_fsel_seed_key(__ldg(cb + j), j, sign) : QK_SEL_EMPTY;
        if (!__any_sync(QK_WQ_FULL, qk_sel_passes(key, thr))) continue;
        qk_wq_insert32(q0, q1, key, lane);
        thr = qk_wq_kth(q0, q1, QK_FSEL_SEEDS);
    }
    keys[w][lane] = q0, keys[w][QK_SEL_WARP + lane] = q1;
    __syncthreads();
    if (w == 0) {
        for (int v = 1; v < FT_WARPS; v++) {
            qk_wq_insert32(q0, q1, keys[v][lane], lane);
            qk_wq_insert32(q0, q1, keys[v][QK_SEL_WARP + lane], lane);
        }
        keys[0][lane] = q0, keys[0][QK_SEL_WARP + lane] = q1;
    }
    __syncthreads();
    if (threadIdx.x < QK_FSEL_SEEDS) {
        int32_t *out = seeds + (long long)blockIdx.x * QK_FSEL_SEEDS;
        const int x = threadIdx.x, rank = qk_fsel_seed_rank(reinterpret_cast<const uint64_t *>(keys[0]), QK_FSEL_SEEDS, x);
        int held = 0;
        for (int y = 0; y < QK_FSEL_SEEDS; y++) held += keys[0][y] != QK_SEL_EMPTY;
        if (rank >= 0) out[rank] = qk_sel_unpack_i(keys[0][x]);
        if (x >= held) out[x] = QK_FSEL_NOSEED;
    }
}

// ---------------------------------------------------------------------------------------------
// Host side

extern "C" int qk_fused_seeds(const QkFusedArgs *a, const QkFusedConfig *cfg) {
    return cfg->seed && a->c && a->M > QK_FSEL_BN;  // seeds help only with c (their order) and tiles to skip
}

extern "C" size_t qk_fused_seed_bytes(int batch) { return (size_t)(batch > 1 ? batch : 1) * QK_FSEL_SEEDS * sizeof(int32_t); }

static int misaligned(const void *p) { return p && ((uintptr_t)p & 15); }

// What TMA's tensor maps need beyond the other flavours' checks (cuda.h, cuTensorMapEncodeTiled:
// 16-byte aligned address and strides, strides < 2^40, each stride covering the dimension below).
static const char *ft_tma_refusal(const QkFusedArgs *a, const QkFusedConfig *cfg) {
    if (!cfg->encode) return cfg->encode_why;
    const long long rowsU = (long long)a->n * a->ldu, rowsV = (long long)a->M * a->r;
    if (a->batch > 1 && (a->U_stride < rowsU || a->V_stride < rowsV))
        return "wgmma (TMA): problem strides below a problem's size (shared or overlapping operands)";
    if ((a->batch > 1 ? a->U_stride : rowsU) * 2 >= (1ll << 40) || (a->batch > 1 ? a->V_stride : rowsV) * 2 >= (1ll << 40))
        return "wgmma (TMA): a problem stride of 2^40 bytes or more";
    return NULL;
}

extern "C" int qk_fused_supported(const QkFusedArgs *a, const QkFusedConfig *cfg, const char **why) {
    const int per = a->bf16 ? 8 : 4;  // elements per 16-byte vector
    const int both = a->bidx != NULL;
    *why = NULL;
    if (a->k < 1 || a->k > FT_TSLOTS) *why = "k outside 1..64";
    else if (a->r % 16) *why = "r not a multiple of 16";
    else if (a->ldu % per || a->U_stride % per || a->V_stride % per) *why = "row or problem strides not 16-byte multiples";
    else if (misaligned(a->U) || misaligned(a->V)) *why = "U or V not 16-byte aligned";
    else if (a->M > 0x7fffffff - QK_FSEL_BN) *why = "M too large for int column indices";
    else if (a->batch < 1 || a->batch > 65535) *why = "batch outside 1..65535";
    else if (ft_flavour(a, cfg) == FT_WGMMA_TMA) *why = ft_tma_refusal(a, cfg);
    if (*why) return 0;
    if (ft_smem_bytes(ft_flavour(a, cfg), a->k, both ? 2 : 1) > cfg->smem_optin) {
        *why = "shared memory per block too small for this k (top + bottom)";
        return 0;
    }
    return 1;
}

// The seed lists of the launch into a->seeds: one block per problem, or one when c is shared.
static int ft_seed_launch(const QkFusedArgs *a, float sign, cudaStream_t stream, int sync_each, const char *shape) {
    const int blocks = a->c_stride ? a->batch : 1;
    ft_seed_lists<<<blocks, FT_THREADS, 0, stream>>>(a->c, a->c_stride, a->M, sign, a->seeds);
    const cudaError_t e = qk_launch_status(stream, sync_each);
    if (e != cudaSuccess)
        return qk_err("kernel ft_seed_lists<<<%d,%d>>> [%s]: %s", blocks, FT_THREADS, shape, cudaGetErrorString(e));
    return 0;
}

extern "C" int qk_fused_launch(const QkFusedArgs *a, const QkFusedConfig *cfg, cudaStream_t stream, int sync_each) {
    if (a->n == 0) return 0;
    const int both = a->bidx != NULL, fl = ft_flavour(a, cfg);
    const int seeded = a->seeds && qk_fused_seeds(a, cfg);
    FtParams p;
    memset(&p, 0, sizeof p);
    p.U = a->U, p.V = a->V, p.ldu = a->ldu, p.U_stride = a->U_stride, p.V_stride = a->V_stride;
    p.a = a->a, p.c = a->c, p.gates = a->gates, p.a_stride = a->a_stride, p.c_stride = a->c_stride;
    p.g_stride = a->g_stride, p.gate = a->gate, p.sign = a->bottom ? -1.0f : 1.0f;
    p.seeds = seeded ? a->seeds : NULL, p.s_stride = a->c_stride ? QK_FSEL_SEEDS : 0;
    p.n = a->n, p.M = a->M, p.r = a->r, p.k = a->k, p.qcap = qk_fsel_qcap(a->k);
    p.gated = a->act == QK_TOPK_GATED, p.relu = a->act == QK_TOPK_RELU;
    p.idx = a->idx, p.val = a->val, p.count = a->count, p.bidx = a->bidx, p.bval = a->bval;
    const size_t smem = ft_smem_bytes(fl, a->k, both ? 2 : 1);
    char shape[240];
    snprintf(shape, sizeof shape, "%s batch %d n %d M %d r %d k %d act %d bottom %d both %d seeded %d",
             a->bf16 ? "bf16" : "fp32", a->batch, a->n, a->M, a->r, a->k, (int)a->act, a->bottom, both, seeded);
    if (seeded && ft_seed_launch(a, p.sign, stream, sync_each, shape)) return -1;
    if (fl == FT_WGMMA || fl == FT_WGMMA_TMA)
        return qk_fused_launch_wgmma(p, cfg, fl == FT_WGMMA_TMA, a->batch, stream, sync_each, smem, shape, both);
    if (fl == FT_MMA)
        return both ? ft_launch<FT_MMA, true>(p, a->batch, stream, sync_each, smem, shape)
                    : ft_launch<FT_MMA, false>(p, a->batch, stream, sync_each, smem, shape);
    return both ? ft_launch<FT_FP32, true>(p, a->batch, stream, sync_each, smem, shape)
                : ft_launch<FT_FP32, false>(p, a->batch, stream, sync_each, smem, shape);
}
