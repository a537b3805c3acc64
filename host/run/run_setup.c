// run_setup.c: see run_setup.h.
#include "run/run_setup.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/exit_status.h"
#include "base/util.h"
#include "io/h5out.h"
#include "io/out_check.h"
#include "io/sha256.h"

static int hash_file(const char *dir, const char *file, char hex[65]) {
    char *path = qk_path_join(dir, file);
    int rc = qk_sha256_file(path, hex);
    free(path);
    return rc;
}

static void *hash_all(void *arg) {
    RunSetup *s = arg;
    const RunConfig *c = &s->cfg;
    int rc = hash_file(c->model_dir, "model.safetensors", s->model_sha256);
    for (int l = 0; !rc && l < s->model.cfg.n_layer; l++)
        if (s->sae[l]) rc = hash_file(c->sae_dir[l], "sae_weights.safetensors", s->sae_sha256[l]);
    if (rc) snprintf(s->hash_err, sizeof s->hash_err, "%s", qk_errmsg());  // the error line is per thread
    s->hash_rc = rc;
    return NULL;
}

static int dir_has(const char *dir, const char *name) {
    char *p = qk_path_join(dir, name);
    int ok = qk_file_exists(p);
    free(p);
    return ok;
}

int run_setup_open(RunSetup *s, const char *config, char *const *sets, int n_sets, int quiet, const char *out,
                   QkOutKind out_kind) {
    memset(s, 0, sizeof *s);
    if (run_config_load(&s->cfg, config, sets, n_sets)) return -1;
    const RunConfig *c = &s->cfg;
    if (!dir_has(c->model_dir, "config.json"))  // the usual first-run case: the model is not downloaded yet
        return qk_err("%s: [model] dir = %s has no config.json: for GPT-2 small run scripts/download_gpt2.sh (it writes "
                      "models/gpt2/ and the SAEs), or point model.dir (--set model.dir=DIR) at a Hugging Face GPT-2 folder",
                      c->path, c->model_dir);
    int folder = out_kind == QK_OUT_FOLDER || (out_kind == QK_OUT_BY_CONFIG && c->shard_tokens > 0);
    if ((out_kind == QK_OUT_FILE || c->write) && (folder ? qk_out_check_folder(out) : qk_out_check_file(out, 1)))
        return -1;
    if (gpt2_load(&s->model, c->model_dir)) return -1;
    const int L = s->model.cfg.n_layer, H = s->model.cfg.n_head;
    if (L > QK_MAX_LAYERS) return qk_err("%s: %d layers (at most %d)", c->model_dir, L, QK_MAX_LAYERS);
    for (int l = L; l < QK_MAX_LAYERS; l++)
        if (c->sae_dir[l]) return qk_err("%s: [sae] layer.%d: the model has layers 0..%d", c->path, l, L - 1);
    s->analysed = qk_calloc((size_t)L * H, 1);
    s->recorded = qk_calloc((size_t)L * H, 1);
    if (run_config_heads(c->heads, L, H, s->analysed, "[analysis] heads") ||
        run_config_heads(c->record_heads, L, H, s->recorded, "[analysis] record_heads"))
        return -1;
    int all = !strcmp(c->heads, "all");
    for (int l = 0; l < L; l++) {
        int wanted = 0;
        for (int h = 0; h < H; h++) wanted |= s->analysed[l * H + h] | s->recorded[l * H + h];
        if (!wanted) continue;
        if (!c->sae_dir[l]) {
            if (!all) return qk_err("%s: head %d.x is analysed but [sae] has no layer.%d (the SAE of blocks.%d.hook_resid_pre)",
                                    c->path, l, l, l);
            if (!quiet)
                fprintf(stderr, "qkscope: layer %d skipped: no SAE for blocks.%d.hook_resid_pre in %s (SPEC §3)\n", l, l,
                        c->path);
            memset(s->analysed + l * H, 0, H);
            continue;
        }
        s->sae[l] = qk_calloc(1, sizeof(QkSae));
        if (!dir_has(c->sae_dir[l], "cfg.json"))
            return qk_err("%s: [sae] layer.%d = %s has no cfg.json: for GPT-2 small's SAEs run scripts/download_gpt2.sh, "
                          "or set sae.layer.%d to a SAELens SAE folder", c->path, l, c->sae_dir[l], l);
        if (qk_sae_load(s->sae[l], c->sae_dir[l], s->model.cfg.d_model, c->sae_center[l])) return -1;
        // The SAE must code the stream the heads read.
        if (!qk_sae_codes_resid_pre(s->sae[l], l))
            return qk_err("%s: [sae] layer.%d = %s was trained on '%s', not on blocks.%d.hook_resid_pre", c->path, l,
                          c->sae_dir[l], s->sae[l]->hook_name, l);
    }
    for (int i = 0; i < L * H; i++) {
        if (s->recorded[i] && !s->analysed[i] && s->sae[i / H]) s->analysed[i] = 1;  // records imply analysis
        s->n_analysed += s->analysed[i];
        s->n_recorded += s->recorded[i] && s->analysed[i];
        s->recorded[i] &= s->analysed[i];
    }
    if (!s->n_analysed) return qk_err("%s: no head to analyse (is [sae] empty?)", c->path);
    // Identity of the weights, hashed once (every output file and shard records it), in a thread.
    s->hashing = pthread_create(&s->hasher, NULL, hash_all, s) == 0;
    if (!s->hashing) hash_all(s);
    return 0;
}

// -1 with the hasher's error line if a file could not be read.
int run_setup_hashes_ready(RunSetup *s) {
    if (s->hashing) pthread_join(s->hasher, NULL), s->hashing = 0;
    return s->hash_rc ? qk_err("%s", s->hash_err) : 0;
}

void run_setup_close(RunSetup *s) {
    if (s->hashing) pthread_join(s->hasher, NULL);
    for (int l = 0; l < QK_MAX_LAYERS; l++)
        if (s->sae[l]) qk_sae_free(s->sae[l]), free(s->sae[l]);
    free(s->analysed);
    free(s->recorded);
    gpt2_free(&s->model);
    run_config_free(&s->cfg);
    memset(s, 0, sizeof *s);
}

int run_setup_write_identity(RunSetup *s, hid_t file, const char *format) {
    if (run_setup_hashes_ready(s)) return -1;
    const RunConfig *c = &s->cfg;
    const int L = s->model.cfg.n_layer, H = s->model.cfg.n_head;
    if (qk_h5_attr_str(file, "format", format) || qk_h5_attr_int(file, "format_version", QK_FORMAT_VERSION) ||
        qk_h5_attr_str(file, "qkscope_version", QK_VERSION) || qk_h5_attr_str(file, "config", c->text) ||
        qk_h5_attr_str(file, "config_path", c->path) || qk_h5_attr_str(file, "model_dir", c->model_dir) ||
        qk_h5_attr_str(file, "model_sha256", s->model_sha256) ||
        qk_h5_attr_str(file, "precision", c->precision))
        return -1;
    // Head labels "L.H" of the analysed heads, in layer-major order.
    size_t cap = (size_t)L * H * 8 + 1, o = 0;
    char *labels = qk_malloc(cap);
    labels[0] = 0;
    for (int i = 0; i < L * H; i++)
        if (s->analysed[i]) o += snprintf(labels + o, cap - o, "%s%d.%d", o ? "," : "", i / H, i % H);
    int rc = qk_h5_attr_str(file, "heads", labels);
    o = 0;
    labels[0] = 0;
    for (int i = 0; i < L * H; i++)
        if (s->recorded[i]) o += snprintf(labels + o, cap - o, "%s%d.%d", o ? "," : "", i / H, i % H);
    rc = rc || qk_h5_attr_str(file, "recorded_heads", labels);
    free(labels);
    for (int l = 0; !rc && l < L; l++) {
        if (!s->sae[l]) continue;
        char g[64];
        snprintf(g, sizeof g, "sae/blocks.%d.hook_resid_pre", l);
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        hid_t grp = H5Gcreate2(file, g, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        H5Pclose(lcpl);
        if (grp < 0) return qk_err("HDF5: cannot create group %s", g);
        const QkSae *sae = s->sae[l];
        rc = qk_h5_attr_str(grp, "dir", c->sae_dir[l]) || qk_h5_attr_str(grp, "sha256", s->sae_sha256[l]) ||
             qk_h5_attr_str(grp, "architecture", qk_sae_arch_name(sae->arch)) ||
             qk_h5_attr_str(grp, "normalize_activations", sae->norm == QK_SAE_NORM_LAYER_NORM ? "layer_norm" : "none") ||
             qk_h5_attr_int(grp, "d_sae", sae->d_sae) || qk_h5_attr_int(grp, "k", sae->k) ||
             qk_h5_attr_int(grp, "center_input", sae->center_input) || qk_h5_attr_str(grp, "hook_name", sae->hook_name);
        H5Gclose(grp);
    }
    return rc ? -1 : 0;
}

int run_args_parse(int argc, char **argv, const char *cmd, int allow_resume, void (*usage)(FILE *), RunArgs *a) {
    static const struct option opts[] = {{"set", required_argument, 0, 's'}, {"output", required_argument, 0, 'o'},
                                         {"resume", no_argument, 0, 'r'},    {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},      {"part", required_argument, 0, 'p'},
                                         {"gpus", required_argument, 0, 'g'}, {"ranks", required_argument, 0, 'n'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1;) {
        if (ch == 's' && a->n_sets < QK_MAX_SETS) a->sets[a->n_sets++] = optarg;
        else if (ch == 'o') a->out = optarg;
        else if (ch == 'q') a->quiet = 1;
        else if (ch == 'r' && allow_resume) a->resume = 1;
        else if (ch == 'p' && allow_resume) {
            char *slash;
            a->part = (int)strtol(optarg, &slash, 10);
            a->n_parts = *slash == '/' ? atoi(slash + 1) : 0;
            if (a->n_parts < 1 || a->part < 0 || a->part >= a->n_parts) {
                fprintf(stderr, "qkscope %s: --part '%s': expected P/N with 0 <= P < N\n", cmd, optarg);
                return QK_EXIT_USAGE;
            }
        }
        else if (ch == 'g' && allow_resume) a->gpus = optarg;
        else if (ch == 'n' && allow_resume) {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 1024) {
                fprintf(stderr, "qkscope %s: --ranks '%s': expected a rank count in [1, 1024]\n", cmd, optarg);
                return QK_EXIT_USAGE;
            }
            a->ranks = (int)v;
        }
        else if (ch == 'h') return usage(stdout), QK_EXIT_OK;
        else {
            fprintf(stderr, "qkscope %s: unknown or incomplete option '%s' (--help)\n", cmd, argv[optind - 1]);
            return QK_EXIT_USAGE;
        }
    }
    if (a->gpus && a->ranks) {
        fprintf(stderr, "qkscope %s: --gpus and --ranks exclude each other (GPU ranks or CPU ranks)\n", cmd);
        return QK_EXIT_USAGE;
    }
    if (optind != argc - 1 || !a->out) {
        fprintf(stderr, "qkscope %s: expected CONFIG and -o OUTPUT (--help)\n", cmd);
        return QK_EXIT_USAGE;
    }
    a->config = argv[optind];
    return -1;
}

void run_eta(RunEta *e, QkCorpus *c, int64_t max_tokens, int64_t tokens_done, double now, char *buf, size_t n) {
    buf[0] = 0;
    QkCorpusStats st;
    qk_corpus_stats(c, &st);
    double frac = st.input_bytes_total > 0 ? (double)st.input_bytes_done / st.input_bytes_total : 0;
    if (!e->started) {
        if (tokens_done <= 0) return;
        *e = (RunEta){.started = 1, .t0 = now, .frac0 = frac, .tokens0 = tokens_done};
        return;
    }
    double el = now - e->t0, eta = -1;
    if (el <= 0) return;
    if (frac > e->frac0) eta = (1 - frac) * el / (frac - e->frac0);
    if (max_tokens > 0 && tokens_done > e->tokens0) {
        double by_tokens = (max_tokens - tokens_done) * el / (tokens_done - e->tokens0);
        if (eta < 0 || by_tokens < eta) eta = by_tokens;
    }
    if (eta >= 0) snprintf(buf, n, ", ETA %.0f s", eta);
}
