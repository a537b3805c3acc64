// npy.c: see npy.h.
#include "io/npy.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

// Finds `'key':` in the header dict and returns a pointer just after the colon (and spaces).
static const char *dict_value(const char *hdr, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static int parse_header(QkNpy *a, const char *hdr, const char *path) {
    const char *d = dict_value(hdr, "descr"), *f = dict_value(hdr, "fortran_order"), *s = dict_value(hdr, "shape");
    if (!d || *d != '\'') return qk_err("%s: npy header: field 'descr' missing", path);
    const char *e = strchr(d + 1, '\'');
    if (!e || e - d - 1 >= (long)sizeof a->descr || e - d - 1 < 3) return qk_err("%s: npy header: bad 'descr'", path);
    memcpy(a->descr, d + 1, e - d - 1);
    a->descr[e - d - 1] = 0;
    if (!f || strncmp(f, "False", 5)) return qk_err("%s: npy header: field 'fortran_order' must be False", path);
    if (!s || *s != '(') return qk_err("%s: npy header: field 'shape' missing", path);
    s++;
    a->ndim = 0;
    a->numel = 1;
    for (;;) {
        while (*s == ' ') s++;
        if (*s == ')') break;
        if (!isdigit((unsigned char)*s) || a->ndim == 8) return qk_err("%s: npy header: bad 'shape'", path);
        errno = 0;
        char *end;
        long long v = strtoll(s, &end, 10);
        if (errno || v < 0) return qk_err("%s: npy header: bad 'shape'", path);
        a->shape[a->ndim++] = v;
        if (qk_mul_size(a->numel, (size_t)v, &a->numel)) return qk_err("%s: npy header: 'shape' overflows", path);
        s = end;
        while (*s == ' ') s++;
        if (*s == ',') s++;
    }
    if (a->descr[0] != '<' && a->descr[0] != '|')
        return qk_err("%s: npy header: 'descr' %s is not little-endian", path, a->descr);
    char kind = a->descr[1];
    int size = atoi(a->descr + 2);
    if (!strchr("iuf", kind) || (size != 1 && size != 2 && size != 4 && size != 8))
        return qk_err("%s: npy header: unsupported 'descr' %s", path, a->descr);
    a->item_size = size;
    return 0;
}

int qk_npy_parse(QkNpy *a, const void *data, size_t len, const char *path) {
    memset(a, 0, sizeof *a);
    const char *buf = data;
    int rc = 0;
    size_t hlen = 0, off = 0;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6)) rc = qk_err("%s: not a .npy file (bad magic)", path);
    else if (buf[6] == 1) {
        hlen = (uint8_t)buf[8] | (size_t)(uint8_t)buf[9] << 8;
        off = 10;
    } else if ((buf[6] == 2 || buf[6] == 3) && len >= 12) {
        hlen = (uint8_t)buf[8] | (size_t)(uint8_t)buf[9] << 8 | (size_t)(uint8_t)buf[10] << 16 |
               (size_t)(uint8_t)buf[11] << 24;
        off = 12;
    } else rc = qk_err("%s: npy: unsupported format version %d", path, buf[6]);
    if (!rc && hlen > len - off) rc = qk_err("%s: npy: header length %zu runs past the end of the file", path, hlen);
    if (!rc) {
        char *hdr = qk_malloc(hlen + 1);
        memcpy(hdr, buf + off, hlen);
        hdr[hlen] = 0;
        rc = parse_header(a, hdr, path);
        free(hdr);
    }
    size_t nbytes = 0;
    if (!rc && qk_mul_size(a->numel, a->item_size, &nbytes)) rc = qk_err("%s: npy: data size overflows", path);
    if (!rc && len - off - hlen != nbytes)
        rc = qk_err("%s: npy: data is %zu bytes, shape and dtype need %zu", path, len - off - hlen, nbytes);
    if (!rc) {
        a->data = qk_malloc(nbytes ? nbytes : 1);
        memcpy(a->data, buf + off + hlen, nbytes);
    }
    return rc;
}

int qk_npy_read(QkNpy *a, const char *path) {
    memset(a, 0, sizeof *a);
    size_t len;
    char *buf = qk_read_file(path, &len);
    if (!buf) return -1;
    int rc = qk_npy_parse(a, buf, len, path);
    free(buf);
    return rc;
}

void qk_npy_free(QkNpy *a) {
    free(a->data);
    memset(a, 0, sizeof *a);
}

int qk_npy_to_i32(const QkNpy *a, int32_t *out, const char *path) {
    char kind = a->descr[1];
    if (kind == 'f') return qk_err("%s: npy 'descr' %s: token ids must be integers", path, a->descr);
    const uint8_t *p = a->data;
    for (size_t i = 0; i < a->numel; i++, p += a->item_size) {
        int64_t v = 0;
        uint64_t u = 0;
        memcpy(&u, p, a->item_size);  // little-endian host
        if (kind == 'u') v = (int64_t)u;
        else {
            int shift = 64 - 8 * (int)a->item_size;
            v = shift ? (int64_t)(u << shift) >> shift : (int64_t)u;
        }
        if ((kind == 'u' && u > INT32_MAX) || v < INT32_MIN || v > INT32_MAX)
            return qk_err("%s: npy element %zu: value %s%llu is outside the int32 range of token ids", path, i,
                          kind != 'u' && v < 0 ? "-" : "", kind == 'u' ? (unsigned long long)u
                          : v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v);
        out[i] = (int32_t)v;
    }
    return 0;
}

int qk_npy_write_to(FILE *f, const char *name, const char *descr, int ndim, const int64_t *shape, const void *data) {
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        n += snprintf(hdr + n, sizeof hdr - n, "%lld,%s", (long long)shape[d], d + 1 < ndim ? " " : "");
        numel *= (size_t)shape[d];
    }
    n += snprintf(hdr + n, sizeof hdr - n, "), }");
    int total = ((10 + n + 1 + 63) / 64) * 64;  // header padded with spaces to 64 bytes, ending in '\n'
    while (10 + n + 1 < total) hdr[n++] = ' ';
    hdr[n++] = '\n';
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(n & 0xFF), (uint8_t)(n >> 8)};
    size_t item = (size_t)atoi(descr + 2);
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, n, f) == (size_t)n &&
             fwrite(data, item, numel, f) == numel;
    return ok ? 0 : qk_err("%s: write failed", name);
}

int qk_npy_write(const char *path, const char *descr, int ndim, const int64_t *shape, const void *data) {
    FILE *f = fopen(path, "wb");
    if (!f) return qk_err("%s: cannot create: %s", path, strerror(errno));
    int rc = qk_npy_write_to(f, path, descr, ndim, shape, data);
    if (fclose(f) && !rc) rc = qk_err("%s: write failed", path);
    return rc;
}
