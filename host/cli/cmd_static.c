// cmd_static.c: `qkscope static CONFIG -o OUT.h5`: the weights-only feature-to-feature maps of
// every analysed head (docs/ANALYSIS.md §6): q2k, k2q and the key prior.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "analysis/head_tables.h"
#include "analysis/static_maps.h"
#include "backend.h"
#include "base/util.h"
#include "cli/commands.h"
#include "io/h5out.h"
#include "run/run_setup.h"


static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope static CONFIG -o OUT.h5 [--set section.key=value ...]\n\n"
            "Weights-only maps for every analysed head of CONFIG ([model], [sae], [analysis] heads and\n"
            "static_k): S[f,g] = Qd[f].Kd[g]/sqrt(d_head); for every query feature f its top static_k key\n"
            "features (q2k), for every key feature g its top query features (k2q), and the key prior\n"
            "bq'.Kd[g]/sqrt(d_head).  Streams through the bilinear top-k primitive: the d_sae x d_sae\n"
            "matrix is never materialised.  Runs on [run] backend (CUDA: the device top-k at [run]\n"
            "precision; the CPU: fp32).  Output layout: docs/FORMAT.md.\n\n"
            "  --set S.K=V        override a config key (repeatable)\n"
            "  -o, --output FILE  the HDF5 file (written as FILE.tmp, renamed when complete)\n"
            "  -q, --quiet        no notices\n"
            "  -h, --help         this text\n");
}

static int write_head(QkH5Out *o, int l, int h, const StaticMaps *s) {
    char name[128];
    hsize_t mk[2] = {(hsize_t)s->m, (hsize_t)s->k}, m1[1] = {(hsize_t)s->m}, k1[1] = {(hsize_t)s->k};
    static const char *const q2k[2] = {"query_feature", "rank"}, *const k2q[2] = {"key_feature", "rank"};
    static const char *const keyf[1] = {"key_feature"}, *const rank[1] = {"rank"};
#define PATH(x) (snprintf(name, sizeof name, "static/%d.%d/" x, l, h), name)
    if (qk_h5_write_features(o, PATH("q2k_idx"), 2, mk, q2k, s->q2k_idx, s->m) ||
        qk_h5_write(o, PATH("q2k_val"), H5T_NATIVE_FLOAT, 2, mk, q2k, s->q2k_val) ||
        qk_h5_write_features(o, PATH("k2q_idx"), 2, mk, k2q, s->k2q_idx, s->m) ||
        qk_h5_write(o, PATH("k2q_val"), H5T_NATIVE_FLOAT, 2, mk, k2q, s->k2q_val) ||
        qk_h5_write(o, PATH("key_prior"), H5T_NATIVE_FLOAT, 1, m1, keyf, s->key_prior) ||
        qk_h5_write_features(o, PATH("key_prior_top_idx"), 1, k1, rank, s->prior_idx, s->m) ||
        qk_h5_write(o, PATH("key_prior_top_val"), H5T_NATIVE_FLOAT, 1, k1, rank, s->prior_val))
        return -1;
#undef PATH
    return 0;
}

static int run(const char *config, char **sets, int n_sets, const char *out_path, int quiet) {
    RunSetup s;
    QkH5Out out = {0};
    QkBackend *be = NULL;
    QkBackendKind kind;
    QkPrecision prec = QK_PREC_FP32;
    int rc = run_setup_open(&s, config, sets, n_sets, quiet, out_path, QK_OUT_FILE);
    if (!rc && s.cfg.threads) omp_set_num_threads(s.cfg.threads);
    if (!rc) rc = qk_backend_parse(s.cfg.backend, &kind) || qk_precision_parse(s.cfg.precision, &prec) ||
                  qk_backend_open(&be, kind, s.cfg.device, quiet);
    if (!rc) rc = qk_h5_create(&out, out_path);
    if (!rc) rc = run_setup_write_identity(&s, out.file, "qkscope-static");
    const int L = s.model.cfg.n_layer, H = s.model.cfg.n_head;
    // Progress: one rewritten line on a terminal; in a log (not a TTY) whole lines, about every 10%.
    const int tty = isatty(2);
    int n_heads = 0, done = 0;
    for (int i = 0; i < L * H; i++) n_heads += s.analysed[i];
    for (int i = 0; !rc && i < L * H; i++) {
        if (!s.analysed[i]) continue;
        HeadTables t;
        head_tables_build(&t, &s.model, i / H, i % H, s.sae[i / H], 0);
        StaticMaps maps;
        int k = s.cfg.static_k < t.m ? s.cfg.static_k : t.m;
        rc = static_maps_compute(&maps, &t, k, be, prec) || write_head(&out, i / H, i % H, &maps);
        if (!rc) static_maps_free(&maps);
        head_tables_free(&t);
        done += !rc;
        if (!quiet && !rc && tty) fprintf(stderr, "\rqkscope static: head %d.%d done (%d of %d)", i / H, i % H, done, n_heads);
        else if (!quiet && !rc && (done * 10 / n_heads != (done - 1) * 10 / n_heads || done == n_heads))
            fprintf(stderr, "qkscope static: head %d.%d done (%d of %d)\n", i / H, i % H, done, n_heads);
    }
    if (!quiet && !rc && tty) fprintf(stderr, "\n");
    if (!rc) rc = qk_h5_finish(&out);
    else if (out.file) qk_h5_abort(&out);
    qk_backend_close(be);
    run_setup_close(&s);
    return rc;
}

int cmd_static(int argc, char **argv) {
    RunArgs a;
    int st = run_args_parse(argc, argv, "static", 0, usage, &a);
    if (st >= 0) return st;
    if (run(a.config, a.sets, a.n_sets, a.out, a.quiet)) {
        fprintf(stderr, "qkscope static: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}
