// backend_cuda.cu: the CUDA backend (host/backend.h).  GPT-2's forward pass on the device
// (kernels in forward_*.cu, declared in forward.cuh): `forward` fills the same host-side
// activation cache as the CPU backend (qkscope cache); the analysis of a run (analysis_open /
// analyse / analysis_close) keeps the activations on the device and hands them to the device
// analysis (analysis_cuda.h): only the recorded heads' records and the aggregates come back.
//
// Per batch (B windows of T tokens, N = B T), on the compute stream, for layers l < n_run (the
// analysis's last layer; all L with logits):
//   ln      = LN1(resid[l])                                   forward_layernorm.cu (+ hook_scale)
//   qkv     = ln @ W_attn + b_attn                            forward_matmul.cu (bias epilogue)
//   q, k, scores, pattern, z = attention(qkv)                 forward_attention.cu
//   resid'  = z @ W_proj + b_proj + resid[l]                  (residual fused: beta = 1)
//   ln      = LN2(resid')
//   fc      = gelu_new(ln @ W_fc + b_fc)                      (GELU epilogue; fp32: qk_gelu_new, CUDA tanhf)
//   resid[l+1] = fc @ W_fcproj + b_fcproj + resid'            (in place, beta = 1)
// Precision (QkBackend.set_precision, `[run] precision`, `qkscope cache --precision`): fp32 (no
// TF32 anywhere: the parity mode), tf32, bf16 (weights and GEMM inputs bf16, fp32 accumulation;
// LayerNorm statistics in double, softmax and the residual stream in fp32 in every mode).
// Overlap: each layer's hooks are copied to the host on a second stream as soon as an event says
// the layer is done, while later layers compute; the host buffers come from QkBackend.host_mem
// (page-locked), so the copies run at bus speed.  Only the layers the batch computed are copied.
// Errors: every CUDA / cuBLAS call is checked and names the call and its shapes; an allocation
// that does not fit names the size and the batch that would; a failed allocation leaves no
// half-made cache behind (the next call starts clean).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_pinned.cuh"
#include "model/forward.cuh"
extern "C" {  // C headers (gpt2.h among them): C linkage whichever includes them first
#include "analysis/analysis_cuda.h"
#include "analysis/bilinear_topk.h"
#include "backend.h"
#include "model/forward_mem.h"
#include "run/comm.h"
}

static const size_t LT_WORKSPACE = (size_t)32 << 20;  // cuBLASLt workspace (Hopper wants 32 MiB)

// ---------------------------------------------------------------------------------------------
// Device memory

// cudaMalloc of `bytes` for `what`; on failure the error names the size and the free memory, and
// the failure is cleared so that the next kernel check does not report it again.
static int dev_alloc(void **p, size_t bytes, const char *what) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e == cudaSuccess) return 0;
    *p = NULL;
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    return qk_err("cudaMalloc of %.1f MiB for %s failed (%s; %zu MiB free of %zu MiB)", bytes / 1048576.0, what,
                  cudaGetErrorString(e), free_b >> 20, total_b >> 20);
}

// The device copy of a GPT2Layer: its tensors first, at GPT2Layer's offsets, so the host's table
// of layer tensors (gpt2_layer_tensors) names the device fields too.
typedef struct {
    float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
    __nv_bfloat16 *attn_w16, *proj_w16, *fc_w16, *fc_b16, *fcproj_w16;  // the bf16 mode's copies
} DevLayer;
static_assert(offsetof(DevLayer, ln1_w) == offsetof(GPT2Layer, ln1_w) &&
                  offsetof(DevLayer, attn_b) == offsetof(GPT2Layer, attn_b) &&
                  offsetof(DevLayer, fcproj_b) == offsetof(GPT2Layer, fcproj_b) && sizeof(GPT2Layer) == 12 * sizeof(float *),
              "DevLayer's tensors mirror GPT2Layer's");
static float **dev_layer_tensor(DevLayer *d, int q) { return (float **)((char *)d + gpt2_layer_tensors[q].field); }

// What the device weights are a copy of: the model's dimensions, its address and a fingerprint
// of sampled values of every tensor (a model loaded at the freed address of another is seen).
typedef struct {
    GPT2Config cfg;
    const GPT2Model *m;
    uint64_t fingerprint;
} WeightKey;

typedef struct {
    WeightKey key;  // valid when loaded
    int loaded, have_bf16;
    float *wte, *wpe, *lnf_w, *lnf_b;
    __nv_bfloat16 *wte16;
    DevLayer *layers;
    int n_layer;
} DevWeights;

// Device activations for one batch shape (B = 0: none).  resid's layers are `stride` floats apart
// (N C rounded up to 256 bytes: every GEMM operand 256-byte aligned, as cuBLASLt's plans assume).
typedef struct {
    int B, T, keep_attn, want_logits;
    GPT2Config cfg;  // the model dimensions the buffers were sized for
    size_t stride;
    int *tokens;                                                   // (B, T)
    float *resid, *ln1_scale, *q, *k, *scores, *pattern, *logits;  // as GPT2Acts
    float *ln2_scale;                                              // (N) LN2 / ln_f scale scratch
    void *ln, *z, *fc;                                             // (N, C), (N, C), (N, F): fp32 or bf16
    float *qkv, *qkvp, *zp;                                        // (N, 3C), (3, N, C), (N, C)
} DevActs;

struct CudaCtx {
    int device;
    QkBtk *btk[3];  // bilinear top-k contexts by QkPrecision, made on first use
    QkPrecision prec;
    cublasHandle_t blas;
    LtPlans *lt;
    void *lt_ws;
    cudaStream_t compute, copy;
    cudaEvent_t *done;  // (L + 2): [0] embedding written, [l + 1] layer l's hooks, [L + 1] logits
    int n_done;
    int *tok_pinned;  // page-locked staging of the batch's tokens
    size_t tok_cap;
    DevWeights w;
    DevActs a;
};

static void free_weights(DevWeights *w) {
    for (int l = 0; l < w->n_layer && w->layers; l++) {
        DevLayer *d = &w->layers[l];
        for (int q = 0; q < GPT2_LAYER_TENSORS; q++) cudaFree(*dev_layer_tensor(d, q));
        void *p16[] = {d->attn_w16, d->proj_w16, d->fc_w16, d->fc_b16, d->fcproj_w16};
        for (size_t i = 0; i < sizeof p16 / sizeof p16[0]; i++) cudaFree(p16[i]);
    }
    free(w->layers);
    cudaFree(w->wte);
    cudaFree(w->wpe);
    cudaFree(w->lnf_w);
    cudaFree(w->lnf_b);
    cudaFree(w->wte16);
    memset(w, 0, sizeof *w);
}

static void free_bf16(DevWeights *w) {
    for (int l = 0; l < w->n_layer && w->layers; l++) {
        DevLayer *d = &w->layers[l];
        __nv_bfloat16 **p[] = {&d->attn_w16, &d->proj_w16, &d->fc_w16, &d->fc_b16, &d->fcproj_w16};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(*p[i]), *p[i] = NULL;
    }
    cudaFree(w->wte16);
    w->wte16 = NULL;
    w->have_bf16 = 0;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

// One weight tensor: where its device copy goes, its host copy, its size in floats, its name.
typedef struct {
    float **dst;
    const float *src;
    size_t n;
    const char *what;
} WeightSlot;

// The weight tensors of m in a fixed order with their device slots in *w (NULL: slots not
// wanted, only the list): *slots (free it) gets 4 + 12 L of them (gpt2_layer_tensors); returns the count.
static int weight_slots(DevWeights *w, const GPT2Model *m, WeightSlot **slots) {
    const GPT2Config *c = &m->cfg;
    size_t C = c->d_model;
    static float *sink;
    DevLayer dummy;
    WeightSlot *s = (WeightSlot *)qk_malloc(sizeof(WeightSlot) * (4 + GPT2_LAYER_TENSORS * (size_t)c->n_layer));
    int n = 0;
#define SLOT(dev, host, count, name) (s[n++] = WeightSlot{w ? &(dev) : &sink, (host), (count), (name)})
    SLOT(w->wte, m->wte, (size_t)c->vocab_size * C, "wte"), SLOT(w->wpe, m->wpe, (size_t)c->n_ctx * C, "wpe");
    SLOT(w->lnf_w, m->lnf_w, C, "ln_f.weight"), SLOT(w->lnf_b, m->lnf_b, C, "ln_f.bias");
    for (int l = 0; l < c->n_layer; l++) {
        const GPT2Layer *h = &m->layers[l];
        DevLayer *d = w ? &w->layers[l] : &dummy;
        for (int q = 0; q < GPT2_LAYER_TENSORS; q++)
            SLOT(*dev_layer_tensor(d, q), *gpt2_layer_tensor((GPT2Layer *)h, q), gpt2_layer_tensor_numel(c, q),
                 gpt2_layer_tensors[q].suffix);
    }
#undef SLOT
    *slots = s;
    return n;
}

static WeightKey weight_key(const GPT2Model *m) {
    WeightKey k;
    memset(&k, 0, sizeof k);
    k.cfg = m->cfg;
    k.m = m;
    WeightSlot *s;
    int n = weight_slots(NULL, m, &s);
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < 16; j++) h = fnv(h, s[i].src + (s[i].n - 1) * j / 15, sizeof(float));
    free(s);
    k.fingerprint = h;
    return k;
}

static int same_key(const WeightKey *a, const WeightKey *b) { return !memcmp(a, b, sizeof *a); }

// Device buffers for every weight tensor of m in w (its slots in *slots, their count in *n), each
// filled from the host when `copy`, and the copies waited for (a pageable cudaMemcpy may return
// before its DMA lands; the forward pass and NCCL run on non-blocking streams).  On failure w is
// freed (nothing half-made stays marked as loaded) and *slots is NULL.
static int place_weights(DevWeights *w, const GPT2Model *m, int copy, WeightSlot **slots, int *n) {
    free_weights(w);
    w->layers = (DevLayer *)qk_calloc(m->cfg.n_layer, sizeof(DevLayer));
    w->n_layer = m->cfg.n_layer;
    WeightSlot *s;
    int rc = 0;
    *n = weight_slots(w, m, &s);
    for (int i = 0; i < *n && !rc; i++) {
        rc = dev_alloc((void **)s[i].dst, s[i].n * sizeof(float), s[i].what);
        if (!rc && copy && cudaMemcpy(*s[i].dst, s[i].src, s[i].n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
            rc = qk_err("cudaMemcpy of %s (%zu floats) to the device: %s", s[i].what, s[i].n,
                        cudaGetErrorString(cudaGetLastError()));
    }
    cudaError_t e = rc || !copy ? cudaSuccess : cudaDeviceSynchronize();
    if (e != cudaSuccess) rc = qk_err("uploading the model weights: %s", cudaGetErrorString(e));
    if (rc) {
        free(s), free_weights(w);
        *slots = NULL;
        return -1;
    }
    *slots = s;
    return 0;
}

static void mark_loaded(DevWeights *w, const GPT2Model *m) {
    w->key = weight_key(m);
    w->loaded = 1;
}

static int upload_weights(DevWeights *w, const GPT2Model *m) {
    WeightSlot *s;
    int n;
    if (place_weights(w, m, 1, &s, &n)) return -1;
    free(s);
    mark_loaded(w, m);
    return 0;
}

// The bf16 mode's copies of the GEMM weights (and c_fc's bias, of the bf16 hidden layer's type),
// converted on the device from the fp32 copies.
static int make_bf16(CudaCtx *ctx, const GPT2Config *c) {
    DevWeights *w = &ctx->w;
    size_t C = c->d_model, F = c->d_mlp;
    int rc = 0;
    auto conv = [&](__nv_bfloat16 **dst, const float *src, size_t n, const char *what) {
        if (rc) return;
        rc = dev_alloc((void **)dst, n * 2, what);
        if (!rc) rc = fwd_to_bf16(ctx->compute, *dst, src, n);
    };
    conv(&w->wte16, w->wte, (size_t)c->vocab_size * C, "wte (bf16)");
    for (int l = 0; l < c->n_layer; l++) {
        DevLayer *d = &w->layers[l];
        conv(&d->attn_w16, d->attn_w, C * 3 * C, "attn.c_attn.weight (bf16)");
        conv(&d->proj_w16, d->proj_w, C * C, "attn.c_proj.weight (bf16)");
        conv(&d->fc_w16, d->fc_w, C * F, "mlp.c_fc.weight (bf16)");
        conv(&d->fc_b16, d->fc_b, F, "mlp.c_fc.bias (bf16)");
        conv(&d->fcproj_w16, d->fcproj_w, F * C, "mlp.c_proj.weight (bf16)");
    }
    if (rc) {
        free_bf16(w);
        return -1;
    }
    w->have_bf16 = 1;
    return 0;
}

// QkBackend.share_weights: the root uploads m from the host; every other rank allocates the same
// tensors and receives them with comm->bcast_device (NCCL), device to device.
static int cuda_share_weights(QkBackend *be, const GPT2Model *m, QkComm *comm, int root) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    cudaError_t e = cudaSetDevice(ctx->device);
    int rc = e == cudaSuccess ? 0 : qk_err("cudaSetDevice(%d): %s", ctx->device, cudaGetErrorString(e));
    if (!comm->bcast_device) return rc ? -1 : upload_weights(&ctx->w, m);  // a host-only communicator
    WeightSlot *s = NULL;
    int n = 0;
    if (!rc) rc = place_weights(&ctx->w, m, comm->rank(comm) == root, &s, &n);  // the root's filled from the host
    // Every rank holds its buffers (or has failed) before any broadcast starts: no rank is left
    // waiting in one.
    int64_t failed = rc != 0;
    if (comm->allreduce_i64(comm, &failed, 1)) rc = -1;
    else if (failed && !rc) rc = qk_err("another rank could not hold the model weights on its GPU");
    for (int i = 0; i < n && !rc; i++) rc = comm->bcast_device(comm, *s[i].dst, s[i].n * sizeof(float), root);
    free(s);
    if (rc) {
        free_weights(&ctx->w);
        return -1;
    }
    mark_loaded(&ctx->w, m);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Activations

static void free_acts(DevActs *a) {
    void *p[] = {a->tokens, a->resid, a->ln1_scale, a->q, a->k, a->scores, a->pattern, a->logits, a->ln2_scale,
                 a->ln,     a->z,     a->fc,        a->qkv, a->qkvp, a->zp};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    memset(a, 0, sizeof *a);  // B = 0: no shape cached
}

static int alloc_acts(CudaCtx *ctx, const GPT2Config *c, const GPT2Acts *h) {
    DevActs *a = &ctx->a;
    // The old buffers may still be read by queued work: the device analysis of the batch before
    // (its own streams, pipelined behind this call), the hook downloads.  cudaFree does not
    // promise to wait for it: the device's work is waited for first.
    if (a->B) CUDA_TRYF(cudaDeviceSynchronize(), "before reallocating the activations (device %d)", ctx->device);
    free_acts(a);
    size_t stride, need = qk_cuda_acts_bytes(c, h->B, h->T, h->keep_attn, h->want_logits, &stride);
    const size_t N = (size_t)h->B * h->T, L = c->n_layer, C = c->d_model, F = c->d_mlp, f = sizeof(float);
    const size_t attn = (h->keep_attn ? L : 1) * (size_t)h->B * c->n_head * h->T * h->T;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } buf[] = {
        {(void **)&a->tokens, N * sizeof(int), "tokens"},
        {(void **)&a->resid, (L + 1) * stride * f, "the residual stream (hook_resid_pre/post)"},
        {(void **)&a->ln1_scale, L * N * f, "ln1.hook_scale"},
        {(void **)&a->q, L * N * C * f, "attn.hook_q"},
        {(void **)&a->k, L * N * C * f, "attn.hook_k"},
        {(void **)&a->scores, attn * f, "attn.hook_attn_scores"},
        {(void **)&a->pattern, attn * f, "attn.hook_pattern"},
        {(void **)&a->logits, h->want_logits ? N * c->vocab_size * f : 0, "logits"},
        {(void **)&a->ln2_scale, N * f, "LayerNorm scratch"},
        {(void **)&a->ln, N * C * f, "LayerNorm output"},
        {(void **)&a->z, N * C * f, "attention output z"},
        {(void **)&a->fc, N * F * f, "MLP hidden layer"},
        {(void **)&a->qkv, N * 3 * C * f, "qkv"},
        {(void **)&a->qkvp, 3 * N * C * f, "per-head q, k, v"},
        {(void **)&a->zp, N * C * f, "per-head z"},
    };
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    int rc = 0;
    if (need > free_b) rc = qk_err("does not fit");
    for (size_t i = 0; i < sizeof buf / sizeof buf[0] && !rc; i++)
        if (buf[i].bytes) rc = dev_alloc(buf[i].p, buf[i].bytes, buf[i].what);
    if (rc) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", qk_errmsg());
        free_acts(a);
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        // the batch that fits in 95% of what is free now (the driver's granularity, other users)
        long long fit = qk_cuda_batch_fit(c, h->T, h->keep_attn, h->want_logits, 0.95 * (double)free_b);
        return qk_err("the activations of a batch of %d windows of %d tokens need %.1f MiB on the GPU, %zu MiB are free "
                      "(of %zu MiB)%s%s: about %lld windows a batch fit; use a smaller batch ([corpus] batch / --batch)",
                      h->B, h->T, need / 1048576.0, free_b >> 20, total_b >> 20, strcmp(inner, "does not fit") ? "; " : "",
                      strcmp(inner, "does not fit") ? inner : "", fit);
    }
    a->stride = stride;
    a->cfg = *c;
    a->keep_attn = h->keep_attn;
    a->want_logits = h->want_logits;
    a->T = h->T;
    a->B = h->B;  // last: the shape is cached only once everything is allocated
    return 0;
}

static int ensure_events(CudaCtx *ctx, int n) {
    if (ctx->n_done >= n) return 0;
    cudaEvent_t *e = (cudaEvent_t *)qk_calloc(n, sizeof(cudaEvent_t));
    for (int i = 0; i < ctx->n_done; i++) e[i] = ctx->done[i];
    for (int i = ctx->n_done; i < n; i++) {
        cudaError_t r = cudaEventCreateWithFlags(&e[i], cudaEventDisableTiming);
        if (r != cudaSuccess) {
            for (int j = ctx->n_done; j < i; j++) cudaEventDestroy(e[j]);
            free(e);
            return qk_err("cudaEventCreateWithFlags (event %d of %d): %s", i, n, cudaGetErrorString(r));
        }
    }
    free(ctx->done);
    ctx->done = e;
    ctx->n_done = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Forward pass

static cublasComputeType_t gemm_compute(QkPrecision p) {
    return p == QK_PREC_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

static GemmShape gemm(int N, int Cin, int Cout, int epilogue, int residual, QkPrecision p) {
    GemmShape g;
    memset(&g, 0, sizeof g);
    g.N = N, g.Cin = Cin, g.Cout = Cout, g.epilogue = epilogue, g.residual = residual;
    g.ab_bf16 = p == QK_PREC_BF16;
    g.compute = gemm_compute(p);
    return g;
}

// Enqueues layers [0, n_run) on the compute stream, recording done[0] after the embedding and
// done[l + 1] after layer l.
static int forward_device(CudaCtx *ctx, const GPT2Config *c, int n_run) {
    const DevWeights *w = &ctx->w;
    DevActs *a = &ctx->a;
    const QkPrecision P = ctx->prec;
    const int B = a->B, T = a->T, C = c->d_model, F = c->d_mlp, N = B * T, H = c->n_head, bf = P == QK_PREC_BF16;
    const size_t NC = (size_t)N * C, layer_attn = (size_t)B * H * T * T;
    cudaStream_t s = ctx->compute;
    char what[64];
    if (fwd_embed(s, a->resid, a->tokens, w->wte, w->wpe, N, T, C)) return -1;
    CUDA_TRYF(cudaEventRecord(ctx->done[0], s), "after the embedding");
    AttnShape as = {B, T, C, H, bf, P == QK_PREC_FP32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F_FAST_TF32};
    for (int l = 0; l < n_run; l++) {
        const DevLayer *ly = &w->layers[l];
        float *in = a->resid + l * a->stride, *out = a->resid + (l + 1) * a->stride;
        float *S = a->scores + (a->keep_attn ? l * layer_attn : 0), *Pt = a->pattern + (a->keep_attn ? l * layer_attn : 0);
        if (fwd_layernorm(s, a->ln, bf, a->ln1_scale + (size_t)l * N, in, ly->ln1_w, ly->ln1_b, N, C, c->ln_eps)) return -1;
        GemmShape g = gemm(N, C, 3 * C, QK_EPI_BIAS, 0, P);
        snprintf(what, sizeof what, "layer %d attn.c_attn", l);
        if (fwd_matmul(ctx->lt, s, &g, a->qkv, a->ln, bf ? (const void *)ly->attn_w16 : ly->attn_w, ly->attn_b, NULL, what))
            return -1;
        if (fwd_attention(s, ctx->blas, &as, a->qkv, a->q + l * NC, a->k + l * NC, a->qkvp, a->zp, S, Pt, a->z)) return -1;
        g = gemm(N, C, C, QK_EPI_BIAS, 1, P);
        snprintf(what, sizeof what, "layer %d attn.c_proj", l);
        if (fwd_matmul(ctx->lt, s, &g, out, a->z, bf ? (const void *)ly->proj_w16 : ly->proj_w, ly->proj_b, in, what))
            return -1;
        if (fwd_layernorm(s, a->ln, bf, a->ln2_scale, out, ly->ln2_w, ly->ln2_b, N, C, c->ln_eps)) return -1;
        // fp32: bias epilogue, then gelu_new with the CPU's tanhf (the parity mode); tf32 / bf16:
        // cuBLASLt's GELU epilogue (bf16 output in the bf16 mode, with the bias in bf16).
        g = gemm(N, C, F, P == QK_PREC_FP32 ? QK_EPI_BIAS : QK_EPI_GELU_BIAS, 0, P);
        g.d_bf16 = bf;
        snprintf(what, sizeof what, "layer %d mlp.c_fc", l);
        if (fwd_matmul(ctx->lt, s, &g, a->fc, a->ln, bf ? (const void *)ly->fc_w16 : ly->fc_w,
                       bf ? (const void *)ly->fc_b16 : ly->fc_b, NULL, what))
            return -1;
        if (P == QK_PREC_FP32 && fwd_gelu(s, (float *)a->fc, (size_t)N * F)) return -1;
        g = gemm(N, F, C, QK_EPI_BIAS, 1, P);
        snprintf(what, sizeof what, "layer %d mlp.c_proj", l);
        if (fwd_matmul(ctx->lt, s, &g, out, a->fc, bf ? (const void *)ly->fcproj_w16 : ly->fcproj_w, ly->fcproj_b, out,
                       what))
            return -1;
        CUDA_TRYF(cudaEventRecord(ctx->done[l + 1], s), "after layer %d", l);
    }
    if (a->want_logits) {
        if (fwd_layernorm(s, a->ln, bf, a->ln2_scale, a->resid + c->n_layer * a->stride, w->lnf_w, w->lnf_b, N, C,
                          c->ln_eps))
            return -1;
        // logits (N, V) = ln_f(x) (N, C) @ wte^T, wte row-major (V, C)
        GemmShape g = gemm(N, C, c->vocab_size, QK_EPI_NONE, 0, P);
        g.transw = 1;
        if (fwd_matmul(ctx->lt, s, &g, a->logits, a->ln, bf ? (const void *)w->wte16 : w->wte, NULL, NULL, "logits"))
            return -1;
        CUDA_TRYF(cudaEventRecord(ctx->done[c->n_layer + 1], s), "after the logits");
    }
    return 0;
}

// Enqueues on the copy stream the download of every hook the batch computed, each after its
// layer's event: layer l's copies overlap the compute of layers l + 1, ....
static int download_all(CudaCtx *ctx, const GPT2Config *c, GPT2Acts *h, int n_run) {
    DevActs *a = &ctx->a;
    cudaStream_t s = ctx->copy;
    const size_t N = (size_t)a->B * a->T, C = c->d_model, f = sizeof(float), NC = N * C;
    const size_t attn = (size_t)a->B * c->n_head * a->T * a->T;
#define D2H(dst, src, bytes, ...) CUDA_TRYF(cudaMemcpyAsync((dst), (src), (bytes), cudaMemcpyDeviceToHost, s), __VA_ARGS__)
    CUDA_TRYF(cudaStreamWaitEvent(s, ctx->done[0], 0), "copy stream, embedding");
    D2H(h->resid, a->resid, NC * f, "hook_resid_pre 0, %zu floats", NC);
    for (int l = 0; l < n_run; l++) {
        CUDA_TRYF(cudaStreamWaitEvent(s, ctx->done[l + 1], 0), "copy stream, layer %d", l);
        D2H(h->resid + (l + 1) * NC, a->resid + (l + 1) * a->stride, NC * f, "hook_resid_post %d, %zu floats", l, NC);
        D2H(h->ln1_scale + l * N, a->ln1_scale + l * N, N * f, "ln1.hook_scale %d, %zu floats", l, N);
        D2H(h->q + l * NC, a->q + l * NC, NC * f, "hook_q %d, %zu floats", l, NC);
        D2H(h->k + l * NC, a->k + l * NC, NC * f, "hook_k %d, %zu floats", l, NC);
        if (a->keep_attn) {
            D2H(h->scores + l * attn, a->scores + l * attn, attn * f, "hook_attn_scores %d, %zu floats", l, attn);
            D2H(h->pattern + l * attn, a->pattern + l * attn, attn * f, "hook_pattern %d, %zu floats", l, attn);
        }
    }
    if (!a->keep_attn && n_run > 0) {  // the one slot holds the last layer computed, as on the CPU
        D2H(h->scores, a->scores, attn * f, "hook_attn_scores %d, %zu floats", n_run - 1, attn);
        D2H(h->pattern, a->pattern, attn * f, "hook_pattern %d, %zu floats", n_run - 1, attn);
    }
    if (a->want_logits) {
        CUDA_TRYF(cudaStreamWaitEvent(s, ctx->done[c->n_layer + 1], 0), "copy stream, logits");
        D2H(h->logits, a->logits, N * c->vocab_size * f, "logits, %zu floats", N * c->vocab_size);
    }
#undef D2H
    return 0;
}

// Where a batch's forward pass meets the analysis pipeline (NULL: a forward alone): its kernels
// wait for `wait` (the last batch's analysis done reading the activations they overwrite; NULL:
// nothing in flight) after the tokens' upload, so the upload overlaps that analysis; `start` and
// `end` (timing events) bracket its kernels.
typedef struct {
    cudaEvent_t wait, start, end;
} FwdSync;

// m's weights on the device (uploaded when another model's are there), with their bf16 copies in
// the bf16 mode.
static int ensure_weights(CudaCtx *ctx, const GPT2Model *m) {
    const WeightKey key = weight_key(m);
    if ((!ctx->w.loaded || !same_key(&ctx->w.key, &key)) && upload_weights(&ctx->w, m)) return -1;
    if (ctx->prec == QK_PREC_BF16 && !ctx->w.have_bf16 && make_bf16(ctx, &m->cfg)) return -1;
    return 0;
}

// Whether the cached activations have this shape (else alloc_acts makes them anew).
static int acts_match(const DevActs *a, const GPT2Config *c, int B, int T, int keep_attn, int want_logits) {
    return a->B == B && a->T == T && a->keep_attn == keep_attn && a->want_logits == want_logits &&
           !memcmp(&a->cfg, c, sizeof *c);
}

// The forward pass of tokens (h->B, h->T) for layers < n_run (h->n_run; all with logits) on the
// device; with download, every hook it computed copied into h's host buffers.  Both streams are
// drained before it returns.  Without download, h gives only the shape (no host buffers needed).
static int forward_batch(CudaCtx *ctx, const GPT2Model *m, const int *tokens, GPT2Acts *h, int download,
                         const FwdSync *sy) {
    const GPT2Config *c = &m->cfg;
    CUDA_TRYF(cudaSetDevice(ctx->device), "device %d", ctx->device);
    if (ensure_weights(ctx, m)) return -1;
    DevActs *a = &ctx->a;
    if (!acts_match(a, c, h->B, h->T, h->keep_attn, h->want_logits) && alloc_acts(ctx, c, h)) return -1;
    if (ensure_events(ctx, c->n_layer + 2)) return -1;
    const size_t BT = (size_t)h->B * h->T;
    // Tokens through page-locked staging (truly asynchronous; host_pinned.cuh: where the driver
    // refuses page-locked memory, ordinary memory, staged by the driver, still ordered on the stream).
    if (ctx->tok_cap < BT) {
        qk_pinned_free(ctx->tok_pinned);
        ctx->tok_pinned = (int *)qk_pinned_alloc(BT * sizeof(int), NULL), ctx->tok_cap = BT;
    }
    const int *tok_src = (const int *)memcpy(ctx->tok_pinned, tokens, BT * sizeof(int));
    CUDA_TRYF(cudaMemcpyAsync(a->tokens, tok_src, BT * sizeof(int), cudaMemcpyHostToDevice, ctx->compute),
              "%d x %d tokens", h->B, h->T);
    if (sy && sy->wait) CUDA_TRYF(cudaStreamWaitEvent(ctx->compute, sy->wait, 0), "the forward of %d x %d tokens "
                                  "waiting for the last batch's analysis", h->B, h->T);
    if (sy) CUDA_TRYF(cudaEventRecord(sy->start, ctx->compute), "the forward's start event");
    const int n_run = h->n_run && !h->want_logits ? h->n_run : c->n_layer;
    int rc = forward_device(ctx, c, n_run);
    if (!rc && sy) CUDA_TRYF(cudaEventRecord(sy->end, ctx->compute), "the forward's end event");
    if (!rc && download) rc = download_all(ctx, c, h, n_run);
    // Both streams drained before returning (also after a failure: no copy may land later).
    cudaError_t e1 = cudaStreamSynchronize(ctx->compute), e2 = cudaStreamSynchronize(ctx->copy);
    if (rc) return -1;
    if (e1 != cudaSuccess)
        return qk_err("the forward pass of %d x %d tokens (%s): %s", h->B, h->T,
                      qk_precision_name(ctx->prec),
                      cudaGetErrorString(e1));
    if (e2 != cudaSuccess) return qk_err("copying the activations of %d x %d tokens to the host: %s", h->B, h->T,
                                         cudaGetErrorString(e2));
    return 0;
}

static int cuda_forward(QkBackend *be, const GPT2Model *m, const int *tokens, GPT2Acts *h) {
    return forward_batch((CudaCtx *)be->ctx, m, tokens, h, 1, NULL);
}

// ---------------------------------------------------------------------------------------------
// The analysis on the device: the forward's activations stay there and go straight to the device
// analysis (analysis_cuda.h); nothing but records and aggregates crosses PCIe.

typedef struct {
    CudaCtx *ctx;
    AnalysisPlan p;
    QkAnaCuda *dev;
    int n_run;                // layers the forward computes: up to the last with an SAE
    int n_sae;                // layers with an SAE (the analysed layers)
    unsigned char *flags_d;   // (n_sae, N) device, N = B T of the batch (room for max_batch T): each
                              // analysed layer's non-finite rows
    unsigned char *flags_h;   // (n_sae, N) host copy
    QkAnaLayerActs *acts;     // (L) the batch's device activations per layer
    cudaEvent_t fwd_start, fwd_end;  // the forward's device time
} CudaAnalysis;

// Stops the batch, as the host analysis does, when an analysed layer's activations (acts) at a
// counted position (t < valid_len[b]) are not finite: before any of them reaches an aggregate.
// Every analysed layer's flags, packed (n_sae, N), in one download of the bytes the checks wrote
// and one wait; the first layer with one is named.
static int check_finite(CudaAnalysis *an, const QkAnaLayerActs *acts, int B, const int32_t *valid_len) {
    CudaCtx *ctx = an->ctx;
    const int T = an->p.T, N = B * T, C = an->p.model->cfg.d_model;
    for (int l = 0, j = 0; l < an->n_run; l++) {
        const QkAnaLayerActs *x = &acts[l];
        if (an->p.sae[l] && fwd_nonfinite_rows(ctx->compute, x->resid, x->ld_resid, x->sigma, x->q, x->k, x->ld_qk, C, N,
                                               an->flags_d + (size_t)j++ * N))
            return -1;
    }
    CUDA_TRYF(cudaMemcpyAsync(an->flags_h, an->flags_d, (size_t)an->n_sae * N, cudaMemcpyDeviceToHost, ctx->compute),
              "%d x %d flags", an->n_sae, N);
    CUDA_TRYF(cudaStreamSynchronize(ctx->compute), "the finite check of %d layers", an->n_sae);
    for (int l = 0, j = 0; l < an->n_run; l++) {
        if (!an->p.sae[l]) continue;
        const unsigned char *fl = an->flags_h + (size_t)j++ * N;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < (valid_len ? valid_len[b] : T); t++) {
                const unsigned f = fl[b * T + t];
                if (!f) continue;
                const char *what = f & 1 ? "resid_pre" : f & 2 ? "ln1 scale" : f & 4 ? "attn q" : "attn k";
                return qk_err("layer %d, window %d of the batch, position %d: non-finite %s (the model overflows on "
                              "this input); stopped before it reached any aggregate", l, b, t, what);
            }
    }
    return 0;
}

static void cuda_analysis_close(QkAnalysis *qa);

static QkAnalysis *cuda_analysis_open(QkBackend *be, const AnalysisPlan *p) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if (cudaSetDevice(ctx->device) != cudaSuccess) {
        qk_err("device %d: %s", ctx->device, cudaGetErrorString(cudaGetLastError()));
        return NULL;
    }
    CudaAnalysis *an = (CudaAnalysis *)qk_calloc(1, sizeof(CudaAnalysis));
    an->ctx = ctx, an->p = *p;
    an->acts = (QkAnaLayerActs *)qk_calloc(p->model->cfg.n_layer, sizeof(QkAnaLayerActs));
    for (int l = 0; l < p->model->cfg.n_layer; l++)
        if (p->sae[l]) an->n_run = l + 1, an->n_sae++;
    const size_t rows = (size_t)p->max_batch * p->T * (an->n_sae ? an->n_sae : 1);
    if (cudaEventCreate(&an->fwd_start) != cudaSuccess || cudaEventCreate(&an->fwd_end) != cudaSuccess) {
        qk_err("cudaEventCreate (the forward's timing): %s", cudaGetErrorString(cudaGetLastError()));
        cuda_analysis_close((QkAnalysis *)an);
        return NULL;
    }
    an->flags_h = (unsigned char *)qk_pinned_alloc(rows, NULL);
    // The model's weights first (the forward would upload them at its first batch), so that the
    // analysis's room check sees what is free after them; its reserve: the forward's activations
    // for the largest batch (analyse's shape: no attention rows kept, no logits).
    const GPT2Config *c = &p->model->cfg;
    if (ensure_weights(ctx, p->model)) {
        cuda_analysis_close((QkAnalysis *)an);
        return NULL;
    }
    const size_t reserve =
        acts_match(&ctx->a, c, p->max_batch, p->T, 0, 0) ? 0 : qk_cuda_acts_bytes(c, p->max_batch, p->T, 0, 0, NULL);
    if (dev_alloc((void **)&an->flags_d, rows, "the finite-check flags") ||
        !(an->dev = qk_ana_cuda_open(p, ctx->device, ctx->prec, 1, reserve))) {
        cuda_analysis_close((QkAnalysis *)an);
        return NULL;
    }
    return (QkAnalysis *)an;
}

static int cuda_analyse(QkAnalysis *qa, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                        QkRecordsFn emit, void *emit_ctx, double *seconds) {
    CudaAnalysis *an = (CudaAnalysis *)qa;
    CudaCtx *ctx = an->ctx;
    const AnalysisPlan *p = &an->p;
    const GPT2Config *c = &p->model->cfg;
    if (qk_analysis_check_batch(p, tokens, B)) return -1;
    GPT2Acts shape;
    memset(&shape, 0, sizeof shape);
    shape.B = B, shape.T = p->T, shape.n_run = an->n_run;
    // The forward overwrites the activations the last batch's analysis may still read: its kernels
    // wait for that (the tokens' upload does not); its time is the device's, between events.
    const FwdSync sy = {(cudaEvent_t)qk_ana_cuda_acts_event(an->dev), an->fwd_start, an->fwd_end};
    if (forward_batch(ctx, p->model, tokens, &shape, 0, &sy)) return -1;
    float fwd_ms = 0;
    CUDA_TRYF(cudaEventElapsedTime(&fwd_ms, an->fwd_start, an->fwd_end), "the forward's time");
    seconds[QK_STAGE_FORWARD] += fwd_ms * 1e-3;
    // Layer l's activations: resid_pre l, its LN1 scale, and q / k of every head (N, C each).
    const DevActs *a = &ctx->a;
    const size_t NC = (size_t)B * p->T * c->d_model;
    QkAnaLayerActs *acts = an->acts;
    for (int l = 0; l < an->n_run; l++)
        acts[l] = QkAnaLayerActs{a->resid + l * a->stride, c->d_model, a->ln1_scale + (size_t)l * B * p->T,
                                 a->q + l * NC, a->k + l * NC, c->d_model};
    if (check_finite(an, acts, B, valid_len)) return -1;
    return qk_ana_cuda_run(an->dev, acts, valid_len, B, agg, emit, emit_ctx, seconds);
}

// The dense aggregates stay on the device across batches (qk_ana_cuda_open's defer_flush): one
// download per shard, not 8 x d_sae int64 per analysed head and batch.
static int cuda_analysis_flush(QkAnalysis *qa, HeadAggregates *agg, double *seconds) {
    CudaAnalysis *an = (CudaAnalysis *)qa;
    return qk_ana_cuda_flush(an->dev, agg, seconds);
}

static void cuda_analysis_close(QkAnalysis *qa) {
    CudaAnalysis *an = (CudaAnalysis *)qa;
    if (!an) return;
    qk_ana_cuda_close(an->dev);
    cudaFree(an->flags_d);
    qk_pinned_free(an->flags_h);
    if (an->fwd_start) cudaEventDestroy(an->fwd_start);
    if (an->fwd_end) cudaEventDestroy(an->fwd_end);
    free(an->acts);
    free(an);
}

static int cuda_set_precision(QkBackend *be, const char *p) {
    return qk_precision_parse(p, &((CudaCtx *)be->ctx)->prec);
}

// ---------------------------------------------------------------------------------------------
// Backend entry points

extern "C" int qk_cuda_probe(char *why, int why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(why, why_len, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) snprintf(why, why_len, "no CUDA device found");
    return n;
}

// Page-locked host memory for the activation cache: device-to-host copies at full bus speed,
// and asynchronous copies possible.  When the driver refuses (locked-memory limits), ordinary
// memory still works, only slower; cudaPointerGetAttributes tells the two apart at free.
static void *cuda_host_alloc(void *, size_t bytes) { return qk_pinned_alloc(bytes, NULL); }

static void cuda_host_free(void *, void *p) { qk_pinned_free(p); }

static void cuda_destroy(QkBackend *be) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if (ctx) {
        cudaSetDevice(ctx->device);  // (a multi-GPU run closes every rank's backend from one thread)
        if (ctx->compute) cudaStreamSynchronize(ctx->compute);
        if (ctx->copy) cudaStreamSynchronize(ctx->copy);
        free_acts(&ctx->a);
        free_weights(&ctx->w);
        for (int i = 0; i < ctx->n_done; i++) cudaEventDestroy(ctx->done[i]);
        free(ctx->done);
        qk_pinned_free(ctx->tok_pinned);
        lt_plans_free(ctx->lt);
        cudaFree(ctx->lt_ws);
        if (ctx->blas) cublasDestroy(ctx->blas);
        for (int p = 0; p < 3; p++) qk_btk_destroy(ctx->btk[p]);
        if (ctx->compute) cudaStreamDestroy(ctx->compute);
        if (ctx->copy) cudaStreamDestroy(ctx->copy);
        (void)cudaGetLastError();
        free(ctx);
    }
    free(be);
}

// QkBackend.static_maps: q2k and k2q of one head through the device top-k (bilinear_topk.h),
// a_i = 1/sqrt(dh) per row as on the host; the m x m scores exist only as L2-sized tiles.
static int cuda_static_maps(QkBackend *be, const HeadTables *t, int k, QkPrecision prec, StaticMaps *s) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if ((int)prec < 0 || (int)prec > 2) return qk_err("static maps: precision %d unknown", (int)prec);
    if (k > 64) return 1;  // beyond the device selection (bilinear_topk.h): the host computes them
    if (!ctx->btk[prec] && !(ctx->btk[prec] = qk_btk_create(ctx->device, prec, 0))) return -1;
    const int m = t->m, dh = t->qk.d_head;
    float *scale = (float *)qk_malloc(sizeof(float) * m);
    for (int i = 0; i < m; i++) scale[i] = 1.0f / sqrtf((float)dh);
    QkTopkOpts o;
    memset(&o, 0, sizeof o);
    o.k = k;
    int rc = qk_btk_run_host(ctx->btk[prec], NULL, m, m, dh, t->Qd, dh, scale, t->Kd, NULL, &o, s->q2k_idx, s->q2k_val, NULL) ||
             qk_btk_run_host(ctx->btk[prec], NULL, m, m, dh, t->Kd, dh, scale, t->Qd, NULL, &o, s->k2q_idx, s->k2q_val, NULL);
    free(scale);
    if (!rc) return 0;
    char why[1024];
    snprintf(why, sizeof why, "%s", qk_errmsg());
    return qk_err("static maps on CUDA (m %d, d_head %d, k %d, %s): %s", m, dh, k, qk_precision_name(prec), why);
}

static int cuda_ctx_init(CudaCtx *ctx, int device) {
    ctx->device = device;
    CUDA_TRYF(cudaSetDevice(device), "device %d", device);
    CUDA_TRY(cudaStreamCreateWithFlags(&ctx->compute, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&ctx->copy, cudaStreamNonBlocking));
    BLAS_TRYF(cublasCreate(&ctx->blas), "device %d", device);
    BLAS_TRYF(cublasSetStream(ctx->blas, ctx->compute), "device %d", device);
    if (dev_alloc(&ctx->lt_ws, LT_WORKSPACE, "the cuBLASLt workspace")) return -1;
    if (lt_plans_new(&ctx->lt, ctx->lt_ws, LT_WORKSPACE)) return -1;
    return 0;
}

extern "C" int qk_backend_cuda_new(QkBackend **out, int device) {
    *out = NULL;
    CudaCtx *ctx = (CudaCtx *)qk_calloc(1, sizeof(CudaCtx));
    QkBackend *be = (QkBackend *)qk_calloc(1, sizeof(QkBackend));
    be->name = "cuda";
    be->ctx = ctx;
    be->forward = cuda_forward;
    be->analysis_open = cuda_analysis_open;
    be->analyse = cuda_analyse;
    be->analysis_close = cuda_analysis_close;
    be->analysis_flush = cuda_analysis_flush;
    be->share_weights = cuda_share_weights;
    be->static_maps = cuda_static_maps;
    be->set_precision = cuda_set_precision;
    be->destroy = cuda_destroy;
    be->host_mem.alloc = cuda_host_alloc;
    be->host_mem.free = cuda_host_free;
    if (cuda_ctx_init(ctx, device)) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        cuda_destroy(be);
        return qk_err("%s", keep);
    }
    *out = be;
    return 0;
}
