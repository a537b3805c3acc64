// test_sae.c: SAELens SAEs against SAELens's own encode/decode (tests/reference/make_sae_ref.py),
// and every malformed-config case.
#include <cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/util.h"
#include "io/safetensors.h"
#include "model/sae.h"
#include "test_common.h"

#define SAE_DIR REF_DIR "/sae/"

typedef struct {
    int n, d, m;
    float *x, *pre, *acts, *xhat;  // [n x d], [n x m], [n x m], [n x d]
} Ref;

static float *load_ref_tensor(const QkSafetensors *st, const char *name, int rows, int cols) {
    int64_t shape[2] = {rows, cols};
    float *t = qk_st_load_f32(st, name, 2, shape);
    cr_assert(t, "%s", qk_errmsg());
    return t;
}

// Loads ref.safetensors of a case; acts_name/xhat_name pick the plain or centred outputs.
static void ref_load(Ref *r, const char *name, const char *acts_name, const char *xhat_name) {
    char path[256];
    snprintf(path, sizeof path, SAE_DIR "%s/ref.safetensors", name);
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, path), 0, "%s", qk_errmsg());
    const QkTensorInfo *x = qk_st_find(&st, "x"), *pre = qk_st_find(&st, "pre");
    cr_assert(x && pre && x->ndim == 2 && pre->ndim == 2, "%s: x or pre missing", path);
    r->n = (int)x->shape[0], r->d = (int)x->shape[1], r->m = (int)pre->shape[1];
    r->x = load_ref_tensor(&st, "x", r->n, r->d);
    r->pre = load_ref_tensor(&st, "pre", r->n, r->m);
    r->acts = load_ref_tensor(&st, acts_name, r->n, r->m);
    r->xhat = load_ref_tensor(&st, xhat_name, r->n, r->d);
    qk_st_close(&st);
}

static void ref_free(Ref *r) { free(r->x), free(r->pre), free(r->acts), free(r->xhat); }

static double row_absmax(const float *v, int n) {
    double m = 0;
    for (int t = 0; t < n; t++) m = fmax(m, fabs(v[t]));
    return m;
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

// Is token i's active set decided at float precision?  topk: the k-th and (k+1)-th pre-activations
// differ by more than tol, and no selected pre is within tol of 0; gated: no pre within tol of its
// gate.
static int unambiguous(const QkSae *s, const Ref *r, int i, double tol) {
    const float *pre = r->pre + (size_t)i * r->m;
    if (s->arch == QK_SAE_TOPK) {
        float *sorted = qk_malloc(r->m * sizeof(float));
        memcpy(sorted, pre, r->m * sizeof(float));
        qsort(sorted, r->m, sizeof(float), cmp_desc);
        int ok = (s->k == r->m || sorted[s->k - 1] - sorted[s->k] > tol);
        for (int t = 0; t < s->k; t++) ok &= fabs(sorted[t]) > tol;
        free(sorted);
        return ok;
    }
    for (int j = 0; j < r->m; j++) {
        double gate = s->gates ? s->gates[j] : 0.0;
        if (fabs(pre[j] - gate) <= tol) return 0;
    }
    return 1;
}

// Token i of our code against SAELens's dense activations.
static void check_token(const QkSae *s, const QkSaeCode *c, const Ref *r, int i, double tol) {
    const float *acts = r->acts + (size_t)i * r->m;
    int nz = 0;
    for (int j = 0; j < r->m; j++) nz += acts[j] != 0.0f;
    cr_assert_eq(c->n_active[i], nz, "%s token %d: %d active, SAELens %d", s->dir, i, c->n_active[i], nz);
    cr_assert(nz <= c->slots, "%s token %d: truncated", s->dir, i);
    for (int q = 0; q < c->slots; q++) {
        int32_t f = c->idx[(size_t)i * c->slots + q];
        float v = c->val[(size_t)i * c->slots + q];
        if (q >= nz) {
            cr_assert_eq(v, 0.0f, "%s token %d slot %d: inactive slot has value %g", s->dir, i, q, v);
            continue;
        }
        cr_assert(f >= 0 && f < r->m && acts[f] != 0.0f, "%s token %d: feature %d active here, not in SAELens", s->dir, i, f);
        cr_assert(fabs(v - acts[f]) <= tol, "%s token %d feature %d: %.9g vs SAELens %.9g", s->dir, i, f, v, acts[f]);
    }
}

// A code holding the dense reference activations (every non-zero), to test decode on its own.
static void code_from_dense(QkSaeCode *c, const Ref *r) {
    for (int i = 0; i < r->n; i++) {
        int q = 0;
        c->scale[i] = 1.0f, c->shift[i] = 0.0f;
        for (int j = 0; j < r->m && q < c->slots; j++)
            if (r->acts[(size_t)i * r->m + j] != 0.0f) {
                c->idx[(size_t)i * c->slots + q] = j;
                c->val[(size_t)i * c->slots + q++] = r->acts[(size_t)i * r->m + j];
            }
        for (; q < c->slots; q++) c->idx[(size_t)i * c->slots + q] = -1, c->val[(size_t)i * c->slots + q] = 0;
    }
}

static void check_xhat(const QkSae *s, const Ref *r, int i, const float *xhat, const char *what) {
    const float *want = r->xhat + (size_t)i * r->d;
    double tol = 1e-5 * fmax(row_absmax(want, r->d), 1.0);
    for (int t = 0; t < r->d; t++)
        cr_assert(fabs(xhat[(size_t)i * r->d + t] - want[t]) <= tol, "%s token %d dim %d: %s %.9g vs SAELens %.9g",
                  s->dir, i, t, what, xhat[(size_t)i * r->d + t], want[t]);
}

static void check_case(const char *name, int center, const char *acts_name, const char *xhat_name) {
    Ref r;
    ref_load(&r, name, acts_name, xhat_name);
    char dir[256];
    snprintf(dir, sizeof dir, SAE_DIR "%s", name);
    QkSae s;
    cr_assert_eq(qk_sae_load(&s, dir, r.d, center), 0, "%s", qk_errmsg());
    cr_assert(s.d_in == r.d && s.d_sae == r.m, "%s: dims", name);
    QkSaeCode c;
    cr_assert_eq(qk_sae_code_alloc(&c, &s, r.n, s.d_sae), 0, "%s", qk_errmsg());
    cr_assert_eq(qk_sae_encode(&s, r.x, r.d, r.n, &c), 0, "%s", qk_errmsg());
    float *xhat = qk_malloc((size_t)r.n * r.d * sizeof(float));
    qk_sae_decode(&s, &c, r.n, xhat);
    int ambiguous = 0;
    for (int i = 0; i < r.n; i++) {
        double tol = 1e-5 * fmax(row_absmax(r.pre + (size_t)i * r.m, r.m), 1.0);
        if (!unambiguous(&s, &r, i, tol)) {
            ambiguous++;
            continue;
        }
        check_token(&s, &c, &r, i, tol);
        check_xhat(&s, &r, i, xhat, "decode(encode)");
    }
    cr_log_info("%s (%s, center_input=%d): %d tokens, %d ambiguous", name, qk_sae_arch_name(s.arch), center, r.n, ambiguous);
    cr_assert(ambiguous <= r.n / 4, "%s: %d of %d tokens ambiguous", name, ambiguous, r.n);
    // decode alone, from SAELens's activations and (for layer_norm) our per-token scale/shift
    QkSaeCode dense;
    cr_assert_eq(qk_sae_code_alloc(&dense, &s, r.n, s.d_sae), 0);
    if (s.arch == QK_SAE_TOPK) {  // topk codes have k slots: SAELens's L0 is at most k
        qk_sae_code_free(&dense);
        QkSae wide = s;
        wide.arch = QK_SAE_STANDARD;
        cr_assert_eq(qk_sae_code_alloc(&dense, &wide, r.n, s.d_sae), 0);
    }
    code_from_dense(&dense, &r);
    memcpy(dense.scale, c.scale, r.n * sizeof(float));
    memcpy(dense.shift, c.shift, r.n * sizeof(float));
    qk_sae_decode(&s, &dense, r.n, xhat);
    float *err = qk_malloc(r.n * sizeof(float));
    qk_sae_recon_error(r.n, r.d, r.x, r.d, xhat, err);
    for (int i = 0; i < r.n; i++) {
        check_xhat(&s, &r, i, xhat, "decode(SAELens acts)");
        double e = 0;
        for (int t = 0; t < r.d; t++) e += pow((double)r.x[(size_t)i * r.d + t] - r.xhat[(size_t)i * r.d + t], 2);
        cr_assert(fabs(err[i] - sqrt(e)) <= 1e-5 * fmax(row_absmax(r.x + (size_t)i * r.d, r.d), 1.0),
                  "%s token %d: reconstruction error %g vs %g", name, i, err[i], sqrt(e));
    }
    free(err);
    free(xhat);
    qk_sae_code_free(&dense);
    qk_sae_code_free(&c);
    qk_sae_free(&s);
    ref_free(&r);
}

Test(sae, standard_none_bdec) { check_case("standard_none_bdec", 0, "acts", "xhat"); }
Test(sae, standard_centered) { check_case("standard_none_bdec", 1, "acts_centered", "xhat_centered"); }
Test(sae, standard_ln_nobdec) { check_case("standard_ln_nobdec", 0, "acts", "xhat"); }
Test(sae, topk_ln_bdec) { check_case("topk_ln_bdec", 0, "acts", "xhat"); }
Test(sae, topk_none_nobdec) { check_case("topk_none_nobdec", 0, "acts", "xhat"); }
Test(sae, jumprelu_none_bdec) { check_case("jumprelu_none_bdec", 0, "acts", "xhat"); }
Test(sae, jumprelu_ln_nobdec) { check_case("jumprelu_ln_nobdec", 0, "acts", "xhat"); }
Test(sae, v5_oldstyle) {
    check_case("v5_oldstyle", 0, "acts", "xhat");
    QkSae s;
    cr_assert_eq(qk_sae_load(&s, SAE_DIR "v5_oldstyle", 0, 0), 0, "%s", qk_errmsg());
    cr_assert(s.arch == QK_SAE_TOPK && s.k == 8 && s.norm == QK_SAE_NORM_LAYER_NORM && s.apply_b_dec_to_input,
              "old-style config read as %s k=%d", qk_sae_arch_name(s.arch), s.k);
    cr_assert_str_eq(s.hook_name, "blocks.4.hook_resid_post");
    qk_sae_free(&s);
}

Test(sae, truncation_visible) {
    Ref r;
    ref_load(&r, "standard_none_bdec", "acts", "xhat");
    QkSae s;
    cr_assert_eq(qk_sae_load(&s, SAE_DIR "standard_none_bdec", r.d, 0), 0, "%s", qk_errmsg());
    QkSaeCode c;
    cr_assert_eq(qk_sae_code_alloc(&c, &s, r.n, 4), 0);
    cr_assert_eq(qk_sae_encode(&s, r.x, r.d, r.n, &c), 0, "%s", qk_errmsg());
    for (int i = 0; i < r.n; i++) {
        int nz = 0;
        for (int j = 0; j < r.m; j++) nz += r.acts[(size_t)i * r.m + j] != 0.0f;
        cr_assert_eq(c.n_active[i], nz, "token %d: true active count %d, SAELens %d", i, c.n_active[i], nz);
        cr_assert(nz > 4, "the data should exceed max_active");
    }
    qk_sae_code_free(&c);
    qk_sae_free(&s);
    ref_free(&r);
}

// ---- malformed folders ------------------------------------------------------------------------

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *buf = qk_read_file(from, &n);
    cr_assert(buf, "%s", qk_errmsg());
    FILE *f = fopen(to, "wb");
    cr_assert(f && fwrite(buf, 1, n, f) == n && fclose(f) == 0, "cannot write %s", to);
    free(buf);
}

typedef enum { DEL, SET_STR, SET_NUM, SET_BOOL, SET_RAW } Edit;

// The folders make_case made in this test, removed by remove_cases (the tests' .fini).
static char g_cases[64][32];
static int g_n_cases;

static void remove_cases(void) {
    for (int i = 0; i < g_n_cases; i++) {
        char cmd[sizeof g_cases[0] + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%.31s'", g_cases[i]);
        if (system(cmd)) cr_log_warn("could not remove %s", g_cases[i]);
    }
    g_n_cases = 0;
}

// A fresh folder with `weights_from`'s weights and `cfg_from`'s cfg.json edited at key (for
// SET_RAW, `text` is the whole file).  Returns the folder (removed at the test's end).
static const char *make_case(const char *cfg_from, const char *weights_from, Edit e, const char *key,
                             const char *text, double num) {
    cr_assert(g_n_cases < 64, "too many cases in one test");
    char *dir = g_cases[g_n_cases++];
    snprintf(dir, sizeof g_cases[0], "/tmp/qk_sae_XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp");
    char src[256], dst[256];
    snprintf(src, sizeof src, SAE_DIR "%s/sae_weights.safetensors", weights_from);
    snprintf(dst, sizeof dst, "%s/sae_weights.safetensors", dir);
    copy_file(src, dst);
    snprintf(src, sizeof src, SAE_DIR "%s/cfg.json", cfg_from);
    snprintf(dst, sizeof dst, "%s/cfg.json", dir);
    char *out;
    if (e == SET_RAW) {
        out = qk_strdup(text);
    } else {
        char *json = qk_read_file(src, NULL);
        cJSON *root = cJSON_Parse(json);
        cr_assert(root);
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
        if (e == SET_STR) cJSON_AddStringToObject(root, key, text);
        if (e == SET_NUM) cJSON_AddNumberToObject(root, key, num);
        if (e == SET_BOOL) cJSON_AddBoolToObject(root, key, num != 0);
        out = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        free(json);
    }
    FILE *f = fopen(dst, "w");
    cr_assert(f && fputs(out, f) >= 0 && fclose(f) == 0);
    free(out);
    return dir;
}

static void expect_error(const char *dir, int d_model, const char *file, const char *n1, const char *n2) {
    QkSae s;
    qk_err_clear();
    int rc = qk_sae_load(&s, dir, d_model, 0);
    const char *msg = qk_errmsg();
    cr_assert_eq(rc, -1, "%s: loaded a malformed SAE (want an error naming %s)", dir, n1);
    cr_assert(strstr(msg, file), "message '%s' does not name the file %s", msg, file);
    cr_assert(strstr(msg, n1), "message '%s' does not name '%s'", msg, n1);
    cr_assert(!n2 || strstr(msg, n2), "message '%s' does not name '%s'", msg, n2);
    cr_assert(!strchr(msg, '\n'), "message is not one line");
    cr_assert(s.W_encT == NULL && s.dir == NULL, "failed load left state behind");
}

Test(sae, malformed_configs, .fini = remove_cases) {
    const char *J = "jumprelu_none_bdec", *T = "topk_none_nobdec", *S = "standard_ln_nobdec";
    expect_error(make_case(J, J, DEL, "d_in", NULL, 0), 0, "cfg.json", "'d_in'", "missing");
    expect_error(make_case(J, J, SET_STR, "d_in", "32", 0), 0, "cfg.json", "'d_in'", "\"32\"");
    expect_error(make_case(J, J, SET_NUM, "d_sae", NULL, 64.5), 0, "cfg.json", "'d_sae'", "64.5");
    expect_error(make_case(J, J, DEL, "architecture", NULL, 0), 0, "cfg.json", "'architecture'", "missing");
    expect_error(make_case(J, J, SET_STR, "architecture", "gated", 0), 0, "cfg.json", "'architecture'", "gated");
    expect_error(make_case(J, J, SET_STR, "normalize_activations", "constant_norm_rescale", 0), 0, "cfg.json",
                 "'normalize_activations'", "constant_norm_rescale");
    expect_error(make_case(J, J, SET_STR, "normalize_activations", "expected_average_only_in", 0), 0, "cfg.json",
                 "'normalize_activations'", "expected_average_only_in");
    expect_error(make_case(J, J, DEL, "normalize_activations", NULL, 0), 0, "cfg.json", "'normalize_activations'", "missing");
    expect_error(make_case(J, J, SET_STR, "apply_b_dec_to_input", "yes", 0), 0, "cfg.json", "'apply_b_dec_to_input'", "yes");
    expect_error(make_case(J, J, SET_STR, "reshape_activations", "hook_z", 0), 0, "cfg.json", "'reshape_activations'", "hook_z");
    expect_error(make_case(T, T, DEL, "k", NULL, 0), 0, "cfg.json", "'k'", "missing");
    expect_error(make_case(T, T, SET_NUM, "k", NULL, 65), 0, "cfg.json", "'k'", "65");
    expect_error(make_case(T, T, SET_BOOL, "rescale_acts_by_decoder_norm", NULL, 1), 0, "cfg.json",
                 "'rescale_acts_by_decoder_norm'", "true");
    expect_error(make_case(J, J, SET_RAW, NULL, "{\"d_in\": 32,", 0), 0, "cfg.json", "JSON", NULL);
    expect_error(make_case(J, J, SET_RAW, NULL, "[1, 2]", 0), 0, "cfg.json", "object", NULL);
    // d_in against the model
    expect_error(make_case(J, J, DEL, "nothing", NULL, 0), 768, "cfg.json", "'d_in'", "768");
    // old style: no sae_lens_version
    const char *old_topk_no_k = "{\"d_in\": 32, \"d_sae\": 64, \"activation_fn_str\": \"topk\"}";
    expect_error(make_case(T, T, SET_RAW, NULL, old_topk_no_k, 0), 0, "cfg.json", "activation_fn_kwargs", NULL);
    const char *old_tanh = "{\"d_in\": 32, \"d_sae\": 64, \"activation_fn_str\": \"tanh-relu\"}";
    expect_error(make_case(S, S, SET_RAW, NULL, old_tanh, 0), 0, "cfg.json", "'activation_fn_str'", "tanh-relu");
    const char *old_norm = "{\"d_in\": 32, \"d_sae\": 64, \"normalize_activations\": true}";
    expect_error(make_case(S, S, SET_RAW, NULL, old_norm, 0), 0, "cfg.json", "'normalize_activations'", NULL);
    const char *old_head = "{\"d_in\": 32, \"d_sae\": 64, \"hook_point_head_index\": 3}";
    expect_error(make_case(S, S, SET_RAW, NULL, old_head, 0), 0, "cfg.json", "'hook_point_head_index'", NULL);
    // tensors: misshapen (cfg d_sae disagrees with the file) and missing (jumprelu without threshold)
    expect_error(make_case(J, J, SET_NUM, "d_sae", NULL, 65), 0, "sae_weights.safetensors", "'W_enc'", "shape");
    expect_error(make_case(J, S, DEL, "nothing", NULL, 0), 0, "sae_weights.safetensors", "'threshold'", "missing");
    expect_error(SAE_DIR "no_such_sae", 0, "cfg.json", "no_such_sae", NULL);
}

Test(sae, old_style_defaults_load, .fini = remove_cases) {
    // A minimal pre-6.0 config loads with SAELens's defaults: standard, b_dec applied, no norm.
    const char *cfg = "{\"d_in\": 32, \"d_sae\": 64, \"activation_fn_str\": \"relu\", \"hook_point\": \"blocks.2.hook_resid_pre\"}";
    const char *dir = make_case("standard_ln_nobdec", "standard_ln_nobdec", SET_RAW, NULL, cfg, 0);
    QkSae s;
    cr_assert_eq(qk_sae_load(&s, dir, 32, 0), 0, "%s", qk_errmsg());
    cr_assert(s.arch == QK_SAE_STANDARD && s.apply_b_dec_to_input == 1 && s.norm == QK_SAE_NORM_NONE);
    cr_assert_str_eq(s.hook_name, "blocks.2.hook_resid_pre");
    qk_sae_free(&s);
}

// architecture "topk" with k but no sae_lens_version (it was read as old style and k dropped: a run
// failed on max_active=0 and `qkscope info` printed "topk (k 0)"); `metadata` that is not an
// object is an error naming it.
Test(sae, topk_k_without_version_and_bad_metadata, .fini = remove_cases) {
    const char *T = "topk_none_nobdec";
    const char *no_version = "{\"architecture\": \"topk\", \"k\": 3, \"d_in\": 32, \"d_sae\": 64}";
    const char *dir = make_case(T, T, SET_RAW, NULL, no_version, 0);
    QkSae s;
    cr_assert_eq(qk_sae_load(&s, dir, 32, 0), 0, "%s", qk_errmsg());
    cr_expect(s.arch == QK_SAE_TOPK && s.k == 3, "arch %d k %d", s.arch, s.k);
    qk_sae_free(&s);
    char cmd[256];
    snprintf(cmd, sizeof cmd, QK_BIN " info %s | grep -q 'topk (k 3)'", dir);
    cr_expect_eq(system(cmd), 0, "qkscope info does not say topk (k 3)");
    const char *list_meta = "{\"architecture\": \"topk\", \"k\": 3, \"d_in\": 32, \"d_sae\": 64, \"metadata\": [\"6.0\"]}";
    expect_error(make_case(T, T, SET_RAW, NULL, list_meta, 0), 0, "cfg.json", "'metadata'", "an array, expected an object");
    const char *no_k = "{\"architecture\": \"topk\", \"d_in\": 32, \"d_sae\": 64}";
    expect_error(make_case(T, T, SET_RAW, NULL, no_k, 0), 0, "cfg.json", "'k'", "missing");
    snprintf(cmd, sizeof cmd, QK_BIN " info %s 2>/dev/null", g_cases[g_n_cases - 1]);
    int st = system(cmd);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "qkscope info must fail on a topk SAE without k");
}

// A non-finite weight in an SAE is refused at load, naming the tensor.
Test(sae, nan_weight_is_refused_naming_the_tensor, .fini = remove_cases) {
    const char *T = "topk_none_nobdec";
    const char *dir = make_case(T, T, DEL, "nothing", NULL, 0);
    char path[300];
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", dir);
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, path), 0, "%s", qk_errmsg());
    const QkTensorInfo *t = qk_st_find(&st, "W_dec");
    cr_assert(t && t->dtype == QK_DT_F32);
    long off = (long)(st.data_start + t->begin + 4 * 5);
    qk_st_close(&st);
    float inf = INFINITY;
    FILE *f = fopen(path, "r+b");
    cr_assert(f && fseek(f, off, SEEK_SET) == 0 && fwrite(&inf, 4, 1, f) == 1);
    fclose(f);
    expect_error(dir, 0, "sae_weights.safetensors", "tensor 'W_dec' element 5 is +inf", "weights must be finite");
}
