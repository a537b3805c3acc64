// backend.c: backend selection and what every backend shares (see backend.h); the CPU backend is
// backend_cpu.c, the CUDA one kernels/backend_cuda.cu (stubs below in a build without CUDA).
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "analysis/analysis_cuda.h"
#include "analysis/bilinear_topk.h"
#include "base/util.h"

int qk_backend_parse(const char *s, QkBackendKind *kind) {
    if (!strcmp(s, "auto")) *kind = QK_BACKEND_AUTO;
    else if (!strcmp(s, "cpu")) *kind = QK_BACKEND_CPU;
    else if (!strcmp(s, "cuda")) *kind = QK_BACKEND_CUDA;
    else return qk_err("--backend: '%s' is not one of auto, cpu, cuda", s);
    return 0;
}

int qk_analysis_flush(QkBackend *be, QkAnalysis *a, HeadAggregates *agg, double *seconds) {
    return be->analysis_flush && a ? be->analysis_flush(a, agg, seconds) : 0;
}

int qk_backend_open(QkBackend **out, QkBackendKind kind, int device, int quiet) {
    *out = NULL;
    if (kind == QK_BACKEND_CPU) {
        *out = qk_backend_cpu_new();
        return 0;
    }
    char why[256] = "";
    int n = qk_cuda_probe(why, sizeof why);
    if (n > 0 && device >= n) {
        if (kind == QK_BACKEND_CUDA) return qk_err("--device %d: only %d CUDA device(s) visible", device, n);
        snprintf(why, sizeof why, "--device %d but only %d CUDA device(s) visible", device, n);
        n = 0;
    }
    if (n > 0 && qk_backend_cuda_new(out, device) == 0) return 0;
    if (n > 0) snprintf(why, sizeof why, "%s", qk_errmsg());
    if (kind == QK_BACKEND_CUDA) return qk_err("--backend cuda: %s", why);
    // The runtime says "driver version is insufficient" also when there is no driver at all, which
    // reads as "upgrade your driver"; on a machine without the NVIDIA driver say that instead.
#ifdef QK_HAVE_CUDA
    if (n <= 0 && access("/proc/driver/nvidia/version", F_OK) && access("/dev/nvidia0", F_OK))
        snprintf(why, sizeof why, "no NVIDIA GPU or driver on this machine");
#endif
    if (!quiet) fprintf(stderr, "qkscope: no usable CUDA device (%s); using the CPU backend\n", why);
    *out = qk_backend_cpu_new();
    return 0;
}

int qk_backend_set_precision(QkBackend *be, const char *precision) {
    if (strcmp(precision, "fp32") && strcmp(precision, "tf32") && strcmp(precision, "bf16"))
        return qk_err("precision '%s': expected fp32, tf32 or bf16", precision);
    if (be->set_precision) return be->set_precision(be, precision);
    if (strcmp(precision, "fp32"))
        return qk_err("precision %s needs the CUDA backend; the %s backend computes in fp32 only", precision, be->name);
    return 0;
}

void qk_backend_close(QkBackend *be) {
    if (be) be->destroy(be);
}

#ifndef QK_HAVE_CUDA
int qk_cuda_probe(char *why, int why_len) {
    snprintf(why, why_len, "this build has no CUDA backend (built with CUDA=0)");
    return 0;
}
int qk_backend_cuda_new(QkBackend **out, int device) {
    (void)device;
    *out = NULL;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
QkBtk *qk_btk_create(int device, QkPrecision prec, size_t l2_bytes) {
    (void)device, (void)prec, (void)l2_bytes;
    qk_err("this build has no CUDA backend (built with CUDA=0)");
    return NULL;
}
void qk_btk_destroy(QkBtk *b) { (void)b; }
void qk_btk_use_stream(QkBtk *b, void *stream) { (void)b, (void)stream; }
// Unreachable without a context; here so that callers link in a CPU-only build.
QkPrecision qk_btk_precision(const QkBtk *b) { return (void)b, QK_PREC_FP32; }
void qk_btk_set_path(QkBtk *b, int fused) { (void)b, (void)fused; }
int qk_btk_set_fused_mma(QkBtk *b, const char *name) {
    (void)b, (void)name;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_btk_set_fused_seed(QkBtk *b, int on) {
    (void)b, (void)on;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_btk_last_path(const QkBtk *b, const char **why) {
    if (why) *why = "this build has no CUDA backend (built with CUDA=0)";
    return (void)b, 0;
}
void qk_btk_blocks(const QkBtk *b, int batch, int n, int M, int *row_block, int *col_block) {
    (void)b, (void)batch, (void)n, (void)M, *row_block = *col_block = 0;
}
int qk_btk_run(QkBtk *b, const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu, const float *a,
               const float *V, const float *c, const QkTopkOpts *o, int32_t *idx, float *val, int32_t *count) {
    (void)b, (void)bt, (void)n, (void)M, (void)r, (void)U, (void)ldu, (void)a, (void)V, (void)c, (void)o, (void)idx;
    (void)val, (void)count;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_btk_run_host(QkBtk *b, const QkBtkBatch *bt, int n, int M, int r, const float *U, int ldu, const float *a,
                    const float *V, const float *c, const QkTopkOpts *o, int32_t *idx, float *val, int32_t *count) {
    return qk_btk_run(b, bt, n, M, r, U, ldu, a, V, c, o, idx, val, count);
}
int qk_btk_gemm_full(QkBtk *b, int n, int M, int r, const float *U, const float *V, void *S, int out_bf16) {
    (void)b, (void)n, (void)M, (void)r, (void)U, (void)V, (void)S, (void)out_bf16;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
QkAnaCuda *qk_ana_cuda_open(const AnalysisPlan *p, int device, QkPrecision prec, int defer_flush, size_t reserve) {
    (void)p, (void)device, (void)prec, (void)defer_flush, (void)reserve;
    qk_err("this build has no CUDA backend (built with CUDA=0)");
    return NULL;
}
// Unreachable without a context; here so that callers link in a CPU-only build.
int qk_ana_cuda_run(QkAnaCuda *a, const QkAnaLayerActs *acts, const int32_t *valid_len, int B, HeadAggregates *agg,
                    QkRecordsFn emit, void *emit_ctx, double *seconds) {
    (void)a, (void)acts, (void)valid_len, (void)B, (void)agg, (void)emit, (void)emit_ctx, (void)seconds;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_ana_cuda_flush(QkAnaCuda *a, HeadAggregates *agg, double *seconds) {
    (void)a, (void)agg, (void)seconds;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
void qk_ana_cuda_close(QkAnaCuda *a) { (void)a; }
void *qk_ana_cuda_acts_event(QkAnaCuda *a) {
    (void)a;
    return NULL;
}
int qk_ana_cuda_acts_wait(QkAnaCuda *a) {
    (void)a;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_ana_cuda_malloc(void **p, size_t bytes) {
    (void)bytes, *p = NULL;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
int qk_ana_cuda_upload(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
void qk_ana_cuda_free(void *p) { (void)p; }
int qk_ana_cuda_aggregate_test(int device, int N, int T, int S, int a, const int32_t *valid_len, int B,
                               const float *metrics, const float *qmarg, const float *kmarg, const int32_t *idx,
                               const int32_t *live, const int32_t *att_idx, HeadAggregates *agg) {
    (void)device, (void)N, (void)T, (void)S, (void)a, (void)valid_len, (void)B, (void)metrics, (void)qmarg;
    (void)kmarg, (void)idx, (void)live, (void)att_idx, (void)agg;
    return qk_err("this build has no CUDA backend (built with CUDA=0)");
}
#endif
