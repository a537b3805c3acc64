// sae.c: see sae.h.
#include "model/sae.h"

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/topk.h"
#include "base/util.h"
#include "io/safetensors.h"

#define LN_EPS 1e-5  // SAELens run_time_activation_ln_in eps, added outside the root

const char *qk_sae_arch_name(QkSaeArch a) {
    return a == QK_SAE_TOPK ? "topk" : a == QK_SAE_JUMPRELU ? "jumprelu" : "standard";
}

// ---- cfg.json ---------------------------------------------------------------------------------

// A short description of a JSON value for error lines: `"text"`, 12, true, null, an object...
static void describe(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsString(v)) snprintf(buf, n, "\"%.60s\"", v->valuestring);
    else if (cJSON_IsNumber(v)) snprintf(buf, n, "%.17g", v->valuedouble);
    else if (cJSON_IsBool(v)) snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v)) snprintf(buf, n, "null");
    else snprintf(buf, n, "%s", cJSON_IsArray(v) ? "an array" : "an object");
}

static int bad_value(const char *path, const char *key, const cJSON *v, const char *want) {
    char got[96];
    describe(v, got, sizeof got);
    return qk_err("%s: key '%s': %s, expected %s", path, key, got, want);
}

// Absent and null both read as "not given".
static const cJSON *get(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

// A positive integer under `key` (required).
static int get_pos_int(const char *path, const cJSON *root, const char *key, int *out) {
    const cJSON *v = get(root, key);
    if (!v) return qk_err("%s: key '%s': missing", path, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < 1 || d > 1 << 30)
        return bad_value(path, key, v, "a positive integer");
    *out = (int)d;
    return 0;
}

// A boolean under `key`; dflt < 0: required, else the value used when absent.
static int get_bool(const char *path, const cJSON *root, const char *key, int dflt, int *out) {
    const cJSON *v = get(root, key);
    if (!v) {
        if (dflt < 0) return qk_err("%s: key '%s': missing", path, key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return bad_value(path, key, v, "true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

// A string under `key` (NULL when absent); a non-string is an error.
static int get_str(const char *path, const cJSON *root, const char *key, const char **out) {
    const cJSON *v = get(root, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return bad_value(path, key, v, "a string");
    *out = v->valuestring;
    return 0;
}

// SAELens's handle_config_defaulting: a config without sae_lens_version (top level or in
// metadata) or with a version below 6 is pre-6.0 ("old style").  `metadata`, when given, must be
// an object (SAELens reads it with .get).
static int is_old_style(const char *path, const cJSON *root, int *old) {
    const cJSON *v = get(root, "sae_lens_version");
    const cJSON *meta = get(root, "metadata");
    if (meta && !cJSON_IsObject(meta)) return bad_value(path, "metadata", meta, "an object");
    if (!v && meta) v = get(meta, "sae_lens_version");
    if (v && !cJSON_IsString(v))
        return bad_value(path, get(root, "sae_lens_version") ? "sae_lens_version" : "metadata.sae_lens_version", v,
                         "a version string");
    *old = !v || strtol(v->valuestring, NULL, 10) < 6;
    return 0;
}

// k of an old-style top-k SAE: activation_fn_kwargs.k (pre-6.0), or the top-level k that
// SAELens 6 writes (a config may carry architecture "topk" and k without any version).
static int old_style_k(QkSae *sae, const char *path, const cJSON *root, const char *why) {
    const cJSON *kw = get(root, "activation_fn_kwargs");
    if (kw && !cJSON_IsObject(kw)) return bad_value(path, "activation_fn_kwargs", kw, "an object");
    if (kw && get(kw, "k")) {
        const cJSON *v = get(kw, "k");
        double d = cJSON_IsNumber(v) ? v->valuedouble : 0;
        if (!cJSON_IsNumber(v) || d != floor(d) || d < 1 || d > 1 << 30)
            return bad_value(path, "activation_fn_kwargs.k", v, "a positive integer");
        sae->k = (int)d;
        return 0;
    }
    if (get(root, "k")) return get_pos_int(path, root, "k", &sae->k);
    return qk_err("%s: key 'k' (or 'activation_fn_kwargs.k'): missing for %s", path, why);
}

// Old style: activation_fn_str (renamed activation_fn in 6.0) "topk" makes a topk SAE whatever
// `architecture` says; otherwise `architecture` (default standard).
static int old_style_arch(QkSae *sae, const char *path, const cJSON *root, const char **arch) {
    const char *fn = NULL, *fn_key = "activation_fn_str";
    if (get_str(path, root, fn_key, &fn)) return -1;
    if (!fn) {
        fn_key = "activation_fn";
        if (get_str(path, root, fn_key, &fn)) return -1;
    }
    if (get_str(path, root, "architecture", arch)) return -1;
    if (!*arch) *arch = "standard";
    char why[96];
    if (fn && strcmp(fn, "topk") == 0) {
        snprintf(why, sizeof why, "'%s' \"topk\"", fn_key);
        if (old_style_k(sae, path, root, why)) return -1;
        *arch = "topk";
    } else if (fn && strcmp(fn, "relu") != 0) {
        return qk_err("%s: key '%s': unsupported activation \"%.60s\" (relu or topk)", path, fn_key, fn);
    } else if (strcmp(*arch, "topk") == 0 && old_style_k(sae, path, root, "'architecture' \"topk\"")) {
        return -1;
    }
    return 0;
}

static int parse_norm(QkSae *sae, const char *path, const cJSON *root, int old) {
    const char *key = "normalize_activations";
    const cJSON *v = get(root, key);
    if (!v) {
        if (!old) return qk_err("%s: key '%s': missing", path, key);
        sae->norm = QK_SAE_NORM_NONE;  // pre-6.0 default
        return 0;
    }
    if (old && cJSON_IsBool(v)) {  // pre-6.0 booleans: true meant expected_average_only_in
        if (cJSON_IsTrue(v))
            return qk_err("%s: key '%s': true (expected_average_only_in) is not supported", path, key);
        sae->norm = QK_SAE_NORM_NONE;
        return 0;
    }
    if (!cJSON_IsString(v)) return bad_value(path, key, v, "a string");
    if (strcmp(v->valuestring, "none") == 0) sae->norm = QK_SAE_NORM_NONE;
    else if (strcmp(v->valuestring, "layer_norm") == 0) sae->norm = QK_SAE_NORM_LAYER_NORM;
    else return bad_value(path, key, v, "\"none\" or \"layer_norm\" (the supported normalisations)");
    return 0;
}

// Keys that change the computation in ways qkscope does not implement.
static int reject_unsupported(const QkSae *sae, const char *path, const cJSON *root) {
    const cJSON *v = get(root, "reshape_activations");
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "none") == 0))
        return bad_value(path, "reshape_activations", v, "\"none\" (hook_z SAEs are not supported)");
    v = get(root, "rescale_acts_by_decoder_norm");
    if (v && !cJSON_IsFalse(v))
        return bad_value(path, "rescale_acts_by_decoder_norm", v, "false (not supported)");
    const char *head_keys[] = {"hook_head_index", "hook_point_head_index"};
    for (int t = 0; t < 2; t++)
        if ((v = get(root, head_keys[t])))
            return bad_value(path, head_keys[t], v, "null (per-head SAEs are not supported)");
    (void)sae;
    return 0;
}

static int parse_hook_name(QkSae *sae, const char *path, const cJSON *root) {
    const char *name = NULL;
    const cJSON *meta = get(root, "metadata");
    if (meta && cJSON_IsObject(meta) && get_str(path, meta, "hook_name", &name)) return -1;
    if (!name && get_str(path, root, "hook_name", &name)) return -1;
    if (!name && get_str(path, root, "hook_point", &name)) return -1;
    sae->hook_name = qk_strdup(name ? name : "");
    return 0;
}

static int parse_cfg(QkSae *sae, const char *path, const cJSON *root, int d_model) {
    if (!cJSON_IsObject(root)) return qk_err("%s: top level: not a JSON object", path);
    int old = 1;
    if (is_old_style(path, root, &old)) return -1;
    const char *arch = NULL;
    if (get_pos_int(path, root, "d_in", &sae->d_in)) return -1;
    if (get_pos_int(path, root, "d_sae", &sae->d_sae)) return -1;
    if (old) {
        if (old_style_arch(sae, path, root, &arch)) return -1;
    } else {
        if (get_str(path, root, "architecture", &arch)) return -1;
        if (!arch) return qk_err("%s: key 'architecture': missing", path);
    }
    if (strcmp(arch, "standard") == 0) sae->arch = QK_SAE_STANDARD;
    else if (strcmp(arch, "topk") == 0) sae->arch = QK_SAE_TOPK;
    else if (strcmp(arch, "jumprelu") == 0) sae->arch = QK_SAE_JUMPRELU;
    else return qk_err("%s: key 'architecture': unsupported \"%.60s\" (standard, topk or jumprelu)", path, arch);
    if (sae->arch == QK_SAE_TOPK && !old && get_pos_int(path, root, "k", &sae->k)) return -1;
    if (sae->arch == QK_SAE_TOPK && sae->k > sae->d_sae)
        return qk_err("%s: key 'k': %d exceeds d_sae %d", path, sae->k, sae->d_sae);
    if (get_bool(path, root, "apply_b_dec_to_input", old ? 1 : -1, &sae->apply_b_dec_to_input)) return -1;
    if (parse_norm(sae, path, root, old)) return -1;
    if (reject_unsupported(sae, path, root)) return -1;
    if (d_model > 0 && sae->d_in != d_model)
        return qk_err("%s: key 'd_in': %d does not match the model's d_model %d", path, sae->d_in, d_model);
    return parse_hook_name(sae, path, root);
}

static int load_cfg(QkSae *sae, const char *path, const char *text, size_t len, int d_model) {
    cJSON *root = qk_json_parse(text, len, path);
    int rc = root ? parse_cfg(sae, path, root, d_model) : -1;
    cJSON_Delete(root);
    return rc;
}

// ---- weights ----------------------------------------------------------------------------------

// c_enc [m] = b_enc - b_dec W_enc (in double) when apply_b_dec_to_input, else b_enc.
static void fold_b_dec(QkSae *s) {
    s->c_enc = qk_malloc((size_t)s->d_sae * sizeof(float));
    for (int j = 0; j < s->d_sae; j++) {
        double acc = s->b_enc[j];
        if (s->apply_b_dec_to_input)
            for (int t = 0; t < s->d_in; t++) acc -= (double)s->b_dec[t] * s->W_encT[(size_t)j * s->d_in + t];
        s->c_enc[j] = (float)acc;
    }
}

// W_encT [m x d] from W_enc [d x m].
static float *transpose(const float *a, int rows, int cols) {
    float *t = qk_malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) t[(size_t)j * rows + i] = a[(size_t)i * cols + j];
    return t;
}

static int load_threshold(QkSae *s, const QkSafetensors *st) {
    int64_t sm[1] = {s->d_sae};
    if (!qk_st_find(st, "threshold") && qk_st_find(st, "log_threshold")) {  // older checkpoints
        if (!(s->threshold = qk_st_load_f32(st, "log_threshold", 1, sm))) return -1;
        for (int j = 0; j < s->d_sae; j++) s->threshold[j] = expf(s->threshold[j]);
    } else if (!(s->threshold = qk_st_load_f32(st, "threshold", 1, sm))) {
        return -1;
    }
    s->gates = qk_malloc((size_t)s->d_sae * sizeof(float));
    for (int j = 0; j < s->d_sae; j++) s->gates[j] = s->threshold[j] > 0 ? s->threshold[j] : 0.0f;
    return 0;
}

static int load_weights(QkSae *s, const QkSafetensors *st) {
    int64_t dm[2] = {s->d_in, s->d_sae}, md[2] = {s->d_sae, s->d_in}, sm[1] = {s->d_sae}, sd[1] = {s->d_in};
    float *W_enc = qk_st_load_f32(st, "W_enc", 2, dm);
    int rc = -1;
    if (W_enc && (s->b_enc = qk_st_load_f32(st, "b_enc", 1, sm)) &&
        (s->W_dec = qk_st_load_f32(st, "W_dec", 2, md)) && (s->b_dec = qk_st_load_f32(st, "b_dec", 1, sd)) &&
        (s->arch != QK_SAE_JUMPRELU || load_threshold(s, st) == 0)) {
        s->W_encT = transpose(W_enc, s->d_in, s->d_sae);
        fold_b_dec(s);
        rc = 0;
    }
    free(W_enc);
    return rc;
}

int qk_sae_parse(QkSae *sae, const char *dir, const char *cfg_path, const char *cfg_text, size_t cfg_len,
                 const QkSafetensors *st, int d_model, int center_input) {
    memset(sae, 0, sizeof *sae);
    sae->dir = qk_strdup(dir);
    sae->center_input = center_input != 0;
    if (load_cfg(sae, cfg_path, cfg_text, cfg_len, d_model) || load_weights(sae, st)) {
        qk_sae_free(sae);
        return -1;
    }
    return 0;
}

int qk_sae_load(QkSae *sae, const char *dir, int d_model, int center_input) {
    memset(sae, 0, sizeof *sae);
    char *cfg_path = qk_path_join(dir, "cfg.json"), *st_path = qk_path_join(dir, "sae_weights.safetensors");
    size_t len = 0;
    char *text = qk_read_file(cfg_path, &len);
    QkSafetensors st = {0};
    int rc = -1;
    // cfg.json first: its errors come before the weights'.
    if (text) {
        QkSae probe = {0};
        rc = load_cfg(&probe, cfg_path, text, len, d_model);
        qk_sae_free(&probe);
    }
    if (!rc) rc = qk_st_open(&st, st_path);
    if (!rc) {
        rc = qk_sae_parse(sae, dir, cfg_path, text, len, &st, d_model, center_input);
        qk_st_close(&st);
    }
    free(text), free(cfg_path), free(st_path);
    return rc;
}

void qk_sae_free(QkSae *s) {
    free(s->dir), free(s->hook_name), free(s->W_encT), free(s->b_enc), free(s->W_dec);
    free(s->b_dec), free(s->threshold), free(s->c_enc), free(s->gates);
    memset(s, 0, sizeof *s);
}

// ---- encode / decode --------------------------------------------------------------------------

int qk_sae_code_alloc(QkSaeCode *code, const QkSae *sae, int n, int max_active) {
    memset(code, 0, sizeof *code);
    int slots = qk_sae_slots(sae, max_active);
    if (n < 0) return qk_err("qk_sae_code_alloc: n=%d: negative", n);
    if (slots < 1 || slots > sae->d_sae)
        return qk_err("%s: max_active=%d: need 1 <= max_active <= d_sae=%d", sae->dir, slots, sae->d_sae);
    code->n = n, code->slots = slots;
    size_t ns = (size_t)(n ? n : 1) * slots, nn = n ? n : 1;
    code->idx = qk_malloc(ns * sizeof(int32_t));
    code->val = qk_malloc(ns * sizeof(float));
    code->n_active = qk_malloc(nn * sizeof(int32_t));
    code->scale = qk_malloc(nn * sizeof(float));
    code->shift = qk_malloc(nn * sizeof(float));
    return 0;
}

void qk_sae_code_free(QkSaeCode *c) {
    free(c->idx), free(c->val), free(c->n_active), free(c->scale), free(c->shift);
    memset(c, 0, sizeof *c);
}

// z [d] = the normalised token x [d]; sets the decode scale and shift.
static void normalise(const QkSae *s, const float *x, float *z, float *scale, float *shift) {
    const int d = s->d_in;
    double mc = 0, mu = 0, ss = 0;
    if (s->center_input) {
        for (int t = 0; t < d; t++) mc += x[t];
        mc /= d;
    }
    for (int t = 0; t < d; t++) z[t] = (float)(x[t] - mc);
    *scale = 1.0f;
    *shift = (float)mc;
    if (s->norm != QK_SAE_NORM_LAYER_NORM) return;
    for (int t = 0; t < d; t++) mu += z[t];
    mu /= d;
    for (int t = 0; t < d; t++) ss += (z[t] - mu) * (z[t] - mu);
    double sd = d > 1 ? sqrt(ss / (d - 1)) : 0.0;  // unbiased, as torch.std
    for (int t = 0; t < d; t++) z[t] = (float)((z[t] - mu) / (sd + LN_EPS));
    *scale = (float)sd;
    *shift = (float)(mc + mu);
}

// The primitive's options that apply this SAE's activation with `slots` outputs per token.
static QkTopkOpts sae_topk_opts(const QkSae *s, int slots) {
    QkTopkOpts o = {.k = slots};
    if (s->arch == QK_SAE_TOPK) o.act = QK_TOPK_RELU;
    else o.act = QK_TOPK_GATED, o.gates = s->gates, o.gate = 0.0f;  // standard: relu, gate 0
    return o;
}

int qk_sae_encode(const QkSae *s, const float *x, int ldx, int n, QkSaeCode *code) {
    if (n < 0 || n > code->n) return qk_err("qk_sae_encode: n=%d: code holds %d tokens", n, code->n);
    if (ldx < s->d_in) return qk_err("qk_sae_encode: ldx=%d: less than d_in=%d", ldx, s->d_in);
    if (n == 0) return 0;
    float *z = qk_malloc((size_t)n * s->d_in * sizeof(float));  // [n x d_in] normalised inputs
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        normalise(s, x + (size_t)i * ldx, z + (size_t)i * s->d_in, &code->scale[i], &code->shift[i]);
    QkTopkOpts o_act = sae_topk_opts(s, code->slots);
    int rc = qk_topk(n, s->d_sae, s->d_in, z, s->d_in, NULL, s->W_encT, s->c_enc, &o_act, code->idx, code->val,
                     code->n_active);
    free(z);
    return rc;
}

int qk_sae_encode_projected(const QkSae *s, int n, int r, const float *U, int ldu, const float *norm2,
                            const float *E, QkSaeCode *code) {
    if (n < 0 || n > code->n) return qk_err("qk_sae_encode_projected: n=%d: code holds %d tokens", n, code->n);
    if (n == 0) return 0;
    float *a = qk_malloc((size_t)n * sizeof(float));  // [n] per-row scale 1 / (std + eps), or 1
    for (int i = 0; i < n; i++) {
        // mean(v_i) = 0 by contract, so the unbiased std is |v_i| / sqrt(d - 1).
        double sd = s->d_in > 1 ? sqrt((double)norm2[i] / (s->d_in - 1)) : 0.0;
        int ln = s->norm == QK_SAE_NORM_LAYER_NORM;
        a[i] = ln ? (float)(1.0 / (sd + LN_EPS)) : 1.0f;
        code->scale[i] = ln ? (float)sd : 1.0f;
        code->shift[i] = 0.0f;
    }
    QkTopkOpts o = sae_topk_opts(s, code->slots);
    int rc = qk_topk(n, s->d_sae, r, U, ldu, a, E, s->c_enc, &o, code->idx, code->val, code->n_active);
    free(a);
    return rc;
}

void qk_sae_decode(const QkSae *s, const QkSaeCode *code, int n, float *xhat) {
    const int d = s->d_in;
#pragma omp parallel
    {
        double *acc = qk_malloc((size_t)d * sizeof(double));  // [d]
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            for (int t = 0; t < d; t++) acc[t] = s->b_dec[t];
            for (int q = 0; q < code->slots; q++) {
                int32_t f = code->idx[(size_t)i * code->slots + q];
                float a = code->val[(size_t)i * code->slots + q];
                if (f < 0 || a == 0.0f) continue;
                const float *w = s->W_dec + (size_t)f * d;
                for (int t = 0; t < d; t++) acc[t] += (double)a * w[t];
            }
            for (int t = 0; t < d; t++)
                xhat[(size_t)i * d + t] = (float)(acc[t] * code->scale[i] + code->shift[i]);
        }
        free(acc);
    }
}

void qk_sae_recon_error(int n, int d, const float *x, int ldx, const float *xhat, float *err) {
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int t = 0; t < d; t++) {
            double e = (double)x[(size_t)i * ldx + t] - xhat[(size_t)i * d + t];
            ss += e * e;
        }
        err[i] = (float)sqrt(ss);
    }
}

int qk_sae_codes_resid_pre(const QkSae *sae, int layer) {
    char pre[64], post[64];
    snprintf(pre, sizeof pre, "blocks.%d.hook_resid_pre", layer);
    snprintf(post, sizeof post, "blocks.%d.hook_resid_post", layer - 1);
    const char *hn = sae->hook_name;
    return !hn[0] || !strcmp(hn, pre) || (layer > 0 && !strcmp(hn, post));
}
