// test_common.h: the one header of helpers shared by the Criterion suites (every suite includes
// it): the binary under test, reference data, a deterministic RNG, temporary folders, planted
// models and their configs, output comparisons.  Tests run from the repository root.
#pragma once
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <hdf5.h>

#include "backend.h"
#include "base/util.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/planted.h"

// The gate of the GPU suites (make test-gpu): skips the test, naming `what`, unless QK_BACKEND=cuda
// and a CUDA device is usable; returns the number of usable devices.
static inline int test_cuda_gpus(const char *what) {
    const char *be = getenv("QK_BACKEND");
    if (!be || strcmp(be, "cuda")) cr_skip_test("%s: runs with QK_BACKEND=cuda (make test-gpu)", what);
    char why[256] = "";
    const int gpus = qk_cuda_probe(why, sizeof why);
    if (gpus < 1) cr_skip_test("%s: no usable CUDA device (%s)", what, why);
    return gpus;
}

// Rows of a GPU suite's GPT-2-small-sized problem: n on a GPU; on the emulated device (make
// test-emu, every thread a fiber on one CPU core) `emu`, the widths (m = 32768, r) kept.
#ifdef QK_CUDA_EMU
#define TEST_GPU_ROWS(n, emu) (emu)
#else
#define TEST_GPU_ROWS(n, emu) (n)
#endif

#define REF_DIR "tests/reference/data"
// The qkscope binary the CLI tests start, from the repository root (make test-asan runs the suites
// from a root whose bin/ is the sanitized build).  String literal: QK_BIN " run ..." .
#ifndef QK_BIN
#define QK_BIN "./bin/qkscope"
#endif

// xorshift64*: deterministic across platforms.
typedef struct {
    uint64_t s;
} TRng;

static inline uint64_t trng_u64(TRng *g) {
    g->s ^= g->s >> 12;
    g->s ^= g->s << 25;
    g->s ^= g->s >> 27;
    return g->s * 2685821657736338717ull;
}
// Uniform in [0, 1).
static inline double trng_unif(TRng *g) { return (trng_u64(g) >> 11) * (1.0 / 9007199254740992.0); }
// Standard normal (Box-Muller).
static inline double trng_normal(TRng *g) {
    double u = trng_unif(g), v = trng_unif(g);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}
// Integer in [lo, hi].
static inline int trng_int(TRng *g, int lo, int hi) { return lo + (int)(trng_u64(g) % (uint64_t)(hi - lo + 1)); }

static inline void trng_fill_normal(TRng *g, float *x, size_t n, double mean, double sd) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + sd * trng_normal(g));
}

// The backend under test: QK_BACKEND=cpu (default) or cuda.  A CUDA suite on a machine without
// a usable device is skipped, saying why.
static inline QkBackend *test_backend(void) {
    const char *s = getenv("QK_BACKEND");
    QkBackendKind kind = QK_BACKEND_CPU;
    if (s && qk_backend_parse(s, &kind)) cr_assert_fail("QK_BACKEND: %s", qk_errmsg());
    QkBackend *be = NULL;
    if (qk_backend_open(&be, kind, 0, 1)) cr_skip_test("QK_BACKEND=%s unavailable: %s", s, qk_errmsg());
    return be;
}

// Relative error of x against reference r, elementwise with a floor of 1% of the reference's
// largest magnitude (so values near zero do not divide by ~0): |x - r| / (|r| + 0.01 max|r|).
// Non-finite reference values (masked scores, -inf) must match exactly.  Returns the worst.
static inline double rel_err(const float *x, const float *r, size_t n, size_t *worst_at) {
    double maxr = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(r[i]) && fabs(r[i]) > maxr) maxr = fabs(r[i]);
    for (size_t i = 0; i < n; i++) {
        double e;
        if (!isfinite(r[i])) e = (x[i] == r[i]) ? 0 : INFINITY;
        else e = fabs((double)x[i] - r[i]) / (fabs(r[i]) + 0.01 * maxr + 1e-30);
        if (!(e <= worst)) {
            worst = e;
            if (worst_at) *worst_at = i;
        }
    }
    return worst;
}

// A float32 copy of a reference tensor (any float dtype), with its element count.
static inline float *ref_tensor(const QkSafetensors *st, const char *name, size_t *numel) {
    const QkTensorInfo *t = qk_st_find(st, name);
    cr_assert_not_null(t, "reference tensor '%s' missing from %s", name, st->path);
    float *out = qk_malloc(t->numel * sizeof(float) + 1);
    cr_assert_eq(qk_st_read_f32(st, t, out), 0, "%s", qk_errmsg());
    if (numel) *numel = t->numel;
    return out;
}

// A fresh temporary directory for a test's files (removed by the caller with rm_rf).
static inline char *make_tmpdir(void) {
    char *d = qk_strdup("/tmp/qkscope-test-XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

// A fresh temporary directory holding the planted model, SAEs and a corpus of `windows` windows
// of 64 tokens (qkscope planted; 0: its default size); 160 are long enough to interrupt a run
// mid-way.  info: what was planted, or NULL.
static inline char *make_planted_dir_info(int windows, QkPlanted *info) {
    char *d = make_tmpdir();
    QkPlantedOpts o;
    qk_planted_default_opts(&o);
    if (windows) o.n_tokens = 64 * windows;
    cr_assert_eq(qk_planted_write(d, &o, info), 0, "%s", qk_errmsg());
    return d;
}
static inline char *make_planted_dir(int windows) { return make_planted_dir_info(windows, NULL); }

static inline void rm_rf(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

// The int32 [B, T] token windows of a corpus.npy (free with free()).
static inline int32_t *read_windows_npy(const char *path, int *B, int *T) {
    QkNpy a;
    cr_assert_eq(qk_npy_read(&a, path), 0, "%s", qk_errmsg());
    cr_assert_eq(a.ndim, 2, "%s: not [windows, tokens]", path);
    cr_assert_str_eq(a.descr, "<i4");
    *B = (int)a.shape[0], *T = (int)a.shape[1];
    int32_t *tok = qk_malloc(sizeof(int32_t) * a.numel);
    cr_assert_eq(qk_npy_to_i32(&a, tok, path), 0);
    qk_npy_free(&a);
    return tok;
}

static inline void write_bytes(const char *path, const void *data, size_t n);

// Writes the INI file `path` for the planted model in `dir` (model, both SAEs, corpus.npy in
// 64-token windows without BOS, batches of 4) followed by `rest` (more keys and sections).
static inline void write_planted_ini(const char *path, const char *dir, const char *rest) {
    size_t cap = strlen(rest) + 4 * strlen(dir) + 512;
    char *text = qk_malloc(cap);
    snprintf(text, cap,
             "[model]\ndir = %s/model\n[sae]\nlayer.0 = %s/sae/layer_0\nlayer.1 = %s/sae/layer_1\n"
             "[corpus]\npaths = %s/corpus.npy\nn_ctx = 64\nbos = false\nbatch = 4\n%s",
             dir, dir, dir, dir, rest);
    write_bytes(path, text, strlen(text));
    free(text);
}

static inline void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

// Runs a shell command made printf-style; returns its exit status (-1 if it did not exit).
static inline int shf(const char *fmt, ...) QK_PRINTF(1, 2);
static inline int shf(const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Runs `cmd` (stdout to /dev/null, stderr to DIR/err.txt) and checks: exit status `code`, stderr
// one line holding `want`, no sanitizer report.  Returns the stderr text (free it).
static inline char *expect_fail_in(const char *dir, int code, const char *want, const char *cmd) {
    char *err = qk_path_join(dir, "err.txt");
    int st = shf("%s > /dev/null 2> %s", cmd, err);
    char *text = qk_read_file(err, NULL);
    cr_assert_not_null(text);
    cr_expect_eq(st, code, "exit %d, want %d: %s\n%s", st, code, cmd, text);
    cr_expect(strstr(text, want) != NULL, "stderr lacks '%s': %s", want, text);
    const char *nl = strchr(text, '\n');
    cr_expect(nl && !nl[1], "not one line: %s", text);
    cr_expect(!strstr(text, "double free") && !strstr(text, "Sanitizer"), "%s", text);
    free(err);
    return text;
}

// Dataset NAME of FILE replaced by an int32 one of shape dims[0..nd): `v` (NULL: zeros), or with
// `unwritten` chunked and never written, so that its shape alone may be any size.
static inline void h5_replace_i32(const char *file, const char *name, int nd, const hsize_t *dims, const int32_t *v, int unwritten) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0, "%s", file);
    cr_assert_geq(H5Ldelete(f, name, H5P_DEFAULT), 0, "%s: %s", file, name);
    hid_t sp = H5Screate_simple(nd, dims, NULL), pl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t chunk[2] = {1024, 1}, n = 1;
    for (int i = 0; i < nd; i++) n *= dims[i];
    if (unwritten) cr_assert_geq(H5Pset_chunk(pl, nd, chunk), 0);
    hid_t d = H5Dcreate2(f, name, H5T_NATIVE_INT32, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    cr_assert_geq(d, 0, "%s: %s", file, name);
    if (!unwritten) {
        int32_t *zeros = v ? NULL : qk_calloc(n, 4);
        cr_assert_geq(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v ? v : zeros), 0);
        free(zeros);
    }
    H5Dclose(d), H5Pclose(pl), H5Sclose(sp), H5Fclose(f);
}

// Whether object `obj` (a dataset, or a group with everything under it) holds the same values in
// two HDF5 files: exactly, or to `rel` relative when rel > 0.  h5diff exits 0 on objects it cannot
// compare (another shape, a member missing on one side), so its report of them (-c) counts as a
// difference too.
// h5_same_objs compares object oa of fa with object ob of fb.
static inline int h5_same_objs(const char *fa, const char *oa, const char *fb, const char *ob, double rel) {
    char cmd[4096], opt[64] = "";
    if (rel > 0) snprintf(opt, sizeof opt, "-p %g", rel);
    snprintf(cmd, sizeof cmd, "h5diff -c %s '%s' '%s' '%s' '%s' 2>&1", opt, fa, fb, oa, ob);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[2048];
    int not_comparable = 0;
    while (fgets(line, sizeof line, p))
        if (strstr(line, "not comparable") || strstr(line, "Not comparable")) not_comparable = 1;
    int st = pclose(p);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 && !not_comparable;
}

static inline int h5_same(const char *fa, const char *fb, const char *obj, double rel) {
    return h5_same_objs(fa, obj, fb, obj, rel);
}

// Whether the values of two aggregates' exact sums (head_agg_sums) are bit-identical:
// same[0] the metric sums, same[1] the query marginals, same[2] the key marginals.
static inline void agg_sum_values_same(const HeadAggregates *a, const HeadAggregates *b, int same[3]) {
    double sa[N_METRICS], sb[N_METRICS];
    size_t m = (size_t)a->m;
    double *qa = qk_malloc(8 * (m + 1)), *qb = qk_malloc(8 * (m + 1)), *ka = qk_malloc(8 * (m + 1)), *kb = qk_malloc(8 * (m + 1));
    head_agg_sums(a, sa, qa, ka);
    head_agg_sums(b, sb, qb, kb);
    same[0] = !memcmp(sa, sb, sizeof sa);
    same[1] = a->m == b->m && !memcmp(qa, qb, 8 * m);
    same[2] = a->m == b->m && !memcmp(ka, kb, 8 * m);
    free(qa), free(qb), free(ka), free(kb);
}
