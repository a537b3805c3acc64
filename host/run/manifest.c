// manifest.c: see manifest.h.
#include "run/manifest.h"

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

// A file name inside the folder: no '/', not "" / "." / "..", no control bytes.
static int plain_name(const char *s) {
    if (!*s || !strcmp(s, ".") || !strcmp(s, "..") || strchr(s, '/')) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20) return 0;
    return 1;
}

// An integer field in [lo, hi]; absent: an error when `required`, else `dflt`.
static int int_field(const cJSON *root, const char *path, const char *key, int lo, int hi, int required, int dflt,
                     int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        if (required) return qk_err("%s: field '%s' missing", path, key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return qk_err("%s: field '%s' must be an integer in [%d, %d]", path, key, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

static int parse(QkManifest *m, const cJSON *root, const char *path) {
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(root, "shards");
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(root, "config_hash");
    const cJSON *complete = cJSON_GetObjectItemCaseSensitive(root, "complete");
    const cJSON *agg = cJSON_GetObjectItemCaseSensitive(root, "aggregates");
    if (!cJSON_IsArray(shards) || !cJSON_IsString(hash))
        return qk_err("%s: not a qkscope shard manifest (fields 'shards', 'config_hash')", path);
    if (strlen(hash->valuestring) != 64 || strspn(hash->valuestring, "0123456789abcdef") != 64)
        return qk_err("%s: field 'config_hash' is not 64 hex digits", path);
    if (complete && !cJSON_IsBool(complete)) return qk_err("%s: field 'complete' must be true or false", path);
    if (agg && !(cJSON_IsString(agg) && plain_name(agg->valuestring)))
        return qk_err("%s: field 'aggregates' is not a file name", path);
    if (int_field(root, path, "ranks", 1, 1 << 16, 0, 0, &m->ranks)) return -1;
    int n = cJSON_GetArraySize(shards);
    if (n > QK_MANIFEST_MAX_SHARDS) return qk_err("%s: field 'shards' lists %d shards (at most %d)", path, n, QK_MANIFEST_MAX_SHARDS);
    m->shards = qk_calloc(n ? n : 1, sizeof(char *));
    const cJSON *e;
    cJSON_ArrayForEach(e, shards) {
        if (!cJSON_IsString(e) || !plain_name(e->valuestring))
            return qk_err("%s: shards[%d] is not a file name", path, m->n_shards);
        m->shards[m->n_shards++] = qk_strdup(e->valuestring);
    }
    m->config_hash = qk_strdup(hash->valuestring);
    m->complete = cJSON_IsTrue(complete);
    m->aggregates = agg ? qk_strdup(agg->valuestring) : NULL;
    return 0;
}

int qk_manifest_parse(QkManifest *m, const char *text, size_t len, const char *path) {
    memset(m, 0, sizeof *m);
    cJSON *root = qk_json_parse(text, len, path);
    if (!root) return -1;
    int rc = parse(m, root, path);
    cJSON_Delete(root);
    if (rc) qk_manifest_free(m);
    return rc;
}

void qk_manifest_free(QkManifest *m) {
    for (int i = 0; i < m->n_shards; i++) free(m->shards[i]);
    free(m->shards), free(m->config_hash), free(m->aggregates);
    memset(m, 0, sizeof *m);
}

// The text of DIR/NAME (NULL with qk_errmsg); *path gets the joined path (free it).
static char *read_in(const char *dir, const char *name, char **path, size_t *len) {
    *path = qk_path_join(dir, name);
    return qk_read_file(*path, len);
}

int qk_manifest_read(QkManifest *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char *path;
    size_t len;
    char *text = read_in(dir, "manifest.json", &path, &len);
    int rc = text ? qk_manifest_parse(m, text, len, path) : -1;
    free(text), free(path);
    return rc;
}

int qk_plan_parse(const char *text, size_t len, const char *path, int *tasks, int *settings) {
    cJSON *root = qk_json_parse(text, len, path);
    if (!root) return -1;
    int rc = int_field(root, path, "tasks", 1, QK_PLAN_MAX_TASKS, 1, 0, tasks) ||
             int_field(root, path, "settings", 1, QK_PLAN_MAX_SETTINGS, 0, 1, settings);
    cJSON_Delete(root);
    return rc ? -1 : 0;
}

int qk_plan_read(const char *dir, int *tasks, int *settings) {
    char *path;
    size_t len;
    char *text = read_in(dir, "plan.json", &path, &len);
    int rc = text ? qk_plan_parse(text, len, path, tasks, settings) : -1;
    free(text), free(path);
    return rc;
}
