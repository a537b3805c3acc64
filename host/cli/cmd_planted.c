// cmd_planted.c: `qkscope planted`: writes the synthetic GPT-2, SAEs and corpus with planted
// circuits (planted.h) for the offline demo and the end-to-end checks.
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>
#include <math.h>

#include "analysis/analysis.h"
#include "base/util.h"
#include "cli/commands.h"
#include "io/h5out.h"
#include "io/out_check.h"
#include "io/sha256.h"
#include "io/vocab_out.h"
#include "model/planted.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope planted --out DIR [--seed N] [--tokens N] [--vocab BPE_DIR] [-q]\n\n"
            "Writes a tiny SYNTHETIC GPT-2 (2 layers x 4 heads, d_model 64, n_ctx 64, GPT-2's 50257 ids) with\n"
            "planted circuits: chosen heads make a chosen SAE feature at the query attend to a chosen\n"
            "feature at the key, the other heads have small random Q/K.  Real file formats, no network:\n"
            "  DIR/model/                      config.json, model.safetensors (Hugging Face GPT-2)\n"
            "  DIR/sae/layer_L/                cfg.json, sae_weights.safetensors (SAELens topk SAE on\n"
            "                                  blocks.L.hook_resid_pre), for every layer L\n"
            "  DIR/corpus.npy                  token ids, int32 [windows, 64]\n"
            "  DIR/planted.json                the planted circuits {layer, head, query_feature,\n"
            "                                  key_feature} and the null heads\n\n"
            "  --out DIR      folder to write (created if missing; files of the same names are replaced)\n"
            "  --seed N       RNG seed, 0 <= N < 2^53 (default 1): the same seed writes the same files\n"
            "  --tokens N     corpus size in tokens, rounded up to whole windows of 64 (default 4096)\n"
            "  --vocab BPE_DIR  also copy GPT-2's tokenizer files (encoder.json + vocab.bpe, or vocab.json +\n"
            "                 merges.txt; scripts/download_gpt2.sh fetches them) into DIR/vocab/, so that\n"
            "                 `--set corpus.vocab=DIR/vocab --set corpus.paths=YOUR.txt` runs your own text\n"
            "  --check-run FILE     instead of writing: read DIR/planted.json and check that `qkscope run`'s\n"
            "                       FILE ranks every planted pair first for its head (exit 1 if not)\n"
            "  --check-static FILE  the same for `qkscope static`'s q2k and k2q maps\n"
            "  -q, --quiet    print nothing\n"
            "  -h, --help     this text\n");
}

// Reads element `at` of an integer dataset (any integer type) as uint32; -1 on failure.
static int64_t read_u32_at(hid_t f, const char *name, hsize_t at) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t space = H5Dget_space(d);
    int ndim = H5Sget_simple_extent_ndims(space);
    hsize_t dims[8], start[8] = {0}, count[8];
    H5Sget_simple_extent_dims(space, dims, NULL);
    // `at` is a flat C-order index.
    for (int i = ndim - 1; i >= 0; i--) start[i] = at % dims[i], at /= dims[i], count[i] = 1;
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hsize_t one = 1;
    hid_t mem = H5Screate_simple(1, &one, NULL);
    uint32_t v = 0;
    herr_t e = H5Dread(d, H5T_NATIVE_UINT32, mem, space, H5P_DEFAULT, &v);
    H5Sclose(mem), H5Sclose(space), H5Dclose(d);
    return e < 0 ? -1 : (int64_t)v;
}

// Checks a run or static file against the planted circuits; prints one line per circuit.
static int check(const char *dir, const char *run_path, const char *static_path, int quiet) {
    QkPlanted info;
    if (qk_planted_read(dir, &info)) return -1;
    int missed = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *paths[2] = {run_path, static_path};
    // The file must be of this folder's model: another model's run would read as MISSED.
    char want[65], *model = qk_path_join(dir, "model/model.safetensors");
    int hrc = qk_sha256_file(model, want);
    free(model);
    if (hrc) return -1;
    for (int which = 0; which < 2; which++) {
        if (!paths[which]) continue;
        hid_t f = H5Fopen(paths[which], H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) return qk_err("%s: cannot open", paths[which]);
        char *sha = qk_h5_attr_read_str(f, "model_sha256");
        int same = sha && !strcmp(sha, want);
        if (!same) {
            qk_err("%s: model_sha256 %.12s... is not that of %s/model (%.12s...): the file is of another model; "
                   "run the demo's config with --set model.dir=%s/model", paths[which], sha ? sha : "(none)", dir, want, dir);
            free(sha), H5Fclose(f);
            return -1;
        }
        free(sha);
        for (int c = 0; c < info.n_circuits; c++) {
            const QkPlantedCircuit *pc = &info.circuits[c];
            char a[128], b[128];
            int64_t got_f, got_g;
            if (which == 0) {  // the heaviest pair of the run's sketch
                snprintf(a, sizeof a, "aggregates/%d.%d/pairs_query_feature", pc->layer, pc->head);
                snprintf(b, sizeof b, "aggregates/%d.%d/pairs_key_feature", pc->layer, pc->head);
                got_f = read_u32_at(f, a, 0), got_g = read_u32_at(f, b, 0);
            } else {  // q2k's first key feature for f, k2q's first query feature for g
                snprintf(a, sizeof a, "static/%d.%d/q2k_idx", pc->layer, pc->head);
                snprintf(b, sizeof b, "static/%d.%d/k2q_idx", pc->layer, pc->head);
                hid_t d = H5Dopen2(f, a, H5P_DEFAULT);
                hsize_t dims[2] = {0, 0};
                if (d >= 0) {
                    hid_t sp = H5Dget_space(d);
                    H5Sget_simple_extent_dims(sp, dims, NULL);
                    H5Sclose(sp), H5Dclose(d);
                }
                got_g = read_u32_at(f, a, (hsize_t)pc->query_feature * dims[1]);
                got_f = read_u32_at(f, b, (hsize_t)pc->key_feature * dims[1]);
            }
            if (got_f < 0 || got_g < 0) {
                H5Fclose(f);
                return qk_err("%s: head %d.%d is missing (%s)", paths[which], pc->layer, pc->head, a);
            }
            int ok = got_f == pc->query_feature && got_g == pc->key_feature;
            missed += !ok;
            if (!quiet)
                printf("%-6s head %d.%d: planted %d -> %d, %s first: %lld -> %lld  %s\n", which ? "static" : "run",
                       pc->layer, pc->head, pc->query_feature, pc->key_feature, which ? "q2k/k2q rank" : "heaviest pair",
                       (long long)got_f, (long long)got_g, ok ? "FOUND" : "MISSED");
        }
        H5Fclose(f);
    }
    if (missed) return qk_err("%d planted circuit(s) not ranked first", missed);
    return 0;
}

int cmd_planted(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},  {"seed", required_argument, 0, 's'},
                                         {"tokens", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},        {"check-run", required_argument, 0, 'R'},
                                         {"check-static", required_argument, 0, 'S'},
                                         {"vocab", required_argument, 0, 'V'}, {0, 0, 0, 0}};
    const char *check_run = NULL, *check_static = NULL, *vocab = NULL;
    QkPlantedOpts po;
    qk_planted_default_opts(&po);
    const char *out = NULL;
    int quiet = 0, rc = 0;
    int64_t v;
    optind = 1;
    opterr = 0;
    for (int ch; !rc && (ch = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1;) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'q': quiet = 1; break;
        case 's':
            if (qk_parse_int64(optarg, 0, QK_SEED_MAX, &v)) rc = qk_err("--seed: '%s' is not an integer in [0, 2^53)", optarg);
            else po.seed = (uint64_t)v;
            break;
        case 't':
            if (qk_parse_int64(optarg, 1, 100000000, &v)) rc = qk_err("--tokens: '%s' is not an integer in [1, 1e8]", optarg);
            else po.n_tokens = (int)v;
            break;
        case 'h': usage(stdout); return QK_EXIT_OK;
        case 'R': check_run = optarg; break;
        case 'S': check_static = optarg; break;
        case 'V': vocab = optarg; break;
        default: rc = qk_err("unknown or incomplete option '%s' (qkscope planted --help)", argv[optind - 1]);
        }
    }
    if (!rc && optind < argc) rc = qk_err("unexpected argument '%s'", argv[optind]);
    if (!rc && !out) rc = qk_err("--out DIR is required (qkscope planted --help)");
    if (rc) {
        fprintf(stderr, "qkscope planted: %s\n", qk_errmsg());
        return QK_EXIT_USAGE;
    }
    if (check_run || check_static) {
        if (check(out, check_run, check_static, quiet)) {
            fprintf(stderr, "qkscope planted: %s\n", qk_errmsg());
            return QK_EXIT_FAIL;
        }
        return QK_EXIT_OK;
    }
    QkPlanted info;
    char *vocab_dir = qk_path_join(out, "vocab");
    int vrc = qk_out_check_folder(out) || (vocab ? qk_vocab_copy(vocab, vocab_dir) : 0);
    free(vocab_dir);
    if (vrc || qk_planted_write(out, &po, &info)) {
        fprintf(stderr, "qkscope planted: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    if (!quiet) {
        printf("wrote %s: SYNTHETIC GPT-2 (%d layers x %d heads, d_model %d, n_ctx %d, vocab %d), SAEs d_sae %d topk k=%d, "
               "corpus %d x %d tokens, seed %llu\n",
               out, info.n_layer, info.n_head, info.d_model, info.n_ctx, info.vocab_size, info.d_sae, info.k,
               info.n_windows, info.n_ctx, (unsigned long long)info.seed);
        for (int c = 0; c < info.n_circuits; c++)
            printf("planted %d.%d: query feature %d -> key feature %d (adds ~%.0f to the score)\n", info.circuits[c].layer,
                   info.circuits[c].head, info.circuits[c].query_feature, info.circuits[c].key_feature, info.score);
        if (vocab) printf("copied GPT-2's tokenizer from %s to %s/vocab: --set corpus.vocab=%s/vocab\n", vocab, out, out);
        printf("null heads:");
        for (int i = 0; i < info.n_null; i++) printf(" %d.%d", info.null_heads[i].layer, info.null_heads[i].head);
        printf("\n");
    }
    return QK_EXIT_OK;
}
