// token_file.c: see token_file.h.
#include "text/token_file.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/npy.h"

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int parse_npy(const char *path, const void *data, size_t len, int **tokens, int *B, int *T) {
    QkNpy a;
    if (qk_npy_parse(&a, data, len, path)) return -1;
    int rc = 0;
    if (a.ndim != 1 && a.ndim != 2) rc = qk_err("%s: npy 'shape' must be [batch, pos] or [pos], got %d dims", path, a.ndim);
    else if (a.numel == 0 || a.numel > INT32_MAX)
        rc = qk_err("%s: npy 'shape' holds %zu tokens", path, a.numel);
    else {
        int32_t *ids = qk_malloc(a.numel * sizeof(int32_t));
        if ((rc = qk_npy_to_i32(&a, ids, path))) free(ids);  // *tokens stays NULL: the caller frees it
        else {
            *tokens = ids;
            *B = a.ndim == 2 ? (int)a.shape[0] : 1;
            *T = (int)a.shape[a.ndim - 1];
        }
    }
    qk_npy_free(&a);
    return rc;
}

// `text` is NUL-terminated and may be cut up (NULs written over separators).
static int parse_text(const char *path, char *text, int **tokens, int *B, int *T) {
    size_t cap = 1024, n = 0;
    int *ids = qk_malloc(cap * sizeof(int)), rows = 0, width = -1, rc = 0, line = 0;
    for (char *p = text; *p && !rc;) {
        line++;
        char *eol = strchr(p, '\n');
        if (eol) *eol = 0;
        int count = 0;
        for (char *q = p; !rc;) {
            while (isspace((unsigned char)*q)) q++;
            if (!*q) break;
            errno = 0;
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q || (*end && !isspace((unsigned char)*end)) || errno || v < 0 || v > INT32_MAX) {
                char *tok_end = q;
                while (*tok_end && !isspace((unsigned char)*tok_end)) tok_end++;
                *tok_end = 0;
                rc = qk_err("%s:%d: '%.40s' is not a token id", path, line, q);
                break;
            }
            if (n == cap) ids = qk_realloc(ids, (cap *= 2) * sizeof(int));
            ids[n++] = (int)v;
            count++;
            q = end;
        }
        if (!rc && count > 0) {
            if (width >= 0 && count != width)
                rc = qk_err("%s:%d: %d tokens, but earlier lines have %d (all sequences in a file have one length)", path,
                            line, count, width);
            width = count;
            rows++;
        }
        p = eol ? eol + 1 : p + strlen(p);
    }
    if (!rc && rows == 0) rc = qk_err("%s: no token ids", path);
    if (rc) {
        free(ids);
        return -1;
    }
    *tokens = ids;
    *B = rows;
    *T = width;
    return 0;
}

int qk_token_file_parse(const char *path, const void *data, size_t len, int **tokens, int *B, int *T) {
    *tokens = NULL;
    if (ends_with(path, ".npy")) return parse_npy(path, data, len, tokens, B, T);
    const char *nul = memchr(data, 0, len);
    if (nul) return qk_err("%s: byte offset %zu: a NUL byte in a text token file", path, (size_t)(nul - (const char *)data));
    char *text = qk_malloc(len + 1);
    memcpy(text, data, len);
    text[len] = 0;
    int rc = parse_text(path, text, tokens, B, T);
    free(text);
    return rc;
}

int qk_token_file_read(const char *path, int **tokens, int *B, int *T) {
    *tokens = NULL;
    size_t len;
    char *data = qk_read_file(path, &len);
    if (!data) return -1;
    int rc = qk_token_file_parse(path, data, len, tokens, B, T);
    free(data);
    return rc;
}
