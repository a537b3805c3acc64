// backend_cuda.cu: the CUDA backend.  GPT-2 forward pass in fp32 (cuBLAS SGEMM with TF32 off:
// the parity mode), filling the same host-side activation cache as the CPU backend.  llm.c-style:
// one small kernel per job, cuBLAS for every matmul, shapes in the comments (row-major).
//
// cuBLAS is column-major: a row-major (R, C) matrix with leading dimension ld is a column-major
// (C, R) matrix with the same ld, so row-major Y = X @ W is computed as column-major Y^T = W^T X^T.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_try.h"
extern "C" {
#include "backend.h"
#include "bilinear_topk.h"
#include "comm.h"
}

// Every CUDA / cuBLAS call is checked; the error names the call.
#define CUBLAS_TRY(call)                                                                         \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) return qk_err("%s: cuBLAS status %d", #call, (int)s_);  \
    } while (0)
#define KERNEL_TRY(name) CUDA_TRY(cudaGetLastError())

// ---------------------------------------------------------------------------------------------
// Device memory

// cudaMalloc that names the size and suggests a smaller batch when the device is full.
static int dev_alloc(float **p, size_t n_floats, const char *what) {
    cudaError_t e = cudaMalloc((void **)p, n_floats * sizeof(float) + 1);
    if (e == cudaSuccess) return 0;
    *p = NULL;
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return qk_err("cudaMalloc of %zu bytes for %s failed (%s; %zu MiB free of %zu MiB): use a smaller --batch",
                  n_floats * sizeof(float), what, cudaGetErrorString(e), free_b >> 20, total_b >> 20);
}

static int upload(float **dst, const float *src, size_t n, const char *what) {
    if (dev_alloc(dst, n, what)) return -1;
    CUDA_TRY(cudaMemcpy(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

typedef struct {
    float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
} DevLayer;

typedef struct {
    const GPT2Model *owner;  // the host model these weights were uploaded from
    float *wte, *wpe, *lnf_w, *lnf_b;
    DevLayer *layers;
    int n_layer;
} DevWeights;

// Device mirror of GPT2Acts for one batch shape.
typedef struct {
    int B, T, keep_attn, want_logits, n_run;
    int *tokens;                                   // (B, T)
    float *resid, *ln1_scale, *q, *k, *scores, *pattern, *logits;  // as GPT2Acts
    float *ln, *qkv, *z, *fc, *lnf_scale;
} DevActs;

struct CudaCtx {
    int device;
    QkBtk *btk[3];  // bilinear top-k contexts by QkPrecision, made on first use
    cublasHandle_t blas;
    DevWeights w;
    DevActs a;
};

static void free_weights(DevWeights *w) {
    for (int l = 0; l < w->n_layer && w->layers; l++) {
        DevLayer *d = &w->layers[l];
        float *p[] = {d->ln1_w, d->ln1_b, d->attn_w, d->attn_b, d->proj_w, d->proj_b,
                      d->ln2_w, d->ln2_b, d->fc_w,   d->fc_b,   d->fcproj_w, d->fcproj_b};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    }
    free(w->layers);
    cudaFree(w->wte);
    cudaFree(w->wpe);
    cudaFree(w->lnf_w);
    cudaFree(w->lnf_b);
    memset(w, 0, sizeof *w);
}

// One weight tensor: where its device copy goes, its host copy, its size in floats, its name.
typedef struct {
    float **dst;
    const float *src;
    size_t n;
    const char *what;
} WeightSlot;

// The weight tensors of m in a fixed order with their device slots in *w (whose layer array it
// allocates): *slots (free it) gets 4 + 12 L of them; returns the count.
static int weight_slots(DevWeights *w, const GPT2Model *m, WeightSlot **slots) {
    const GPT2Config *c = &m->cfg;
    size_t C = c->d_model, F = c->d_mlp;
    w->layers = (DevLayer *)qk_calloc(c->n_layer, sizeof(DevLayer));
    w->n_layer = c->n_layer;
    WeightSlot *s = (WeightSlot *)qk_malloc(sizeof(WeightSlot) * (4 + 12 * (size_t)c->n_layer));
    int n = 0;
#define SLOT(dev, host, count, name) (s[n++] = WeightSlot{&(dev), (host), (count), (name)})
    SLOT(w->wte, m->wte, (size_t)c->vocab_size * C, "wte"), SLOT(w->wpe, m->wpe, (size_t)c->n_ctx * C, "wpe");
    SLOT(w->lnf_w, m->lnf_w, C, "ln_f"), SLOT(w->lnf_b, m->lnf_b, C, "ln_f");
    for (int l = 0; l < c->n_layer; l++) {
        const GPT2Layer *h = &m->layers[l];
        DevLayer *d = &w->layers[l];
        SLOT(d->ln1_w, h->ln1_w, C, "ln_1"), SLOT(d->ln1_b, h->ln1_b, C, "ln_1");
        SLOT(d->attn_w, h->attn_w, C * 3 * C, "c_attn"), SLOT(d->attn_b, h->attn_b, 3 * C, "c_attn");
        SLOT(d->proj_w, h->proj_w, C * C, "c_proj"), SLOT(d->proj_b, h->proj_b, C, "c_proj");
        SLOT(d->ln2_w, h->ln2_w, C, "ln_2"), SLOT(d->ln2_b, h->ln2_b, C, "ln_2");
        SLOT(d->fc_w, h->fc_w, C * F, "c_fc"), SLOT(d->fc_b, h->fc_b, F, "c_fc");
        SLOT(d->fcproj_w, h->fcproj_w, F * C, "mlp.c_proj"), SLOT(d->fcproj_b, h->fcproj_b, C, "mlp.c_proj");
    }
#undef SLOT
    *slots = s;
    return n;
}

static int upload_weights(DevWeights *w, const GPT2Model *m) {
    free_weights(w);
    WeightSlot *s;
    int n = weight_slots(w, m, &s), rc = 0;
    for (int i = 0; i < n && !rc; i++) rc = upload(s[i].dst, s[i].src, s[i].n, s[i].what);
    free(s);
    if (rc) return -1;
    w->owner = m;
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
    int n = 0, is_root = comm->rank(comm) == root;
    if (!rc) {
        free_weights(&ctx->w);
        n = weight_slots(&ctx->w, m, &s);
    }
    for (int i = 0; i < n && !rc; i++)
        rc = is_root ? upload(s[i].dst, s[i].src, s[i].n, s[i].what) : dev_alloc(s[i].dst, s[i].n, s[i].what);
    // Every rank holds its buffers (or has failed) before any broadcast starts: no rank is left
    // waiting in one.
    int64_t failed = rc != 0;
    if (comm->allreduce_i64(comm, &failed, 1)) rc = -1;
    else if (failed && !rc) rc = qk_err("another rank could not hold the model weights on its GPU");
    for (int i = 0; i < n && !rc; i++) rc = comm->bcast_device(comm, *s[i].dst, s[i].n * sizeof(float), root);
    free(s);
    if (rc) return -1;
    ctx->w.owner = m;
    return 0;
}

static void free_acts(DevActs *a) {
    cudaFree(a->tokens);
    float *p[] = {a->resid, a->ln1_scale, a->q, a->k, a->scores, a->pattern, a->logits,
                  a->ln, a->qkv, a->z, a->fc, a->lnf_scale};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    memset(a, 0, sizeof *a);
}

static int alloc_acts(DevActs *a, const GPT2Config *c, const GPT2Acts *h) {
    free_acts(a);
    size_t BT = (size_t)h->B * h->T, L = c->n_layer, C = c->d_model, H = c->n_head, TT = (size_t)h->T * h->T;
    a->B = h->B;
    a->T = h->T;
    a->keep_attn = h->keep_attn;
    a->want_logits = h->want_logits;
    CUDA_TRY(cudaMalloc((void **)&a->tokens, BT * sizeof(int)));
    if (dev_alloc(&a->resid, (L + 1) * BT * C, "the residual stream") || dev_alloc(&a->ln1_scale, L * BT, "ln1 scales") ||
        dev_alloc(&a->q, L * BT * C, "hook_q") || dev_alloc(&a->k, L * BT * C, "hook_k") ||
        dev_alloc(&a->scores, (h->keep_attn ? L : 1) * h->B * H * TT, "attention scores") ||
        dev_alloc(&a->pattern, (h->keep_attn ? L : 1) * h->B * H * TT, "attention patterns") ||
        (h->want_logits && dev_alloc(&a->logits, BT * c->vocab_size, "logits")) || dev_alloc(&a->ln, BT * C, "scratch") ||
        dev_alloc(&a->qkv, BT * 3 * C, "scratch") || dev_alloc(&a->z, BT * C, "scratch") ||
        dev_alloc(&a->fc, BT * c->d_mlp, "scratch") || dev_alloc(&a->lnf_scale, BT, "scratch"))
        return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Kernels

// x (N, C) = wte[tokens] + wpe[pos]
__global__ void embed_kernel(float *x, const int *tokens, const float *wte, const float *wpe, int N, int T, int C) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    int n = (int)(i / C), c = (int)(i % C);
    x[i] = wte[(size_t)tokens[n] * C + c] + wpe[(size_t)(n % T) * C + c];
}

// One warp per row: out (N, C) = (x - mean) / scale * w + b, scale (N) = sqrt(var + eps).
// Two passes over the row (mean, then centred variance) as torch.nn.LayerNorm.
__global__ void layernorm_kernel(float *out, float *scale, const float *x, const float *w, const float *b, int N, int C,
                                 float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C;
    float s = 0;
    for (int i = lane; i < C; i += 32) s += xr[i];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float mean = s / C, v = 0;
    for (int i = lane; i < C; i += 32) v += (xr[i] - mean) * (xr[i] - mean);
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    float sc = sqrtf(v / C + eps);
    if (lane == 0) scale[row] = sc;
    float *orow = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) orow[i] = (xr[i] - mean) / sc * w[i] + b[i];
}

// out (N, C) = base (N, C) + bias (C)   (base may alias out)
__global__ void add_bias_kernel(float *out, const float *base, const float *bias, int N, int C) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)N * C) out[i] = base[i] + bias[i % C];
}

// out (N, C) = bias broadcast over rows
__global__ void fill_bias_kernel(float *out, const float *bias, int N, int C) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)N * C) out[i] = bias[i % C];
}

__global__ void gelu_new_kernel(float *x, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// One warp per score row (b, h, i) of (B, H, T, T): causal softmax.  Keys j > i get score -inf
// and weight 0, as TransformerLens's hook_attn_scores / hook_pattern.
__global__ void causal_softmax_kernel(float *scores, float *pattern, int rows, int T) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int i = row % T;
    float *s = scores + (size_t)row * T, *p = pattern + (size_t)row * T;
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32) mx = fmaxf(mx, s[j]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (int j = lane; j <= i; j += 32) sum += expf(s[j] - mx);
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float r = 1.0f / sum;
    for (int j = lane; j < T; j += 32) {
        if (j <= i) p[j] = expf(s[j] - mx) * r;
        else {
            s[j] = -INFINITY;
            p[j] = 0.0f;
        }
    }
}

static unsigned blocks_for(size_t n, unsigned threads) { return (unsigned)((n + threads - 1) / threads); }

// ---------------------------------------------------------------------------------------------
// Forward pass

// Row-major out (N, Cout) (+)= inp (N, Cin) @ w (Cin, Cout), beta 0 or 1.
static int gemm_rm(cublasHandle_t h, float *out, const float *inp, const float *w, int N, int Cin, int Cout, float beta) {
    const float one = 1.0f;
    cublasStatus_t st = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, Cout, N, Cin, &one, w, Cout, inp, Cin, &beta, out, Cout);
    if (st != CUBLAS_STATUS_SUCCESS)  // the shapes, row-major: (N, Cin) x (Cin, Cout)
        return qk_err("cublasSgemm (%d x %d) x (%d x %d): cuBLAS status %d", N, Cin, Cin, Cout, (int)st);
    return 0;
}

// Causal attention of one layer: qkv (B, T, 3C) -> hooks q, k (B, T, C), scores and pattern
// (B, H, T, T), z (B, T, C).
static int attention(CudaCtx *ctx, const GPT2Config *c, int B, int T, const float *qkv, float *hq, float *hk,
                     float *scores, float *pattern, float *z) {
    const int C = c->d_model, H = c->n_head, dh = c->d_head, C3 = 3 * C;
    const size_t N = (size_t)B * T;
    CUDA_TRY(cudaMemcpy2D(hq, C * sizeof(float), qkv, C3 * sizeof(float), C * sizeof(float), N, cudaMemcpyDeviceToDevice));
    CUDA_TRY(cudaMemcpy2D(hk, C * sizeof(float), qkv + C, C3 * sizeof(float), C * sizeof(float), N,
                          cudaMemcpyDeviceToDevice));
    const float inv = 1.0f / sqrtf((float)dh), one = 1.0f, zero = 0.0f;
    for (int b = 0; b < B; b++) {
        const float *Q = qkv + (size_t)b * T * C3, *K = Q + C, *V = Q + 2 * C;
        float *S = scores + (size_t)b * H * T * T, *P = pattern + (size_t)b * H * T * T;
        // Per head h: S_h (T, T) = Q_h K_h^T * inv, i.e. column-major S_h^T = K_h Q_h^T.
        CUBLAS_TRY(cublasSgemmStridedBatched(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, dh, &inv, K, C3, dh, Q, C3, dh,
                                             &zero, S, T, (long long)T * T, H));
        int rows = H * T;
        causal_softmax_kernel<<<blocks_for(rows, 8), 256>>>(S, P, rows, T);
        KERNEL_TRY(causal_softmax_kernel);
        // z_h (T, dh) = P_h (T, T) V_h (T, dh), written into columns h*dh.. of z (B, T, C).
        CUBLAS_TRY(cublasSgemmStridedBatched(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, dh, T, T, &one, V, C3, dh, P, T,
                                             (long long)T * T, &zero, z + (size_t)b * T * C, C, dh, H));
    }
    return 0;
}

static int forward_device(CudaCtx *ctx, const GPT2Config *c, DevActs *a) {
    const DevWeights *w = &ctx->w;
    const int B = a->B, T = a->T, C = c->d_model, F = c->d_mlp, N = B * T, H = c->n_head;
    const size_t NC = (size_t)N * C, layer_attn = (size_t)B * H * T * T;
    const unsigned TB = 256;
    embed_kernel<<<blocks_for(NC, TB), TB>>>(a->resid, a->tokens, w->wte, w->wpe, N, T, C);
    KERNEL_TRY(embed_kernel);
    const int n_run = a->n_run && !a->want_logits ? a->n_run : c->n_layer;
    for (int l = 0; l < n_run; l++) {
        const DevLayer *ly = &w->layers[l];
        float *in = a->resid + l * NC, *out = a->resid + (l + 1) * NC;
        float *S = a->scores + (a->keep_attn ? l * layer_attn : 0), *P = a->pattern + (a->keep_attn ? l * layer_attn : 0);
        layernorm_kernel<<<blocks_for(N, 8), 256>>>(a->ln, a->ln1_scale + (size_t)l * N, in, ly->ln1_w, ly->ln1_b, N, C,
                                                     c->ln_eps);
        KERNEL_TRY(layernorm_kernel);
        fill_bias_kernel<<<blocks_for(NC * 3, TB), TB>>>(a->qkv, ly->attn_b, N, 3 * C);
        KERNEL_TRY(fill_bias_kernel);
        if (gemm_rm(ctx->blas, a->qkv, a->ln, ly->attn_w, N, C, 3 * C, 1.0f)) return -1;
        if (attention(ctx, c, B, T, a->qkv, a->q + l * NC, a->k + l * NC, S, P, a->z)) return -1;
        // out = in + b_proj + z W_proj  (resid_mid)
        add_bias_kernel<<<blocks_for(NC, TB), TB>>>(out, in, ly->proj_b, N, C);
        KERNEL_TRY(add_bias_kernel);
        if (gemm_rm(ctx->blas, out, a->z, ly->proj_w, N, C, C, 1.0f)) return -1;
        // out += b_fcproj + gelu_new(LN2(out) W_fc + b_fc) W_fcproj
        layernorm_kernel<<<blocks_for(N, 8), 256>>>(a->ln, a->lnf_scale, out, ly->ln2_w, ly->ln2_b, N, C, c->ln_eps);
        KERNEL_TRY(layernorm_kernel);
        fill_bias_kernel<<<blocks_for((size_t)N * F, TB), TB>>>(a->fc, ly->fc_b, N, F);
        KERNEL_TRY(fill_bias_kernel);
        if (gemm_rm(ctx->blas, a->fc, a->ln, ly->fc_w, N, C, F, 1.0f)) return -1;
        gelu_new_kernel<<<blocks_for((size_t)N * F, TB), TB>>>(a->fc, (size_t)N * F);
        KERNEL_TRY(gelu_new_kernel);
        add_bias_kernel<<<blocks_for(NC, TB), TB>>>(out, out, ly->fcproj_b, N, C);
        KERNEL_TRY(add_bias_kernel);
        if (gemm_rm(ctx->blas, out, a->fc, ly->fcproj_w, N, F, C, 1.0f)) return -1;
    }
    if (a->want_logits) {
        layernorm_kernel<<<blocks_for(N, 8), 256>>>(a->ln, a->lnf_scale, a->resid + c->n_layer * NC, w->lnf_w, w->lnf_b,
                                                     N, C, c->ln_eps);
        KERNEL_TRY(layernorm_kernel);
        const float one = 1.0f, zero = 0.0f;
        // logits (N, V) = ln (N, C) wte^T: column-major logits^T = wte ln^T, wte row-major (V, C).
        CUBLAS_TRY(cublasSgemm(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, c->vocab_size, N, C, &one, w->wte, C, a->ln, C, &zero,
                               a->logits, c->vocab_size));
    }
    return 0;
}

static int download(float *dst, const float *src, size_t n) {
    CUDA_TRY(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

static int cuda_forward(QkBackend *be, const GPT2Model *m, const int *tokens, GPT2Acts *h) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    const GPT2Config *c = &m->cfg;
    CUDA_TRY(cudaSetDevice(ctx->device));
    if (ctx->w.owner != m && upload_weights(&ctx->w, m)) return -1;
    DevActs *a = &ctx->a;
    if ((a->B != h->B || a->T != h->T || a->keep_attn != h->keep_attn || a->want_logits != h->want_logits) &&
        alloc_acts(a, c, h))
        return -1;
    size_t BT = (size_t)h->B * h->T, L = c->n_layer, C = c->d_model;
    size_t attn = (h->keep_attn ? L : 1) * h->B * c->n_head * (size_t)h->T * h->T;
    CUDA_TRY(cudaMemcpy(a->tokens, tokens, BT * sizeof(int), cudaMemcpyHostToDevice));
    a->n_run = h->n_run;
    if (forward_device(ctx, c, a)) return -1;
    CUDA_TRY(cudaDeviceSynchronize());
    if (download(h->resid, a->resid, (L + 1) * BT * C) || download(h->ln1_scale, a->ln1_scale, L * BT) ||
        download(h->q, a->q, L * BT * C) || download(h->k, a->k, L * BT * C) || download(h->scores, a->scores, attn) ||
        download(h->pattern, a->pattern, attn) ||
        (h->want_logits && download(h->logits, a->logits, BT * c->vocab_size)))
        return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Backend entry points

extern "C" int qk_cuda_probe(char *why, int why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) snprintf(why, why_len, "no CUDA device found");
    return n;
}

// Page-locked host memory for the activation cache: device-to-host copies at full bus speed,
// and asynchronous copies possible.  When the driver refuses (locked-memory limits), ordinary
// memory still works, only slower; cudaPointerGetAttributes tells the two apart at free.
static void *cuda_host_alloc(void *, size_t bytes) {
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) == cudaSuccess) return p;
    (void)cudaGetLastError();
    return qk_malloc_aligned(bytes);
}

static void cuda_host_free(void *, void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) == cudaSuccess && at.type == cudaMemoryTypeHost) cudaFreeHost(p);
    else {
        (void)cudaGetLastError();
        free(p);
    }
}

static void cuda_destroy(QkBackend *be) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if (ctx) {
        cudaSetDevice(ctx->device);  // (a multi-GPU run closes every rank's backend from one thread)
        free_acts(&ctx->a);
        free_weights(&ctx->w);
        if (ctx->blas) cublasDestroy(ctx->blas);
        for (int p = 0; p < 3; p++) qk_btk_destroy(ctx->btk[p]);
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
    CUDA_TRY(cudaSetDevice(device));
    CUBLAS_TRY(cublasCreate(&ctx->blas));
    // fp32 parity mode: no TF32 tensor-core rounding inside SGEMM.
    CUBLAS_TRY(cublasSetMathMode(ctx->blas, CUBLAS_PEDANTIC_MATH));
    return 0;
}

extern "C" int qk_backend_cuda_new(QkBackend **out, int device) {
    *out = NULL;
    CudaCtx *ctx = (CudaCtx *)qk_calloc(1, sizeof(CudaCtx));
    QkBackend *be = (QkBackend *)qk_calloc(1, sizeof(QkBackend));
    be->name = "cuda";
    be->ctx = ctx;
    be->forward = cuda_forward;
    // The analysis on the host after the CUDA forward pass, until it has its own kernels.
    be->analysis_open = qk_analysis_host_open;
    be->analyse = qk_analysis_host_run;
    be->analysis_close = qk_analysis_host_close;
    be->share_weights = cuda_share_weights;
    be->static_maps = cuda_static_maps;
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
