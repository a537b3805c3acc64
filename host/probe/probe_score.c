// probe_score.c: recovery scores of probe.h from a `qkscope run` file over a probe corpus.
// Reads: the run's root attributes (heads, recorded_heads), `tokens`, `aggregates/L.H/pairs_*`
// (induction, feature level), `heads/L.H/attended_pos`, `attended_weight`, `group_totals`,
// `pair_*` (token level and IOI); the probe folder's probe.json and corpus.npy; the labels.
#include <cJSON.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/h5out.h"
#include "io/npy.h"
#include "model/gpt2.h"
#include "probe/probe.h"
#include "run/run_config.h"
#include "text/bpe.h"

// SPEC §4.6 (GPT-2 small): induction heads (with those found by induction score) and name movers.
static const char *k_expect_induction = "5.5,5.8,5.9,6.9,5.1,7.2,7.10";
static const char *k_expect_ioi = "9.9,9.6,10.0";

int qk_labels_load(QkLabels *l, const char *dir, int layer) {
    char name[64];
    snprintf(name, sizeof name, "layer_%d.npy", layer);
    char *p = qk_path_join(dir, name);
    QkNpy a;
    int rc = qk_npy_read(&a, p);
    if (!rc && (a.ndim != 2 || a.shape[1] != 4)) rc = qk_err("%s: shape must be [d_sae, 4]", p);
    if (!rc) {
        l->m = (int)a.shape[0];
        l->lab = qk_malloc(sizeof(int32_t) * a.numel);
        rc = qk_npy_to_i32(&a, l->lab, p);
        if (rc) free(l->lab), l->lab = NULL;
    }
    if (a.data || !rc) qk_npy_free(&a);
    free(p);
    return rc;
}

void qk_labels_free(QkLabels *l) {
    free(l->lab);
    l->lab = NULL;
}

static int cur_of(const QkLabels *l, int64_t f) { return f >= 0 && f < l->m ? l->lab[4 * f] : -1; }
static int prev_of(const QkLabels *l, int64_t g) { return g >= 0 && g < l->m ? l->lab[4 * g + 2] : -1; }

double qk_probe_static_match(const char *static_path, int layer, int head, const QkLabels *lab, int min_count,
                             int *n_checked, double *matchable, int *n_matchable) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(static_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return qk_err("%s: cannot open", static_path);
    char name[64];
    snprintf(name, sizeof name, "static/%d.%d/q2k_idx", layer, head);
    int nd;
    hsize_t dims[H5S_MAX_RANK];
    int64_t *q2k = qk_h5_read_all(f, static_path, name, H5T_NATIVE_INT64, 8, &nd, dims, NULL);
    H5Fclose(f);
    if (!q2k) return -1;
    if (nd != 2 || (int64_t)dims[0] != lab->m) {
        free(q2k);
        return qk_err("%s: %s has %llu rows, the labels %d", static_path, name, (unsigned long long)dims[0], lab->m);
    }
    // is_prev[t]: some latent's previous-token label is token t (every hit is such a case)
    int n_tok = 0;
    for (int g = 0; g < lab->m; g++)
        if (prev_of(lab, g) >= n_tok) n_tok = prev_of(lab, g) + 1;
    unsigned char *is_prev = qk_calloc(n_tok + 1, 1);
    for (int g = 0; g < lab->m; g++)
        if (prev_of(lab, g) >= 0) is_prev[prev_of(lab, g)] = 1;
    int checked = 0, hit = 0, can = 0;
    for (int q = 0; q < lab->m; q++) {
        const int t = lab->lab[4 * q];
        if (t < 0 || lab->lab[4 * q + 1] < min_count) continue;
        checked++;
        hit += prev_of(lab, q2k[(size_t)q * dims[1]]) == t;
        can += t < n_tok && is_prev[t];
    }
    free(q2k), free(is_prev);
    *n_checked = checked;
    if (matchable) *matchable = can ? (double)hit / can : NAN, *n_matchable = can;
    return checked ? (double)hit / checked : NAN;
}

// ---- scoring ---------------------------------------------------------------------------------

typedef struct {
    int64_t f, g;
    double mass;
} PairAcc;

static void pair_add(PairAcc **v, int *n, int *cap, int64_t f, int64_t g, double mass) {
    for (int i = 0; i < *n; i++)
        if ((*v)[i].f == f && (*v)[i].g == g) {
            (*v)[i].mass += mass;
            return;
        }
    if (*n == *cap) *cap = *cap ? 2 * *cap : 64, *v = qk_realloc(*v, sizeof(PairAcc) * *cap);
    (*v)[(*n)++] = (PairAcc){f, g, mass};
}

static int by_mass(const void *a, const void *b) {
    const PairAcc *x = a, *y = b;
    if (x->mass != y->mass) return x->mass < y->mass ? 1 : -1;
    return x->f != y->f ? (x->f < y->f ? -1 : 1) : (x->g < y->g ? -1 : x->g > y->g);
}

static int json_int(const cJSON *o, const char *k, int *out, const char *path) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsNumber(v)) return qk_err("%s: '%s' missing or not a number", path, k);
    *out = v->valueint;
    return 0;
}

// The probe windows must be the run's windows: row w of corpus.npy after the BOS the run added.
static int check_windows(const char *run, const int32_t *tok, int W, int T, const char *probe_dir, int bos,
                         int *windows) {
    char *p = qk_path_join(probe_dir, "corpus.npy");
    QkNpy a;
    int rc = qk_npy_read(&a, p);
    if (!rc && a.ndim != 2) rc = qk_err("%s: expected [windows, tokens]", p);
    if (!rc && a.shape[1] + bos != T)
        rc = qk_err("%s: rows of %lld tokens, but %s has windows of %d (run with n_ctx = %lld, bos = %s, pack = true)", p,
                    (long long)a.shape[1], run, T, (long long)a.shape[1] + bos, bos ? "true" : "false");
    int32_t *c = NULL;
    if (!rc) {
        c = qk_malloc(sizeof(int32_t) * a.numel + 1);
        rc = qk_npy_to_i32(&a, c, p);
    }
    *windows = rc ? 0 : (int)(W < a.shape[0] ? W : a.shape[0]);
    for (int w = 0; !rc && w < *windows; w++) {
        if (bos && tok[(size_t)w * T] != QK_GPT2_EOT) rc = qk_err("%s: window %d does not start with BOS 50256 (run with bos = true)", run, w);
        for (int i = 0; !rc && i < T - bos; i++)
            if (tok[(size_t)w * T + bos + i] != c[(size_t)w * (T - bos) + i])
                rc = qk_err("%s: window %d position %d holds token %d, %s has %d: not a run over this probe corpus "
                            "(pack = true, bos = %s, n_ctx = %d)", run, w, i + bos, tok[(size_t)w * T + bos + i], p,
                            c[(size_t)w * (T - bos) + i], bos ? "true" : "false", T);
    }
    free(c);
    if (a.data) qk_npy_free(&a);
    free(p);
    return rc;
}

// Whether dataset `name` of `run` (rank nd, shape d) has rank want_nd and at least want[i] (exactly,
// where exact[i]) along each axis: the extents the caller indexes with.  Else an error naming both.
static int shape_is(const char *run, const char *name, int nd, const hsize_t *d, int want_nd, const hsize_t *want,
                    const int *exact) {
    int ok = nd == want_nd;
    for (int i = 0; ok && i < nd; i++) ok = exact[i] ? d[i] == want[i] : d[i] >= want[i];
    if (ok) return 0;
    char got[160] = "", exp[160] = "";
    for (int i = 0; i < nd && i < 8; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", i ? " x " : "", (unsigned long long)d[i]);
    for (int i = 0; i < want_nd; i++)
        snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%s%llu", i ? " x " : "", exact[i] ? "" : ">=",
                 (unsigned long long)want[i]);
    return qk_err("%s: %s has shape (%s), expected (%s)", run, name, got, exp);
}

// Induction, feature level: the head's heaviest pairs from the aggregates.
static int induction_pairs(hid_t f, const char *run, QkProbeHead *h, const QkLabels *lab, int top_pairs) {
    static const char *const col[3] = {"pairs_query_feature", "pairs_key_feature", "pairs_weight"};
    char grp[64];
    snprintf(grp, sizeof grp, "aggregates/%d.%d/", h->layer, h->head);
    const hid_t type[3] = {H5T_NATIVE_INT64, H5T_NATIVE_INT64, H5T_NATIVE_DOUBLE};
    static const size_t elem[3] = {8, 8, 8};
    void *buf[3];
    int64_t count = 0;
    if (qk_h5_read_columns(f, run, grp, 3, col, type, elem, buf, &count)) return -1;
    const int64_t *pf = buf[0], *pg = buf[1];
    const double *pw = buf[2];
    const int n = count < top_pairs ? (int)count : top_pairs;
    double tot = 0, hit = 0;
    for (int i = 0; i < n; i++) {
        int match = lab && cur_of(lab, pf[i]) >= 0 && cur_of(lab, pf[i]) == prev_of(lab, pg[i]);
        tot += pw[i];
        hit += match ? pw[i] : 0;
        if (h->n_top < 8) {
            h->top_f[h->n_top] = pf[i], h->top_g[h->n_top] = pg[i], h->top_mass[h->n_top] = pw[i];
            h->top_match[h->n_top++] = match;
        }
    }
    h->n_pairs = n;
    h->feature_share = lab && tot > 0 ? hit / tot : NAN;
    free(buf[0]), free(buf[1]), free(buf[2]);
    return 0;
}

// Induction, token level (recorded heads): top-1 attended key == i - rep + 1 in the second copy.
static int induction_tokens(hid_t f, const char *run, QkProbeHead *h, int windows, int T, int bos, int rep) {
    char a[96];
    snprintf(a, sizeof a, "heads/%d.%d/attended_pos", h->layer, h->head);
    int nd;
    hsize_t d[H5S_MAX_RANK];
    int32_t *pos = qk_h5_read_all(f, run, a, H5T_NATIVE_INT32, 4, &nd, d, NULL);
    if (!pos) return -1;
    const hsize_t want[3] = {(hsize_t)windows, (hsize_t)T, 1};
    if (shape_is(run, a, nd, d, 3, want, (const int[3]){0, 1, 0})) return free(pos), -1;
    const int A = (int)d[2];
    long hit = 0, n = 0;
    for (int w = 0; w < windows; w++)
        for (int i = bos + rep; i < T; i++, n++) hit += pos[((size_t)w * T + i) * A] == i - rep + 1;
    h->token_score = n ? (double)hit / n : NAN;
    free(pos);
    return 0;
}

// IOI (recorded heads): attention END -> IO, top-1, and the (feature, feature) share of that score.
static int ioi_head(hid_t f, const char *run, QkProbeHead *h, const cJSON *prompts, int windows, int T,
                    const char *probe_json) {
    // The recorded head's datasets, each checked for the extents indexed below: attended_pos
    // (W >= windows, T, A), attended_weight its shape, group_totals (W, T, A, 4, 4), the pair
    // datasets (W, T, A, P).
    static const char *const col[6] = {"attended_pos",       "attended_weight",  "group_totals",
                                       "pair_query_feature", "pair_key_feature", "pair_value"};
    const hid_t type[6] = {H5T_NATIVE_INT32, H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT,
                           H5T_NATIVE_INT64, H5T_NATIVE_INT64, H5T_NATIVE_FLOAT};
    static const size_t elem[6] = {4, 4, 4, 8, 8, 4};
    static const int exact[5] = {1, 1, 1, 1, 1};
    char name[6][96];
    void *b[6] = {NULL};
    int nds[6] = {0}, rc = 0;
    hsize_t dd[6][H5S_MAX_RANK] = {{0}};  // read below even when a dataset failed (then unused)
    for (int c = 0; c < 6 && !rc; c++) {
        snprintf(name[c], sizeof name[c], "heads/%d.%d/%s", h->layer, h->head, col[c]);
        if (!(b[c] = qk_h5_read_all(f, run, name[c], type[c], elem[c], &nds[c], dd[c], NULL))) rc = -1;
    }
    const hsize_t *d = dd[0], want_pos[3] = {(hsize_t)windows, (hsize_t)T, 1};
    if (!rc) rc = shape_is(run, name[0], nds[0], d, 3, want_pos, (const int[3]){0, 1, 0});
    if (!rc) rc = shape_is(run, name[1], nds[1], dd[1], 3, d, exact);
    const hsize_t groups[5] = {d[0], d[1], d[2], 4, 4}, pairs[4] = {d[0], d[1], d[2], nds[3] == 4 ? dd[3][3] : 0};
    if (!rc) rc = shape_is(run, name[2], nds[2], dd[2], 5, groups, exact);
    for (int c = 3; c < 6 && !rc; c++) rc = shape_is(run, name[c], nds[c], dd[c], 4, pairs, exact);
    const int32_t *pos = b[0];
    const float *wt = b[1], *gt = b[2], *pv = b[5];
    const int64_t *pq = b[3], *pk = b[4];
    const int A = rc ? 0 : (int)d[2], P = rc ? 0 : (int)pairs[3];
    double att = 0, top1 = 0, ff = 0, all = 0;
    PairAcc *acc = NULL;
    int n_acc = 0, cap = 0, w = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, prompts) {
        if (rc || w >= windows) break;
        int io = -1, end = -1;
        if (json_int(e, "io", &io, probe_json) || json_int(e, "end", &end, probe_json)) {
            rc = -1;
            break;
        }
        if (io < 0 || end <= io || end >= T) {
            rc = qk_err("%s: prompts[%d]: positions io %d, end %d outside the window of %d", probe_json, w, io, end, T);
            break;
        }
        size_t q = (size_t)w * T + end;
        top1 += pos[q * A] == io;
        for (int s = 0; s < A; s++) {
            if (pos[q * A + s] != io) continue;
            att += wt[q * A + s];
            const float *G = gt + (q * A + s) * 16;
            for (int al = 0; al < 4; al++)
                for (int be = 0; be < 3; be++) all += fabs(G[al * 4 + be]);  // key-side A column left out
            ff += G[0];
            for (int r = 0; r < P; r++) {
                size_t at = (q * A + s) * P + r;
                if (pv[at] != 0) pair_add(&acc, &n_acc, &cap, pq[at], pk[at], fabs(pv[at]));
            }
        }
        w++;
    }
    if (!rc) {
        h->token_score = w ? att / w : NAN;
        h->top1 = w ? top1 / w : NAN;
        h->feature_share = all > 0 ? ff / all : NAN;
        h->n_pairs = n_acc;
        if (n_acc) qsort(acc, n_acc, sizeof *acc, by_mass);  // qsort(NULL, 0) is undefined
        for (int i = 0; i < n_acc && h->n_top < 8; i++, h->n_top++)
            h->top_f[h->n_top] = acc[i].f, h->top_g[h->n_top] = acc[i].g, h->top_mass[h->n_top] = acc[i].mass,
            h->top_match[h->n_top] = -1;
    }
    free(acc);
    for (int c = 0; c < 6; c++) free(b[c]);
    return rc;
}

static double head_score(const QkProbeScore *s, const QkProbeHead *h, int have_labels) {
    if (!strcmp(s->task, "induction") && have_labels) return h->feature_share;
    return h->token_score;
}

static int parse_heads(const char *list, int L, int H, uint8_t *mark, const char *what) {
    return run_config_heads(list, L, H, mark, what);
}

int qk_probe_score(const QkProbeScoreOpts *o, QkProbeScore *out) {
    memset(out, 0, sizeof *out);
    char *pj = qk_path_join(o->probe, "probe.json");
    cJSON *probe = qk_json_load(pj);
    if (!probe) {
        free(pj);
        return -1;
    }
    int rc = 0, bos = 0, rep = 0, windows = 0;
    const cJSON *task = cJSON_GetObjectItem(probe, "task");
    if (!cJSON_IsString(task) || (strcmp(task->valuestring, "induction") && strcmp(task->valuestring, "ioi")))
        rc = qk_err("%s: 'task' must be \"induction\" or \"ioi\"", pj);
    else snprintf(out->task, sizeof out->task, "%s", task->valuestring);
    int ioi = !rc && !strcmp(out->task, "ioi");
    if (!rc) rc = json_int(probe, "bos", &bos, pj);
    if (!rc && !ioi) rc = json_int(probe, "rep", &rep, pj);
    const cJSON *prompts = ioi ? cJSON_GetObjectItem(probe, "prompts") : NULL;
    if (!rc && ioi && !cJSON_IsArray(prompts)) rc = qk_err("%s: 'prompts' missing", pj);

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = rc ? -1 : H5Fopen(o->run, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (!rc && f < 0) rc = qk_err("%s: cannot open as HDF5", o->run);
    char *heads = NULL, *recorded = NULL, *format = NULL;
    if (!rc) {
        format = qk_h5_attr_read_str(f, "format");
        heads = qk_h5_attr_read_str(f, "heads");
        recorded = qk_h5_attr_read_str(f, "recorded_heads");
        if (!format || strcmp(format, "qkscope-run") || !heads || !recorded)
            rc = qk_err("%s: not a qkscope-run file (root attributes format, heads, recorded_heads)", o->run);
    }
    int nd, T = 0, W = 0;
    hsize_t dt[H5S_MAX_RANK];
    int32_t *tok = rc ? NULL : qk_h5_read_all(f, o->run, "tokens", H5T_NATIVE_INT32, 4, &nd, dt, NULL);
    if (!rc && !tok) rc = -1;
    if (!rc && (nd != 2 || dt[0] > INT32_MAX || dt[1] > INT32_MAX))
        rc = qk_err("%s: tokens is not a (windows, n_ctx) table", o->run);
    if (!rc) W = (int)dt[0], T = (int)dt[1], rc = check_windows(o->run, tok, W, T, o->probe, bos, &windows);
    // heads: the run's list, layer-major; L and H from the largest indices
    int L = 0, H = 0;
    for (const char *p = heads; !rc && p && *p;) {
        int l, h, n;
        if (sscanf(p, "%d.%d%n", &l, &h, &n) != 2 || l < 0 || l >= GPT2_MAX_LAYER || h < 0 || h >= GPT2_MAX_HEAD) {
            rc = qk_err("%s: root attribute 'heads' is not a list of L.H (heads of a model within gpt2.h's caps)", o->run);
            break;
        }
        out->heads = qk_realloc(out->heads, sizeof(QkProbeHead) * (out->n_heads + 1));
        QkProbeHead *ph = &out->heads[out->n_heads++];
        memset(ph, 0, sizeof *ph);
        ph->layer = l, ph->head = h, ph->feature_share = ph->token_score = ph->top1 = NAN;
        L = l + 1 > L ? l + 1 : L, H = h + 1 > H ? h + 1 : H;
        p += n;
        if (*p == ',') p++;
    }
    // expected heads: against a grid large enough for both the run's heads and the list
    const char *expect = o->expect ? (*o->expect ? o->expect : "none") : ioi ? k_expect_ioi : k_expect_induction;
    int EL = L > 64 ? L : 64, EH = H > 64 ? H : 64;
    uint8_t *exp_mark = qk_calloc((size_t)EL * EH, 1), *rec_mark = qk_calloc((size_t)EL * EH, 1);
    if (!rc) rc = parse_heads(expect, EL, EH, exp_mark, "--expect");
    if (!rc && strcmp(recorded, "")) rc = parse_heads(recorded, EL, EH, rec_mark, "recorded_heads");
    QkLabels *labs = NULL;
    const int have_labels = !ioi && o->labels;
    if (have_labels) out->labels = labs = qk_calloc(L ? L : 1, sizeof(QkLabels)), out->n_layers = L;
    for (int l = 0; !rc && have_labels && l < L; l++) {
        int used = 0;
        for (int i = 0; i < out->n_heads; i++) used |= out->heads[i].layer == l;
        if (used) rc = qk_labels_load(&labs[l], o->labels, l);
    }
    for (int i = 0; !rc && i < out->n_heads; i++) {
        QkProbeHead *h = &out->heads[i];
        int recd = rec_mark[h->layer * EH + h->head];
        if (!ioi) {
            rc = induction_pairs(f, o->run, h, have_labels ? &labs[h->layer] : NULL, o->top_pairs);
            if (!rc && recd) rc = induction_tokens(f, o->run, h, windows, T, bos, rep);
        } else if (recd) {
            rc = ioi_head(f, o->run, h, prompts, windows, T, pj);
        }
        h->expected = exp_mark[h->layer * EH + h->head];
    }
    // ranks, singled-out heads, precision / recall / F1
    for (int i = 0; !rc && i < out->n_heads; i++) {
        QkProbeHead *h = &out->heads[i];
        double si = head_score(out, h, have_labels);
        h->rank = 1;
        for (int j = 0; j < out->n_heads; j++) {
            double sj = head_score(out, &out->heads[j], have_labels);
            if (isnan(si) ? !isnan(sj) || j < i : (!isnan(sj) && (sj > si || (sj == si && j < i)))) h->rank++;
        }
        h->singled_out = !isnan(si) && si >= o->threshold;
        out->n_singled += h->singled_out;
        out->n_hit += h->singled_out && h->expected;
    }
    for (int i = 0; !rc && i < EL * EH; i++) out->n_expected += exp_mark[i];
    out->precision = out->n_singled ? (double)out->n_hit / out->n_singled : NAN;
    out->recall = out->n_expected ? (double)out->n_hit / out->n_expected : NAN;
    out->f1 = out->n_hit ? 2 * out->precision * out->recall / (out->precision + out->recall) : 0;
    free(exp_mark), free(rec_mark), free(tok), free(heads), free(recorded), free(format), free(pj);
    if (f >= 0) H5Fclose(f);
    cJSON_Delete(probe);
    if (rc) qk_probe_score_free(out);
    return rc;
}

void qk_probe_score_free(QkProbeScore *s) {
    for (int l = 0; s->labels && l < s->n_layers; l++) qk_labels_free(&s->labels[l]);
    free(s->heads), free(s->labels);
    s->heads = NULL, s->labels = NULL;
    s->n_heads = s->n_layers = 0;
}
