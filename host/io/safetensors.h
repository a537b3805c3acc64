// safetensors.h: a memory-mapped reader for Hugging Face safetensors files that enforces every
// rule of SPEC §6 before any tensor is touched (the file is untrusted input).
#pragma once
#include <stddef.h>
#include <stdint.h>

#define QK_ST_MAX_DIMS 8
#define QK_ST_MAX_HEADER 100000000ull
#define QK_ST_MAX_TENSORS (1 << 20)  // entries in a header (GPT-2 small has 149), checked before allocating

typedef enum {
    QK_DT_F32, QK_DT_F16, QK_DT_BF16, QK_DT_F64,
    QK_DT_I64, QK_DT_I32, QK_DT_I16, QK_DT_I8,
    QK_DT_U64, QK_DT_U32, QK_DT_U16, QK_DT_U8,
    QK_DT_BOOL, QK_DT_F8_E4M3, QK_DT_F8_E5M2,
} QkDtype;

typedef struct {
    char *name;
    QkDtype dtype;
    int ndim;
    int64_t shape[QK_ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;  // byte offsets relative to the start of the data section
} QkTensorInfo;

typedef struct {
    char *path;
    const uint8_t *map;  // whole file, read-only mmap (or the caller's buffer: qk_st_open_mem)
    int mapped;          // 1: map is ours to munmap
    size_t file_size;
    size_t data_start;   // 8 + header length
    int n_tensors;
    QkTensorInfo *tensors;  // sorted by name
    int n_meta;
    char **meta_keys, **meta_vals;  // __metadata__, string -> string
} QkSafetensors;

// Opens and validates.  On failure returns -1 with one line in qk_errmsg() naming the file and
// the field or byte offset; *st is left closed.
int qk_st_open(QkSafetensors *st, const char *path);
// The same checks on a file already in memory (data[size], borrowed: it must outlive *st); `name`
// stands for the path in errors.  The in-memory entry point of tests/fuzz/fuzz_safetensors.c.
int qk_st_open_mem(QkSafetensors *st, const void *data, size_t size, const char *name);
void qk_st_close(QkSafetensors *st);

const QkTensorInfo *qk_st_find(const QkSafetensors *st, const char *name);
const char *qk_st_meta(const QkSafetensors *st, const char *key);
const char *qk_dtype_name(QkDtype dt);
size_t qk_dtype_size(QkDtype dt);

// Copies a floating tensor (F32, F16, BF16, F64) into out[numel] as float32.
int qk_st_read_f32(const QkSafetensors *st, const QkTensorInfo *t, float *out);

// Finds `name` and checks it has exactly the shape shape[0..ndim): NULL with an error naming it
// (missing, or its shape and the expected one) otherwise.
const QkTensorInfo *qk_st_check(const QkSafetensors *st, const char *name, int ndim, const int64_t *shape);

// Finds `name`, checks it has exactly the shape shape[0..ndim), and returns a fresh float32 copy
// (free with free()).  A missing or misshapen tensor is an error that names it, and so is a
// non-finite value (NaN, +-inf): these are model weights, and one NaN would silently turn every
// result it reaches into garbage.
float *qk_st_load_f32(const QkSafetensors *st, const char *name, int ndim, const int64_t *shape);

float qk_f16_to_f32(uint16_t h);
float qk_bf16_to_f32(uint16_t h);
