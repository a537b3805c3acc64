// analysis_batch.c: see analysis_batch.h.
#include "analysis/analysis_batch.h"

#include <math.h>
#include <stdlib.h>

#include "backend.h"
#include "base/util.h"
#include "model/activations.h"

struct QkAnalysis {
    QkBackend *be;
    AnalysisPlan p;
    GPT2Acts acts;      // (B, T) the batch's activation cache, in the backend's host memory
    HeadRecords *rec;   // (L) per-layer record scratch, reused by the layer's heads
    LayerCode lc;       // the SAE code of the layer being analysed, reused by every layer and batch
    HeadScratch hs;     // analyse_head's working memory, reused by every head and batch
};

QkAnalysis *qk_analysis_host_open(QkBackend *be, const AnalysisPlan *p) {
    QkAnalysis *a = qk_calloc(1, sizeof *a);
    a->be = be;
    a->p = *p;
    const GPT2Config *c = &p->model->cfg;
    a->rec = qk_calloc(c->n_layer, sizeof(HeadRecords));
    for (int l = 0; l < c->n_layer; l++) {
        const QkSae *sae = p->sae[l];
        if (!sae) continue;
        int any_rec = 0;
        for (int h = 0; h < c->n_head; h++) any_rec |= p->recorded[l * c->n_head + h];
        head_records_alloc(&a->rec[l], &p->o, p->max_batch * p->T, qk_sae_slots(sae, p->sae_max_active), sae,
                           p->encoder && any_rec);
        if (p->record_patterns && any_rec) head_records_alloc_patterns(&a->rec[l], p->T);
    }
    return a;
}

// Non-finite activations (a model that overflows on some input: the weights themselves are finite,
// checked at load) must never reach the aggregates: the layer's inputs to the analysis (its
// residual stream, LayerNorm scale, q and k) are checked at every valid position of every window,
// and the first non-finite value fails the batch, naming the layer, the window and the position.
static int check_finite(const GPT2Acts *acts, const GPT2Config *c, int l, const int32_t *valid_len) {
    const size_t BT = (size_t)acts->B * acts->T, C = (size_t)c->d_model;
    const float *resid = acts_resid(acts, c, l), *scale = acts->ln1_scale + l * BT;
    const float *q = acts->q + l * BT * C, *k = acts->k + l * BT * C;
    for (int b = 0; b < acts->B; b++)
        for (int t = 0; t < (valid_len ? valid_len[b] : acts->T); t++) {
            size_t n = (size_t)b * acts->T + t;
            const char *what = NULL;
            for (size_t d = 0; !what && d < C; d++) what = !isfinite(resid[n * C + d]) ? "resid_pre" : NULL;
            if (!what && !isfinite(scale[n])) what = "ln_1 scale";
            for (size_t d = 0; !what && d < C; d++)
                what = !isfinite(q[n * C + d]) ? "attn q" : !isfinite(k[n * C + d]) ? "attn k" : NULL;
            if (what)
                return qk_err("layer %d, window %d of the batch, position %d: non-finite %s (the model overflows on "
                              "this input); stopped before it reached any aggregate", l, b, t, what);
        }
    return 0;
}

int qk_analysis_check_batch(const AnalysisPlan *p, const int32_t *tokens, int B) {
    if (B > p->max_batch) return qk_err("internal: a batch of %d windows, the plan allows %d", B, p->max_batch);
    return gpt2_check_tokens(&p->model->cfg, tokens, B, p->T, "corpus window") ? -1 : 0;
}

int qk_analysis_host_run(QkAnalysis *a, const int32_t *tokens, const int32_t *valid_len, int B, HeadAggregates *agg,
                         QkRecordsFn emit, void *emit_ctx, double *seconds) {
    const AnalysisPlan *p = &a->p;
    const GPT2Config *mc = &p->model->cfg;
    const int T = p->T, C = mc->d_model, L = mc->n_layer, H = mc->n_head;
    if (qk_analysis_check_batch(p, tokens, B)) return -1;
    GPT2Acts *acts = &a->acts;
    if (acts->B != B) {
        gpt2_acts_free(acts);
        gpt2_acts_alloc_in(acts, mc, B, T, 0, 0, &a->be->host_mem);  // pinned for the CUDA backend
        for (int l = 0; l < L; l++)  // no layer after the last analysed one is needed
            if (p->sae[l]) acts->n_run = l + 1;
    }
    double t = qk_now();
    if (a->be->forward(a->be, p->model, tokens, acts)) return -1;
    seconds[QK_STAGE_FORWARD] += qk_now() - t;
    for (int l = 0; l < L; l++) {
        if (!p->sae[l]) continue;
        HeadRecords *rec = &a->rec[l];
        LayerCode *lc = &a->lc;
        if (check_finite(acts, mc, l, valid_len)) return -1;
        t = qk_now();
        if (layer_code_compute(lc, p->sae[l], acts_resid(acts, mc, l), B * T, C, p->sae_max_active)) return -1;
        seconds[QK_STAGE_SAE] += qk_now() - t;
        int rc = 0, enc_alloc = rec->enc;
        for (int h = 0; h < H && !rc; h++) {
            int i = l * H + h;
            if (!p->analysed[i]) continue;
            rec->enc = enc_alloc && p->recorded[i];  // the encoder projection only where it is written
            rec->records = p->recorded[i];           // and the rest of the records
            rec->patterns = rec->pattern && p->recorded[i];
            t = qk_now();
            rc = analyse_head(&p->o, &p->tables[i], p->sae[l], lc, acts, mc, valid_len, rec, &agg[i], &a->hs);
            seconds[QK_STAGE_HEADS] += qk_now() - t;
            if (!rc && p->recorded[i] && emit) rc = emit(emit_ctx, l, h, rec, B);
        }
        rec->enc = enc_alloc;
        if (rc) return -1;
    }
    return 0;
}

void qk_analysis_host_close(QkAnalysis *a) {
    if (!a) return;
    const GPT2Config *c = &a->p.model->cfg;
    gpt2_acts_free(&a->acts);  // before the backend that allocated it closes
    layer_code_free(&a->lc);
    head_scratch_free(&a->hs);
    for (int l = 0; l < c->n_layer; l++)
        if (a->rec[l].n) head_records_free(&a->rec[l]);
    free(a->rec);
    free(a);
}
