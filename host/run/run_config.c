// run_config.c: see run_config.h.  INI parsing by libinih (Debian's libinih-dev).
#include "run/run_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/sha256.h"

typedef struct {
    RunConfig *c;
    char err[512];  // what is wrong with the first bad entry (without where it is)
} ParseState;

// Records the first error only: inih goes on parsing and returns the first bad line.  Values and
// names are cut to 100 bytes in the message (the whole line is in the file).
static int fail(ParseState *ps, const char *fmt, const char *section, const char *name, const char *value) {
    if (ps->err[0]) return 0;
    char s[104], n[104], v[104];
    snprintf(s, sizeof s, "%s", section);
    snprintf(n, sizeof n, "%s", name);
    snprintf(v, sizeof v, "%s", value);
    snprintf(ps->err, sizeof ps->err, fmt, s, n, v);
    return 0;
}

static int parse_int(const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int parse_bool(const char *v, int *out) {
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1")) return *out = 1, 0;
    if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0")) return *out = 0, 0;
    return -1;
}

static void set_str(char **dst, const char *v) {
    free(*dst);
    *dst = qk_strdup(v);
}

// Whitespace-separated paths.
static void set_paths(RunConfig *c, const char *v) {
    for (int i = 0; i < c->n_paths; i++) free(c->paths[i]);
    free(c->paths);
    c->paths = NULL;
    c->n_paths = 0;
    char *copy = qk_strdup(v);
    for (char *save = NULL, *p = strtok_r(copy, " \t", &save); p; p = strtok_r(NULL, " \t", &save)) {
        c->paths = qk_realloc(c->paths, sizeof(char *) * (c->n_paths + 1));
        c->paths[c->n_paths++] = qk_strdup(p);
    }
    free(copy);
}

typedef struct {
    const char *section, *name;
    enum { K_STR, K_INT, K_BOOL, K_I64 } kind;
    size_t offset;
    long lo, hi;
} Key;

#define OFF(f) offsetof(RunConfig, f)
static const Key k_keys[] = {
    {"model", "dir", K_STR, OFF(model_dir), 0, 0},
    {"sae", "max_active", K_INT, OFF(sae_max_active), 1, 1 << 20},
    {"corpus", "vocab", K_STR, OFF(vocab), 0, 0},
    {"corpus", "jsonl_field", K_STR, OFF(jsonl_field), 0, 0},
    {"corpus", "skip_bad_records", K_BOOL, OFF(skip_bad_records), 0, 0},
    {"corpus", "allow_special", K_BOOL, OFF(allow_special), 0, 0},
    {"corpus", "n_ctx", K_INT, OFF(n_ctx), 2, 1 << 20},
    {"corpus", "bos", K_BOOL, OFF(bos), 0, 0},
    {"corpus", "pack", K_BOOL, OFF(pack), 0, 0},
    {"corpus", "stride", K_INT, OFF(stride), 0, 1 << 20},
    {"corpus", "batch", K_INT, OFF(batch), 1, 1 << 16},
    {"corpus", "tokenizer_threads", K_INT, OFF(tokenizer_threads), 1, 256},
    {"corpus", "max_tokens", K_I64, OFF(max_tokens), 0, 0},
    {"analysis", "heads", K_STR, OFF(heads), 0, 0},
    {"analysis", "record_heads", K_STR, OFF(record_heads), 0, 0},
    {"analysis", "k", K_INT, OFF(k), 1, 1024},
    {"analysis", "a", K_INT, OFF(a), 1, 64},
    {"analysis", "p", K_INT, OFF(p), 1, 1024},
    {"analysis", "encoder", K_BOOL, OFF(encoder), 0, 0},
    {"analysis", "record_patterns", K_BOOL, OFF(record_patterns), 0, 0},
    {"analysis", "enc_slots", K_INT, OFF(enc_slots), 1, 1 << 20},
    {"analysis", "sketch_pairs", K_INT, OFF(sketch_pairs), 1, 4096},
    {"analysis", "sketch_capacity", K_INT, OFF(sketch_capacity), 1, 1 << 24},
    {"analysis", "static_k", K_INT, OFF(static_k), 1, 1 << 20},
    {"output", "shard_tokens", K_I64, OFF(shard_tokens), 0, 0},
    {"output", "progress_seconds", K_INT, OFF(progress_seconds), 1, 1 << 20},
    {"output", "write", K_BOOL, OFF(write), 0, 0},
    {"run", "backend", K_STR, OFF(backend), 0, 0},
    {"run", "device", K_INT, OFF(device), 0, 1024},
    {"run", "threads", K_INT, OFF(threads), 0, 4096},
    {"run", "precision", K_STR, OFF(precision), 0, 0},
};

static int handler(void *user, const char *section, const char *name, const char *value) {
    ParseState *ps = user;
    RunConfig *c = ps->c;
    if (!strcmp(section, "sweep")) {  // section.key = V1 | V2 | ...
        if (!strchr(name, '.')) return fail(ps, "[%s] %s: expected section.key = V1 | V2 | ...%s", section, name, "");
        c->sweep_key = qk_realloc(c->sweep_key, sizeof(char *) * (c->n_sweep + 1));
        c->sweep_values = qk_realloc(c->sweep_values, sizeof(char *) * (c->n_sweep + 1));
        c->sweep_key[c->n_sweep] = qk_strdup(name);
        c->sweep_values[c->n_sweep++] = qk_strdup(value);
        return 1;
    }
    if (!strcmp(section, "sae") && !strncmp(name, "layer.", 6)) {  // layer.N = DIR[,center] | none
        long l;
        if (parse_int(name + 6, 0, QK_MAX_LAYERS - 1, &l)) return fail(ps, "[%s] %s: not layer.N%s", section, name, "");
        free(c->sae_dir[l]);
        c->sae_dir[l] = NULL;
        c->sae_center[l] = 0;
        if (!strcmp(value, "none")) return 1;
        c->sae_dir[l] = qk_strdup(value);
        char *comma = strrchr(c->sae_dir[l], ',');
        if (comma && !strcmp(comma, ",center")) *comma = 0, c->sae_center[l] = 1;
        return 1;
    }
    if (!strcmp(section, "corpus") && !strcmp(name, "paths")) return set_paths(c, value), 1;
    if (!strcmp(section, "corpus") && !strcmp(name, "split")) {
        if (!strcmp(value, "file")) c->split = QK_SPLIT_FILE;
        else if (!strcmp(value, "blank_lines")) c->split = QK_SPLIT_BLANK_LINES;
        else if (!strcmp(value, "lines")) c->split = QK_SPLIT_LINES;
        else return fail(ps, "[%s] %s = '%s': expected file, blank_lines or lines", section, name, value);
        return 1;
    }
    for (size_t i = 0; i < sizeof k_keys / sizeof k_keys[0]; i++) {
        const Key *k = &k_keys[i];
        if (strcmp(k->section, section) || strcmp(k->name, name)) continue;
        void *dst = (char *)c + k->offset;
        long x;
        switch (k->kind) {
        case K_STR: set_str((char **)dst, value); return 1;
        case K_BOOL:
            if (parse_bool(value, (int *)dst)) return fail(ps, "[%s] %s = '%s': expected true or false", section, name, value);
            return 1;
        case K_INT:
            if (parse_int(value, k->lo, k->hi, &x)) {
                char range[64];
                snprintf(range, sizeof range, "an integer in [%ld, %ld]", k->lo, k->hi);
                char fmt[128];
                snprintf(fmt, sizeof fmt, "[%%s] %%s = '%%s': expected %s", range);
                return fail(ps, fmt, section, name, value);
            }
            *(int *)dst = (int)x;
            return 1;
        case K_I64: {
            char *end;
            errno = 0;
            long long v = strtoll(value, &end, 10);
            if (errno || end == value || *end || v < 0)
                return fail(ps, "[%s] %s = '%s': expected a non-negative integer", section, name, value);
            *(int64_t *)dst = v;
            return 1;
        }
        }
    }
    return fail(ps, "unknown key '%s' in section [%s]%s", name, section, "");
}

static void defaults(RunConfig *c) {
    c->sae_max_active = 64;
    c->jsonl_field = qk_strdup("text");
    c->n_ctx = 128;
    c->bos = 1;
    c->pack = 1;
    c->batch = 8;
    c->tokenizer_threads = 1;
    c->heads = qk_strdup("all");
    c->record_heads = qk_strdup("none");
    c->k = 32, c->a = 2, c->p = 8, c->enc_slots = 32, c->sketch_pairs = 16, c->sketch_capacity = 4096;
    c->static_k = 32;
    c->progress_seconds = 30;
    c->write = 1;
    c->backend = qk_strdup("auto");
    c->precision = qk_strdup("fp32");
}

// The number of settings a [sweep] gives, or -1 when more than QK_MAX_SETTINGS.
static int64_t count_settings(const RunConfig *c);

// Checks that need several keys.
static int validate(const RunConfig *c) {
    if (!c->model_dir) return qk_err("%s: [model] dir is required", c->path);
    if (strcmp(c->precision, "fp32") && strcmp(c->precision, "tf32") && strcmp(c->precision, "bf16"))
        return qk_err("%s: [run] precision = '%.100s': expected fp32, tf32 or bf16", c->path, c->precision);
    if (strcmp(c->backend, "auto") && strcmp(c->backend, "cpu") && strcmp(c->backend, "cuda"))
        return qk_err("%s: [run] backend = '%.100s': expected auto, cpu or cuda", c->path, c->backend);
    if (c->bos && c->n_ctx < 2) return qk_err("%s: [corpus] n_ctx must exceed 1 with bos", c->path);
    if (count_settings(c) < 0)
        return qk_err("%s: [sweep] gives more than %d settings (the product of the value counts)", c->path,
                      QK_MAX_SETTINGS);
    return 0;
}

int run_config_load(RunConfig *c, const char *path, char *const *sets, int n_sets) {
    memset(c, 0, sizeof *c);
    size_t len;
    char *text = qk_read_file(path, &len);
    if (!text) {
        defaults(c);  // (so run_config_free has every field to free, as after a parse)
        c->path = qk_strdup(path);
        return -1;
    }
    int rc = run_config_parse(c, path, text, len, sets, n_sets);
    free(text);
    return rc;
}

int run_config_parse(RunConfig *c, const char *path, const char *data, size_t len, char *const *sets, int n_sets) {
    memset(c, 0, sizeof *c);
    defaults(c);
    c->path = qk_strdup(path);
    const char *nul = memchr(data, 0, len);
    if (nul) return qk_err("%s: byte offset %zu: a NUL byte in the config", path, (size_t)(nul - data));
    char *text = qk_malloc(len + 1);
    memcpy(text, data, len);
    text[len] = 0;
    // inih stops at the first error and returns its line; the handler keeps the message.
    ParseState ps = {.c = c};
    int line = ini_parse_string(text, handler, &ps);
    if (line != 0) {
        free(text);
        if (line < 0) return qk_err("%s: cannot parse", path);
        if (ps.err[0]) return qk_err("%s:%d: %s", path, line, ps.err);
        return qk_err("%s:%d: not a 'key = value' line or a [section]", path, line);
    }
    // The stored text: the file, then the overrides as they were applied.
    size_t cap = len + 64;
    for (int i = 0; i < n_sets; i++) cap += strlen(sets[i]) + 64;
    c->text = qk_malloc(cap);
    size_t o = snprintf(c->text, cap, "%s", text);
    free(text);
    for (int i = 0; i < n_sets; i++) {
        const char *s = sets[i], *dot = strchr(s, '.'), *eq = strchr(s, '=');
        if (!dot || !eq || dot > eq) return qk_err("--set '%.100s': expected section.key=value", s);
        if (dot - s > 63 || eq - dot - 1 > 127)
            return qk_err("--set '%.100s': section or key too long", s);
        char section[64], name[128];
        snprintf(section, sizeof section, "%.*s", (int)(dot - s), s);
        snprintf(name, sizeof name, "%.*s", (int)(eq - dot - 1), dot + 1);
        ps.err[0] = 0;
        if (!handler(&ps, section, name, eq + 1)) return qk_err("--set %s.%s: %s", section, name, ps.err);
        o += snprintf(c->text + o, cap - o, "\n# --set %s", s);
    }
    return validate(c);
}

void run_config_free(RunConfig *c) {
    free(c->path), free(c->text), free(c->model_dir);
    for (int l = 0; l < QK_MAX_LAYERS; l++) free(c->sae_dir[l]);
    for (int i = 0; i < c->n_paths; i++) free(c->paths[i]);
    free(c->paths), free(c->vocab), free(c->jsonl_field), free(c->heads), free(c->record_heads);
    free(c->backend), free(c->precision);
    for (int i = 0; i < c->n_sweep; i++) free(c->sweep_key[i]), free(c->sweep_values[i]);
    free(c->sweep_key), free(c->sweep_values);
    memset(c, 0, sizeof *c);
}

int run_config_heads(const char *spec, int L, int H, uint8_t *chosen, const char *what) {
    memset(chosen, 0, (size_t)L * H);
    if (!strcmp(spec, "none")) return 0;
    if (!strcmp(spec, "all")) {
        memset(chosen, 1, (size_t)L * H);
        return 0;
    }
    char *copy = qk_strdup(spec);
    int rc = 0;
    for (char *save = NULL, *p = strtok_r(copy, ", ", &save); p && !rc; p = strtok_r(NULL, ", ", &save)) {
        long l, h = -1;
        char *dot = strchr(p, '.');
        if (dot) *dot = 0;
        if (!dot || parse_int(p, 0, L - 1, &l) || (strcmp(dot + 1, "*") && parse_int(dot + 1, 0, H - 1, &h))) {
            if (dot) *dot = '.';
            rc = qk_err("%s: '%s' is not a head L.H (or L.*) of this %d-layer, %d-head model", what, p, L, H);
            break;
        }
        for (int x = 0; x < H; x++)
            if (h < 0 || x == h) chosen[l * H + x] = 1;
    }
    free(copy);
    return rc;
}

// Hashes one formatted line, whatever its length.
static void add(QkSha256 *h, const char *fmt, ...) QK_PRINTF(2, 3);
static void add(QkSha256 *h, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *buf = qk_malloc((size_t)n + 1);
    vsnprintf(buf, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    qk_sha256_update(h, buf, (size_t)n);
    free(buf);
}

void run_config_hash(const RunConfig *c, char hex[65]) {
    QkSha256 h;
    qk_sha256_init(&h);
    add(&h, "model=%s\n", c->model_dir);
    for (int l = 0; l < QK_MAX_LAYERS; l++)
        if (c->sae_dir[l]) add(&h, "sae.%d=%s,%d\n", l, c->sae_dir[l], c->sae_center[l]);
    add(&h, "max_active=%d\n", c->sae_max_active);
    for (int i = 0; i < c->n_paths; i++) add(&h, "path=%s\n", c->paths[i]);
    add(&h, "vocab=%s split=%d field=%s skip=%d special=%d n_ctx=%d bos=%d pack=%d stride=%d max_tokens=%lld\n",
        c->vocab ? c->vocab : "", (int)c->split, c->jsonl_field, c->skip_bad_records, c->allow_special, c->n_ctx, c->bos,
        c->pack, c->stride, (long long)c->max_tokens);
    add(&h, "heads=%s record=%s k=%d a=%d p=%d enc=%d enc_slots=%d sketch=%d,%d static_k=%d\n", c->heads,
        c->record_heads, c->k, c->a, c->p, c->encoder, c->enc_slots, c->sketch_pairs, c->sketch_capacity, c->static_k);
    add(&h, "record_patterns=%d part=%d/%d\n", c->record_patterns, c->part, c->n_parts);
    add(&h, "precision=%s shard_tokens=%lld\n", c->precision, (long long)c->shard_tokens);
    uint8_t d[32];
    qk_sha256_final(&h, d);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

// The v-th value of "V1 | V2 | ..." (trimmed) into a fresh string; *count gets the number of values.
static char *sweep_value(const char *list, int v, int *count) {
    int n = 0;
    char *out = NULL;
    for (const char *p = list;; n++) {
        const char *bar = strchr(p, '|'), *end = bar ? bar : p + strlen(p);
        if (n == v) {
            while (p < end && (*p == ' ' || *p == '\t')) p++;
            const char *e = end;
            while (e > p && (e[-1] == ' ' || e[-1] == '\t')) e--;
            out = qk_malloc(e - p + 1);
            memcpy(out, p, e - p);
            out[e - p] = 0;
        }
        if (!bar) break;
        p = bar + 1;
    }
    *count = n + 1;
    return out;
}

static int64_t count_settings(const RunConfig *c) {
    int64_t total = 1;
    for (int i = 0; i < c->n_sweep; i++) {
        int n;
        free(sweep_value(c->sweep_values[i], -1, &n));
        if ((total *= n) > QK_MAX_SETTINGS) return -1;  // n <= strlen + 1: no overflow before the check
    }
    return total;
}

int run_config_n_settings(const RunConfig *c) { return (int)count_settings(c); }

void run_config_setting(const RunConfig *c, int index, char **out) {
    for (int i = c->n_sweep - 1; i >= 0; i--) {  // the last key varies fastest
        int n;
        free(sweep_value(c->sweep_values[i], -1, &n));
        char *v = sweep_value(c->sweep_values[i], index % n, &n);
        index /= n;
        out[i] = qk_malloc(strlen(c->sweep_key[i]) + strlen(v) + 2);
        sprintf(out[i], "%s=%s", c->sweep_key[i], v);
        free(v);
    }
}
