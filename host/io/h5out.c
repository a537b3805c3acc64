// h5out.c: see h5out.h.
#include "io/h5out.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5_hl.h>

#include "base/util.h"

// The NAME.tmp paths of the outputs being written, read by a signal handler: a slot's path is
// complete before its flag is set, and the flag is cleared before the path is reused.
#define MAX_OPEN 256
static char g_open_tmp[MAX_OPEN][4096];
static volatile sig_atomic_t g_open_used[MAX_OPEN];
static pthread_mutex_t g_open_mu = PTHREAD_MUTEX_INITIALIZER;

static void open_add(QkH5Out *o) {
    if (strlen(o->tmp_path) >= sizeof g_open_tmp[0]) return;  // (such a path could not be created anyway)
    pthread_mutex_lock(&g_open_mu);
    for (int i = 0; i < MAX_OPEN && !o->slot; i++)
        if (!g_open_used[i]) {
            strcpy(g_open_tmp[i], o->tmp_path);
            g_open_used[i] = 1;
            o->slot = i + 1;
        }
    pthread_mutex_unlock(&g_open_mu);
}

static void open_remove(QkH5Out *o) {
    if (o->slot) g_open_used[o->slot - 1] = 0;
    o->slot = 0;
}

void qk_h5_remove_open_tmp(void) {
    for (int i = 0; i < MAX_OPEN; i++)
        if (g_open_used[i]) unlink(g_open_tmp[i]);
}

int qk_h5_create(QkH5Out *o, const char *path) {
    memset(o, 0, sizeof *o);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);  // errors are reported as one line by the caller
    o->path = qk_strdup(path);
    o->tmp_path = qk_malloc(strlen(path) + 5);
    sprintf(o->tmp_path, "%s.tmp", path);
    o->file = H5Fcreate(o->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (o->file < 0) {
        qk_err("%s: cannot create HDF5 file", o->tmp_path);
        free(o->path);
        free(o->tmp_path);
        memset(o, 0, sizeof *o);
        return -1;
    }
    open_add(o);
    return 0;
}

void qk_h5_abort(QkH5Out *o) {
    open_remove(o);
    if (o->file > 0) H5Fclose(o->file);
    if (o->tmp_path) remove(o->tmp_path);
    free(o->path);
    free(o->tmp_path);
    memset(o, 0, sizeof *o);
}

int qk_h5_finish(QkH5Out *o) {
    int rc = qk_h5_attr_int(o->file, "complete", 1);
    if (!rc && H5Fclose(o->file) < 0) rc = qk_err("%s: closing the HDF5 file failed (disk full?)", o->tmp_path);
    o->file = 0;
    if (!rc && rename(o->tmp_path, o->path)) rc = qk_err("%s: rename to %s failed: %s", o->tmp_path, o->path, strerror(errno));
    if (rc) {
        qk_h5_abort(o);
        return -1;
    }
    open_remove(o);
    free(o->path);
    free(o->tmp_path);
    memset(o, 0, sizeof *o);
    return 0;
}

// Chunks of one row along dim 0, halved along the largest other dims until <= 1 MiB.
static void chunk_shape(hid_t type, int ndim, const hsize_t *dims, hsize_t *chunk) {
    size_t bytes = H5Tget_size(type);
    for (int d = 0; d < ndim; d++) chunk[d] = dims[d] ? dims[d] : 1;
    chunk[0] = 1;
    for (int d = 0; d < ndim; d++) bytes *= chunk[d];
    while (bytes > (1u << 20)) {
        int big = 1;
        for (int d = 1; d < ndim; d++)
            if (chunk[d] > chunk[big]) big = d;
        if (ndim < 2 || chunk[big] <= 1) break;
        bytes = bytes / chunk[big] * ((chunk[big] + 1) / 2);
        chunk[big] = (chunk[big] + 1) / 2;
    }
    // Rows of small records: several per chunk, still <= 1 MiB.
    while (bytes * 2 <= (1u << 16) && chunk[0] < (1u << 16)) chunk[0] *= 2, bytes *= 2;
}

static hid_t create(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims, int extendible) {
    hsize_t chunk[8], maxdims[8], start[8];
    for (int d = 0; d < ndim; d++) maxdims[d] = dims[d], start[d] = dims[d];
    if (extendible) maxdims[0] = H5S_UNLIMITED, start[0] = 0;
    chunk_shape(type, ndim, dims, chunk);
    if (!extendible && chunk[0] > dims[0] && dims[0] > 0) chunk[0] = dims[0];
    int empty = 0;
    for (int d = 0; d < ndim; d++) empty |= !extendible && dims[d] == 0;
    hid_t space = H5Screate_simple(ndim, start, maxdims), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (!empty) {  // an empty fixed-size dataset cannot be chunked: it stays contiguous
        H5Pset_chunk(dcpl, ndim, chunk);
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 1);  // level 1: most of the ratio at a fraction of level 4's time
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t ds = H5Dcreate2(o->file, name, type, space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (ds < 0) qk_err("%s: cannot create dataset '%s'", o->tmp_path, name);
    return ds;
}

hid_t qk_h5_dataset(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims) {
    return create(o, name, type, ndim, dims, 0);
}

hid_t qk_h5_dataset_ext(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims,
                        const char *const *labels) {
    hid_t ds = create(o, name, type, ndim, dims, 1);
    if (ds >= 0 && labels && qk_h5_label(ds, ndim, labels)) {
        H5Dclose(ds);
        return -1;
    }
    return ds;
}

int qk_h5_label(hid_t dset, int ndim, const char *const *labels) {
    for (int d = 0; d < ndim; d++)
        if (H5DSset_label(dset, (unsigned)d, labels[d]) < 0) return qk_err("HDF5: cannot label dimension %d", d);
    return 0;
}

int qk_h5_append_rows(hid_t dset, hid_t type, hsize_t nrows, const void *buf) {
    hid_t space = H5Dget_space(dset);
    hsize_t dims[8];
    int ndim = H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    hsize_t row0 = dims[0];
    dims[0] += nrows;
    (void)ndim;
    if (H5Dset_extent(dset, dims) < 0) return qk_err("HDF5: cannot extend a dataset to %llu rows", (unsigned long long)dims[0]);
    return qk_h5_write_rows(dset, type, row0, nrows, buf);
}

int qk_h5_write_rows(hid_t dset, hid_t type, hsize_t row0, hsize_t nrows, const void *buf) {
    hid_t fspace = H5Dget_space(dset);
    int ndim = H5Sget_simple_extent_ndims(fspace);
    hsize_t dims[8], start[8] = {0}, count[8];
    H5Sget_simple_extent_dims(fspace, dims, NULL);
    for (int d = 0; d < ndim; d++) count[d] = dims[d];
    start[0] = row0;
    count[0] = nrows;
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t mspace = H5Screate_simple(ndim, count, NULL);
    herr_t e = H5Dwrite(dset, type, mspace, fspace, H5P_DEFAULT, buf);
    H5Sclose(mspace);
    H5Sclose(fspace);
    if (e < 0) {
        char name[256] = "?", file[1024] = "?";
        H5Iget_name(dset, name, sizeof name);
        H5Fget_name(dset, file, sizeof file);
        return qk_err("%s: writing dataset '%s' rows %llu..%llu failed (disk full?)", file, name,
                      (unsigned long long)row0, (unsigned long long)(row0 + nrows));
    }
    return 0;
}

int qk_h5_attr_str(hid_t obj, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(value) + 1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = a < 0 ? -1 : H5Awrite(a, type, value);
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
    return e < 0 ? qk_err("HDF5: cannot write attribute '%s'", name) : 0;
}

static int attr_scalar(hid_t obj, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = a < 0 ? -1 : H5Awrite(a, type, value);
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return e < 0 ? qk_err("HDF5: cannot write attribute '%s'", name) : 0;
}

int qk_h5_attr_int(hid_t obj, const char *name, int64_t value) { return attr_scalar(obj, name, H5T_NATIVE_INT64, &value); }

int qk_h5_attr_double(hid_t obj, const char *name, double value) {
    return attr_scalar(obj, name, H5T_NATIVE_DOUBLE, &value);
}

hid_t qk_h5_feature_type(int d_sae) { return d_sae <= 65536 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32; }

void qk_h5_feature_convert(const int32_t *idx, size_t n, int d_sae, void *out) {
    if (d_sae <= 65536)
        for (size_t i = 0; i < n; i++) ((uint16_t *)out)[i] = idx[i] < 0 ? UINT16_MAX : (uint16_t)idx[i];
    else
        for (size_t i = 0; i < n; i++) ((uint32_t *)out)[i] = idx[i] < 0 ? UINT32_MAX : (uint32_t)idx[i];
}

int64_t qk_h5_attr_read_int(hid_t obj, const char *name) {
    int64_t v = -1;
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    return v;
}

double qk_h5_attr_read_double(hid_t obj, const char *name) {
    double v = NAN;
    if (H5Aexists(obj, name) <= 0) return NAN;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
    return v;
}

char *qk_h5_attr_read_str(hid_t obj, const char *name) {
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = H5Aget_type(a);
    char *buf = NULL;
    if (H5Tget_class(t) == H5T_STRING) {
        buf = qk_calloc(H5Tget_size(t) + 1, 1);
        H5Aread(a, t, buf);
    }
    H5Tclose(t), H5Aclose(a);
    return buf;
}

int qk_h5_write(QkH5Out *o, const char *name, hid_t type, int ndim, const hsize_t *dims, const char *const *labels,
                const void *data) {
    hid_t ds = qk_h5_dataset(o, name, type, ndim, dims);
    if (ds < 0) return -1;
    int rc = (dims[0] && qk_h5_write_rows(ds, type, 0, dims[0], data)) || (labels && qk_h5_label(ds, ndim, labels));
    H5Dclose(ds);
    return rc ? -1 : 0;
}

int qk_h5_write_features(QkH5Out *o, const char *name, int ndim, const hsize_t *dims, const char *const *labels,
                         const int32_t *idx, int d_sae) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= dims[d];
    void *buf = qk_malloc(n * 4 + 4);
    qk_h5_feature_convert(idx, n, d_sae, buf);
    int rc = qk_h5_write(o, name, qk_h5_feature_type(d_sae), ndim, dims, labels, buf);
    free(buf);
    return rc;
}

void *qk_h5_read_all(hid_t f, const char *path, const char *name, hid_t mem, size_t elem, int *ndim, hsize_t *dims,
                     int64_t *n) {
    hid_t d = H5Lexists(f, name, H5P_DEFAULT) > 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    if (d < 0) return qk_err("%s: dataset '%s' is missing", path, name), NULL;
    hid_t sp = H5Dget_space(d);
    hsize_t shape[H5S_MAX_RANK];
    const int nd = H5Sget_simple_extent_ndims(sp);
    size_t count = 1, bytes = 0;
    const int shaped = nd >= 0 && H5Sget_simple_extent_dims(sp, shape, NULL) == nd;
    int fits = shaped;
    if (H5Sget_simple_extent_type(sp) == H5S_NULL) count = 0;  // rank 0 like a scalar, but no element
    for (int i = 0; fits && i < nd; i++) fits = !qk_mul_size(count, shape[i], &count);
    fits = fits && count < SIZE_MAX && !qk_mul_size(elem, count + 1, &bytes);
    void *buf = fits ? malloc(bytes) : NULL;
    const int held = buf != NULL;
    if (buf && count && H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) free(buf), buf = NULL;
    H5Sclose(sp), H5Dclose(d);
    if (shaped && !held)  // its shape alone is too large: from the header, whatever the storage
        return qk_err("%s: dataset '%s': its shape needs more memory than there is", path, name), NULL;
    if (!buf) return qk_err("%s: cannot read dataset '%s'", path, name), NULL;
    if (ndim) *ndim = nd;
    for (int i = 0; dims && i < nd; i++) dims[i] = shape[i];
    if (n) *n = (int64_t)count;
    return buf;
}

int qk_h5_read_columns(hid_t f, const char *path, const char *group, int k, const char *const *names, const hid_t *mem,
                       const size_t *elem, void **bufs, int64_t *n) {
    int rc = 0;
    char name[512];
    for (int c = 0; c < k; c++) bufs[c] = NULL;
    for (int c = 0; c < k && !rc; c++) {
        int64_t nc = 0;
        snprintf(name, sizeof name, "%s%s", group, names[c]);
        if (!(bufs[c] = qk_h5_read_all(f, path, name, mem[c], elem[c], NULL, NULL, &nc))) rc = -1;
        else if (c && nc != *n)
            rc = qk_err("%s: %s has %lld elements, %s%s %lld", path, name, (long long)nc, group, names[0], (long long)*n);
        if (!c) *n = nc;
    }
    if (rc)
        for (int c = 0; c < k; c++) free(bufs[c]), bufs[c] = NULL;
    return rc;
}

int qk_h5_read_exact(hid_t f, const char *path, const char *name, hid_t mem, size_t n, void *buf) {
    hid_t d = H5Lexists(f, name, H5P_DEFAULT) > 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    if (d < 0) return qk_err("%s: dataset '%s' is missing", path, name);
    hid_t sp = H5Dget_space(d);
    const hssize_t have = H5Sget_simple_extent_npoints(sp);
    herr_t e = have == (hssize_t)n ? H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) : -1;
    H5Sclose(sp), H5Dclose(d);
    if (have != (hssize_t)n) return qk_err("%s: dataset '%s' has %lld elements, expected %zu", path, name, (long long)have, n);
    return e < 0 ? qk_err("%s: cannot read dataset '%s'", path, name) : 0;
}
