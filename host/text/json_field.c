// json_field.c: see json_field.h.  A small scanner over the top level of one JSON object: keys
// and the wanted value are decoded (RFC 8259 escapes, surrogate pairs to UTF-8); other values are
// skipped by bracket depth, strings included.
#include "text/json_field.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

typedef struct {
    const char *s;
    size_t n, i;
} Scan;

static void skip_ws(Scan *c) {
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n' || c->s[c->i] == '\r')) c->i++;
}

static int hex4(Scan *c, uint32_t *v) {
    if (c->n - c->i < 4) return -1;
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char h = c->s[c->i++];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

static size_t put_utf8(uint32_t cp, char *o) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), 3;
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F)), o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// The string at c->i (its opening quote): decoded into a fresh *out (NULL: only skipped).  The
// decoded form is never longer than the escaped one, so the output is sized by the input.
static int string(Scan *c, char **out, size_t *out_len) {
    if (c->i >= c->n || c->s[c->i] != '"') return -1;
    c->i++;
    char *o = out ? qk_malloc(c->n - c->i + 1) : NULL;
    size_t k = 0;
    while (c->i < c->n && c->s[c->i] != '"') {
        char ch = c->s[c->i++];
        if (ch != '\\') {
            if (o) o[k++] = ch;
            continue;
        }
        if (c->i >= c->n) break;
        char e = c->s[c->i++];
        uint32_t cp;
        const char *simple = strchr("\"\\/bfnrt", e), *to = "\"\\/\b\f\n\r\t";
        if (e && simple) cp = (uint32_t)(unsigned char)to[simple - "\"\\/bfnrt"];
        else if (e != 'u' || hex4(c, &cp)) break;
        else if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: its low half must follow
            uint32_t lo;
            if (c->n - c->i < 6 || c->s[c->i] != '\\' || c->s[c->i + 1] != 'u') break;
            c->i += 2;
            if (hex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF) break;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) break;
        if (o) k += put_utf8(cp, o + k);  // \uXXXX: 6 bytes in, <= 3 out; a pair: 12 in, 4 out
    }
    if (c->i >= c->n) {  // unterminated or a bad escape
        free(o);
        return -1;
    }
    c->i++;  // the closing quote
    if (o) o[k] = 0, *out = o, *out_len = k;
    return 0;
}

// Skips one value (object, array, string or literal).
static int skip_value(Scan *c) {
    if (c->i < c->n && c->s[c->i] == '"') return string(c, NULL, NULL);
    int depth = 0;
    while (c->i < c->n) {
        char ch = c->s[c->i];
        if (ch == '"') {
            if (string(c, NULL, NULL)) return -1;
            continue;
        }
        if (ch == '{' || ch == '[') depth++;
        else if (ch == '}' || ch == ']') {
            if (depth == 0) return 0;  // the end of the enclosing object
            depth--;
        } else if (ch == ',' && depth == 0) return 0;
        c->i++;
    }
    return depth ? -1 : 0;
}

int qk_json_field_string(const char *text, size_t len, const char *field, char **out, size_t *out_len) {
    Scan c = {text, len, 0};
    size_t flen = strlen(field);
    skip_ws(&c);
    if (c.i >= c.n || text[c.i++] != '{') return -1;
    for (;;) {
        skip_ws(&c);
        if (c.i < c.n && text[c.i] == '}') return 0;
        char *key;
        size_t klen;
        if (string(&c, &key, &klen)) return -1;
        int match = klen == flen && !memcmp(key, field, flen);
        free(key);
        skip_ws(&c);
        if (c.i >= c.n || text[c.i++] != ':') return -1;
        skip_ws(&c);
        if (match) return c.i < c.n && text[c.i] == '"' ? (string(&c, out, out_len) ? -1 : 1) : 0;
        if (skip_value(&c)) return -1;
        skip_ws(&c);
        if (c.i < c.n && text[c.i] == ',') c.i++;
        else if (c.i < c.n && text[c.i] == '}') return 0;
        else return -1;
    }
}
