// cmd_planted.c: `qkscope planted`: writes the synthetic GPT-2, SAEs and corpus with planted
// circuits (planted.h) for the offline demo and the end-to-end checks.
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "planted.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope planted --out DIR [--seed N] [--tokens N] [-q]\n\n"
            "Writes a tiny SYNTHETIC GPT-2 (2 layers x 4 heads, d_model 64, n_ctx 64, vocab 512) with\n"
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
            "  -q, --quiet    print nothing\n"
            "  -h, --help     this text\n");
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    if (!*s || *s == '-') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

int cmd_planted(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},  {"seed", required_argument, 0, 's'},
                                         {"tokens", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    QkPlantedOpts po;
    qk_planted_default_opts(&po);
    const char *out = NULL;
    int quiet = 0, rc = 0;
    uint64_t v;
    optind = 1;
    opterr = 0;
    for (int ch; !rc && (ch = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1;) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'q': quiet = 1; break;
        case 's':
            if (parse_u64(optarg, &po.seed) || po.seed >= (1ull << 53))
                rc = qk_err("--seed: '%s' is not an integer in [0, 2^53)", optarg);
            break;
        case 't':
            if (parse_u64(optarg, &v) || v < 1 || v > 100000000)
                rc = qk_err("--tokens: '%s' is not an integer in [1, 1e8]", optarg);
            else po.n_tokens = (int)v;
            break;
        case 'h': usage(stdout); return QK_EXIT_OK;
        default: rc = qk_err("unknown or incomplete option '%s' (qkscope planted --help)", argv[optind - 1]);
        }
    }
    if (!rc && optind < argc) rc = qk_err("unexpected argument '%s'", argv[optind]);
    if (!rc && !out) rc = qk_err("--out DIR is required (qkscope planted --help)");
    if (rc) {
        fprintf(stderr, "qkscope planted: %s\n", qk_errmsg());
        return QK_EXIT_USAGE;
    }
    QkPlanted info;
    if (qk_planted_write(out, &po, &info)) {
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
        printf("null heads:");
        for (int i = 0; i < info.n_null; i++) printf(" %d.%d", info.null_heads[i].layer, info.null_heads[i].head);
        printf("\n");
    }
    return QK_EXIT_OK;
}
