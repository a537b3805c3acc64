// h5compare.c: compares two qkscope HDF5 outputs (run, cache or static) dataset by dataset: the
// CPU-vs-CUDA check of scripts/gpu.sh.  REF is the reference (the CPU backend, or CUDA fp32),
// TEST the file under test.  Needs only libhdf5 (the GPU machine has no h5diff and no Python HDF5
// tools of ours).
//
//   h5compare [--mode parity|overlap] [--tol 1e-4] [--overlap-min 0.95] [--skip SUBSTRING]... REF.h5 TEST.h5
//
// --skip: datasets whose path contains SUBSTRING are reported, not judged (tests/cudaemu/compare.sh
// skips the per-token metrics: r2 = 1 - res/tot is ill-conditioned where a score row is nearly
// constant, so no relative tolerance holds for it across summation orders; test_analysis_gpu
// judges every metric by its own scale).
//
// Every dataset of REF is read as double and compared with TEST's dataset of the same path:
// - top-k index sets (`*_idx`, `pair_*_feature`, `attended_pos`, with their values `*_val`,
//   `pair_value`, `attended_weight`): per row (the last axis), the overlap |A n B| / |A| of the
//   two multisets; a row whose sets differ but whose sorted values agree within tol is a NEAR TIE
//   (an index swap between equal values: a tie resolved the other way by rounding), else DIFF;
// - float data: relative error |x - r| / (|r| + 0.01 max|r|) per element (as the test suites);
//   non-finite values must match;
// - other integers (counts, histograms, lengths): exact, mismatches counted.
// parity (fp32): a dataset passes with no DIFF row and no element over tol; it is NEAR when it
// has elements over tol or integer mismatches, at most 1e-3 of them, and the file has near-tie
// rows (a different pick upstream moves everything computed from it); otherwise FAIL.
// overlap (tf32, bf16 against fp32): index sets pass when their mean overlap >= overlap-min (rows
// of at least 8 slots); float errors are reported, not judged.
// The `*_exact` limbs are reported but not judged (their float64 values are), nor is the heavy-pair
// sketch (`pairs_*`: once full, which pairs it keeps depends on the order of near-equal weights),
// nor the example contexts (`examples_*`: ranked by |term|).  Attributes are
// ignored (times differ).  Exit status 0 when every dataset passes (NEAR counts as passing in
// parity mode: it is reported), 1 otherwise, 2 on a usage or read error.
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char **names;
    int n, cap;
} NameList;

static herr_t collect(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    (void)obj;
    if (info->type != H5O_TYPE_DATASET) return 0;
    NameList *l = (NameList *)op;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->names = (char **)realloc(l->names, sizeof(char *) * l->cap);
    }
    l->names[l->n++] = strdup(name);
    return 0;
}

typedef struct {
    double *x;
    size_t n, last;  // elements, length of the last axis (1 for scalars / 1-D: each element a row)
    int ndims, is_float;
    hsize_t dims[8];
} Data;

static int read_data(hid_t f, const char *name, Data *d) {
    memset(d, 0, sizeof *d);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    d->ndims = H5Sget_simple_extent_ndims(sp);
    if (d->ndims > 8) d->ndims = 8;
    H5Sget_simple_extent_dims(sp, d->dims, NULL);
    d->n = 1;
    for (int i = 0; i < d->ndims; i++) d->n *= d->dims[i];
    d->last = d->ndims >= 2 ? d->dims[d->ndims - 1] : 1;
    H5T_class_t cl = H5Tget_class(ty);
    d->is_float = cl == H5T_FLOAT;
    int rc = 0;
    if (cl != H5T_FLOAT && cl != H5T_INTEGER) rc = 1;  // strings etc.: not compared
    else {
        d->x = (double *)malloc(sizeof(double) * (d->n ? d->n : 1));
        if (d->n && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, d->x) < 0) rc = -1;
    }
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    return rc;
}

static const char *base_of(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}
static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

// The values dataset of a top-k index dataset (same group), or "" when `name` is not one.
static int index_partner(const char *name, char *val, size_t cap) {
    const char *b = base_of(name);
    size_t dir = (size_t)(b - name);
    if (ends_with(b, "_idx")) {
        snprintf(val, cap, "%.*s_val", (int)(strlen(name) - 4), name);
        return 1;
    }
    if (!strcmp(b, "pair_query_feature") || !strcmp(b, "pair_key_feature")) {
        snprintf(val, cap, "%.*spair_value", (int)dir, name);
        return 1;
    }
    if (!strcmp(b, "attended_pos")) {
        snprintf(val, cap, "%.*sattended_weight", (int)dir, name);
        return 1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double max_abs(const Data *d) {
    double m = 0;
    for (size_t i = 0; i < d->n; i++)
        if (isfinite(d->x[i]) && fabs(d->x[i]) > m) m = fabs(d->x[i]);
    return m;
}

static double rel(double x, double r, double floor_) {
    if (!isfinite(r) || !isfinite(x)) return (x == r || (isnan(x) && isnan(r))) ? 0 : INFINITY;
    return fabs(x - r) / (fabs(r) + floor_ + 1e-30);
}

int main(int argc, char **argv) {
    const char *mode = "parity";
    double tol = 1e-4, overlap_min = 0.95;
    const char *skip[16];
    int ai = 1, n_skip = 0;
    for (; ai < argc && argv[ai][0] == '-' && argv[ai][1] == '-'; ai++) {
        if (!strcmp(argv[ai], "--mode") && ai + 1 < argc) mode = argv[++ai];
        else if (!strcmp(argv[ai], "--tol") && ai + 1 < argc) tol = atof(argv[++ai]);
        else if (!strcmp(argv[ai], "--overlap-min") && ai + 1 < argc) overlap_min = atof(argv[++ai]);
        else if (!strcmp(argv[ai], "--skip") && ai + 1 < argc && n_skip < 16) skip[n_skip++] = argv[++ai];
        else break;
    }
    int parity = !strcmp(mode, "parity");
    if (argc - ai != 2 || (!parity && strcmp(mode, "overlap"))) {
        fprintf(stderr, "usage: h5compare [--mode parity|overlap] [--tol 1e-4] [--overlap-min 0.95] [--skip SUBSTRING]... REF.h5 TEST.h5\n");
        return 2;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fr = H5Fopen(argv[ai], H5F_ACC_RDONLY, H5P_DEFAULT), ft = H5Fopen(argv[ai + 1], H5F_ACC_RDONLY, H5P_DEFAULT);
    if (fr < 0 || ft < 0) {
        fprintf(stderr, "h5compare: cannot open %s\n", fr < 0 ? argv[ai] : argv[ai + 1]);
        return 2;
    }
    NameList names = {0};
    H5Ovisit2(fr, H5_INDEX_NAME, H5_ITER_INC, collect, &names, H5O_INFO_BASIC);
    // Index datasets first: their near ties decide how mismatches downstream are judged.
    int *order = (int *)malloc(sizeof(int) * (names.n + 1)), no = 0;
    char partner[1024];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < names.n; i++)
            if (index_partner(names.names[i], partner, sizeof partner) == !pass) order[no++] = i;
    long long tie_rows = 0, failed = 0, near = 0, compared = 0;
    printf("%-6s %-58s %10s %10s %9s %9s %8s %8s %8s\n", "verdict", "dataset", "elements", "worst_rel", "over_tol",
           "int_diff", "rows_tie", "rows_diff", "overlap");
    for (int oi = 0; oi < no; oi++) {
        const char *name = names.names[order[oi]];
        Data r, t;
        int rr = read_data(fr, name, &r), rt = read_data(ft, name, &t);
        if (rr == 1) continue;  // not numeric
        compared++;
        if (rr < 0 || rt < 0) {
            printf("%-7s %-58s %s\n", "FAIL", name, rt < 0 ? "missing or unreadable in TEST" : "unreadable in REF");
            failed++;
            free(r.x), free(t.x);
            continue;
        }
        int same_shape = r.ndims == t.ndims;
        for (int i = 0; same_shape && i < r.ndims; i++) same_shape = r.dims[i] == t.dims[i];
        // The heavy-pair sketch holds the distinct pairs seen: another precision sees a few more or
        // fewer (never judged, below), so in overlap mode its length may differ too.
        const int sketch = strstr(name, "/pairs_") != NULL;
        if (!same_shape) {
            const int fail = parity || !sketch;
            printf("%-7s %-58s shapes differ (%llu vs %llu elements)\n", fail ? "FAIL" : "info", name,
                   (unsigned long long)r.n, (unsigned long long)t.n);
            failed += fail;
            free(r.x), free(t.x);
            continue;
        }
        double worst = 0, mean_overlap = -1;
        long long over = 0, int_diff = 0, rows_tie = 0, rows_diff = 0;
        int is_index = index_partner(name, partner, sizeof partner) && r.ndims >= 2, judged = 1;
        if (is_index) {
            Data rv, tv;
            int have_vals = read_data(fr, partner, &rv) == 0 && read_data(ft, partner, &tv) == 0 && rv.n == r.n && tv.n == r.n;
            double floor_ = have_vals ? 0.01 * max_abs(&rv) : 0, sum_ov = 0;
            size_t k = r.last, rows = k ? r.n / k : 0;
            double *a = (double *)malloc(sizeof(double) * (k + 1) * 4), *b = a + k, *va = b + k, *vb = va + k;
            for (size_t row = 0; row < rows; row++) {
                memcpy(a, r.x + row * k, k * sizeof(double));
                memcpy(b, t.x + row * k, k * sizeof(double));
                qsort(a, k, sizeof(double), cmp_double);
                qsort(b, k, sizeof(double), cmp_double);
                size_t i = 0, j = 0, common = 0;
                while (i < k && j < k) {
                    if (a[i] == b[j]) common++, i++, j++;
                    else if (a[i] < b[j]) i++;
                    else j++;
                }
                sum_ov += k ? (double)common / k : 1;
                if (common == k) continue;
                int tie = have_vals;
                if (have_vals) {
                    memcpy(va, rv.x + row * k, k * sizeof(double));
                    memcpy(vb, tv.x + row * k, k * sizeof(double));
                    qsort(va, k, sizeof(double), cmp_double);
                    qsort(vb, k, sizeof(double), cmp_double);
                    for (size_t q = 0; q < k && tie; q++) tie = rel(vb[q], va[q], floor_) <= tol;
                }
                if (tie) rows_tie++;
                else rows_diff++;
            }
            mean_overlap = rows ? sum_ov / rows : 1;
            free(a);
            if (have_vals) free(rv.x), free(tv.x);
            tie_rows += rows_tie;
        } else if (r.is_float) {
            double floor_ = 0.01 * max_abs(&r);
            for (size_t i = 0; i < r.n; i++) {
                double e = rel(t.x[i], r.x[i], floor_);
                if (e > tol) over++;
                if (!(e <= worst)) worst = e;
            }
        } else {
            for (size_t i = 0; i < r.n; i++) int_diff += r.x[i] != t.x[i];
            if (ends_with(name, "_exact")) judged = 0;
        }
        // The heavy-pair sketch (aggregates/L.H/pairs_*) is a space-saving sketch: once full, which
        // pairs it keeps depends on the order of near-equal weights; the example contexts
        // (examples_*) are ranked by |term|, so near-equal terms swap ranks.  Reported, not judged
        // here (test_analysis_gpu checks the strongest of both against the host).
        if (strstr(name, "/pairs_") || strstr(name, "/examples_")) judged = 0;
        for (int q = 0; q < n_skip; q++)
            if (strstr(name, skip[q])) judged = 0;
        const char *verdict = "PASS";
        if (!judged) verdict = "info";
        else if (parity) {
            long long bad = over + int_diff;
            if (rows_diff) verdict = "FAIL";
            else if (bad && (tie_rows == 0 || bad > 1e-3 * (double)r.n)) verdict = "FAIL";
            else if (bad || rows_tie) verdict = "NEAR";
        } else if (is_index && r.last >= 8 && mean_overlap < overlap_min) verdict = "FAIL";
        else if (!is_index && (over || int_diff)) verdict = "info";
        if (!strcmp(verdict, "FAIL")) failed++;
        if (!strcmp(verdict, "NEAR")) near++;
        printf("%-7s %-58s %10llu %10.3g %9lld %9lld %8lld %8lld ", verdict, name, (unsigned long long)r.n, worst, over,
               int_diff, rows_tie, rows_diff);
        if (mean_overlap >= 0) printf("%8.4f\n", mean_overlap);
        else printf("%8s\n", "-");
        free(r.x), free(t.x);
    }
    printf("h5compare: %s (%s mode, tol %g): %lld datasets compared, %lld failed, %lld near (near-tie rows: %lld)\n",
           failed ? "FAIL" : "PASS", mode, tol, compared, failed, near, tie_rows);
    for (int i = 0; i < names.n; i++) free(names.names[i]);
    free(names.names);
    free(order);
    H5Fclose(fr);
    H5Fclose(ft);
    return failed ? 1 : 0;
}
