// safetensors.c: see safetensors.h.  Layout: u64 little-endian N, N bytes of UTF-8 JSON header,
// then the data section.  Every offset, size and shape is bounds- and overflow-checked.
#include "io/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

static const struct {
    const char *name;
    QkDtype dt;
    size_t size;
} k_dtypes[] = {
    {"F32", QK_DT_F32, 4},   {"F16", QK_DT_F16, 2},   {"BF16", QK_DT_BF16, 2},
    {"F64", QK_DT_F64, 8},   {"I64", QK_DT_I64, 8},   {"I32", QK_DT_I32, 4},
    {"I16", QK_DT_I16, 2},   {"I8", QK_DT_I8, 1},     {"U64", QK_DT_U64, 8},
    {"U32", QK_DT_U32, 4},   {"U16", QK_DT_U16, 2},   {"U8", QK_DT_U8, 1},
    {"BOOL", QK_DT_BOOL, 1}, {"F8_E4M3", QK_DT_F8_E4M3, 1}, {"F8_E5M2", QK_DT_F8_E5M2, 1},
};
#define N_DTYPES (int)(sizeof k_dtypes / sizeof k_dtypes[0])

const char *qk_dtype_name(QkDtype dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dt == dt) return k_dtypes[i].name;
    return "?";
}

size_t qk_dtype_size(QkDtype dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dt == dt) return k_dtypes[i].size;
    return 0;
}

static int dtype_from_name(const char *s, QkDtype *dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(k_dtypes[i].name, s) == 0) {
            *dt = k_dtypes[i].dt;
            return 0;
        }
    return -1;
}

// A JSON number that is a non-negative integer exactly representable (< 2^53).
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || floor(v) != v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int utf8_valid(const uint8_t *s, size_t n) {
    uint32_t cp;
    for (size_t i = 0, len; i < n; i += len)
        if (!(len = qk_utf8_decode(s, n, i, &cp))) return 0;
    return 1;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const QkTensorInfo *)a)->name, ((const QkTensorInfo *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const QkTensorInfo *x = *(QkTensorInfo *const *)a, *y = *(QkTensorInfo *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

void qk_st_close(QkSafetensors *st) {
    if (st->map && st->mapped) munmap((void *)st->map, st->file_size);
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_vals[i]);
    }
    free(st->meta_keys);
    free(st->meta_vals);
    free(st->path);
    memset(st, 0, sizeof *st);
}

// Parses one tensor entry of the header into *t.
static int parse_tensor(const char *path, const cJSON *e, QkTensorInfo *t) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return qk_err("%s: safetensors header: tensor '%s' is not a JSON object", path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return qk_err("%s: safetensors header: tensor '%s': field 'dtype' missing or not a string", path, name);
    if (dtype_from_name(jd->valuestring, &t->dtype))
        return qk_err("%s: safetensors header: tensor '%s': unknown dtype '%s'", path, name, jd->valuestring);
    if (!cJSON_IsArray(js))
        return qk_err("%s: safetensors header: tensor '%s': field 'shape' missing or not an array", path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > QK_ST_MAX_DIMS)
        return qk_err("%s: safetensors header: tensor '%s': shape has %d dims (max %d)", path, name, nd, QK_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    for (int d = 0; d < nd; d++) {
        uint64_t v;
        if (json_uint(cJSON_GetArrayItem(js, d), &v))
            return qk_err("%s: safetensors header: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        t->shape[d] = (int64_t)v;
        if (qk_mul_size(numel, (size_t)v, &numel))
            return qk_err("%s: safetensors header: tensor '%s': shape overflows the element count", path, name);
    }
    t->numel = numel;
    size_t nbytes;
    if (qk_mul_size(numel, qk_dtype_size(t->dtype), &nbytes))
        return qk_err("%s: safetensors header: tensor '%s': shape x dtype size overflows", path, name);
    uint64_t b, en;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &b) ||
        json_uint(cJSON_GetArrayItem(jo, 1), &en))
        return qk_err("%s: safetensors header: tensor '%s': field 'data_offsets' must be [begin, end] integers", path, name);
    if (en < b)
        return qk_err("%s: safetensors header: tensor '%s': data_offsets end %llu < begin %llu", path, name,
                      (unsigned long long)en, (unsigned long long)b);
    if (en - b != nbytes)
        return qk_err("%s: safetensors header: tensor '%s': data_offsets span %llu bytes but shape and dtype %s need %zu",
                      path, name, (unsigned long long)(en - b), qk_dtype_name(t->dtype), nbytes);
    t->begin = (size_t)b;
    t->end = (size_t)en;
    return 0;
}

static int parse_metadata(QkSafetensors *st, const cJSON *m) {
    if (!cJSON_IsObject(m)) return qk_err("%s: safetensors header: '__metadata__' is not an object", st->path);
    int n = cJSON_GetArraySize(m);
    if (n > QK_ST_MAX_TENSORS)
        return qk_err("%s: safetensors header: __metadata__ has %d entries (at most %d)", st->path, n, QK_ST_MAX_TENSORS);
    st->meta_keys = qk_calloc(n, sizeof(char *));
    st->meta_vals = qk_calloc(n, sizeof(char *));
    const cJSON *e;
    cJSON_ArrayForEach(e, m) {
        if (!cJSON_IsString(e))
            return qk_err("%s: safetensors header: __metadata__ '%s' is not a string", st->path, e->string);
        st->meta_keys[st->n_meta] = qk_strdup(e->string);
        st->meta_vals[st->n_meta] = qk_strdup(e->valuestring);
        st->n_meta++;
    }
    return 0;
}

static int parse_header(QkSafetensors *st, const char *hdr, size_t hlen) {
    const char *path = st->path;
    if (hlen == 0 || hdr[0] != '{')
        return qk_err("%s: safetensors header does not start with '{' (byte offset 8)", path);
    if (!utf8_valid((const uint8_t *)hdr, hlen))
        return qk_err("%s: safetensors header is not valid UTF-8", path);
    const char *end_parse = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end_parse, 0);
    if (!root || !cJSON_IsObject(root)) {
        size_t off = end_parse ? (size_t)(end_parse - hdr) + 8 : 8;
        cJSON_Delete(root);
        return qk_err("%s: safetensors header is not a JSON object (parse error near byte offset %zu)", path, off);
    }
    // Only spaces may follow the JSON object (the format pads the header with spaces).
    for (const char *p = end_parse; p < hdr + hlen; p++)
        if (*p != ' ') {
            cJSON_Delete(root);
            return qk_err("%s: safetensors header: unexpected byte 0x%02x after the JSON object at byte offset %zu",
                          path, (uint8_t)*p, (size_t)(p - hdr) + 8);
        }
    int rc = 0, n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) n++;
    if (n > QK_ST_MAX_TENSORS) {
        cJSON_Delete(root);
        return qk_err("%s: safetensors header: %d entries (at most %d)", path, n, QK_ST_MAX_TENSORS);
    }
    st->tensors = qk_calloc(n, sizeof(QkTensorInfo));
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (st->n_meta || st->meta_keys) { rc = qk_err("%s: safetensors header: duplicate '__metadata__'", path); break; }
            if ((rc = parse_metadata(st, e))) break;
            continue;
        }
        QkTensorInfo *t = &st->tensors[st->n_tensors];
        if ((rc = parse_tensor(path, e, t))) break;
        t->name = qk_strdup(e->string);
        st->n_tensors++;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    qsort(st->tensors, st->n_tensors, sizeof(QkTensorInfo), cmp_by_name);
    for (int i = 1; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
            return qk_err("%s: safetensors header: duplicate tensor name '%s'", path, st->tensors[i].name);
    return 0;
}

// Offsets sorted must tile [0, data_size) with no gap or overlap.
static int check_layout(QkSafetensors *st) {
    int n = st->n_tensors;
    QkTensorInfo **by_off = qk_malloc((n ? n : 1) * sizeof(QkTensorInfo *));
    for (int i = 0; i < n; i++) by_off[i] = &st->tensors[i];
    qsort(by_off, n, sizeof(QkTensorInfo *), cmp_by_offset);
    size_t pos = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const QkTensorInfo *t = by_off[i];
        if (t->begin > pos)
            rc = qk_err("%s: safetensors: gap in data before tensor '%s' (data_offsets begin %zu, expected %zu)",
                        st->path, t->name, t->begin, pos);
        else if (t->begin < pos)
            rc = qk_err("%s: safetensors: tensor '%s' overlaps the previous tensor (data_offsets begin %zu < %zu)",
                        st->path, t->name, t->begin, pos);
        pos = t->end;
    }
    free(by_off);
    if (rc) return rc;
    size_t data_size = st->file_size - st->data_start;
    if (pos != data_size)
        return qk_err("%s: safetensors: data section is %zu bytes but the tensors cover %zu (%s)", st->path,
                      data_size, pos, pos < data_size ? "trailing bytes" : "file truncated");
    return 0;
}

// Validates the header and layout of the file mapped at st->map (st->file_size bytes).
static int validate(QkSafetensors *st) {
    const char *path = st->path;
    if (st->file_size < 8)
        return qk_err("%s: safetensors: file is %zu bytes, too short for the 8-byte header length", path, st->file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | st->map[i];
    if (n > QK_ST_MAX_HEADER)
        return qk_err("%s: safetensors: header length %llu exceeds the limit of %llu bytes", path,
                      (unsigned long long)n, QK_ST_MAX_HEADER);
    if (n + 8 > st->file_size)
        return qk_err("%s: safetensors: header length %llu runs past the end of the %zu-byte file", path,
                      (unsigned long long)n, st->file_size);
    st->data_start = 8 + (size_t)n;
    int rc = parse_header(st, (const char *)st->map + 8, (size_t)n);
    return rc ? rc : check_layout(st);
}

// Closes *st after a failed open; returns -1 with the error line kept.
static int fail_closed(QkSafetensors *st) {
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", qk_errmsg());
    qk_st_close(st);
    return qk_err("%s", keep);
}

int qk_st_open(QkSafetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->path = qk_strdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        qk_err("%s: cannot open: %s", path, strerror(errno));
        return fail_closed(st);
    }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        qk_err("%s: not a regular file", path);
        return fail_closed(st);
    }
    st->file_size = (size_t)sb.st_size;
    if (st->file_size >= 8) {  // (mmap of 0 bytes fails; validate() reports the short file)
        void *m = mmap(NULL, st->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            qk_err("%s: mmap failed: %s", path, strerror(errno));
            return fail_closed(st);
        }
        st->map = m;
        st->mapped = 1;
    }
    close(fd);
    return validate(st) ? fail_closed(st) : 0;
}

int qk_st_open_mem(QkSafetensors *st, const void *data, size_t size, const char *name) {
    memset(st, 0, sizeof *st);
    st->path = qk_strdup(name);
    st->map = data;
    st->file_size = size;
    return validate(st) ? fail_closed(st) : 0;
}

const QkTensorInfo *qk_st_find(const QkSafetensors *st, const char *name) {
    QkTensorInfo key = {.name = (char *)name};
    return bsearch(&key, st->tensors, st->n_tensors, sizeof(QkTensorInfo), cmp_by_name);
}

const char *qk_st_meta(const QkSafetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_vals[i];
    return NULL;
}

float qk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {  // subnormal: renormalise
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float qk_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int qk_st_read_f32(const QkSafetensors *st, const QkTensorInfo *t, float *out) {
    const uint8_t *src = st->map + st->data_start + t->begin;
    switch (t->dtype) {
    case QK_DT_F32: memcpy(out, src, t->numel * 4); return 0;
    case QK_DT_F16:
    case QK_DT_BF16: {
        float (*conv)(uint16_t) = t->dtype == QK_DT_F16 ? qk_f16_to_f32 : qk_bf16_to_f32;
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = conv(h);
        }
        return 0;
    }
    case QK_DT_F64:
        for (size_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    default:
        return qk_err("%s: tensor '%s' has dtype %s, expected a float type (F32, F16, BF16)", st->path, t->name,
                      qk_dtype_name(t->dtype));
    }
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = snprintf(buf, n, "[");
    for (int d = 0; d < ndim && o < n; d++) o += snprintf(buf + o, n - o, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

const QkTensorInfo *qk_st_check(const QkSafetensors *st, const char *name, int ndim, const int64_t *shape) {
    const QkTensorInfo *t = qk_st_find(st, name);
    if (!t) {
        qk_err("%s: tensor '%s' is missing", st->path, name);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok) {
        char want[128], got[128];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        qk_err("%s: tensor '%s' has shape %s, expected %s", st->path, name, got, want);
        return NULL;
    }
    return t;
}

float *qk_st_load_f32(const QkSafetensors *st, const char *name, int ndim, const int64_t *shape) {
    const QkTensorInfo *t = qk_st_check(st, name, ndim, shape);
    if (!t) return NULL;
    float *out = qk_malloc((t->numel ? t->numel : 1) * sizeof(float));
    if (qk_st_read_f32(st, t, out)) {
        free(out);
        return NULL;
    }
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(out[i])) {
            qk_err("%s: tensor '%s' element %zu is %s%s: weights must be finite", st->path, name, i,
                   isnan(out[i]) ? "NaN" : out[i] > 0 ? "+inf" : "-inf",
                   t->dtype == QK_DT_F64 ? " (as float32)" : "");
            free(out);
            return NULL;
        }
    return out;
}
