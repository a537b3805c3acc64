// cmd_cache.c: `qkscope cache`: run_with_cache for C users.  Runs GPT-2 over token windows and
// writes each requested TransformerLens hook as an HDF5 dataset of TransformerLens's name and
// shape ([batch, pos, ...]), so anyone can check qkscope against TransformerLens.
#include <fnmatch.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "base/util.h"
#include "cli/commands.h"
#include "io/h5out.h"
#include "io/out_check.h"
#include "model/gpt2.h"
#include "model/sae.h"
#include "run/run_setup.h"
#include "text/token_file.h"

typedef enum { HK_RESID_PRE, HK_RESID_POST, HK_LN1_SCALE, HK_Q, HK_K, HK_SCORES, HK_PATTERN, HK_LOGITS } HookKind;

static const char *k_hook_suffix[] = {"hook_resid_pre", "hook_resid_post", "ln1.hook_scale", "attn.hook_q",
                                      "attn.hook_k", "attn.hook_attn_scores", "attn.hook_pattern"};
#define N_LAYER_HOOKS 7

typedef struct {
    char name[64];
    HookKind kind;
    int layer;
    hid_t dset;
} Hook;

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope cache --model DIR --tokens FILE -o OUT.h5 [options]\n\n"
            "Runs GPT-2 on token windows and writes TransformerLens hooks to HDF5, one dataset per hook,\n"
            "named and shaped as TransformerLens's run_with_cache ([batch, pos, ...]).\n\n"
            "  --model DIR        Hugging Face GPT-2 folder (config.json, model.safetensors)\n"
            "  --tokens FILE      token ids: text (whitespace separated, one sequence per line, equal\n"
            "                     lengths) or .npy ([batch, pos] or [pos], integer dtype)\n"
            "  --hooks LIST       comma-separated hook names or globs (default: every per-layer hook):\n"
            "                     blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.ln1.hook_scale,\n"
            "                     blocks.L.attn.hook_q, blocks.L.attn.hook_k, blocks.L.attn.hook_attn_scores,\n"
            "                     blocks.L.attn.hook_pattern, logits\n"
            "  --batch N          windows per forward pass (default 8)\n"
            "  --backend KIND     auto (default), cpu or cuda\n"
            "  --device N         CUDA device ordinal (default 0)\n"
            "  --precision P      fp32 (default; no TF32: the parity mode), tf32 or bf16 (CUDA backend: the\n"
            "                     forward pass's GEMMs; LayerNorm, softmax and the residual stay fp32)\n"
            "  --threads N        CPU threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --sae LAYER=DIR[,center]\n"
            "                     (repeatable) also write the SAELens SAE code of blocks.LAYER.hook_resid_pre\n"
            "                     under sae/blocks.LAYER.hook_resid_pre/: sae_idx [batch, pos, slots] (uint16 when\n"
            "                     d_sae <= 65536, else uint32), sae_val, sae_n_active (true active count) and\n"
            "                     sae_err_norm (|x - xhat|); ',center' subtracts mean(x) first (jb SAEs)\n"
            "  --sae-max-active N slots stored for ReLU / JumpReLU SAEs (default 64; top-k SAEs store k);\n"
            "                     sae_n_active shows any token with more active features\n"
            "  -o, --output FILE  the HDF5 file to write (written as FILE.tmp, renamed when complete)\n"
            "  -q, --quiet        no notices\n"
            "  -h, --help         this text\n");
}

// Every hook the model has, in TransformerLens order, filtered by the patterns in `list`.
static int select_hooks(const GPT2Config *c, const char *list, Hook **out, int *n_out) {
    int cap = c->n_layer * N_LAYER_HOOKS + 1, n = 0;
    Hook *all = qk_calloc(cap, sizeof(Hook));
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < N_LAYER_HOOKS; h++) {
            snprintf(all[n].name, sizeof all[n].name, "blocks.%d.%s", l, k_hook_suffix[h]);
            all[n].kind = (HookKind)h;
            all[n++].layer = l;
        }
    snprintf(all[n].name, sizeof all[n].name, "logits");
    all[n++].kind = HK_LOGITS;
    char *pats = qk_strdup(list ? list : "blocks.*");
    int *chosen = qk_calloc(n, sizeof(int)), rc = 0;
    for (char *save = NULL, *p = strtok_r(pats, ",", &save); p && !rc; p = strtok_r(NULL, ",", &save)) {
        int hit = 0;
        for (int i = 0; i < n; i++)
            if (!fnmatch(p, all[i].name, 0)) chosen[i] = hit = 1;
        if (!hit) rc = qk_err("--hooks: '%s' matches no hook of this %d-layer model", p, c->n_layer);
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (chosen[i]) all[m++] = all[i];
    free(pats);
    free(chosen);
    if (rc) {
        free(all);
        return -1;
    }
    *out = all;
    *n_out = m;
    return 0;
}

// TransformerLens's shape of a hook for `rows` windows of length T.
static int hook_dims(const Hook *h, const GPT2Config *c, hsize_t rows, int T, hsize_t *d) {
    d[0] = rows;
    d[1] = T;
    switch (h->kind) {
    case HK_RESID_PRE: case HK_RESID_POST: d[2] = c->d_model; return 3;
    case HK_LN1_SCALE: d[2] = 1; return 3;
    case HK_Q: case HK_K: d[2] = c->n_head; d[3] = c->d_head; return 4;
    case HK_SCORES: case HK_PATTERN: d[1] = c->n_head; d[2] = T; d[3] = T; return 4;
    case HK_LOGITS: d[2] = c->vocab_size; return 3;
    }
    return 0;
}

// Dimension names of hook h, TransformerLens's axes.
static const char *const *hook_labels(const Hook *h) {
    static const char *const resid[3] = {"batch", "pos", "d_model"}, *const scale[3] = {"batch", "pos", "one"};
    static const char *const qk[4] = {"batch", "pos", "head_index", "d_head"};
    static const char *const attn[4] = {"batch", "head_index", "query_pos", "key_pos"};
    static const char *const logits[3] = {"batch", "pos", "d_vocab"};
    switch (h->kind) {
    case HK_LN1_SCALE: return scale;
    case HK_Q: case HK_K: return qk;
    case HK_SCORES: case HK_PATTERN: return attn;
    case HK_LOGITS: return logits;
    default: return resid;
    }
}

// The activation-cache buffer holding hook h for the current batch, C-order in TL's layout.
static const float *hook_data(const Hook *h, const GPT2Config *c, const GPT2Acts *a) {
    size_t BT = (size_t)a->B * a->T;
    switch (h->kind) {
    case HK_RESID_PRE: return acts_resid(a, c, h->layer);
    case HK_RESID_POST: return acts_resid(a, c, h->layer + 1);
    case HK_LN1_SCALE: return a->ln1_scale + h->layer * BT;
    case HK_Q: return a->q + h->layer * BT * c->d_model;
    case HK_K: return a->k + h->layer * BT * c->d_model;
    case HK_SCORES: return acts_scores(a, c, h->layer);
    case HK_PATTERN: return acts_pattern(a, c, h->layer);
    case HK_LOGITS: return a->logits;
    }
    return NULL;
}

#define MAX_SAES 64

// One --sae LAYER=DIR[,center]: the SAE coding blocks.LAYER.hook_resid_pre.
typedef struct {
    int layer, center;
    const char *dir;
    QkSae sae;
    QkSaeCode code;
    float *xhat, *err;     // (B*T, C), (B*T) scratch
    hid_t idx, val, n_active, err_norm;
    hid_t idx_type;        // uint16 when d_sae <= 65536, else uint32
    void *idx_buf;         // (B*T, slots) in idx_type
} SaeSpec;

typedef struct {
    const char *model_dir, *tokens_path, *hooks, *out_path, *precision;
    int batch, device, threads, quiet, max_active;
    QkBackendKind backend;
    int n_sae;
    SaeSpec sae[MAX_SAES];
} CacheArgs;

// LAYER=DIR[,center]
static int parse_sae_arg(char *arg, CacheArgs *a) {
    char *eq = strchr(arg, '='), *end;
    if (!eq) return qk_err("--sae: '%s' is not LAYER=DIR", arg);
    long layer = strtol(arg, &end, 10);
    if (end != eq || layer < 0) return qk_err("--sae: '%s': LAYER must be a layer number", arg);
    if (a->n_sae == MAX_SAES) return qk_err("--sae: at most %d SAEs", MAX_SAES);
    SaeSpec *s = &a->sae[a->n_sae++];
    s->layer = (int)layer;
    s->dir = eq + 1;
    char *comma = strrchr(eq + 1, ',');
    if (comma && !strcmp(comma, ",center")) {
        *comma = 0;
        s->center = 1;
    }
    for (int i = 0; i < a->n_sae - 1; i++)
        if (a->sae[i].layer == s->layer) return qk_err("--sae: layer %d given twice", s->layer);
    return 0;
}

static int parse_args(int argc, char **argv, CacheArgs *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"tokens", required_argument, 0, 't'},
        {"hooks", required_argument, 0, 'k'},  {"batch", required_argument, 0, 'b'},
        {"backend", required_argument, 0, 'B'}, {"device", required_argument, 0, 'd'},
        {"threads", required_argument, 0, 'j'}, {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
        {"sae", required_argument, 0, 'S'},    {"sae-max-active", required_argument, 0, 'A'},
        {"precision", required_argument, 0, 'P'}, {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->batch = 8;
    a->max_active = 64;
    a->precision = "fp32";
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1;) {
        switch (ch) {
        case 'm': a->model_dir = optarg; break;
        case 't': a->tokens_path = optarg; break;
        case 'k': a->hooks = optarg; break;
        case 'o': a->out_path = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'b': if ((a->batch = atoi(optarg)) < 1) return qk_err("--batch: '%s' is not a positive integer", optarg); break;
        case 'd': if ((a->device = atoi(optarg)) < 0) return qk_err("--device: '%s' is not a device ordinal", optarg); break;
        case 'j': if ((a->threads = atoi(optarg)) < 1) return qk_err("--threads: '%s' is not a positive integer", optarg); break;
        case 'B': if (qk_backend_parse(optarg, &a->backend)) return -1; break;
        case 'A': if ((a->max_active = atoi(optarg)) < 1) return qk_err("--sae-max-active: '%s' is not a positive integer", optarg); break;
        case 'S': if (parse_sae_arg(optarg, a)) return -1; break;
        case 'P': a->precision = optarg; break;
        case 'h': usage(stdout); exit(QK_EXIT_OK);
        default: return qk_err("unknown or incomplete option '%s' (qkscope cache --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) return qk_err("unexpected argument '%s'", argv[optind]);
    if (!a->model_dir || !a->tokens_path || !a->out_path) return qk_err("--model, --tokens and -o are required");
    if (a->hooks && !a->hooks[strspn(a->hooks, ", ")] && !a->n_sae)
        return qk_err("--hooks '%s' names no hook and there is no --sae: nothing to write", a->hooks);
    return 0;
}

// Loads each SAE, checks it codes the stream it is attached to, and creates its datasets.
static int sae_setup(SaeSpec *s, const GPT2Config *c, QkH5Out *out, int B, int T, int bs, int max_active) {
    if (s->layer >= c->n_layer) return qk_err("--sae %d=%s: the model has layers 0..%d", s->layer, s->dir, c->n_layer - 1);
    if (qk_sae_load(&s->sae, s->dir, c->d_model, s->center)) return -1;
    char pre[64];
    snprintf(pre, sizeof pre, "blocks.%d.hook_resid_pre", s->layer);
    if (!qk_sae_codes_resid_pre(&s->sae, s->layer))
        return qk_err("--sae %d=%s: the SAE was trained on '%s', not on %s", s->layer, s->dir, s->sae.hook_name, pre);
    if (qk_sae_code_alloc(&s->code, &s->sae, bs * T, max_active)) return -1;
    int slots = s->code.slots;
    s->xhat = qk_malloc(sizeof(float) * bs * T * c->d_model);
    s->err = qk_malloc(sizeof(float) * bs * T);
    s->idx_type = qk_h5_feature_type(s->sae.d_sae);
    s->idx_buf = qk_malloc((size_t)bs * T * slots * 4);
    char name[128];
    hsize_t d3[3] = {(hsize_t)B, (hsize_t)T, (hsize_t)slots};
    static const char *const labels[3] = {"batch", "pos", "slot"};
#define DSET(field, suffix, type, nd)                                                                \
    snprintf(name, sizeof name, "sae/%s/%s", pre, suffix);                                        \
    if ((s->field = qk_h5_dataset(out, name, type, nd, d3)) < 0 || qk_h5_label(s->field, nd, labels)) return -1;
    DSET(idx, "sae_idx", s->idx_type, 3);
    DSET(val, "sae_val", H5T_NATIVE_FLOAT, 3);
    DSET(n_active, "sae_n_active", H5T_NATIVE_INT32, 2);
    DSET(err_norm, "sae_err_norm", H5T_NATIVE_FLOAT, 2);
#undef DSET
    snprintf(name, sizeof name, "sae/%s", pre);
    hid_t g = H5Gopen2(out->file, name, H5P_DEFAULT);
    int rc = qk_h5_attr_str(g, "dir", s->dir) || qk_h5_attr_str(g, "architecture", qk_sae_arch_name(s->sae.arch)) ||
             qk_h5_attr_int(g, "d_sae", s->sae.d_sae) || qk_h5_attr_int(g, "k", s->sae.k) ||
             qk_h5_attr_int(g, "slots", slots) || qk_h5_attr_int(g, "center_input", s->center) ||
             qk_h5_attr_str(g, "hook_name", s->sae.hook_name) ||
             qk_h5_attr_str(g, "note", "unused sae_idx slots (past sae_n_active) hold the index type's maximum and value 0");
    H5Gclose(g);
    return rc ? -1 : 0;
}

// Encodes rows [b0, b0 + nb) of the batch's resid_pre and writes them.
static int sae_write(SaeSpec *s, const GPT2Config *c, const GPT2Acts *a, int b0, int nb) {
    int n = nb * a->T, slots = s->code.slots;
    const float *x = acts_resid(a, c, s->layer);
    if (qk_sae_encode(&s->sae, x, c->d_model, n, &s->code)) return -1;
    qk_sae_decode(&s->sae, &s->code, n, s->xhat);
    qk_sae_recon_error(n, c->d_model, x, c->d_model, s->xhat, s->err);
    // Slots past the active features are unused (a top-k SAE's zeroed picks included).
    for (int i = 0; i < n; i++)
        for (int q = s->code.n_active[i] < 0 ? 0 : s->code.n_active[i]; q < slots; q++) s->code.idx[(size_t)i * slots + q] = -1;
    qk_h5_feature_convert(s->code.idx, (size_t)n * slots, s->sae.d_sae, s->idx_buf);
    if (qk_h5_write_rows(s->idx, s->idx_type, b0, nb, s->idx_buf) ||
        qk_h5_write_rows(s->val, H5T_NATIVE_FLOAT, b0, nb, s->code.val) ||
        qk_h5_write_rows(s->n_active, H5T_NATIVE_INT32, b0, nb, s->code.n_active) ||
        qk_h5_write_rows(s->err_norm, H5T_NATIVE_FLOAT, b0, nb, s->err))
        return -1;
    return 0;
}

static void sae_cleanup(SaeSpec *s) {
    hid_t ids[] = {s->idx, s->val, s->n_active, s->err_norm};
    for (int i = 0; i < 4; i++)
        if (ids[i] > 0) H5Dclose(ids[i]);
    qk_sae_code_free(&s->code);
    qk_sae_free(&s->sae);
    free(s->xhat);
    free(s->err);
    free(s->idx_buf);
}

static int run(CacheArgs *args) {
    GPT2Model m;
    int *tokens = NULL, B = 0, T = 0, n_hooks = 0, rc = -1;
    Hook *hooks = NULL;
    QkBackend *be = NULL;
    QkH5Out out = {0};
    GPT2Acts acts = {0};
    if (qk_out_check_file(args->out_path, 1) || gpt2_load(&m, args->model_dir)) return -1;
    if (qk_token_file_read(args->tokens_path, &tokens, &B, &T) ||
        gpt2_check_tokens(&m.cfg, tokens, B, T, args->tokens_path) ||
        select_hooks(&m.cfg, args->hooks, &hooks, &n_hooks) ||
        qk_backend_open(&be, args->backend, args->device, args->quiet) ||
        qk_backend_set_precision(be, args->precision) || qk_h5_create(&out, args->out_path))
        goto done;
    int keep_attn = 0, want_logits = 0;
    for (int i = 0; i < n_hooks; i++) {
        keep_attn |= hooks[i].kind == HK_SCORES || hooks[i].kind == HK_PATTERN;
        want_logits |= hooks[i].kind == HK_LOGITS;
        hsize_t dims[4];
        int nd = hook_dims(&hooks[i], &m.cfg, B, T, dims);
        if ((hooks[i].dset = qk_h5_dataset(&out, hooks[i].name, H5T_NATIVE_FLOAT, nd, dims)) < 0 ||
            qk_h5_label(hooks[i].dset, nd, hook_labels(&hooks[i])))
            goto done;
    }
    int bs = args->batch < B ? args->batch : B;
    for (int i = 0; i < args->n_sae; i++)
        if (sae_setup(&args->sae[i], &m.cfg, &out, B, T, bs, args->max_active)) goto done;
    gpt2_acts_alloc_in(&acts, &m.cfg, bs, T, keep_attn, want_logits, &be->host_mem);
    for (int b0 = 0; b0 < B; b0 += bs) {
        int nb = B - b0 < bs ? B - b0 : bs;
        if (nb != acts.B) {  // the last, shorter batch
            gpt2_acts_free(&acts);
            gpt2_acts_alloc_in(&acts, &m.cfg, nb, T, keep_attn, want_logits, &be->host_mem);
        }
        if (be->forward(be, &m, tokens + (size_t)b0 * T, &acts)) goto done;
        for (int i = 0; i < n_hooks; i++)
            if (qk_h5_write_rows(hooks[i].dset, H5T_NATIVE_FLOAT, b0, nb, hook_data(&hooks[i], &m.cfg, &acts))) goto done;
        for (int i = 0; i < args->n_sae; i++)
            if (sae_write(&args->sae[i], &m.cfg, &acts, b0, nb)) goto done;
    }
    for (int i = 0; i < args->n_sae; i++) sae_cleanup(&args->sae[i]), memset(&args->sae[i], 0, sizeof(SaeSpec));
    for (int i = 0; i < n_hooks; i++) H5Dclose(hooks[i].dset), hooks[i].dset = 0;
    if (qk_h5_attr_str(out.file, "format", "qkscope-cache") || qk_h5_attr_int(out.file, "format_version", QK_FORMAT_VERSION) ||
        qk_h5_attr_str(out.file, "qkscope_version", QK_VERSION) || qk_h5_attr_str(out.file, "model", args->model_dir) ||
        qk_h5_attr_str(out.file, "tokens", args->tokens_path) || qk_h5_attr_str(out.file, "backend", be->name) ||
        qk_h5_attr_str(out.file, "precision", args->precision))
        goto done;
    rc = qk_h5_finish(&out);
done:
    for (int i = 0; i < args->n_sae; i++) sae_cleanup(&args->sae[i]);
    if (rc) {
        for (int i = 0; i < n_hooks; i++)
            if (hooks[i].dset > 0) H5Dclose(hooks[i].dset);
        if (out.file) qk_h5_abort(&out);
    }
    gpt2_acts_free(&acts);
    qk_backend_close(be);
    free(hooks);
    free(tokens);
    gpt2_free(&m);
    return rc;
}

int cmd_cache(int argc, char **argv) {
    CacheArgs args;
    if (parse_args(argc, argv, &args)) {
        fprintf(stderr, "qkscope cache: %s\n", qk_errmsg());
        return QK_EXIT_USAGE;
    }
    if (args.threads) omp_set_num_threads(args.threads);
    if (run(&args)) {
        fprintf(stderr, "qkscope cache: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}
