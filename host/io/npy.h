// npy.h: NumPy .npy files (format versions 1-3, C order, little-endian), the token-id interchange
// format.  The header is a Python dict literal; it is parsed with every bound checked.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

typedef struct {
    char descr[8];      // "<i4", "<u2", "<i8", "<f4", ...
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t item_size;
    void *data;         // numel * item_size bytes
} QkNpy;

int qk_npy_read(QkNpy *a, const char *path);
// The same on a file already in memory; `path` names it in errors.
int qk_npy_parse(QkNpy *a, const void *data, size_t len, const char *path);
void qk_npy_free(QkNpy *a);

// Converts an integer array (i1..i8, u1..u8) to int32 token ids; values outside int32 are errors.
int qk_npy_to_i32(const QkNpy *a, int32_t *out, const char *path);

// Writes a C-order array; descr such as "<i4" or "<u2".  Returns -1 with qk_errmsg on failure.
int qk_npy_write(const char *path, const char *descr, int ndim, const int64_t *shape, const void *data);
// The same into an open stream (stdout, a .tmp file); `name` names it in errors.
int qk_npy_write_to(FILE *f, const char *name, const char *descr, int ndim, const int64_t *shape, const void *data);
