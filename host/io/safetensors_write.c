// safetensors_write.c: see safetensors_write.h.
#include "io/safetensors_write.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static int by_name(const void *a, const void *b, void *base) {
    const QkStTensor *t = base;
    const char *x = t[*(const int *)a].name, *y = t[*(const int *)b].name;
    return strcmp(x ? x : "", y ? y : "");
}

// Element count of t, overflow-checked.
static int numel(const char *path, const QkStTensor *t, size_t *out) {
    size_t n = 1;
    if (t->ndim < 0 || t->ndim > QK_ST_MAX_DIMS)
        return qk_err("%s: tensor '%s': %d dimensions (0..%d)", path, t->name, t->ndim, QK_ST_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || qk_mul_size(n, (size_t)t->shape[d], &n))
            return qk_err("%s: tensor '%s': bad shape", path, t->name);
    if (qk_mul_size(n, sizeof(float), out)) return qk_err("%s: tensor '%s': too large", path, t->name);
    return 0;
}

// The header JSON (unpadded) for the tensors in `order`; NULL with qk_err on a bad tensor.
static char *header_json(const char *path, const QkStTensor *t, const int *order, int n, const char *const *meta) {
    cJSON *root = cJSON_CreateObject();
    if (meta && meta[0]) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; meta[i] && meta[i + 1]; i += 2) cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
    }
    size_t off = 0;
    for (int r = 0; r < n; r++) {
        const QkStTensor *x = &t[order[r]];
        size_t bytes;
        if (!x->name || !x->name[0] || !strcmp(x->name, "__metadata__")) {
            qk_err("%s: tensor %d: missing or reserved name", path, order[r]);
            goto fail;
        }
        if (r && !strcmp(x->name, t[order[r - 1]].name)) {
            qk_err("%s: tensor '%s' given twice", path, x->name);
            goto fail;
        }
        if (numel(path, x, &bytes)) goto fail;
        if (bytes && !x->data) {
            qk_err("%s: tensor '%s': no data", path, x->name);
            goto fail;
        }
        cJSON *e = cJSON_AddObjectToObject(root, x->name);
        cJSON_AddStringToObject(e, "dtype", "F32");
        cJSON *shape = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < x->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)x->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
fail:
    cJSON_Delete(root);
    return NULL;
}

int qk_st_write_f32(const char *path, const QkStTensor *tensors, int n, const char *const *meta) {
    int *order = qk_malloc(sizeof(int) * (n > 0 ? n : 1));
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, n, sizeof(int), by_name, (void *)tensors);
    char *json = header_json(path, tensors, order, n, meta);
    if (!json) {
        free(order);
        return -1;
    }
    size_t hl = strlen(json), padded = (hl + 7) & ~(size_t)7;
    char *tmp = qk_malloc(strlen(path) + 5);
    sprintf(tmp, "%s.tmp", path);
    int rc = 0;
    FILE *f = fopen(tmp, "wb");
    if (!f) rc = qk_err("%s: cannot create: %s", tmp, strerror(errno));
    if (!rc) {
        unsigned char len[8];
        for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        int ok = fwrite(len, 1, 8, f) == 8 && fwrite(json, 1, hl, f) == hl;
        for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
        for (int r = 0; ok && r < n; r++) {
            const QkStTensor *x = &tensors[order[r]];
            size_t bytes;
            numel(path, x, &bytes);
            ok = !bytes || fwrite(x->data, 1, bytes, f) == bytes;
        }
        if (fclose(f) || !ok) rc = qk_err("%s: write failed: %s", tmp, strerror(errno));
        if (!rc && rename(tmp, path)) rc = qk_err("%s: rename to %s failed: %s", tmp, path, strerror(errno));
        if (rc) remove(tmp);
    }
    free(tmp);
    free(json);
    free(order);
    return rc;
}
