// h5out.h: HDF5 output files that never look complete unless they are: written as NAME.tmp,
// root attribute `complete = 1` set last, then renamed to NAME.  A failed run removes NAME.tmp.
#pragma once
#include <hdf5.h>
#include <stdint.h>

typedef struct {
    hid_t file;
    char *path;      // final name
    char *tmp_path;  // NAME.tmp while writing
    int slot;        // 1 + its entry in the table of open outputs (qk_h5_remove_open_tmp), 0: none
} QkH5Out;

int qk_h5_create(QkH5Out *o, const char *path);
// Sets complete = 1, closes and renames.  On failure removes the temporary file.
int qk_h5_finish(QkH5Out *o);
// Closes and removes the temporary file (after an error).
void qk_h5_abort(QkH5Out *o);
// Removes the NAME.tmp of every output still being written; async-signal-safe (unlink only), for
// a signal handler about to _exit, so no partial file is left behind.
void qk_h5_remove_open_tmp(void);

// A chunked, shuffle+gzip dataset of `type` (H5T_NATIVE_FLOAT, H5T_NATIVE_UINT16, ...) whose
// first dimension is the row (batch) index.  Returns the dataset id or -1.
hid_t qk_h5_dataset(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims);
// The same with dims[0] = 0 rows at first and no limit, grown by qk_h5_append_rows, and with
// dimension names (HDF5 dimension-scale labels; h5py: dset.dims[i].label), labels[ndim] or NULL.
hid_t qk_h5_dataset_ext(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims,
                        const char *const *labels);
int qk_h5_label(hid_t dset, int ndim, const char *const *labels);
int qk_h5_append_rows(hid_t dset, hid_t type, hsize_t nrows, const void *buf);
// Writes rows [row0, row0 + nrows) of a dataset created above from a C-order buffer.
int qk_h5_write_rows(hid_t dset, hid_t type, hsize_t row0, hsize_t nrows, const void *buf);

int qk_h5_attr_str(hid_t obj, const char *name, const char *value);
int qk_h5_attr_int(hid_t obj, const char *name, int64_t value);
int qk_h5_attr_double(hid_t obj, const char *name, double value);

// A whole fixed-size dataset (dims[0] may be 0) with dimension labels (or NULL), and the same for
// feature indices converted to the file type (see below).
int qk_h5_write(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims, const char *const *labels,
                const void *data);
int qk_h5_write_features(QkH5Out *o, const char *name, int ndim, const hsize_t *dims, const char *const *labels,
                         const int32_t *idx, int d_sae);

// Feature indices: uint16 when d_sae <= 65536, else uint32 (SPEC; docs/FORMAT.md).  Unused
// slots (index -1 in memory) are stored as the type's maximum (65535 or 4294967295).
hid_t qk_h5_feature_type(int d_sae);
// Converts n indices to the file type into a scratch buffer owned by the caller (n * 4 bytes).
void qk_h5_feature_convert(const int32_t *idx, size_t n, int d_sae, void *out);

// Reading a whole dataset (file f opened from `path`, which the errors name): converted to `mem`
// (a native type of elem bytes) in a fresh buffer with one spare element (never a zero-size
// allocation); its rank and shape in *ndim and dims (H5S_MAX_RANK entries) and its element count
// in *n, each when not NULL.  NULL with one line naming the file and the dataset.
void *qk_h5_read_all(hid_t f, const char *path, const char *name, hid_t mem, size_t elem, int *ndim, hsize_t *dims,
                     int64_t *n);
// The columns of one table: datasets group + names[c], c < k (group a path prefix such as
// "aggregates/1.3/", or ""), each read whole (qk_h5_read_all, as mem[c] of elem[c] bytes) into a
// fresh bufs[c], all of one element count *n (else one line naming the file and two of them).
// -1 with every bufs[c] NULL on error.
int qk_h5_read_columns(hid_t f, const char *path, const char *group, int k, const char *const *names, const hid_t *mem,
                       const size_t *elem, void **bufs, int64_t *n);
// The same into buf, where the dataset must hold exactly n elements (else an error naming both).
int qk_h5_read_exact(hid_t f, const char *path, const char *name, hid_t mem, size_t n, void *buf);

// Reading attributes: an integer (-1 when absent), a float64 (NaN when absent), a string (fresh,
// NULL when absent).
int64_t qk_h5_attr_read_int(hid_t obj, const char *name);
double qk_h5_attr_read_double(hid_t obj, const char *name);
char *qk_h5_attr_read_str(hid_t obj, const char *name);
