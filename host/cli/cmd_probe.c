// cmd_probe.c: `qkscope probe induction|ioi|score`: probe corpora for known circuits and their
// recovery scores from qkscope's output (probe.h; definitions in docs/PROBE.md).
#include <cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "cli/commands.h"
#include "model/model_write.h"
#include "probe/probe.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope probe induction --out DIR [--windows N] [--rep N] [--tokens LO:HI] [--bos] [--seed N]\n"
            "       qkscope probe ioi --out DIR (--vocab DIR | --planted DIR --head L.H) [--windows N] [--n-ctx N] [--seed N]\n"
            "       qkscope probe score RUN.h5 --probe DIR [--labels DIR] [--expect HEADS] [--threshold X]\n"
            "                           [--top-pairs N] [--static STATIC.h5 --min-label N] [--json FILE]\n\n"
            "induction: DIR/corpus.npy, windows of a random run of --rep tokens (default 32) written twice,\n"
            "  tokens uniform in [LO, HI) (default 1000:50256, GPT-2's; 50256 never drawn); --bos: run with\n"
            "  a BOS (the config then needs bos = true, n_ctx = 2 rep + 1); --windows (default 64).\n"
            "ioi: DIR/corpus.npy, one prompt per window from the IOI templates (\"When Mary and John went\n"
            "  to the store, John gave a drink to\") with GPT-2 names (--vocab: a GPT-2 BPE folder; BOS\n"
            "  first), or the same roles on a `qkscope planted` model (--planted DIR --head L.H: IO carries\n"
            "  the key feature of that head's circuit, END its query feature); DIR/probe.json records the\n"
            "  positions of IO, S1, S2 and END of every prompt.  --n-ctx (default 32), --windows (64).\n"
            "score: recovery from a `qkscope run` over DIR/corpus.npy (bos, n_ctx as probe.json says,\n"
            "  pack = true).  induction: per head the share of its heaviest pair mass (--top-pairs,\n"
            "  default 64) whose query feature's current-token label equals the key feature's previous-\n"
            "  token label (--labels DIR: layer_L.npy, int32 [d_sae, 4]), and for recorded heads the share\n"
            "  of second-copy queries attending most to the token after the earlier occurrence.  ioi\n"
            "  (recorded heads): attention END -> IO, top-1 share, feature-pair share of that score.\n"
            "  Heads scoring >= --threshold (default 0.5) are singled out; precision / recall / F1 against\n"
            "  --expect (default SPEC 4.6: induction 5.5,5.8,5.9,6.9,5.1,7.2,7.10; ioi 9.9,9.6,10.0).\n"
            "  --static FILE: also the share of labelled current-token features (label count >=\n"
            "  --min-label, default 32) whose first q2k key feature in each expected head carries the same\n"
            "  token as its previous-token label.  --json FILE writes everything printed.\n");
}

// An int option in [lo, hi] (qk_parse_int64).
static int parse_int(const char *s, long lo, long hi, int *out) {
    int64_t v;
    if (qk_parse_int64(s, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

static cJSON *num_or_null(double v) { return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v); }

static int print_score(const QkProbeScore *s, const QkProbeScoreOpts *o, const char *static_path, int min_label,
                       const char *json_path) {
    int ind = !strcmp(s->task, "induction");
    printf("task %s: %d heads; score = %s; singled out: score >= %.2f\n", s->task, s->n_heads,
           ind ? (o->labels ? "feature-level share (labels)" : "token-level top-1 (recorded heads)")
               : "attention END -> IO (recorded heads)", o->threshold);
    printf("%-6s %5s %9s %9s %7s %8s %s\n", "head", "rank", "feature", "token", "top1", "expected", "heaviest pairs f -> g (mass, * = label match)");
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "task", s->task);
    cJSON_AddNumberToObject(root, "threshold", o->threshold);
    int rc = 0;
    for (int i = 0; i < s->n_heads; i++) {
        const QkProbeHead *h = &s->heads[i];
        char name[32];
        snprintf(name, sizeof name, "%d.%d", h->layer, h->head);
        printf("%-6s %5d %9.3f %9.3f %7.3f %8s ", name, h->rank, h->feature_share, h->token_score, h->top1,
               h->expected ? (h->singled_out ? "yes HIT" : "yes miss") : (h->singled_out ? "no FP" : "no"));
        cJSON *e = cJSON_CreateObject(), *pairs = cJSON_CreateArray();
        cJSON_AddStringToObject(e, "head", name);
        cJSON_AddNumberToObject(e, "rank", h->rank);
        cJSON_AddItemToObject(e, "feature_share", num_or_null(h->feature_share));
        cJSON_AddItemToObject(e, "token_score", num_or_null(h->token_score));
        cJSON_AddItemToObject(e, "top1", num_or_null(h->top1));
        cJSON_AddBoolToObject(e, "expected", h->expected);
        cJSON_AddBoolToObject(e, "singled_out", h->singled_out);
        cJSON_AddNumberToObject(e, "pairs_considered", h->n_pairs);
        for (int k = 0; k < h->n_top; k++) {
            if (k < 3) printf("%lld->%lld (%.3g%s) ", (long long)h->top_f[k], (long long)h->top_g[k], h->top_mass[k],
                              h->top_match[k] > 0 ? "*" : "");
            cJSON *p = cJSON_CreateObject();
            cJSON_AddNumberToObject(p, "query_feature", (double)h->top_f[k]);
            cJSON_AddNumberToObject(p, "key_feature", (double)h->top_g[k]);
            cJSON_AddNumberToObject(p, "mass", h->top_mass[k]);
            if (h->top_match[k] >= 0) cJSON_AddBoolToObject(p, "label_match", h->top_match[k]);
            cJSON_AddItemToArray(pairs, p);
        }
        printf("\n");
        cJSON_AddItemToObject(e, "top_pairs", pairs);
        if (static_path && h->expected && ind && o->labels) {
            int n = 0, nm = 0;
            double fm = NAN;
            const double frac = qk_probe_static_match(static_path, h->layer, h->head, &s->labels[h->layer], min_label,
                                                      &n, &fm, &nm);
            if (frac < 0) {
                rc = -1;
                cJSON_Delete(e);  // not yet in arr
                break;
            }
            printf("       static q2k: %d labelled current-token features, %.3f send their first key feature to the "
                   "matching previous-token feature; of the %d whose token has a previous-token feature, %.3f\n", n, frac,
                   nm, fm);
            cJSON_AddItemToObject(e, "static_q2k_match", num_or_null(frac));
            cJSON_AddNumberToObject(e, "static_q2k_checked", n);
            cJSON_AddItemToObject(e, "static_q2k_match_matchable", num_or_null(fm));
            cJSON_AddNumberToObject(e, "static_q2k_matchable", nm);
        }
        cJSON_AddItemToArray(arr, e);
    }
    printf("singled out %d, expected %d, both %d: precision %.3f recall %.3f F1 %.3f\n", s->n_singled, s->n_expected,
           s->n_hit, s->precision, s->recall, s->f1);
    cJSON_AddItemToObject(root, "heads", arr);
    cJSON_AddItemToObject(root, "precision", num_or_null(s->precision));
    cJSON_AddItemToObject(root, "recall", num_or_null(s->recall));
    cJSON_AddNumberToObject(root, "f1", s->f1);
    cJSON_AddNumberToObject(root, "singled_out", s->n_singled);
    cJSON_AddNumberToObject(root, "expected", s->n_expected);
    if (!rc && json_path) {
        char *dir = qk_strdup(json_path), *slash = strrchr(dir, '/');
        const char *name = slash ? slash + 1 : json_path;
        if (slash) *slash = 0;
        rc = qk_write_json(slash ? dir : ".", name, root);
        free(dir);
    } else {
        cJSON_Delete(root);
    }
    return rc;
}

int cmd_probe(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? QK_EXIT_USAGE : QK_EXIT_OK;
    }
    const char *what = argv[1];
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},     {"windows", required_argument, 0, 'w'},
        {"rep", required_argument, 0, 'r'},     {"tokens", required_argument, 0, 't'},
        {"bos", no_argument, 0, 'b'},           {"seed", required_argument, 0, 's'},
        {"vocab", required_argument, 0, 'v'},   {"planted", required_argument, 0, 'p'},
        {"head", required_argument, 0, 'H'},    {"n-ctx", required_argument, 0, 'n'},
        {"probe", required_argument, 0, 'P'},   {"labels", required_argument, 0, 'l'},
        {"expect", required_argument, 0, 'e'},  {"threshold", required_argument, 0, 'T'},
        {"top-pairs", required_argument, 0, 'k'}, {"static", required_argument, 0, 'S'},
        {"min-label", required_argument, 0, 'm'}, {"json", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    QkInductionProbe ip = {.windows = 64, .rep = 32, .token_lo = 1000, .token_hi = 50256, .bos = 0, .seed = 1};
    int64_t seed;
    QkIoiProbe io = {.windows = 64, .n_ctx = 32, .seed = 1, .planted_layer = -1, .planted_head = -1};
    QkProbeScoreOpts so = {.top_pairs = 64, .threshold = 0.5};
    const char *out = NULL, *static_path = NULL, *json_path = NULL;
    int min_label = 32, rc = 0;
    optind = 2;
    opterr = 0;
    for (int ch; !rc && (ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1;) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'w':
            if (parse_int(optarg, 1, 10000000, &ip.windows)) rc = qk_err("--windows: '%s' is not an integer in [1, 1e7]", optarg);
            io.windows = ip.windows;
            break;
        case 'r':
            if (parse_int(optarg, 2, 1 << 19, &ip.rep)) rc = qk_err("--rep: '%s' is not an integer in [2, 524288]", optarg);
            break;
        case 't':
            if (sscanf(optarg, "%d:%d", &ip.token_lo, &ip.token_hi) != 2) rc = qk_err("--tokens: '%s' is not LO:HI", optarg);
            break;
        case 'b': ip.bos = 1; break;
        case 's':
            if (qk_parse_int64(optarg, 0, QK_SEED_MAX, &seed)) rc = qk_err("--seed: '%s' is not an integer in [0, 2^53)", optarg);
            else ip.seed = (uint64_t)seed;
            io.seed = ip.seed;
            break;
        case 'v': io.vocab = optarg; break;
        case 'p': io.planted = optarg; break;
        case 'H':
            if (sscanf(optarg, "%d.%d", &io.planted_layer, &io.planted_head) != 2) rc = qk_err("--head: '%s' is not L.H", optarg);
            break;
        case 'n':
            if (parse_int(optarg, 16, 1048576, &io.n_ctx)) rc = qk_err("--n-ctx: '%s' is not an integer in [16, 1048576]", optarg);
            break;
        case 'P': so.probe = optarg; break;
        case 'l': so.labels = optarg; break;
        case 'e': so.expect = optarg; break;
        case 'T': {
            char *end;
            so.threshold = strtod(optarg, &end);
            if (*end || !*optarg || !(so.threshold >= 0 && so.threshold <= 1)) rc = qk_err("--threshold: '%s' is not in [0, 1]", optarg);
            break;
        }
        case 'k':
            if (parse_int(optarg, 1, 1 << 24, &so.top_pairs)) rc = qk_err("--top-pairs: '%s' is not a positive integer", optarg);
            break;
        case 'S': static_path = optarg; break;
        case 'm':
            if (parse_int(optarg, 0, 1 << 30, &min_label)) rc = qk_err("--min-label: '%s' is not a non-negative integer", optarg);
            break;
        case 'j': json_path = optarg; break;
        case 'h': usage(stdout); return QK_EXIT_OK;
        default: rc = qk_err("unknown or incomplete option '%s' (qkscope probe --help)", argv[optind - 1]);
        }
    }
    int is_score = !strcmp(what, "score");
    if (!rc && is_score) {
        if (optind + 1 != argc) rc = qk_err("score takes one run file (qkscope probe --help)");
        else so.run = argv[optind];
        if (!rc && !so.probe) rc = qk_err("score needs --probe DIR");
    } else if (!rc) {
        if (strcmp(what, "induction") && strcmp(what, "ioi"))
            rc = qk_err("unknown probe '%s': induction, ioi or score (qkscope probe --help)", what);
        else if (optind < argc) rc = qk_err("unexpected argument '%s'", argv[optind]);
        else if (!out) rc = qk_err("--out DIR is required");
        else if (!strcmp(what, "ioi") && io.planted && io.planted_head < 0) rc = qk_err("--head: a head is needed");
    }
    if (rc) {
        fprintf(stderr, "qkscope probe: %s\n", qk_errmsg());
        return QK_EXIT_USAGE;
    }
    if (is_score) {
        QkProbeScore s;
        if (qk_probe_score(&so, &s) || print_score(&s, &so, static_path, min_label, json_path)) rc = -1;
        qk_probe_score_free(&s);  // emptied already when the scoring failed
    } else if (!strcmp(what, "induction")) {
        rc = qk_probe_induction_write(out, &ip);
        if (!rc) printf("wrote %s/corpus.npy: %d windows of a %d-token random run written twice (run with bos = %s, "
                        "n_ctx = %d, pack = true)\n", out, ip.windows, ip.rep, ip.bos ? "true" : "false", 2 * ip.rep + ip.bos);
    } else {
        rc = qk_probe_ioi_write(out, &io);
        if (!rc) printf("wrote %s/corpus.npy and probe.json: %d IOI prompts, windows of %d (run with bos = %s, n_ctx = %d, "
                        "pack = true)\n", out, io.windows, io.n_ctx - (io.vocab != NULL), io.vocab ? "true" : "false", io.n_ctx);
    }
    if (rc) {
        fprintf(stderr, "qkscope probe %s: %s\n", what, qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}
