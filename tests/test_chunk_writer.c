// test_chunk_writer.c: rows appended through the parallel-compression chunk writer read back
// exactly as rows written by HDF5 itself, for several types, row shapes and batch sizes, and for
// datasets whose chunks do not span whole rows (the fallback path).
#include "io/chunk_writer.h"
#include "io/h5out.h"
#include "test_common.h"

typedef struct {
    const char *name;
    hid_t type;
    size_t elem;
    int nd;
    hsize_t dims[4];  // dims[0] ignored (extendible)
} Shape;

static void *read_all(hid_t f, const char *name, size_t bytes) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), t = H5Dget_type(d);
    void *buf = qk_malloc(bytes + 1);
    cr_assert(H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0, "read %s", name);
    H5Tclose(t), H5Dclose(d);
    return buf;
}

Test(chunk_writer, direct_chunks_equal_hdf5_writes) {
    char *dir = make_tmpdir(), *path = qk_path_join(dir, "cw.h5");
    QkH5Out o;
    cr_assert_eq(qk_h5_create(&o, path), 0);
    Shape shapes[] = {
        {"f32", H5T_NATIVE_FLOAT, 4, 3, {0, 64, 8}},
        {"u16", H5T_NATIVE_UINT16, 2, 4, {0, 64, 2, 5}},
        {"i64", H5T_NATIVE_INT64, 8, 2, {0, 3}},
        {"i32row", H5T_NATIVE_INT32, 4, 2, {0, 64}},
        {"big", H5T_NATIVE_FLOAT, 4, 3, {0, 700, 700}},  // rows > 1 MiB: chunks split rows -> fallback
    };
    const int n_shapes = sizeof shapes / sizeof shapes[0], total = 53;
    ChunkWriter *w = cw_open(3);
    TRng g = {5};
    uint8_t *data[8];
    size_t row_bytes[8];
    hid_t direct[8], plain[8];
    int h[8];
    for (int s = 0; s < n_shapes; s++) {
        char name[64];
        snprintf(name, sizeof name, "direct_%s", shapes[s].name);
        cr_assert((direct[s] = qk_h5_dataset_ext(&o, name, shapes[s].type, shapes[s].nd, shapes[s].dims, NULL)) >= 0);
        snprintf(name, sizeof name, "plain_%s", shapes[s].name);
        cr_assert((plain[s] = qk_h5_dataset_ext(&o, name, shapes[s].type, shapes[s].nd, shapes[s].dims, NULL)) >= 0);
        cr_assert((h[s] = cw_add(w, direct[s], shapes[s].type)) >= 0);
        row_bytes[s] = shapes[s].elem;
        for (int d = 1; d < shapes[s].nd; d++) row_bytes[s] *= shapes[s].dims[d];
        int rows = s == 4 ? 3 : total;
        data[s] = qk_malloc(row_bytes[s] * rows);
        for (size_t b = 0; b < row_bytes[s] * rows; b++) data[s][b] = (uint8_t)(trng_u64(&g) >> 40) & (b % 3 ? 0xff : 0x0f);
        for (int r0 = 0; r0 < rows;) {  // irregular batches
            int n = 1 + (int)(trng_u64(&g) % 7);
            if (r0 + n > rows) n = rows - r0;
            cr_assert_eq(cw_append(w, h[s], data[s] + r0 * row_bytes[s], n), 0, "%s", qk_errmsg());
            cr_assert_eq(qk_h5_append_rows(plain[s], shapes[s].type, n, data[s] + r0 * row_bytes[s]), 0);
            r0 += n;
        }
    }
    cr_assert_eq(cw_flush(w), 0, "%s", qk_errmsg());
    cw_close(w);
    for (int s = 0; s < n_shapes; s++) H5Dclose(direct[s]), H5Dclose(plain[s]);
    cr_assert_eq(qk_h5_finish(&o), 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    for (int s = 0; s < n_shapes; s++) {
        int rows = s == 4 ? 3 : total;
        char a[64], b[64];
        snprintf(a, sizeof a, "direct_%s", shapes[s].name);
        snprintf(b, sizeof b, "plain_%s", shapes[s].name);
        hid_t d = H5Dopen2(f, a, H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t dims[4];
        H5Sget_simple_extent_dims(sp, dims, NULL);
        cr_expect_eq(dims[0], (hsize_t)rows, "%s has %llu rows", a, (unsigned long long)dims[0]);
        H5Sclose(sp), H5Dclose(d);
        uint8_t *x = read_all(f, a, row_bytes[s] * rows), *y = read_all(f, b, row_bytes[s] * rows);
        cr_expect_eq(memcmp(x, data[s], row_bytes[s] * rows), 0, "%s differs from what was appended", a);
        cr_expect_eq(memcmp(y, data[s], row_bytes[s] * rows), 0, "%s differs", b);
        free(x), free(y), free(data[s]);
    }
    H5Fclose(f);
    // h5diff (a separate reader through HDF5's own filters) agrees too.
    cr_expect(h5_same_objs(path, "/direct_u16", path, "/plain_u16", 0) && h5_same_objs(path, "/direct_f32", path, "/plain_f32", 0));
    rm_rf(dir);
    free(dir), free(path);
}

// A whole dataset written through the workers (the aggregates' per-feature arrays) reads back
// exactly, with the shape asked for, and is closed by the flush.
Test(chunk_writer, whole_datasets_read_back_and_are_closed_at_flush) {
    char *dir = make_tmpdir(), *path = qk_path_join(dir, "whole.h5");
    QkH5Out o;
    cr_assert_eq(qk_h5_create(&o, path), 0);
    ChunkWriter *w = cw_open(2);
    const size_t m = 20011;  // not a multiple of any chunk
    double *d = qk_malloc(sizeof(double) * m);
    int64_t *x = qk_malloc(sizeof(int64_t) * m * 3);
    for (size_t i = 0; i < m; i++) d[i] = sin((double)i) * 1e3, x[3 * i] = (int64_t)i, x[3 * i + 1] = -(int64_t)i, x[3 * i + 2] = 7;
    hsize_t e1[1] = {0}, e2[2] = {0, 3};
    hid_t a = qk_h5_dataset_ext(&o, "a", H5T_NATIVE_DOUBLE, 1, e1, NULL), b = qk_h5_dataset_ext(&o, "b", H5T_NATIVE_INT64, 2, e2, NULL);
    cr_assert(a >= 0 && b >= 0);
    cr_assert_eq(cw_write_whole(w, a, H5T_NATIVE_DOUBLE, d, m), 0, "%s", qk_errmsg());
    cr_assert_eq(cw_write_whole(w, b, H5T_NATIVE_INT64, x, m), 0, "%s", qk_errmsg());
    cr_assert_eq(cw_flush(w), 0, "%s", qk_errmsg());
    cr_expect(H5Iis_valid(a) <= 0 && H5Iis_valid(b) <= 0, "the flush closes the datasets it owns");
    cr_assert_eq(qk_h5_finish(&o), 0);
    cw_close(w);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t da = H5Dopen2(f, "a", H5P_DEFAULT), db = H5Dopen2(f, "b", H5P_DEFAULT), sb = H5Dget_space(db);
    hsize_t dims[2];
    H5Sget_simple_extent_dims(sb, dims, NULL);
    cr_expect(dims[0] == m && dims[1] == 3);
    double *d2 = qk_malloc(sizeof(double) * m);
    int64_t *x2 = qk_malloc(sizeof(int64_t) * m * 3);
    cr_assert(H5Dread(da, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, d2) >= 0);
    cr_assert(H5Dread(db, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, x2) >= 0);
    cr_expect(memcmp(d, d2, sizeof(double) * m) == 0 && memcmp(x, x2, sizeof(int64_t) * m * 3) == 0);
    H5Sclose(sb), H5Dclose(da), H5Dclose(db), H5Fclose(f);
    free(d), free(x), free(d2), free(x2);
    rm_rf(dir);
    free(dir), free(path);
}
