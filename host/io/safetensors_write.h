// safetensors_write.h: a small writer for safetensors files of float32 tensors, the counterpart of
// the reader in safetensors.h (SPEC §6).  The header is JSON: the tensors in name order with
// data_offsets contiguous from 0 in that order, an optional `__metadata__` object of strings, and
// space padding to a multiple of 8 bytes, as the Rust `safetensors` crate writes it.  The data are
// the host's little-endian float32 values.
#pragma once
#include <stdint.h>

#include "io/safetensors.h"

typedef struct {
    const char *name;                // unique, non-empty, not "__metadata__"
    int ndim;                        // 0..QK_ST_MAX_DIMS (0: a scalar)
    int64_t shape[QK_ST_MAX_DIMS];   // each >= 0
    const float *data;               // prod(shape) values, C order
} QkStTensor;

// Writes the n tensors to `path` (as path.tmp, renamed when complete).  meta: NULL, or a
// NULL-terminated list of key, value, key, value, ... strings for `__metadata__` (Hugging Face
// expects {"format": "pt"} on model files).  Returns 0, or -1 with qk_errmsg() naming the file and
// the tensor.
int qk_st_write_f32(const char *path, const QkStTensor *tensors, int n, const char *const *meta);
