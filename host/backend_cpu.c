// backend_cpu.c: the CPU backend (see backend.h): the reference and the fallback.  Its forward pass
// is model/forward_cpu.c, its analysis analysis/analysis_batch.c's host implementation.
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "base/util.h"
#include "model/forward_cpu.h"

static int cpu_forward(QkBackend *be, const GPT2Model *m, const int *tokens, GPT2Acts *a) {
    (void)be;
    return gpt2_forward_cpu(m, tokens, a);
}

static void cpu_destroy(QkBackend *be) { free(be); }

// QK_AGG_DEFER=1: the CPU backend behaves as the CUDA backend's batch pipeline does, so that the
// CPU suites check every caller against it: a batch is analysed one call late (its records reach
// emit, and its sketch and examples reach agg, during the next analyse or at analysis_flush, with
// the emit and window0 of its own call), and the dense aggregates go to private per-head ones,
// added to the caller's at flush.  The caller's sketch and examples are lent to the private
// aggregates for each batch (moved in and back), so they see every batch in order.
typedef struct {
    QkAnalysis *host;
    AnalysisPlan p;        // the plan (a copy; what it points to is the caller's)
    int n;                 // L*H
    HeadAggregates *held;  // (n) dense fields only (analysed heads)
    int held_dirty;        // a batch added to held since the last flush
    // the batch held back (its own copies: the caller's buffers change by the next call)
    int pending, B, has_valid;
    int32_t *tokens, *valid;  // (p.max_batch, p.T), (p.max_batch)
    HeadAggregates *agg;
    QkRecordsFn emit;
    void *emit_ctx;
    long long *window0;       // (n) the analysed heads' agg->window0 at the batch's call
} DeferAnalysis;

static QkAnalysis *defer_open(QkBackend *be, const AnalysisPlan *p) {
    const GPT2Config *c = &p->model->cfg;
    DeferAnalysis *d = qk_calloc(1, sizeof *d);
    if (!(d->host = qk_analysis_host_open(be, p))) return free(d), NULL;
    d->p = *p, d->n = c->n_layer * c->n_head;
    d->held = qk_calloc(d->n, sizeof(HeadAggregates));
    for (int i = 0; i < d->n; i++)
        if (p->analysed[i]) head_agg_init(&d->held[i], p->sae[i / c->n_head]->d_sae, 1);
    d->tokens = qk_malloc(sizeof(int32_t) * (size_t)p->max_batch * p->T);
    d->valid = qk_malloc(sizeof(int32_t) * (size_t)p->max_batch);
    d->window0 = qk_calloc(d->n, sizeof(long long));
    return (QkAnalysis *)d;
}

static void swap_lent(HeadAggregates *x, HeadAggregates *y) {
    PairSketch s = x->sketch;
    PairExamples e = x->examples;
    x->sketch = y->sketch, x->examples = y->examples;
    y->sketch = s, y->examples = e;
}

// The held-back batch, analysed now into its own call's agg and emit.
static int defer_finish(DeferAnalysis *d, double *seconds) {
    if (!d->pending) return 0;
    d->pending = 0;
    HeadAggregates *agg = d->agg;
    for (int i = 0; agg && i < d->n; i++)
        if (d->p.analysed[i]) swap_lent(&d->held[i], &agg[i]), d->held[i].window0 = d->window0[i];
    double ignored[QK_N_ANALYSIS_STAGES] = {0};
    int rc = qk_analysis_host_run(d->host, d->tokens, d->has_valid ? d->valid : NULL, d->B, agg ? d->held : NULL,
                                  d->emit, d->emit_ctx, seconds ? seconds : ignored);
    d->held_dirty |= agg != NULL;
    for (int i = 0; agg && i < d->n; i++)
        if (d->p.analysed[i]) swap_lent(&agg[i], &d->held[i]);
    return rc;
}

static int defer_run(QkAnalysis *qa, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                     QkRecordsFn emit, void *emit_ctx, double *seconds) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    if (defer_finish(d, seconds)) return -1;  // the batch before this one
    // what the analysis refuses is refused by this call, as on the CUDA backend
    if (qk_analysis_check_batch(&d->p, tokens, B)) return -1;
    memcpy(d->tokens, tokens, sizeof(int32_t) * (size_t)B * d->p.T);
    d->has_valid = valid_len != NULL;
    if (valid_len) memcpy(d->valid, valid_len, sizeof(int32_t) * B);
    for (int i = 0; agg && i < d->n; i++)
        if (d->p.analysed[i]) d->window0[i] = agg[i].window0;
    d->B = B, d->agg = agg, d->emit = emit, d->emit_ctx = emit_ctx, d->pending = 1;
    return 0;
}

static int defer_flush(QkAnalysis *qa, HeadAggregates *agg, double *seconds) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    if (defer_finish(d, seconds)) return -1;
    if (!d->held_dirty) return 0;  // as the CUDA backend: nothing added since the last flush
    d->held_dirty = 0;
    for (int i = 0; i < d->n; i++)
        if (d->p.analysed[i]) head_agg_add_dense(&agg[i], &d->held[i]), head_agg_zero_dense(&d->held[i]);
    return 0;
}

// A batch still held back is dropped (close without flush: the caller gave up on it).
static void defer_close(QkAnalysis *qa) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    if (!d) return;
    qk_analysis_host_close(d->host);
    for (int i = 0; i < d->n; i++)
        if (d->p.analysed[i]) head_agg_free(&d->held[i]);
    free(d->held), free(d->tokens), free(d->valid), free(d->window0), free(d);
}

QkBackend *qk_backend_cpu_new(void) {
    QkBackend *be = qk_calloc(1, sizeof *be);
    be->name = "cpu";
    be->forward = cpu_forward;
    be->analysis_open = qk_analysis_host_open;
    be->analyse = qk_analysis_host_run;
    be->analysis_close = qk_analysis_host_close;
    const char *defer = getenv("QK_AGG_DEFER");
    if (defer && !strcmp(defer, "1")) {
        be->analysis_open = defer_open, be->analyse = defer_run, be->analysis_close = defer_close;
        be->analysis_flush = defer_flush;
    }
    be->destroy = cpu_destroy;
    return be;
}
