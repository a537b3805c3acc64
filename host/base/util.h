// util.h: errors, allocation and small file helpers shared by every part of qkscope.
//
// Errors: a function that can fail returns int (0 ok, -1 failed) or NULL, after calling qk_err()
// with ONE line that names the file and the field or byte offset.  The CLI prints that line and
// exits non-zero; tests read it with qk_errmsg().  Nothing prints from inside the library.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define QK_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define QK_PRINTF(a, b)
#endif

// Records the error line (formatted like printf).  Always returns -1 so `return qk_err(...)` works.
int qk_err(const char *fmt, ...) QK_PRINTF(1, 2);
// The last error line recorded on this thread ("" if none).
const char *qk_errmsg(void);
void qk_err_clear(void);

// Allocation that aborts with a message on failure: out-of-memory on the host is not recoverable.
void *qk_malloc(size_t n);
void *qk_calloc(size_t n, size_t size);
void *qk_realloc(void *p, size_t n);
char *qk_strdup(const char *s);
// 64-byte aligned allocation (for SIMD rows); free with free().
void *qk_malloc_aligned(size_t n);

// Overflow-checked size arithmetic: returns 0 and sets *out on success, -1 on overflow.
int qk_mul_size(size_t a, size_t b, size_t *out);
int qk_add_size(size_t a, size_t b, size_t *out);

// Reads a whole file into a NUL-terminated buffer; *len gets the byte count (without the NUL).
char *qk_read_file(const char *path, size_t *len);

// Reads and parses a JSON file whose top level must be an object (cJSON; free with cJSON_Delete).
// NULL with one line naming the file and the byte offset of a parse error.
struct cJSON;
struct cJSON *qk_json_load(const char *path);
// The same on text[len] in memory; `path` names it in errors.
struct cJSON *qk_json_parse(const char *text, size_t len, const char *path);

// "dir/name" in a fresh buffer.
char *qk_path_join(const char *dir, const char *name);

// The largest seed the commands take: seeds are recorded in JSON, whose numbers are exact below 2^53.
#define QK_SEED_MAX ((1ll << 53) - 1)

// A command-line integer: the whole of s is a decimal number (an optional '-', digits; no blanks,
// no sign '+', nothing after) in [lo, hi].  0, or -1 (nothing set) for anything else.
int qk_parse_int64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int qk_file_exists(const char *path);

// Decodes the UTF-8 sequence at s[i] (i < n) strictly (shortest form, no surrogates, at most
// U+10FFFF): returns its byte length and sets *cp, or returns 0 if the bytes there are invalid.
size_t qk_utf8_decode(const uint8_t *s, size_t n, size_t i, uint32_t *cp);

// Seconds from a monotonic clock.
double qk_now(void);
