// report_data.c: see report_data.h.  Layout: docs/FORMAT.md.
#include "io/report_data.h"

#include <hdf5_hl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/agg_io.h"
#include "io/h5out.h"

enum { TOP_PAIRS = 8, TOP_STATIC = 10 };

// Element count of a 1-D or 2-D dataset (-1 when absent); dims[1] into *cols when given.
static int64_t ds_size(hid_t f, const char *name, int64_t *cols) {
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) return -1;
    hsize_t dims[4] = {0};
    int nd = 0;
    if (H5LTget_dataset_ndims(f, name, &nd) < 0 || nd > 4 || H5LTget_dataset_info(f, name, dims, NULL, NULL) < 0)
        return -1;
    if (cols) *cols = nd > 1 ? (int64_t)dims[1] : 1;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= (int64_t)dims[i];
    return n;
}

// Neuronpedia SAE id of the SAE serving layer l (SPEC section 7), "" for unknown releases.
static void neuronpedia_id(hid_t f, int l, char *out, size_t n) {
    char g[96];
    out[0] = 0;
    snprintf(g, sizeof g, "sae/blocks.%d.hook_resid_pre", l);
    if (H5Lexists(f, "sae", H5P_DEFAULT) <= 0 || H5Lexists(f, g, H5P_DEFAULT) <= 0) return;
    hid_t grp = H5Gopen2(f, g, H5P_DEFAULT);
    char *hook = qk_h5_attr_read_str(grp, "hook_name");
    int64_t m = qk_h5_attr_read_int(grp, "d_sae");
    H5Gclose(grp);
    int layer = -1;
    char kind[32] = "";
    if (hook && sscanf(hook, "blocks.%d.hook_%31s", &layer, kind) == 2) {
        if (!strcmp(kind, "resid_post") && m == 32768) snprintf(out, n, "%d-res_post_32k-oai", layer);
        else if (!strcmp(kind, "resid_pre") && m == 24576) snprintf(out, n, "%d-res-jb", layer);
    }
    free(hook);
}

static int load_head(ReportData *d, hid_t st, ReportHead *h) {
    char p[160], grp[64];
    int64_t n;
    int rc = 0;
    snprintf(grp, sizeof grp, "aggregates/%d.%d/", h->layer, h->head);
#define AGG(x) (snprintf(p, sizeof p, "%s" x, grp), p)
    // The pair table and the example table: each a set of columns of one length (qk_h5_read_columns).
    {
        static const char *const col[5] = {"pairs_query_feature", "pairs_key_feature", "pairs_weight", "pairs_sum",
                                           "pairs_count"};
        const hid_t type[5] = {H5T_NATIVE_INT32, H5T_NATIVE_INT32, H5T_NATIVE_DOUBLE, H5T_NATIVE_DOUBLE, H5T_NATIVE_INT64};
        static const size_t elem[5] = {4, 4, 8, 8, 8};
        void *b[5];
        rc = qk_h5_read_columns(d->run, d->run_path, grp, 5, col, type, elem, b, &n);
        const int32_t *pf = b[0], *pg = b[1];
        const double *pw = b[2], *ps = b[3];
        const int64_t *pc = b[4];
        h->n_pairs = rc ? 0 : (int)(n < TOP_PAIRS ? n : TOP_PAIRS);
        h->pairs = qk_calloc(h->n_pairs + 1, sizeof(ReportPair));
        for (int i = 0; i < h->n_pairs; i++) h->pairs[i] = (ReportPair){pf[i], pg[i], pw[i], ps[i], pc[i]};
        for (int c = 0; c < 5; c++) free(b[c]);
    }
    if (!rc && ds_size(d->run, AGG("examples_term"), NULL) >= 0) {  // files before example tables: none
        static const char *const col[6] = {"examples_query_feature", "examples_key_feature", "examples_window",
                                           "examples_query_pos", "examples_key_pos", "examples_term"};
        const hid_t type[6] = {H5T_NATIVE_INT32, H5T_NATIVE_INT32, H5T_NATIVE_INT64,
                               H5T_NATIVE_INT32, H5T_NATIVE_INT32, H5T_NATIVE_FLOAT};
        static const size_t elem[6] = {4, 4, 8, 4, 4, 4};
        void *b[6];
        rc = qk_h5_read_columns(d->run, d->run_path, grp, 6, col, type, elem, b, &n);
        const int32_t *ef = b[0], *eg = b[1], *ei = b[3], *ej = b[4];
        const int64_t *ew = b[2];
        const float *et = b[5];
        for (int64_t i = 0; !rc && i < n; i++) {  // the page indexes the window's tokens with them
            const char *bad = ew[i] < 0 || ew[i] >= d->windows ? col[2]
                              : ei[i] < 0 || ei[i] >= d->T     ? col[3]
                              : ej[i] < 0 || ej[i] > ei[i]     ? col[4]
                                                               : NULL;
            if (bad)
                rc = qk_err("%s: %s%s [%lld]: window %lld, key %d, query %d: not a position of the run's %lld windows "
                            "of %d tokens (key <= query)", d->run_path, grp, bad, (long long)i, (long long)ew[i], ej[i],
                            ei[i], (long long)d->windows, d->T);
        }
        h->n_ex = rc ? 0 : (int)n;
        h->ex = qk_calloc(h->n_ex + 1, sizeof(ReportExample));
        for (int i = 0; i < h->n_ex; i++) h->ex[i] = (ReportExample){ef[i], eg[i], ew[i], ei[i], ej[i], et[i]};
        for (int c = 0; c < 6; c++) free(b[c]);
    }
    snprintf(p, sizeof p, "sae/blocks.%d.hook_resid_pre", h->layer);
    if (H5Lexists(d->run, "sae", H5P_DEFAULT) > 0 && H5Lexists(d->run, p, H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(d->run, p, H5P_DEFAULT);
        h->d_sae = (int)qk_h5_attr_read_int(g, "d_sae");
        H5Gclose(g);
    }
    neuronpedia_id(d->run, h->layer, h->np_sae, sizeof h->np_sae);
    if (!rc && st >= 0) {  // the strongest q2k entries: top TOP_STATIC over all f of S[f, g]
        int64_t K = 0;
        snprintf(p, sizeof p, "static/%d.%d/q2k_val", h->layer, h->head);
        if (ds_size(st, p, &K) < 0) return rc;
        static const char *const col[2] = {"q2k_val", "q2k_idx"};
        const hid_t type[2] = {H5T_NATIVE_FLOAT, H5T_NATIVE_INT32};
        static const size_t elem[2] = {4, 4};
        void *b[2];
        snprintf(grp, sizeof grp, "static/%d.%d/", h->layer, h->head);
        if (qk_h5_read_columns(st, d->static_path, grp, 2, col, type, elem, b, &n)) return -1;
        const float *v = b[0];
        const int32_t *ix = b[1];
        h->st_f = qk_malloc(4 * TOP_STATIC), h->st_g = qk_malloc(4 * TOP_STATIC), h->st_v = qk_malloc(4 * TOP_STATIC);
        // Selection by value descending, ties lower f then g (one pass per slot: n is m x K, small).
        char *taken = qk_calloc((size_t)n + 1, 1);
        for (int s = 0; s < TOP_STATIC; s++) {
            int64_t best = -1;
            for (int64_t e = 0; e < n; e++) {
                // Unused slots hold the type's maximum (docs/FORMAT.md), >= d_sae after conversion.
                if (taken[e] || ix[e] < 0 || (h->d_sae > 0 && ix[e] >= h->d_sae)) continue;
                if (best < 0 || v[e] > v[best]) best = e;  // e increases with f: ties keep the lower f
            }
            if (best < 0) break;
            taken[best] = 1;
            h->st_f[s] = (int32_t)(best / K), h->st_g[s] = ix[best], h->st_v[s] = v[best];
            h->n_static = s + 1;
        }
        free(taken), free(b[0]), free(b[1]);
    }
    return rc;
#undef AGG
}

int report_load(ReportData *d, const char *run_path, const char *static_path) {
    memset(d, 0, sizeof *d);
    d->run_path = run_path, d->static_path = static_path;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if ((d->run = H5Fopen(run_path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
        return qk_err("%s: cannot open as HDF5 (a `qkscope run` file or `qkscope merge` output)", run_path);
    char *fmt = qk_h5_attr_read_str(d->run, "format");
    int ok = fmt && !strcmp(fmt, "qkscope-run") && qk_h5_attr_read_int(d->run, "complete") == 1;
    free(fmt);
    if (!ok)
        return qk_err("%s: not a complete qkscope run file (root attributes format = qkscope-run, complete = 1); "
                      "for a sharded folder, `qkscope merge DIR -o all.h5` first", run_path);
    d->model_dir = qk_h5_attr_read_str(d->run, "model_dir");
    d->model_sha = qk_h5_attr_read_str(d->run, "model_sha256");
    d->backend = qk_h5_attr_read_str(d->run, "backend");
    d->heads_attr = qk_h5_attr_read_str(d->run, "heads");
    d->tokens = qk_h5_attr_read_int(d->run, "tokens_processed");
    d->windows = qk_h5_attr_read_int(d->run, "windows");
    int64_t cols = 0, nt = ds_size(d->run, "tokens", &cols);
    if (nt < 0) return qk_err("%s: dataset tokens missing", run_path);
    if (cols < 1 || cols > INT_MAX || nt / cols != d->windows)  // examples index its rows by window
        return qk_err("%s: tokens holds %lld windows of %lld tokens; the attribute windows says %lld", run_path,
                      (long long)(cols ? nt / cols : 0), (long long)cols, (long long)d->windows);
    d->T = (int)cols;
    // Metrics: summary/ (head_layer, head_index, metric_mean (N, M)), names from its attribute.
    hid_t s = H5Gopen2(d->run, "summary", H5P_DEFAULT);
    char *names = s >= 0 ? qk_h5_attr_read_str(s, "metric_names") : NULL;
    if (s >= 0) H5Gclose(s);
    if (!names) return qk_err("%s: summary/ or its metric_names attribute missing", run_path);
    for (char *tok = strtok(names, ","); tok && d->M < 16; tok = strtok(NULL, ","))
        snprintf(d->metric_names[d->M++], sizeof d->metric_names[0], "%s", tok);
    free(names);
    int64_t n, nm;
    int32_t *hl, *hh;
    if (agg_read_summary_heads(d->run, run_path, &hl, &hh, &n, &d->L, &d->H)) return -1;
    double *mm = qk_h5_read_all(d->run, run_path, "summary/metric_mean", H5T_NATIVE_DOUBLE, 8, NULL, NULL, &nm);
    if (mm && nm != n * d->M)
        free(mm), mm = NULL, qk_err("%s: summary/metric_mean has %lld values, not one per head (%lld) and metric (%d)",
                                    run_path, (long long)nm, (long long)n, d->M);
    if (!mm) return free(hl), free(hh), -1;
    d->means = qk_malloc(sizeof(double) * ((size_t)d->L * d->H * d->M + 1));
    for (int64_t i = 0; i < (int64_t)d->L * d->H * d->M; i++) d->means[i] = NAN;
    for (int64_t i = 0; i < n; i++)
        memcpy(d->means + ((size_t)hl[i] * d->H + hh[i]) * d->M, mm + i * d->M, sizeof(double) * d->M);
    free(hl), free(hh), free(mm);
    // Vocabulary pieces (docs/FORMAT.md vocab/), when the run stored them.
    if (qk_vocab_read(d->run, run_path, &d->vocab)) return -1;
    hid_t st = -1;
    if (static_path) {
        st = H5Fopen(static_path, H5F_ACC_RDONLY, H5P_DEFAULT);
        char *sf = st >= 0 ? qk_h5_attr_read_str(st, "format") : NULL, *ssha = st >= 0 ? qk_h5_attr_read_str(st, "model_sha256") : NULL;
        int sok = sf && !strcmp(sf, "qkscope-static") && qk_h5_attr_read_int(st, "complete") == 1;
        int same = ssha && d->model_sha && !strcmp(ssha, d->model_sha);
        free(sf), free(ssha);
        if (!sok) return (st >= 0 ? H5Fclose(st) : 0), qk_err("%s: not a complete qkscope static file", static_path);
        if (!same) return H5Fclose(st), qk_err("%s: model_sha256 differs from %s's: the static maps are of another model", static_path, run_path);
    }
    // Recorded heads: the groups under heads/ (attribute recorded_heads).
    char *rec = qk_h5_attr_read_str(d->run, "recorded_heads");
    int rc = 0;
    d->rec = qk_calloc(d->L * d->H + 1, sizeof(ReportHead));
    for (char *tok = rec ? strtok(rec, ",") : NULL; tok && !rc; tok = strtok(NULL, ",")) {
        ReportHead *h = &d->rec[d->n_rec];
        if (sscanf(tok, "%d.%d", &h->layer, &h->head) != 2 || h->layer < 0 || h->layer >= d->L || h->head < 0 ||
            h->head >= d->H)
            continue;
        int twice = 0;  // a head listed again is loaded once (d->rec holds each head at most once)
        for (int r = 0; r < d->n_rec && !twice; r++) twice = d->rec[r].layer == h->layer && d->rec[r].head == h->head;
        if (twice) continue;
        d->n_rec++;
        rc = load_head(d, st, h);
    }
    free(rec);
    if (st >= 0) H5Fclose(st);
    return rc;
}

int report_tokens(const ReportData *d, int64_t w, int32_t *out) {
    hid_t ds = H5Dopen2(d->run, "tokens", H5P_DEFAULT);
    if (ds < 0) return qk_err("%s: cannot open dataset tokens", d->run_path);
    hid_t sp = H5Dget_space(ds);
    hsize_t start[2] = {(hsize_t)w, 0}, count[2] = {1, (hsize_t)d->T};
    hid_t mem = H5Screate_simple(2, count, NULL);
    int rc = w < 0 || w >= d->windows || H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                     H5Dread(ds, H5T_NATIVE_INT32, mem, sp, H5P_DEFAULT, out) < 0
                 ? -1
                 : 0;
    H5Sclose(mem), H5Sclose(sp), H5Dclose(ds);
    return rc ? qk_err("%s: cannot read window %lld of dataset tokens", d->run_path, (long long)w) : 0;
}

const uint8_t *report_piece(const ReportData *d, int32_t id, int64_t *len) {
    const QkVocabPieces *v = &d->vocab;
    int64_t lo = 0, hi = (int64_t)v->n - 1;
    while (lo <= hi) {  // ids are increasing (qk_vocab_read)
        const int64_t mid = (lo + hi) / 2;
        if (v->ids[mid] == id) return *len = v->off[mid + 1] - v->off[mid], v->bytes + v->off[mid];
        if (v->ids[mid] < id) lo = mid + 1;
        else hi = mid - 1;
    }
    *len = 0;
    return NULL;
}

void report_free(ReportData *d) {
    for (int i = 0; i < d->n_rec; i++) {
        free(d->rec[i].pairs), free(d->rec[i].ex);
        free(d->rec[i].st_f), free(d->rec[i].st_g), free(d->rec[i].st_v);
    }
    free(d->rec), free(d->means);
    qk_vocab_pieces_free(&d->vocab);
    free(d->model_dir), free(d->model_sha), free(d->backend), free(d->heads_attr);
    if (d->run > 0) H5Fclose(d->run);
    memset(d, 0, sizeof *d);
}
