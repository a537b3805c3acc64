// run_loop.c: the Run of `qkscope run` (run_loop.h): streams a corpus through GPT-2, encodes the
// residual stream of every analysed layer with its SAE, and for every analysed head computes the
// feature-space attention of docs/ANALYSIS.md: per-token records for the recorded heads and
// corpus aggregates for all of them, into one file or a folder of shards with a manifest
// (docs/FORMAT.md).  run_single drives one Run over the corpus; run_ranks.c drives one per rank.
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/head_tables.h"
#include "base/exit_status.h"
#include "base/util.h"
#include "io/agg_io.h"
#include "io/chunk_writer.h"
#include "io/h5out.h"
#include "io/vocab_out.h"
#include "run/run_loop.h"
#include "run/shard_cut.h"
#include "text/bpe.h"

// A per-window dataset and its chunk-writer handle (appends go straight to the handle).
typedef struct {
    hid_t ds;
    int cw;
} RunSink;

// The per-token datasets of one recorded head.  Only RunSink fields: closed as an array.
typedef struct {
    RunSink top_idx, top_val, bot_idx, bot_val, enc_idx, enc_val, enc_n, att_idx, att_w, pair_f, pair_g, pair_val,
        groups, metrics, pattern, pattern_hat;
} RecordSets;

typedef struct {
    RunSetup s;
    QkH5Out out;
    QkBackend *be;
    QkBpe *bpe;
    QkTokenSet seen;        // token ids of the open file, for its vocab/ pieces (with a vocabulary)
    QkCorpus *corpus;
    AnalysisOpts o;
    int L, H, T;
    HeadTables *tables;     // (L*H) built for analysed heads
    HeadAggregates *agg;    // (L*H)
    RecordSets *rs;         // (L*H)
    QkAnalysis *an;         // the backend's analysis under this run's plan
    RunSink tokens, length, prov;
    void *idx_buf;          // feature-index conversion scratch
    int64_t tokens_done, windows_done;  // this invocation
    RunEta eta;             // the progress line's estimate
    double t_stage[5];      // seconds per stage, STAGE_*
    // Output: one file, or (shard_tokens > 0) a folder of shards with a manifest.
    const char *out_path;
    int sharded, shard, shard_open, quiet;
    int64_t shard_windows;        // windows per shard
    int64_t shard_windows_done, shard_tokens_done;
    int64_t window_index;         // corpus windows seen (skipped on resume included)
    char config_hash[65];
    // Per-window datasets go through the chunk writer (parallel compression, direct chunk writes).
    ChunkWriter *cw;
} Run;

// Creates the per-window dataset `name` of the open file (qk_h5_dataset_ext) and registers it
// with the chunk writer.
static int sink_create(Run *r, RunSink *k, const char *name, hid_t type, int nd, const hsize_t *dims,
                       const char *const *labels) {
    if ((k->ds = qk_h5_dataset_ext(&r->out, name, type, nd, dims, labels)) < 0) return -1;
    return (k->cw = cw_add(r->cw, k->ds, type)) < 0 ? -1 : 0;
}

// Appends B windows of rows to a per-window dataset.
static int append(Run *r, const RunSink *k, const void *rows, int B) { return cw_append(r->cw, k->cw, rows, B); }

enum { STAGE_READ, STAGE_FORWARD, STAGE_SAE, STAGE_ANALYSIS, STAGE_WRITE, N_STAGES };
static const char *const k_stage_names[N_STAGES] = {"read", "forward", "sae_encode", "analysis", "write"};

static const char *const k_lbl_wtk[3] = {"window", "pos", "rank"};
static const char *const k_lbl_wta[3] = {"window", "pos", "attended"};
static const char *const k_lbl_wtap[4] = {"window", "pos", "attended", "rank"};
static const char *const k_lbl_groups[5] = {"window", "pos", "attended", "query_group", "key_group"};
static const char *const k_lbl_wtm[3] = {"window", "pos", "metric"};
static const char *const k_lbl_wt[2] = {"window", "pos"};
static const char *const k_lbl_wqk[3] = {"window", "query_pos", "key_pos"};

static int create_records(Run *r, int l, int h) {
    RecordSets *d = &r->rs[l * r->H + h];
    const AnalysisOpts *o = &r->o;
    const QkSae *sae = r->s.sae[l];
    hid_t ft = qk_h5_feature_type(sae->d_sae);
    char n[160];
    hsize_t wtk[3] = {0, r->T, o->k}, wta[3] = {0, r->T, o->a}, wtap[4] = {0, r->T, o->a, o->p};
    hsize_t wtg[5] = {0, r->T, o->a, N_GROUPS, N_GROUPS}, wtm[3] = {0, r->T, N_METRICS}, wt[2] = {0, r->T};
    int enc_slots = qk_sae_slots(sae, o->enc_slots);
    hsize_t wte[3] = {0, r->T, enc_slots};
#define DS(field, name, type, nd, dims, labels) \
    (snprintf(n, sizeof n, "heads/%d.%d/" name, l, h), sink_create(r, &d->field, n, type, nd, dims, labels))
    if (DS(top_idx, "lookfor_top_idx", ft, 3, wtk, k_lbl_wtk) || DS(top_val, "lookfor_top_val", H5T_NATIVE_FLOAT, 3, wtk, k_lbl_wtk) ||
        DS(bot_idx, "lookfor_bottom_idx", ft, 3, wtk, k_lbl_wtk) ||
        DS(bot_val, "lookfor_bottom_val", H5T_NATIVE_FLOAT, 3, wtk, k_lbl_wtk) ||
        DS(att_idx, "attended_pos", H5T_NATIVE_INT32, 3, wta, k_lbl_wta) ||
        DS(att_w, "attended_weight", H5T_NATIVE_FLOAT, 3, wta, k_lbl_wta) ||
        DS(pair_f, "pair_query_feature", ft, 4, wtap, k_lbl_wtap) || DS(pair_g, "pair_key_feature", ft, 4, wtap, k_lbl_wtap) ||
        DS(pair_val, "pair_value", H5T_NATIVE_FLOAT, 4, wtap, k_lbl_wtap) ||
        DS(groups, "group_totals", H5T_NATIVE_FLOAT, 5, wtg, k_lbl_groups) ||
        DS(metrics, "metrics", H5T_NATIVE_FLOAT, 3, wtm, k_lbl_wtm))
        return -1;
    hsize_t wtt[3] = {0, r->T, r->T};
    if (r->s.cfg.record_patterns && (DS(pattern, "pattern", H5T_NATIVE_FLOAT, 3, wtt, k_lbl_wqk) ||
                                     DS(pattern_hat, "pattern_reconstructed", H5T_NATIVE_FLOAT, 3, wtt, k_lbl_wqk)))
        return -1;
    if (r->s.cfg.encoder && (DS(enc_idx, "lookfor_encoder_idx", ft, 3, wte, k_lbl_wtk) ||
                             DS(enc_val, "lookfor_encoder_val", H5T_NATIVE_FLOAT, 3, wte, k_lbl_wtk) ||
                             DS(enc_n, "lookfor_encoder_n_active", H5T_NATIVE_INT32, 2, wt, k_lbl_wt)))
        return -1;
#undef DS
    snprintf(n, sizeof n, "heads/%d.%d", l, h);
    hid_t g = H5Gopen2(r->out.file, n, H5P_DEFAULT);
    char names[32 * N_METRICS];
    qk_metric_names_csv(names, sizeof names);
    int rc = qk_h5_attr_str(g, "metric_names", names) || qk_h5_attr_str(g, "groups", "feature,decoder_bias,error,attention_bias") ||
             qk_h5_attr_str(g, "note",
                            "group_totals[..., key_group=attention_bias] is q_i . bk' / sqrt(d_head), the same for every key: "
                            "softmax ignores it");
    H5Gclose(g);
    return rc ? -1 : 0;
}

// Appends B windows of feature indices, `per_token` of them per token.
static int append_features(Run *r, const RunSink *k, const int32_t *idx, int B, size_t per_token, int d_sae) {
    qk_h5_feature_convert(idx, (size_t)B * r->T * per_token, d_sae, r->idx_buf);
    return append(r, k, r->idx_buf, B);
}

// Appends the batch's records of head (l, h): B windows.
static int append_records(Run *r, int l, int h, const HeadRecords *rec, int B) {
    const RecordSets *d = &r->rs[l * r->H + h];
    const int m = r->s.sae[l]->d_sae;
    const AnalysisOpts *o = &r->o;
    if (append_features(r, &d->top_idx, rec->top_idx, B, o->k, m) || append(r, &d->top_val, rec->top_val, B) ||
        append_features(r, &d->bot_idx, rec->bot_idx, B, o->k, m) || append(r, &d->bot_val, rec->bot_val, B) ||
        append(r, &d->att_idx, rec->att_idx, B) ||
        append(r, &d->att_w, rec->att_w, B) ||
        append_features(r, &d->pair_f, rec->pair_f, B, (size_t)o->a * o->p, m) ||
        append_features(r, &d->pair_g, rec->pair_g, B, (size_t)o->a * o->p, m) ||
        append(r, &d->pair_val, rec->pair_val, B) ||
        append(r, &d->groups, rec->groups, B) ||
        append(r, &d->metrics, rec->metrics, B))
        return -1;
    if (rec->patterns && (append(r, &d->pattern, rec->pattern, B) ||
                          append(r, &d->pattern_hat, rec->pattern_hat, B)))
        return -1;
    if (rec->enc) {
        QkSaeCode *e = (QkSaeCode *)&rec->enc_code;
        // Slots past the active features are unused (a top-k SAE's zeroed picks included).
        for (size_t n = 0; n < (size_t)B * r->T; n++)
            for (int q = e->n_active[n] < 0 ? 0 : e->n_active[n]; q < e->slots; q++) e->idx[n * e->slots + q] = -1;
        if (append_features(r, &d->enc_idx, e->idx, B, e->slots, m) || append(r, &d->enc_val, e->val, B) ||
            append(r, &d->enc_n, e->n_active, B))
            return -1;
    }
    return 0;
}

// Everything but the output file: backend, corpus, per-head tables, aggregates and scratch.
static int open_run(Run *r, int quiet) {
    RunConfig *c = &r->s.cfg;
    const GPT2Config *mc = &r->s.model.cfg;
    r->L = mc->n_layer, r->H = mc->n_head, r->T = c->n_ctx;
    if (c->n_ctx > mc->n_ctx) return qk_err("%s: [corpus] n_ctx = %d exceeds the model's n_ctx %d", c->path, c->n_ctx, mc->n_ctx);
    if (c->threads) omp_set_num_threads(c->threads);
    QkBackendKind kind;
    if (qk_backend_parse(c->backend, &kind) || qk_backend_open(&r->be, kind, c->device, quiet)) return -1;
    // tf32 / bf16: the CUDA forward pass's GEMMs (the analysis after it is fp32 on the host)
    if (qk_backend_set_precision(r->be, c->precision)) {
        char why[512];
        snprintf(why, sizeof why, "%s", qk_errmsg());
        return qk_err("%s: [run] precision: %s", c->path, why);
    }
    r->o = (AnalysisOpts){.k = c->k, .a = c->a, .p = c->p, .enc_slots = c->enc_slots,
                          .sketch_pairs = c->sketch_pairs, .sketch_capacity = c->sketch_capacity};
    // Corpus: text and JSONL need the tokenizer.
    // Every rank loads it: the corpus (shared by ranks) tokenizes, each file stores its pieces.
    if (c->vocab && !(r->bpe = qk_bpe_load(c->vocab))) return -1;
    if (r->bpe && qk_bpe_vocab_size(r->bpe) > mc->vocab_size)
        return qk_err("%s: [corpus] vocab = %s has %d tokens but the model (%s/config.json vocab_size) has %d: set "
                      "corpus.vocab to the model's own tokenizer", c->path, c->vocab, qk_bpe_vocab_size(r->bpe), c->model_dir,
                      mc->vocab_size);
    if (r->bpe) qk_token_set_init(&r->seen, qk_bpe_vocab_size(r->bpe));
    if (!c->n_paths) return qk_err("%s: [corpus] paths is required", c->path);
    QkCorpusOptions co = {.inputs = (const char *const *)c->paths, .n_inputs = c->n_paths, .bpe = r->bpe,
                          .split = c->split, .jsonl_field = c->jsonl_field, .skip_bad_records = c->skip_bad_records,
                          .allow_special = c->allow_special, .n_ctx = c->n_ctx, .bos = c->bos, .pack = c->pack,
                          .stride = c->stride, .batch_size = c->batch, .n_threads = c->tokenizer_threads,
                          .part = c->part, .n_parts = c->n_parts};
    if (!r->corpus && !(r->corpus = qk_corpus_open(&co))) return -1;
    run_config_hash(c, r->config_hash);
    r->cw = cw_open(omp_get_max_threads());
    // Per-head state.
    const int LH = r->L * r->H;
    r->tables = qk_calloc(LH, sizeof(HeadTables));
    r->agg = qk_calloc(LH, sizeof(HeadAggregates));
    r->rs = qk_calloc(LH, sizeof(RecordSets));
    size_t max_row = 0;
    for (int l = 0; l < r->L; l++) {
        if (!r->s.sae[l]) continue;
        const QkSae *sae = r->s.sae[l];
        for (int h = 0; h < r->H; h++) {
            int i = l * r->H + h;
            if (!r->s.analysed[i]) continue;
            head_tables_build(&r->tables[i], &r->s.model, l, h, sae, c->encoder && r->s.recorded[i]);
            head_agg_init(&r->agg[i], sae->d_sae, c->sketch_capacity);
        }
        // Feature indices per token of the widest record: look-for, pairs, encoder code.
        size_t per_token = (size_t)(c->k > c->a * c->p ? c->k : c->a * c->p);
        size_t enc_slots = (size_t)qk_sae_slots(sae, c->enc_slots);
        if (c->encoder && enc_slots > per_token) per_token = enc_slots;
        size_t row = (size_t)c->batch * r->T * per_token;
        max_row = row > max_row ? row : max_row;
    }
    r->idx_buf = qk_malloc(max_row * 4 + 4);
    AnalysisPlan plan = {.model = &r->s.model, .sae = (const QkSae *const *)r->s.sae, .analysed = r->s.analysed,
                         .recorded = r->s.recorded, .tables = r->tables, .o = r->o, .T = r->T, .max_batch = c->batch,
                         .sae_max_active = c->sae_max_active, .encoder = c->encoder,
                         .record_patterns = c->record_patterns};
    r->an = r->be->analysis_open(r->be, &plan);
    return r->an ? 0 : -1;
}

static void shard_path(const Run *r, int shard, char *buf, size_t n) {
    snprintf(buf, n, "%s/" QK_SHARD_NAME, r->out_path, shard);
}

// Opens the output file (the single file, or the next shard) with its per-window datasets.
static int open_output(Run *r) {
    if (!r->s.cfg.write) return r->shard_open = 1, 0;
    char path[4096];
    if (r->sharded) shard_path(r, r->shard, path, sizeof path);
    else snprintf(path, sizeof path, "%s", r->out_path);
    if (qk_h5_create(&r->out, path) || run_setup_write_identity(&r->s, r->out.file, "qkscope-run") ||
        qk_h5_attr_str(r->out.file, "config_hash", r->config_hash) ||
        qk_h5_attr_int(r->out.file, "shard", r->sharded ? r->shard : -1) ||
        qk_h5_attr_int(r->out.file, "first_window", r->window_index))
        return -1;
    hsize_t wt[2] = {0, r->T}, w1[1] = {0}, w3[2] = {0, 3};
    static const char *const lw[1] = {"window"}, *const lprov[2] = {"window", "file_doc_offset"};
    if (sink_create(r, &r->tokens, "tokens", H5T_NATIVE_INT32, 2, wt, k_lbl_wt) ||
        sink_create(r, &r->length, "length", H5T_NATIVE_INT32, 1, w1, lw) ||
        sink_create(r, &r->prov, "provenance", H5T_NATIVE_INT64, 2, w3, lprov))
        return -1;
    for (int i = 0; i < r->L * r->H; i++)
        if (r->s.recorded[i] && create_records(r, i / r->H, i % r->H)) return -1;
    r->shard_open = 1;
    r->shard_windows_done = r->shard_tokens_done = 0;
    return 0;
}

// The backend's records of one recorded head go to its datasets (QkRecordsFn).
static int emit_records(void *ctx, int layer, int head, const HeadRecords *rec, int B) {
    Run *r = ctx;
    double t = qk_now();
    int rc = append_records(r, layer, head, rec, B);
    r->t_stage[STAGE_WRITE] += qk_now() - t;
    return rc;
}

// Token ids the model has no embedding for, named by corpus file and with the fix (the forward
// pass alone could only say "corpus window").  50256 is also BOS, padding and the separator.
static int check_ids(const Run *r, const QkWindowBatch *wb, int first, int B) {
    const int V = r->s.model.cfg.vocab_size;
    for (int b = first; b < first + B; b++)
        for (int t = 0; t < r->T; t++) {
            int id = wb->tokens[(size_t)b * r->T + t];
            if (id >= 0 && id < V) continue;
            const QkProvenance *pv = &wb->prov[b];
            const char *why = id == QK_GPT2_EOT ? " (<|endoftext|>: the BOS, padding or packing separator the windows need)" : "";
            return qk_err("%s: document %lld, window from token %lld, position %d: token id %d%s is outside the model's "
                          "vocabulary [0, %d) (%s/config.json vocab_size): tokenize the corpus for this model (text and "
                          "JSONL: config key [corpus] vocab = the model's tokenizer folder)",
                          qk_corpus_file(r->corpus, pv->file), (long long)pv->doc, (long long)pv->offset, t, id, why, V,
                          r->s.cfg.model_dir);
        }
    return 0;
}

// The backend's stage times (QK_STAGE_*) into the run's.
static void add_stage_times(Run *r, const double *sec) {
    r->t_stage[STAGE_FORWARD] += sec[QK_STAGE_FORWARD];
    r->t_stage[STAGE_SAE] += sec[QK_STAGE_SAE];
    r->t_stage[STAGE_ANALYSIS] += sec[QK_STAGE_HEADS];
}

// Windows [first, first + B) of the batch through the model and every analysed head.  A backend
// may hand this batch's records, sketch and examples over in the next call or at the flush.
static int process_batch(Run *r, const QkWindowBatch *wb, int first, int B) {
    const int32_t *tokens = wb->tokens + (size_t)first * r->T, *length = wb->length + first;
    if (check_ids(r, wb, first, B)) return -1;
    double sec[QK_N_ANALYSIS_STAGES] = {0};
    for (int i = 0; i < r->L * r->H; i++)  // example contexts name corpus windows
        if (r->s.analysed[i]) r->agg[i].window0 = r->window_index;
    int rc = r->be->analyse(r->an, tokens, length, B, r->agg, r->s.cfg.write ? emit_records : NULL, r, sec);
    add_stage_times(r, sec);
    if (rc) {  // where the batch is in the corpus (the first window is 0 for a resumed run too)
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        return qk_err("%s; the batch's window 0 is corpus window %lld", keep, (long long)r->window_index);
    }
    for (int b = 0; b < B; b++) r->tokens_done += length[b], r->shard_tokens_done += length[b];
    r->windows_done += B, r->shard_windows_done += B, r->window_index += B;
    if (!r->s.cfg.write) return 0;  // [output] write = false: the analysis alone
    double t = qk_now();
    int64_t *prov = qk_malloc(sizeof(int64_t) * 3 * B);
    for (int b = 0; b < B; b++) {
        const QkProvenance *pv = &wb->prov[first + b];
        prov[3 * b] = pv->file, prov[3 * b + 1] = pv->doc, prov[3 * b + 2] = pv->offset;
    }
    rc = append(r, &r->tokens, tokens, B) ||
         append(r, &r->length, length, B) ||
         append(r, &r->prov, prov, B);
    free(prov);
    if (r->bpe) qk_token_set_add(&r->seen, tokens, (size_t)B * r->T);
    r->t_stage[STAGE_WRITE] += qk_now() - t;
    return rc ? -1 : 0;
}

// The aggregates of the analysed heads, indexed l * H + h (NULL elsewhere); free the array.
static const HeadAggregates **analysed_aggs(const Run *r) {
    const HeadAggregates **aggs = qk_calloc(r->L * r->H, sizeof(HeadAggregates *));
    for (int i = 0; i < r->L * r->H; i++)
        if (r->s.analysed[i]) aggs[i] = &r->agg[i];
    return aggs;
}

// The corpus aggregates of every analysed head, and the per-head summary table.
static int write_aggregates(Run *r) {
    const HeadAggregates **aggs = analysed_aggs(r);
    int rc = agg_write_all(&r->out, r->cw, r->L, r->H, aggs);  // compressed by the writer's workers
    free(aggs);
    return rc;
}

// What the backend holds back (QkBackend.analysis_flush): the last batch's records to their
// datasets, its sketch and examples and the dense aggregates into r->agg; before anything reads
// r->agg or closes the record datasets.
static int flush_aggregates(Run *r) {
    if (!r->an) return 0;
    double sec[QK_N_ANALYSIS_STAGES] = {0};
    int rc = qk_analysis_flush(r->be, r->an, r->agg, sec);
    add_stage_times(r, sec);
    return rc;
}

static int print_summary(Run *r) {
    if (flush_aggregates(r)) return -1;
    const HeadAggregates **aggs = analysed_aggs(r);
    agg_print_summary(stdout, r->L, r->H, aggs);
    free(aggs);
    return 0;
}

static void sinks_close(RunSink *k, size_t n) {
    for (size_t q = 0; q < n; q++)
        if (k[q].ds > 0) H5Dclose(k[q].ds), k[q].ds = 0;
}

static void close_datasets(Run *r) {
    sinks_close(&r->tokens, 1), sinks_close(&r->length, 1), sinks_close(&r->prov, 1);
    for (int i = 0; r->rs && i < r->L * r->H; i++) sinks_close((RunSink *)&r->rs[i], sizeof(RecordSets) / sizeof(RunSink));
}

static void close_run(Run *r) {
    close_datasets(r);
    for (int i = 0; r->tables && i < r->L * r->H; i++) {
        if (!r->s.analysed[i]) continue;
        head_tables_free(&r->tables[i]);
        head_agg_free(&r->agg[i]);
    }
    if (r->an) r->be->analysis_close(r->an);  // before the backend that allocated its memory
    cw_close(r->cw);
    free(r->tables), free(r->agg), free(r->rs), free(r->idx_buf);
    if (r->corpus) qk_corpus_close(r->corpus);
    if (r->bpe) qk_bpe_free(r->bpe);
    qk_token_set_free(&r->seen);
    qk_backend_close(r->be);
}

// Writes the aggregates and the closing attributes, and renames the file into place.  The
// aggregates start again from zero for the next shard.
static int close_output(Run *r) {
    if (!r->s.cfg.write) return r->shard_open = 0, 0;
    int rc = flush_aggregates(r);  // its records' writes count as they are made (emit_records)
    double t = qk_now();
    rc = rc || write_aggregates(r);
    r->t_stage[STAGE_WRITE] += qk_now() - t;
    for (int q = 0; !rc && q < N_STAGES; q++) {  // stage times (seconds) for the benchmark
        char name[64];
        snprintf(name, sizeof name, "time_%s_s", k_stage_names[q]);
        rc = qk_h5_attr_double(r->out.file, name, r->t_stage[q]);
    }
    if (!rc) rc = qk_h5_attr_int(r->out.file, "tokens_processed", r->shard_tokens_done) ||
                  qk_h5_attr_int(r->out.file, "windows", r->shard_windows_done) ||
                  qk_h5_attr_str(r->out.file, "backend", r->be->name);
    if (!rc) {  // corpus files, indexed by provenance[:, 0]
        size_t cap = 1, off = 0;
        for (int i = 0; i < qk_corpus_n_files(r->corpus); i++) cap += strlen(qk_corpus_file(r->corpus, i)) + 1;
        char *files = qk_malloc(cap);
        files[0] = 0;
        for (int i = 0; i < qk_corpus_n_files(r->corpus); i++)
            off += snprintf(files + off, cap - off, "%s%s", i ? "\n" : "", qk_corpus_file(r->corpus, i));
        rc = qk_h5_attr_str(r->out.file, "corpus_files", files);
        free(files);
    }
    if (!rc && r->bpe) rc = qk_vocab_write(r->out.file, r->bpe, &r->seen, r->s.cfg.vocab);
    qk_token_set_clear(&r->seen);
    if (cw_flush(r->cw)) rc = -1;  // every buffered chunk written before the file closes
    close_datasets(r);
    if (!rc) rc = qk_h5_finish(&r->out);
    r->shard_open = 0;
    if (r->sharded)
        for (int i = 0; i < r->L * r->H; i++)
            if (r->s.analysed[i]) {
                int m = r->agg[i].m;
                head_agg_free(&r->agg[i]);
                head_agg_init(&r->agg[i], m, r->s.cfg.sketch_capacity);
            }
    return rc ? -1 : 0;
}

// Abandons the open output: buffered rows dropped, datasets closed, the .tmp file removed.
static void abandon_output(Run *r) {
    cw_discard(r->cw);
    close_datasets(r);
    qk_h5_abort(&r->out);
    r->shard_open = 0;
}

// ---------------------------------------------------------------------------------------------
// Shards: OUT/shard-NNNNNN.h5 and OUT/manifest.json; resume.

// manifest.json, written atomically (tmp + rename) after every shard and at the end; `extra`:
// more fields (JSON lines ending in ",\n"; a multi-rank run's), or "".
static int write_manifest_ex(const Run *r, int n_shards, int done, const char *extra) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/manifest.json", r->out_path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return qk_err("%s: cannot create", tmp);
    fprintf(f, "{\n  \"format\": \"qkscope-run-shards\",\n  \"format_version\": %d,\n  \"config\": \"%s\",\n",
            QK_FORMAT_VERSION, r->s.cfg.path);
    fprintf(f, "  \"config_hash\": \"%s\",\n  \"n_ctx\": %d,\n  \"shard_windows\": %lld,\n  \"complete\": %s,\n",
            r->config_hash, r->T, (long long)r->shard_windows, done ? "true" : "false");
    fputs(extra, f);
    fprintf(f, "  \"shards\": [");
    for (int i = 0; i < n_shards; i++) fprintf(f, "%s\"" QK_SHARD_NAME "\"", i ? ", " : "", i);
    fprintf(f, "]\n}\n");
    if (fclose(f)) return qk_err("%s: write failed", tmp);
    if (rename(tmp, path)) return qk_err("%s: rename failed", tmp);
    return 0;
}

static int write_manifest(const Run *r, int n_shards, int done) { return write_manifest_ex(r, n_shards, done, ""); }

// Prepares OUT for a sharded run: a fresh folder, or (resume) the completed shards to skip.
static int prepare_shards(Run *r, int resume, int64_t *skip_windows) {
    *skip_windows = 0;
    if (mkdir(r->out_path, 0777) && errno != EEXIST) return qk_err("%s: cannot create folder: %s", r->out_path, strerror(errno));
    char path[4096];
    shard_path(r, 0, path, sizeof path);
    if (!resume) {
        if (qk_file_exists(path)) return qk_err("%s: holds shards already; use --resume to continue, or another -o", r->out_path);
        return 0;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    for (r->shard = 0;; r->shard++) {
        shard_path(r, r->shard, path, sizeof path);
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        remove(tmp);  // an interrupted shard: redone
        if (!qk_file_exists(path)) break;
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) return qk_err("%s: not a readable HDF5 file", path);
        char *hash = qk_h5_attr_read_str(f, "config_hash");
        int complete = qk_h5_attr_read_int(f, "complete") == 1, same = hash && !strcmp(hash, r->config_hash);
        free(hash);
        int64_t first = qk_h5_attr_read_int(f, "first_window"), windows = qk_h5_attr_read_int(f, "windows");
        H5Fclose(f);
        if (!complete) return qk_err("%s: incomplete shard under its final name", path);
        if (!same)
            return qk_err("%s: made with another configuration (config_hash differs); resuming would mix two analyses", path);
        if (first != *skip_windows) return qk_err("%s: first_window %lld, expected %lld", path, (long long)first, (long long)*skip_windows);
        *skip_windows += windows;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Signals: SIGTERM / SIGINT / SIGUSR1 (Slurm's warning before pre-emption or the time limit).
// The first finishes the batch in flight; a sharded run closes its completed shards and exits
// QK_EXIT_INTERRUPTED (75: requeue and --resume), a single-file run, which keeps nothing, exits
// 128 + the signal (130 for Ctrl-C, as a shell reports it).  A second signal exits at once with
// the same status, after removing the NAME.tmp of every output being written (no file is renamed
// into place, so the output stays consistent, and nothing partial is left).

static volatile sig_atomic_t g_stop, g_single_file;

static int interrupted_status(int sig) { return g_single_file ? 128 + sig : QK_EXIT_INTERRUPTED; }

static void on_signal(int sig) {
    if (g_stop) {
        qk_h5_remove_open_tmp();
        _exit(interrupted_status(g_stop));
    }
    g_stop = sig;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    int sigs[3] = {SIGTERM, SIGINT, SIGUSR1};
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &sa, NULL);
}

// "read 1% forward 9% ...": each stage's share of the time spent in stages (not of the wall time,
// which also holds setup), in one order, for both the progress line and the closing line.
static void stage_shares(const Run *r, char *buf, size_t n) {
    double busy = 0;
    for (int q = 0; q < N_STAGES; q++) busy += r->t_stage[q];
    size_t off = 0;
    for (int q = 0; q < N_STAGES && off < n; q++)
        off += snprintf(buf + off, n - off, "%s%s %.0f%%", q ? " " : "", k_stage_names[q], 100 * r->t_stage[q] / fmax(busy, 1e-9));
}

// Progress on stderr: every batch on a terminal (one rewritten line), else every N seconds.
static void progress(Run *r, double t0, double *last, int final) {
    if (r->quiet) return;
    int tty = isatty(2);
    double now = qk_now(), el = now - t0;
    if (!final && !tty && now - *last < r->s.cfg.progress_seconds) return;
    *last = now;
    char eta[64] = "";
    if (!final) run_eta(&r->eta, r->corpus, r->s.cfg.max_tokens, r->tokens_done, now, eta, sizeof eta);
    char shares[256];
    stage_shares(r, shares, sizeof shares);
    fprintf(stderr, "%sqkscope run: %lld tokens, %.0f tokens/s%s; %s%s", tty ? "\r" : "", (long long)r->tokens_done,
            el > 0 ? r->tokens_done / el : 0.0, eta, shares, tty && !final ? "   " : "\n");
}

int run_single(const RunArgs *a) {
    Run r;
    memset(&r, 0, sizeof r);
    r.out_path = a->out;
    r.quiet = a->quiet;
    const int quiet = a->quiet;
    const char *config = a->config, *out_path = a->out;
    ShardCut cut = {0};
    double t0 = qk_now(), last = t0;
    int64_t skip = 0;
    int rc = run_setup_open(&r.s, config, (char **)a->sets, a->n_sets, quiet, out_path, QK_OUT_BY_CONFIG);
    r.s.cfg.part = a->part, r.s.cfg.n_parts = a->n_parts;
    rc = rc || open_run(&r, quiet);
    if (!rc) {
        r.sharded = r.s.cfg.shard_tokens > 0 && r.s.cfg.write;
        r.shard_windows = r.sharded ? (r.s.cfg.shard_tokens + r.T - 1) / r.T : 0;
        if (r.sharded) rc = prepare_shards(&r, a->resume, &skip);
        else if (a->resume) rc = qk_err("--resume needs a sharded run ([output] shard_tokens > 0)");
    }
    if (!rc && r.sharded && skip && !quiet)
        fprintf(stderr, "qkscope run: resuming after %d complete shard(s), %lld windows\n", r.shard, (long long)skip);
    g_single_file = !r.sharded;
    install_signals();
    shard_cut_init(&cut, r.corpus, skip, r.shard_windows, r.s.cfg.max_tokens);
    r.window_index = skip;
    ShardPiece p;
    while (!rc && !g_stop) {
        int got = shard_cut_next(&cut, &p);
        r.t_stage[STAGE_READ] = cut.read_s;
        if (got < 0) rc = -1;
        if (got <= 0) break;
        r.window_index = p.first_window;
        if (!r.shard_open && (rc = open_output(&r))) break;
        rc = process_batch(&r, &cut.wb, p.off, p.n);
        if (!rc && r.sharded && p.ends_shard) {
            rc = close_output(&r);
            r.shard++;
            if (!rc) rc = write_manifest(&r, r.shard, 0);
        }
        if (!rc && p.ends_batch) progress(&r, t0, &last, 0);
    }
    if (!rc && !g_stop) {
        if (r.shard_open) {
            rc = close_output(&r);
            if (r.sharded) r.shard++;
        }
        if (!rc && r.sharded) rc = write_manifest(&r, r.shard, 1);
        if (!rc && !r.sharded && r.windows_done == 0) rc = qk_err("%s: the corpus gave no windows", config);
    }
    if (!rc && !quiet) progress(&r, t0, &last, 1);
    int interrupted = !rc && g_stop;
    if (interrupted) {
        // The checkpoint: the open shard, holding every window analysed so far, is closed as a
        // complete (shorter) shard; the completed shards and the manifest let --resume go on
        // from there.  A single-file run keeps nothing.
        if (r.sharded && r.shard_open && r.shard_windows_done > 0) {
            rc = close_output(&r);
            r.shard++;
        } else if (r.shard_open && r.s.cfg.write)
            abandon_output(&r);
        if (r.sharded && !rc) rc = write_manifest(&r, r.shard, 0);
        if (!quiet && !rc && r.sharded)
            fprintf(stderr, "qkscope run: signal %d (%s): stopped after %lld windows, in %d complete shard(s); exit %d "
                    "(requeue, or run again with --resume)\n", (int)g_stop, strsignal(g_stop), (long long)r.window_index,
                    r.shard, QK_EXIT_INTERRUPTED);
        else if (!quiet && !rc)
            fprintf(stderr, "qkscope run: interrupted by signal %d (%s) after %lld windows: nothing written (a single-file "
                    "run keeps no partial result; [output] shard_tokens > 0 writes checkpoints); exit %d\n",
                    (int)g_stop, strsignal(g_stop), (long long)r.windows_done, interrupted_status(g_stop));
    }
    if (!rc && !interrupted && !quiet) {
        if (!r.sharded && print_summary(&r)) rc = -1;
        double total = qk_now() - t0;
        double busy = 0;
        for (int q = 0; q < N_STAGES; q++) busy += r.t_stage[q];
        char shares[256];
        stage_shares(&r, shares, sizeof shares);
        fprintf(stderr, "qkscope run: %lld tokens in %.1f s (%.0f tokens/s) -> %s%s\n"
                        "qkscope run: time per stage (shares of the %.1f s spent in stages; wall time includes setup): %s",
                (long long)r.tokens_done, total, r.tokens_done / total, out_path,
                r.sharded ? " (shards; `qkscope merge` combines them)" : "", busy, shares);
        double raw, packed, secs;
        cw_stats(r.cw, &raw, &packed, &secs);
        fprintf(stderr, "\nqkscope run: wrote %.1f MB of records and aggregates (%.1f MB before compression); writer %.0f MB/s per thread (CPU time)\n",
                packed / 1e6, raw / 1e6, secs > 0 ? packed / 1e6 / secs : 0.0);
    }
    if (rc) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        if (r.out.file) abandon_output(&r);
        close_run(&r);
        qk_err("%s", keep);
    } else
        close_run(&r);
    shard_cut_free(&cut);
    run_setup_close(&r.s);
    return rc ? -1 : interrupted ? interrupted_status(g_stop) : QK_EXIT_OK;
}

// ---------------------------------------------------------------------------------------------
// Multi-rank runs (run_loop.h): run_ranks.c hands each rank whole shards; a rank runs them with
// the Run above, exactly as a single sharded run does.

struct RunRank {
    Run r;
    int owns_corpus;
};

RunRank *run_rank_open(const RunSetup *s, QkCorpus *corpus, const char *out_path) {
    RunRank *rr = qk_calloc(1, sizeof *rr);
    Run *r = &rr->r;
    r->s = *s;  // shallow: the setup stays the caller's
    r->s.hashing = 0;
    r->out_path = out_path;
    r->quiet = 1;
    r->corpus = corpus;
    rr->owns_corpus = !corpus;
    if (open_run(r, 1)) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", qk_errmsg());
        run_rank_close(rr);
        qk_err("%s", keep);
        return NULL;
    }
    r->sharded = r->s.cfg.write;
    r->shard_windows = (r->s.cfg.shard_tokens + r->T - 1) / r->T;
    return rr;
}

QkCorpus *run_rank_corpus(RunRank *rr) { return rr->r.corpus; }
QkBackend *run_rank_backend(RunRank *rr) { return rr->r.be; }
const GPT2Model *run_rank_model(const RunRank *rr) { return &rr->r.s.model; }
const char *run_rank_config_hash(const RunRank *rr) { return rr->r.config_hash; }
int64_t run_rank_shard_windows(const RunRank *rr) { return rr->r.shard_windows; }

int run_rank_prepare(RunRank *rr, int resume, int64_t *skip_windows, int *first_shard) {
    Run *r = &rr->r;
    *skip_windows = 0;
    int rc = 0;
    if (r->sharded) rc = prepare_shards(r, resume, skip_windows);
    else if (resume) rc = qk_err("--resume needs shards ([output] write = true)");
    *first_shard = r->shard;
    return rc;
}

int run_rank_open_shard(RunRank *rr, int shard, int64_t first_window) {
    rr->r.shard = shard;
    rr->r.window_index = first_window;
    return open_output(&rr->r);
}

int run_rank_process(RunRank *rr, const QkWindowBatch *wb) { return process_batch(&rr->r, wb, 0, wb->n); }

// Adds the aggregates the rank holds to totals[L*H] (the analysed heads).
static int add_aggregates(Run *r, HeadAggregates *totals) {
    if (flush_aggregates(r)) return -1;
    for (int i = 0; i < r->L * r->H; i++)
        if (r->s.analysed[i]) head_agg_add(&totals[i], &r->agg[i]);
    return 0;
}

int run_rank_close_shard(RunRank *rr, HeadAggregates *totals) {
    // close_output writes them, then starts afresh
    if (rr->r.s.cfg.write && add_aggregates(&rr->r, totals)) return -1;
    return close_output(&rr->r);
}

int run_rank_finish(RunRank *rr, HeadAggregates *totals) {
    // kept over every shard: nothing was written
    return rr->r.s.cfg.write ? 0 : add_aggregates(&rr->r, totals);
}

void run_rank_abandon_shard(RunRank *rr) {
    if (rr->r.shard_open) abandon_output(&rr->r);
}

int64_t run_rank_tokens(const RunRank *rr) { return rr->r.tokens_done; }
int64_t run_rank_windows(const RunRank *rr) { return rr->r.windows_done; }

int run_rank_write_manifest(const RunRank *rr, int n_shards, int done, int ranks, const char *aggregates) {
    char extra[512];
    snprintf(extra, sizeof extra, "  \"ranks\": %d,\n%s%s%s", ranks, aggregates ? "  \"aggregates\": \"" : "",
             aggregates ? aggregates : "", aggregates ? "\",\n" : "");
    return write_manifest_ex(&rr->r, n_shards, done, extra);
}

int64_t run_rank_open_windows(const RunRank *rr, int *shard) {
    *shard = rr->r.shard;
    return rr->r.shard_open ? rr->r.shard_windows_done : -1;
}

void run_rank_close(RunRank *rr) {
    if (!rr) return;
    if (!rr->owns_corpus) rr->r.corpus = NULL;  // the owner closes it
    if (rr->r.shard_open) run_rank_abandon_shard(rr);
    close_run(&rr->r);
    free(rr);
}

void run_rank_install_signals(void) { install_signals(); }
int run_rank_stop_signal(void) { return (int)g_stop; }
