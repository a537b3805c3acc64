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

// QK_AGG_DEFER=1: the host analysis into private dense aggregates (per analysed head), added to the
// caller's at flush.  The caller's sketch and examples are lent to the private ones for each batch
// (moved in and back), so they see every batch in order as without deferral.
typedef struct {
    QkAnalysis *host;
    int n;                 // L*H
    const uint8_t *analysed;
    HeadAggregates *held;  // (n) dense fields only (analysed heads)
} DeferAnalysis;

static QkAnalysis *defer_open(QkBackend *be, const AnalysisPlan *p) {
    const GPT2Config *c = &p->model->cfg;
    DeferAnalysis *d = qk_calloc(1, sizeof *d);
    if (!(d->host = qk_analysis_host_open(be, p))) return free(d), NULL;
    d->n = c->n_layer * c->n_head, d->analysed = p->analysed;
    d->held = qk_calloc(d->n, sizeof(HeadAggregates));
    for (int i = 0; i < d->n; i++)
        if (p->analysed[i]) head_agg_init(&d->held[i], p->sae[i / c->n_head]->d_sae, 1);
    return (QkAnalysis *)d;
}

static void swap_lent(HeadAggregates *x, HeadAggregates *y) {
    PairSketch s = x->sketch;
    PairExamples e = x->examples;
    x->sketch = y->sketch, x->examples = y->examples;
    y->sketch = s, y->examples = e;
    x->window0 = y->window0;
}

static int defer_run(QkAnalysis *qa, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                     QkRecordsFn emit, void *emit_ctx, double *seconds) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    for (int i = 0; agg && i < d->n; i++)
        if (d->analysed[i]) swap_lent(&d->held[i], &agg[i]);
    int rc = qk_analysis_host_run(d->host, tokens, valid_len, B, agg ? d->held : NULL, emit, emit_ctx, seconds);
    for (int i = 0; agg && i < d->n; i++)
        if (d->analysed[i]) swap_lent(&agg[i], &d->held[i]);
    return rc;
}

static int defer_flush(QkAnalysis *qa, HeadAggregates *agg) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    for (int i = 0; i < d->n; i++)
        if (d->analysed[i]) head_agg_add_dense(&agg[i], &d->held[i]), head_agg_zero_dense(&d->held[i]);
    return 0;
}

static void defer_close(QkAnalysis *qa) {
    DeferAnalysis *d = (DeferAnalysis *)qa;
    if (!d) return;
    qk_analysis_host_close(d->host);
    for (int i = 0; i < d->n; i++)
        if (d->analysed[i]) head_agg_free(&d->held[i]);
    free(d->held), free(d);
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
