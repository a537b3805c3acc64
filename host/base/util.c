// util.c: see util.h.
#include "base/util.h"

#include <cJSON.h>

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static _Thread_local char g_err[8192];  // room for a path of PATH_MAX and the message

int qk_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    // One line: fold any newline a caller's data may have carried in.
    for (char *p = g_err; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return -1;
}

const char *qk_errmsg(void) { return g_err; }
void qk_err_clear(void) { g_err[0] = 0; }

static void oom(size_t n) {
    fprintf(stderr, "qkscope: out of host memory allocating %zu bytes\n", n);
    abort();
}

void *qk_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *qk_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *qk_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *qk_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = qk_malloc(n);
    memcpy(p, s, n);
    return p;
}

void *qk_malloc_aligned(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64)) oom(n);
    return p;
}

int qk_mul_size(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int qk_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}

char *qk_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        qk_err("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = qk_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = qk_realloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        qk_err("%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

cJSON *qk_json_load(const char *path) {
    size_t len;
    char *text = qk_read_file(path, &len);
    if (!text) return NULL;
    cJSON *root = qk_json_parse(text, len, path);
    free(text);
    return root;
}

cJSON *qk_json_parse(const char *text, size_t len, const char *path) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!cJSON_IsObject(root)) {
        if (root) qk_err("%s: not a JSON object", path);
        else qk_err("%s: not valid JSON near byte %td", path, end ? end - text : 0);
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

int qk_parse_int64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    const char *d = *s == '-' ? s + 1 : s;
    if (*d < '0' || *d > '9') return -1;  // empty, blanks, '+' (strtoll would take them)
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

char *qk_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = qk_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/') p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

int qk_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

double qk_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

size_t qk_utf8_decode(const uint8_t *s, size_t n, size_t i, uint32_t *cp) {
    uint8_t c = s[i];
    size_t len;
    uint32_t v;
    if (c < 0x80) { *cp = c; return 1; }
    else if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; }
    else return 0;
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && v < 0x80) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000) || v > 0x10FFFF ||
        (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}
