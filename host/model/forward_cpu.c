// forward_cpu.c: GPT-2 forward pass on the CPU in fp32 (qk_gemm, OpenMP loops), filling the
// activation cache as TransformerLens's unprocessed HookedTransformer computes it.  Every GEMM is
// qk_gemm's fixed-order chain, so the cache is bit-identical whatever the threads, the batch and
// the CPU (gemm.h).
#include "model/forward_cpu.h"

#include <math.h>
#include <string.h>

#include "base/gemm.h"

// out (N, Cout) = bias (Cout) + inp (N, Cin) @ w (Cin, Cout): the chain starts from the bias.
static void matmul_bias(float *out, const float *inp, const float *w, const float *bias, int N, int Cin, int Cout) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * Cout, bias, sizeof(float) * Cout);
    qk_gemm(QK_GEMM_N, N, Cout, Cin, 1.0f, inp, Cin, w, Cout, 1, out, Cout);
}

// out (N, C) += add (N, C)
static void add_inplace(float *out, const float *add, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] += add[i];
}

// out (N, C) = LayerNorm(inp) * w + b, with scale (N) = sqrt(var + eps) (biased variance, eps
// inside the root, as torch.nn.LayerNorm).  Statistics in double: cheap, and no cancellation.
static void layernorm(float *out, float *scale, const float *inp, const float *w, const float *b, int N, int C, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += x[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
        var /= C;
        double s = sqrt(var + (double)eps);
        scale[n] = (float)s;
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = (float)((x[i] - mean) / s) * w[i] + b[i];
    }
}

// gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place over n values.
static void gelu_new(float *x, size_t n) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

// Causal self-attention of one layer.  qkv (B, T, 3C) -> q, k hooks (B, T, H, dh), scores and
// pattern (B, H, T, T), z (B, T, C).  Each (b, h) is independent: OpenMP over them, with
// qk_gemm running on the calling thread inside the parallel loop.
static void attention(const GPT2Config *c, int B, int T, const float *qkv, float *hq, float *hk, float *scores,
                      float *pattern, float *z) {
    const int C = c->d_model, H = c->n_head, dh = c->d_head, C3 = 3 * C;
    const float inv = 1.0f / sqrtf((float)dh);
#pragma omp parallel for
    for (int n = 0; n < B * T; n++) {
        memcpy(hq + (size_t)n * C, qkv + (size_t)n * C3, sizeof(float) * C);
        memcpy(hk + (size_t)n * C, qkv + (size_t)n * C3 + C, sizeof(float) * C);
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *Q = qkv + (size_t)b * T * C3 + h * dh;  // (T, dh) with row stride 3C
            const float *K = Q + C, *V = Q + 2 * C;
            float *S = scores + ((size_t)b * H + h) * T * T;     // (T, T)
            float *P = pattern + ((size_t)b * H + h) * T * T;
            qk_gemm(QK_GEMM_T, T, T, dh, inv, Q, C3, K, C3, 0, S, T);
            for (int i = 0; i < T; i++) {
                float *s = S + (size_t)i * T, *p = P + (size_t)i * T;
                float mx = s[0];
                for (int j = 1; j <= i; j++) mx = s[j] > mx ? s[j] : mx;
                double sum = 0;
                for (int j = 0; j <= i; j++) sum += (p[j] = expf(s[j] - mx));
                float r = (float)(1.0 / sum);
                for (int j = 0; j <= i; j++) p[j] *= r;
                for (int j = i + 1; j < T; j++) {
                    s[j] = -INFINITY;
                    p[j] = 0.0f;
                }
            }
            // z (T, dh) = P (T, T) @ V (T, dh), into columns h*dh.. of z (B, T, C).
            qk_gemm(QK_GEMM_N, T, dh, T, 1.0f, P, T, V, C3, 0, z + (size_t)b * T * C + h * dh, C);
        }
}

int gpt2_forward_cpu(const GPT2Model *m, const int *tokens, GPT2Acts *a) {
    const GPT2Config *c = &m->cfg;
    const int B = a->B, T = a->T, C = c->d_model, F = c->d_mlp, N = B * T;
    float *x = acts_resid(a, c, 0);  // (B, T, C) embeddings = hook_resid_pre of layer 0
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *te = m->wte + (size_t)tokens[n] * C, *pe = m->wpe + (size_t)(n % T) * C;
        float *o = x + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = te[i] + pe[i];
    }
    const int n_run = a->n_run && !a->want_logits ? a->n_run : c->n_layer;
    for (int l = 0; l < n_run; l++) {
        const GPT2Layer *ly = &m->layers[l];
        float *in = acts_resid(a, c, l), *out = acts_resid(a, c, l + 1);
        float *hq = a->q + (size_t)l * N * C, *hk = a->k + (size_t)l * N * C;
        layernorm(a->ln, a->ln1_scale + (size_t)l * N, in, ly->ln1_w, ly->ln1_b, N, C, c->ln_eps);
        matmul_bias(a->qkv, a->ln, ly->attn_w, ly->attn_b, N, C, 3 * C);
        attention(c, B, T, a->qkv, hq, hk, acts_scores(a, c, l), acts_pattern(a, c, l), a->z);
        // out = in + (z @ W_proj + b_proj)  (resid_mid, kept in `out` until the MLP adds to it)
        matmul_bias(out, a->z, ly->proj_w, ly->proj_b, N, C, C);
        add_inplace(out, in, (size_t)N * C);
        // MLP: out += gelu_new(LN2(out) @ W_fc + b_fc) @ W_proj + b_proj.  ln1_scale's slot of a
        // later layer is not yet written, so lnf_scale is the LN2 scale's scratch; a->ln, free
        // once the fc GEMM has read it, holds the MLP's output.
        layernorm(a->ln, a->lnf_scale, out, ly->ln2_w, ly->ln2_b, N, C, c->ln_eps);
        matmul_bias(a->fc, a->ln, ly->fc_w, ly->fc_b, N, C, F);
        gelu_new(a->fc, (size_t)N * F);
        matmul_bias(a->ln, a->fc, ly->fcproj_w, ly->fcproj_b, N, F, C);
        add_inplace(out, a->ln, (size_t)N * C);
    }
    if (a->want_logits) {
        layernorm(a->ln, a->lnf_scale, acts_resid(a, c, c->n_layer), m->lnf_w, m->lnf_b, N, C, c->ln_eps);
        qk_gemm(QK_GEMM_T, N, c->vocab_size, C, 1.0f, a->ln, C, m->wte, C, 0, a->logits, c->vocab_size);
    }
    return 0;
}
