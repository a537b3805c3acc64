// cmd_info.c: `qkscope info PATH`: what a qkscope HDF5 file, a sharded run folder, a model
// folder or an SAE folder holds, whether it is complete, and how it was made.
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/util.h"
#include "cli/commands.h"
#include "model/gpt2.h"
#include "model/sae.h"
#include "run/manifest.h"

// Prints a root attribute as text (strings, integers and floats).
static void print_attr(hid_t f, const char *name, const char *label) {
    if (H5Aexists(f, name) <= 0) return;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = H5Aget_type(a);
    H5T_class_t cls = H5Tget_class(t);
    if (cls == H5T_STRING) {
        char *buf = qk_calloc(H5Tget_size(t) + 1, 1);
        H5Aread(a, t, buf);
        printf("  %-18s %s\n", label, buf);
        free(buf);
    } else if (cls == H5T_INTEGER) {
        long long v = 0;
        H5Aread(a, H5T_NATIVE_LLONG, &v);
        printf("  %-18s %lld\n", label, v);
    } else if (cls == H5T_FLOAT) {
        double v = 0;
        H5Aread(a, H5T_NATIVE_DOUBLE, &v);
        printf("  %-18s %g\n", label, v);
    }
    H5Tclose(t), H5Aclose(a);
}

static int info_h5(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return qk_err("%s: not a readable HDF5 file", path);
    printf("%s\n", path);
    static const char *const keys[][2] = {
        {"format", "format"},       {"format_version", "format version"}, {"qkscope_version", "made by qkscope"},
        {"complete", "complete"},   {"model_dir", "model"},               {"model", "model"},
        {"model_sha256", "model sha256"}, {"precision", "precision"},     {"backend", "backend"},
        {"tokens_processed", "tokens"}, {"windows", "windows"},           {"shard", "shard"},
        {"shards", "merged shards"}, {"heads", "analysed heads"},          {"recorded_heads", "recorded heads"},
        {"config_path", "config"},   {"config_hash", "config hash"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) print_attr(f, keys[i][0], keys[i][1]);
    if (H5Aexists(f, "complete") <= 0) printf("  %-18s NO: the file was not finished; do not use it\n", "complete");
    H5Fclose(f);
    return 0;
}

static int info_shards(const char *dir) {
    QkManifest m;
    if (qk_manifest_read(&m, dir)) return -1;
    printf("%s: sharded qkscope run, %d shard(s), %s\n", dir, m.n_shards,
           m.complete ? "complete (qkscope merge can combine them)" : "NOT complete (qkscope run --resume continues it)");
    if (m.ranks)
        printf("  written by %d ranks (shard s by rank s mod %d)%s%s\n", m.ranks, m.ranks,
               m.aggregates ? "; the whole run's aggregates: " : "", m.aggregates ? m.aggregates : "");
    for (int i = 0; i < m.n_shards; i++) {
        char *p = qk_path_join(dir, m.shards[i]);
        if (info_h5(p)) printf("%s: missing or unreadable\n", p);
        free(p);
    }
    qk_manifest_free(&m);
    return 0;
}

static int info_model(const char *dir) {
    GPT2Model m;
    if (gpt2_load(&m, dir)) return -1;
    const GPT2Config *c = &m.cfg;
    printf("%s: GPT-2 model, %d layers x %d heads, d_model %d, d_head %d, d_mlp %d, n_ctx %d, vocab %d\n", dir,
           c->n_layer, c->n_head, c->d_model, c->d_head, c->d_mlp, c->n_ctx, c->vocab_size);
    gpt2_free(&m);
    return 0;
}

static int info_sae(const char *dir) {
    QkSae s;
    if (qk_sae_load(&s, dir, 0, 0)) return -1;
    printf("%s: SAELens SAE, %s (k %d), d_in %d, d_sae %d, normalize_activations %s, apply_b_dec_to_input %d, hook %s\n",
           dir, qk_sae_arch_name(s.arch), s.k, s.d_in, s.d_sae, s.norm == QK_SAE_NORM_LAYER_NORM ? "layer_norm" : "none",
           s.apply_b_dec_to_input, s.hook_name[0] ? s.hook_name : "(not named)");
    qk_sae_free(&s);
    return 0;
}

int cmd_info(int argc, char **argv) {
    if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: qkscope info PATH\n\n"
               "Describes PATH: a qkscope HDF5 file (run, static, cache, merged), a sharded run folder\n"
               "(manifest.json), a Hugging Face GPT-2 folder (config.json) or a SAELens SAE folder (cfg.json):\n"
               "what it holds, whether it is complete, how it was made.\n");
        return argc == 2 ? QK_EXIT_OK : QK_EXIT_USAGE;
    }
    const char *p = argv[1];
    struct stat st;
    int rc;
    if (stat(p, &st)) rc = qk_err("%s: no such file or folder", p);
    else if (!S_ISDIR(st.st_mode)) rc = info_h5(p);
    else {
        char *a = qk_path_join(p, "manifest.json"), *b = qk_path_join(p, "config.json"), *c = qk_path_join(p, "cfg.json");
        rc = qk_file_exists(a) ? info_shards(p) : qk_file_exists(b) ? info_model(p) : qk_file_exists(c) ? info_sae(p)
             : qk_err("%s: not a run folder (manifest.json), model folder (config.json) or SAE folder (cfg.json)", p);
        free(a), free(b), free(c);
    }
    if (rc) {
        fprintf(stderr, "qkscope info: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}
