// forward_matmul.cu: the GEMMs of the forward pass through cuBLASLt (llm.c's matmul_cublaslt).
//   row-major D (N, Cout) = X (N, Cin) @ W (Cin, Cout)  [+ bias (Cout)]  [+ R (N, Cout)]  [GELU]
//   computed column-major as D^T (Cout, N) = W^T (Cout, Cin) X^T (Cin, N): W row-major (Cin, Cout)
//   is column-major (Cout, Cin) with ld Cout; transw: W given row-major (Cout, Cin) (the tied
//   unembedding wte), used transposed.
// Epilogues: the bias (CUBLASLT_EPILOGUE_BIAS; bias of D's type), bias then GELU (tanh form,
// GPT-2's gelu_new; the tf32 and bf16 modes), and the residual as C with beta = 1 (D = XW + b + R:
// the residual add fused into the projection GEMMs).  Types: X, W fp32 or bf16; fp32
// accumulation; D fp32 (bf16 only for the bf16 mode's MLP hidden layer).
// Determinism: the algorithm of each (shape, types, epilogue, compute type) is chosen once by
// cublasLtMatmulAlgoGetHeuristic and pinned in a plan (not re-chosen per call), with one fixed
// workspace on one stream: the same inputs give the same bits run to run.  A different batch size
// is a different shape and may get another algorithm (FORMAT.md).
#include <string.h>

#include "model/forward.cuh"

typedef struct {
    GemmShape key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lcd;
    cublasLtMatmulAlgo_t algo;
} LtPlan;

#define MAX_PLANS 64
struct LtPlans {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    LtPlan plan[MAX_PLANS];
    int n;
};

static const char *compute_name(cublasComputeType_t c) {
    return c == CUBLAS_COMPUTE_32F ? "fp32" : c == CUBLAS_COMPUTE_32F_FAST_TF32 ? "tf32" : "fp32 accumulate";
}

// A failed cuBLASLt call: the call, the GEMM's shape and types, and cuBLAS's status.
#define LT_TRY(call)                                                                             \
    do {                                                                                         \
        cublasStatus_t st_ = (call);                                                             \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                        \
            return qk_err("%s: %s for %s: (%d x %d) x (%d x %d)%s, %s inputs, %s output, %s", #call, \
                          cublasGetStatusString(st_), what, g->N, g->Cin, g->Cin, g->Cout,       \
                          g->transw ? " (W transposed)" : "", g->ab_bf16 ? "bf16" : "fp32",      \
                          g->d_bf16 ? "bf16" : "fp32", compute_name(g->compute));                \
    } while (0)

int lt_plans_new(LtPlans **out, void *workspace, size_t ws_bytes) {
    LtPlans *p = (LtPlans *)qk_calloc(1, sizeof(LtPlans));
    cublasStatus_t st = cublasLtCreate(&p->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        free(p);
        return qk_err("cublasLtCreate: %s", cublasGetStatusString(st));
    }
    p->ws = workspace;
    p->ws_bytes = ws_bytes;
    *out = p;
    return 0;
}

// A plan for shape g: descriptors and the algorithm, chosen once (the bias pointer of the first
// call is set before the query, as some epilogue algorithms check its alignment).
static int plan_make(LtPlans *p, const GemmShape *g, LtPlan *pl, const void *bias, const char *what) {
    memset(pl, 0, sizeof *pl);
    pl->key = *g;
    const cudaDataType_t ab = g->ab_bf16 ? CUDA_R_16BF : CUDA_R_32F, cd = g->d_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t ta = g->transw ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&pl->desc, g->compute, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtEpilogue_t epi = g->epilogue == QK_EPI_GELU_BIAS ? CUBLASLT_EPILOGUE_GELU_BIAS
                             : g->epilogue == QK_EPI_BIAS    ? CUBLASLT_EPILOGUE_BIAS
                                                             : CUBLASLT_EPILOGUE_DEFAULT;
    LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (g->epilogue != QK_EPI_NONE)
        LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    // A = W: column-major (Cout, Cin) ld Cout, or (Cin, Cout) ld Cin used transposed.
    if (g->transw) LT_TRY(cublasLtMatrixLayoutCreate(&pl->la, ab, g->Cin, g->Cout, g->Cin));
    else LT_TRY(cublasLtMatrixLayoutCreate(&pl->la, ab, g->Cout, g->Cin, g->Cout));
    LT_TRY(cublasLtMatrixLayoutCreate(&pl->lb, ab, g->Cin, g->N, g->Cin));    // X^T (Cin, N)
    LT_TRY(cublasLtMatrixLayoutCreate(&pl->lcd, cd, g->Cout, g->N, g->Cout));  // D^T (and R^T)
    cublasLtMatmulPreference_t pref;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &p->ws_bytes,
                                                             sizeof p->ws_bytes);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(p->lt, pl->desc, pl->la, pl->lb, pl->lcd, pl->lcd, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    LT_TRY(st);
    if (found < 1)
        return qk_err("cuBLASLt has no algorithm for %s: (%d x %d) x (%d x %d), %s inputs, %s output, %s, epilogue %d",
                      what, g->N, g->Cin, g->Cin, g->Cout, g->ab_bf16 ? "bf16" : "fp32", g->d_bf16 ? "bf16" : "fp32",
                      compute_name(g->compute), g->epilogue);
    pl->algo = res.algo;
    return 0;
}

static void plan_destroy(LtPlan *pl) {
    if (pl->la) cublasLtMatrixLayoutDestroy(pl->la);
    if (pl->lb) cublasLtMatrixLayoutDestroy(pl->lb);
    if (pl->lcd) cublasLtMatrixLayoutDestroy(pl->lcd);
    if (pl->desc) cublasLtMatmulDescDestroy(pl->desc);
    memset(pl, 0, sizeof *pl);
}

void lt_plans_free(LtPlans *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) plan_destroy(&p->plan[i]);
    if (p->lt) cublasLtDestroy(p->lt);
    free(p);
}

int fwd_matmul(LtPlans *p, cudaStream_t s, const GemmShape *g, void *D, const void *X, const void *W, const void *bias,
               const float *R, const char *what) {
    LtPlan *pl = NULL;
    for (int i = 0; i < p->n && !pl; i++)
        if (!memcmp(&p->plan[i].key, g, sizeof *g)) pl = &p->plan[i];
    if (!pl) {
        if (p->n == MAX_PLANS) return qk_err("%s: more than %d GEMM shapes in one backend", what, MAX_PLANS);
        if (plan_make(p, g, &p->plan[p->n], bias, what)) {
            plan_destroy(&p->plan[p->n]);
            return -1;
        }
        pl = &p->plan[p->n++];
    }
    if (g->epilogue != QK_EPI_NONE)
        LT_TRY(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const float alpha = 1.0f, beta = g->residual ? 1.0f : 0.0f;
    const void *C = g->residual ? (const void *)R : (const void *)D;
    LT_TRY(cublasLtMatmul(p->lt, pl->desc, &alpha, W, pl->la, X, pl->lb, &beta, C, pl->lcd, D, pl->lcd, &pl->algo, p->ws,
                          p->ws_bytes, s));
    return 0;
}
