// test_ranks.c: multi-rank `qkscope run` (--ranks N on the CPU, --gpus on CUDA) on the planted
// demo: merged, its per-window datasets are bit-identical to a one-rank run's and its aggregates
// (reduced over the ranks, OUT/aggregates.h5) equal them to float rounding; an interrupted run
// resumed with another rank count gives the same; bad --gpus / --ranks are one line and a
// non-zero exit.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hdf5.h>

#include "io/h5out.h"
#include "test_common.h"

static char *g_dir;
static char g_sets[4096];

// The planted demo (SYNTHETIC model and SAEs) with `tokens` corpus tokens; g_sets points
// configs/demo.ini at it, with a pair sketch that is never full (so pair tables compare).
static void planted(int tokens) {
    g_dir = make_tmpdir();
    cr_assert_eq(shf(QK_BIN " planted --out %s --tokens %d -q", g_dir, tokens), 0);
    snprintf(g_sets, sizeof g_sets,
             "--set model.dir=%s/model --set sae.layer.0=%s/sae/layer_0 --set sae.layer.1=%s/sae/layer_1 "
             "--set corpus.paths=%s/corpus.npy --set analysis.sketch_capacity=1000000",
             g_dir, g_dir, g_dir, g_dir);
}

static void cleanup(void) {
    if (g_dir) rm_rf(g_dir), free(g_dir), g_dir = NULL;
}

// ---------------------------------------------------------------------------------------------
// Comparing two run files

static size_t read_all(hid_t f, const char *name, hid_t type, size_t elem, void **out) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    cr_assert_geq(d, 0, "dataset %s missing", name);
    hid_t sp = H5Dget_space(d);
    size_t n = (size_t)H5Sget_simple_extent_npoints(sp);
    *out = qk_malloc(n * elem + 1);
    cr_assert_geq(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out), 0);
    H5Sclose(sp), H5Dclose(d);
    return n;
}

typedef struct {
    uint32_t f, g;
    double w, err, sum;
    int64_t count;
} Pair;

static int by_fg(const void *a, const void *b) {
    const Pair *x = a, *y = b;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return (x->g > y->g) - (x->g < y->g);
}

// The pair table of head l.h, sorted by (f, g).
static size_t read_pairs(hid_t f, int l, int h, Pair **out) {
    char n[6][128];
    const char *names[6] = {"pairs_query_feature", "pairs_key_feature", "pairs_weight", "pairs_weight_err", "pairs_sum",
                            "pairs_count"};
    for (int q = 0; q < 6; q++) snprintf(n[q], sizeof n[q], "aggregates/%d.%d/%s", l, h, names[q]);
    uint32_t *pf, *pg;
    double *pw, *pe, *ps;
    int64_t *pc;
    size_t np = read_all(f, n[0], H5T_NATIVE_UINT32, 4, (void **)&pf);
    read_all(f, n[1], H5T_NATIVE_UINT32, 4, (void **)&pg), read_all(f, n[2], H5T_NATIVE_DOUBLE, 8, (void **)&pw);
    read_all(f, n[3], H5T_NATIVE_DOUBLE, 8, (void **)&pe), read_all(f, n[4], H5T_NATIVE_DOUBLE, 8, (void **)&ps);
    read_all(f, n[5], H5T_NATIVE_INT64, 8, (void **)&pc);
    Pair *p = qk_malloc(sizeof(Pair) * (np + 1));
    for (size_t i = 0; i < np; i++) p[i] = (Pair){pf[i], pg[i], pw[i], pe[i], ps[i], pc[i]};
    qsort(p, np, sizeof(Pair), by_fg);
    free(pf), free(pg), free(pw), free(pe), free(ps), free(pc);
    *out = p;
    return np;
}

static int near(double a, double b) { return fabs(a - b) <= 1e-9 * (fabs(a) + fabs(b)) + 1e-12; }

// Per-window datasets and dense aggregates bit-identical (exact sums); pair tables to rounding.
static void expect_same_run(const char *want_path, const char *got_path, const char *what) {
    const char *exact[] = {"/heads", "/tokens", "/length", "/provenance"};
    for (int i = 0; i < 4; i++)
        cr_expect(h5_same(want_path, got_path, exact[i], 0), "%s: %s differs", what, exact[i]);
    hid_t a = H5Fopen(want_path, H5F_ACC_RDONLY, H5P_DEFAULT), b = H5Fopen(got_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(a >= 0 && b >= 0, "%s: cannot open %s or %s", what, want_path, got_path);
    int heads = 0;
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 4; h++) {
            char grp[64];
            snprintf(grp, sizeof grp, "/aggregates/%d.%d", l, h);
            if (H5Lexists(a, grp, H5P_DEFAULT) <= 0) continue;
            heads++;
            const char *counts[] = {"metric_count", "metric_hist", "query_count", "key_count"};
            const char *sums[] = {"metric_sum", "query_marginal", "key_marginal"};
            char obj[128];
            for (int q = 0; q < 7; q++) {
                snprintf(obj, sizeof obj, "%s/%s", grp, q < 4 ? counts[q] : sums[q - 4]);
                cr_expect(h5_same(want_path, got_path, obj, 0), "%s: %s differs", what, obj);
            }
            hid_t ga = H5Gopen2(a, grp, H5P_DEFAULT), gb = H5Gopen2(b, grp, H5P_DEFAULT);
            cr_expect_eq(qk_h5_attr_read_int(ga, "queries"), qk_h5_attr_read_int(gb, "queries"), "%s: %s queries", what, grp);
            cr_expect(near(qk_h5_attr_read_double(ga, "sketch_total_weight"), qk_h5_attr_read_double(gb, "sketch_total_weight")),
                      "%s: %s sketch_total_weight", what, grp);
            H5Gclose(ga), H5Gclose(gb);
            Pair *pa, *pb;
            size_t na = read_pairs(a, l, h, &pa), nb = read_pairs(b, l, h, &pb);
            cr_expect_eq(na, nb, "%s: %s: %zu pairs vs %zu", what, grp, na, nb);
            for (size_t i = 0; i < na && na == nb; i++)
                cr_expect(pa[i].f == pb[i].f && pa[i].g == pb[i].g && pa[i].count == pb[i].count && near(pa[i].w, pb[i].w) &&
                              near(pa[i].sum, pb[i].sum) && pa[i].err == 0 && pb[i].err == 0,
                          "%s: %s pair %zu: (%u,%u) %lld %.17g vs (%u,%u) %lld %.17g", what, grp, i, pa[i].f, pa[i].g,
                          (long long)pa[i].count, pa[i].w, pb[i].f, pb[i].g, (long long)pb[i].count, pb[i].w);
            cr_expect_gt(na, 50, "%s: %s: too few pairs to compare", what, grp);
            free(pa), free(pb);
        }
    cr_expect_eq(heads, 8, "%s: aggregates of %d heads", what, heads);
    H5Fclose(a), H5Fclose(b);
}

static char *slurp(const char *path) {
    char *t = qk_read_file(path, NULL);
    return t ? t : qk_strdup("");
}

// ---------------------------------------------------------------------------------------------

// 1, 2 and 3 CPU ranks (shards of 10 windows: 13 shards, uneven over the ranks, the last one
// short) against one single-file run.
Test(ranks, cpu_ranks_merge_to_the_one_rank_run, .timeout = 300, .fini = cleanup) {
    planted(64 * 125);
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s -o %s/one.h5", g_sets, g_dir), 0);
    for (int n = 1; n <= 3; n++) {
        cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s --set output.shard_tokens=640 --ranks %d -o %s/r%d", g_sets, n,
                        g_dir, n),
                     0, "%d ranks", n);
        char path[1024], what[64];
        snprintf(path, sizeof path, "%s/r%d/manifest.json", g_dir, n);
        char *m = slurp(path);
        char want[64];
        snprintf(want, sizeof want, "\"ranks\": %d,", n);
        cr_expect(strstr(m, want) && strstr(m, "\"aggregates\": \"aggregates.h5\"") && strstr(m, "\"complete\": true") &&
                      strstr(m, "shard-000012.h5") && !strstr(m, "shard-000013.h5"),
                  "%s", m);
        free(m);
        snprintf(what, sizeof what, "%d ranks, aggregates.h5", n);
        snprintf(path, sizeof path, "%s/r%d/aggregates.h5", g_dir, n);
        char one[1024];
        snprintf(one, sizeof one, "%s/one.h5", g_dir);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        cr_assert_geq(f, 0, "%s missing", path);
        cr_expect_eq(qk_h5_attr_read_int(f, "ranks"), n);
        cr_expect_eq(qk_h5_attr_read_int(f, "windows"), 125);
        cr_expect_eq(qk_h5_attr_read_int(f, "tokens_processed"), 64 * 125);
        H5Fclose(f);
        cr_assert_eq(shf(QK_BIN " merge %s/r%d -o %s/m%d.h5 > /dev/null", g_dir, n, g_dir, n), 0);
        snprintf(path, sizeof path, "%s/m%d.h5", g_dir, n);
        snprintf(what, sizeof what, "%d ranks, merged", n);
        expect_same_run(one, path, what);
    }
}

// [corpus] max_tokens cuts the run where a one-rank run stops; [output] write = false writes
// nothing and still reduces (the summary on stdout equals the one-rank run's).
Test(ranks, max_tokens_and_no_write, .timeout = 300, .fini = cleanup) {
    planted(64 * 60);
    const char *cut = "--set corpus.max_tokens=1500 --set corpus.batch=3";
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s %s -o %s/one.h5", g_sets, cut, g_dir), 0);
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s %s --set output.shard_tokens=320 --ranks 2 -o %s/r2 && "
                    QK_BIN " merge %s/r2 -o %s/m2.h5 > /dev/null",
                    g_sets, cut, g_dir, g_dir, g_dir),
                 0);
    char one[1024], m2[1024];
    snprintf(one, sizeof one, "%s/one.h5", g_dir), snprintf(m2, sizeof m2, "%s/m2.h5", g_dir);
    expect_same_run(one, m2, "max_tokens, 2 ranks");
    // The summary tables printed by each: same numbers.
    cr_assert_eq(shf(QK_BIN " run configs/demo.ini %s %s --set output.write=false -o %s/x.h5 > %s/s1.txt 2>/dev/null", g_sets,
                    cut, g_dir, g_dir),
                 0);
    cr_assert_eq(shf(QK_BIN " run configs/demo.ini %s %s --set output.write=false --ranks 3 -o %s/nw > %s/s3.txt 2>/dev/null",
                    g_sets, cut, g_dir, g_dir),
                 0);
    cr_expect_eq(shf("cmp -s %s/s1.txt %s/s3.txt", g_dir, g_dir), 0, "the summaries differ");
    cr_expect_eq(shf("test -s %s/s3.txt && test ! -e %s/nw && test ! -e %s/x.h5", g_dir, g_dir, g_dir), 0);
}

// SIGUSR1 while two ranks run: complete shards kept, exit 75; --resume with three ranks finishes,
// and the merge equals one uninterrupted run.
Test(ranks, interrupted_then_resumed_with_other_rank_count, .timeout = 300, .fini = cleanup) {
    planted(64 * 400);
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s -o %s/one.h5", g_sets, g_dir), 0);
    char out[1024], probe[1100], cfg_sets[4200];
    snprintf(out, sizeof out, "%s/b", g_dir);
    snprintf(cfg_sets, sizeof cfg_sets, "%s --set output.shard_tokens=640", g_sets);
    pid_t pid = fork();
    if (pid == 0) {
        char cmd[16384];
        snprintf(cmd, sizeof cmd, "exec " QK_BIN " run -q configs/demo.ini %s --ranks 2 -o %s", cfg_sets, out);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    snprintf(probe, sizeof probe, "%s/shard-000002.h5", out);
    for (int i = 0; i < 6000 && !qk_file_exists(probe); i++) usleep(5000);
    kill(pid, SIGUSR1);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st));
    snprintf(probe, sizeof probe, "%s/shard-000039.h5", out);
    cr_assert(WEXITSTATUS(st) == 75 && !qk_file_exists(probe), "exit %d: the signal came too late to test an interruption",
              WEXITSTATUS(st));
    snprintf(probe, sizeof probe, "%s/manifest.json", out);
    char *m = slurp(probe);
    cr_expect(strstr(m, "\"complete\": false") && strstr(m, "\"ranks\": 2") && !strstr(m, "aggregates.h5"), "%s", m);
    free(m);
    cr_expect_eq(shf("ls %s | grep -q tmp", out), 1, "a .tmp shard was left behind");
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s --ranks 3 --resume -o %s", cfg_sets, out), 0);
    cr_assert_eq(shf(QK_BIN " merge %s -o %s/merged.h5 > /dev/null", out, g_dir), 0);
    char one[1024], merged[1024];
    snprintf(one, sizeof one, "%s/one.h5", g_dir), snprintf(merged, sizeof merged, "%s/merged.h5", g_dir);
    expect_same_run(one, merged, "interrupted, resumed with 3 ranks");
}

// merge refuses a multi-rank run whose aggregates.h5 is missing (nothing silently summed short).
Test(ranks, merge_refuses_missing_aggregates, .timeout = 120, .fini = cleanup) {
    planted(64 * 20);
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s --set output.shard_tokens=640 --ranks 2 -o %s/r && "
                    "mv %s/r/aggregates.h5 %s/away.h5",
                    g_sets, g_dir, g_dir, g_dir),
                 0);
    cr_expect_eq(shf(QK_BIN " merge %s/r -o %s/m.h5 2> %s/err.txt", g_dir, g_dir, g_dir), 1);
    char p[1024];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = slurp(p);
    cr_expect(strstr(err, "aggregates.h5: aggregates missing or unreadable; refusing to merge") != NULL, "%s", err);
    free(err);
}

// Bad --gpus / --ranks: one line on stderr naming the problem, non-zero exit, nothing written.
Test(ranks, bad_rank_options_are_one_line, .timeout = 60, .fini = cleanup) {
    planted(64 * 4);
    char why[256];
    int gpus = qk_cuda_probe(why, sizeof why);
    struct {
        const char *args, *says;
        int code;
    } cases[] = {
        {"--gpus 0,0", "device 0 listed twice", 2},
        {"--gpus 1,x", "'x' is not a device ordinal", 2},
        {"--gpus two", "expected all, a GPU count N", 2},
        {"--ranks 0", "--ranks '0': expected a rank count", 2},
        {"--ranks 2 --gpus 1", "--gpus and --ranks exclude each other", 2},
        {"--gpus 4097", "expected all, a GPU count N", 2},
        {"--gpus 64", gpus > 0 ? "but only" : "no usable CUDA device", 1},
        {"--gpus 63,", gpus > 0 ? "but only" : "no usable CUDA device", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int code = shf(QK_BIN " run -q configs/demo.ini %s %s -o %s/out 2> %s/err.txt", g_sets, cases[i].args, g_dir, g_dir);
        char p[1024];
        snprintf(p, sizeof p, "%s/err.txt", g_dir);
        char *err = slurp(p);
        char *nl = strchr(err, '\n');
        cr_expect_eq(code, cases[i].code, "%s: exit %d", cases[i].args, code);
        cr_expect(strstr(err, cases[i].says) && nl && !nl[1], "%s: stderr is not the one line expected: %s", cases[i].args, err);
        free(err);
        snprintf(p, sizeof p, "%s/out", g_dir);
        cr_expect(!qk_file_exists(p), "%s: wrote %s", cases[i].args, p);
    }
}

// The GPU suite (make test-gpu): --gpus 1 (and every GPU when there are more) against a one-GPU
// single-file run: per-window records identical, aggregates to rounding.  Shards of two batches,
// so every window goes through the GPU in a batch of the same shape as in the one-file run
// (cuBLAS may pick its kernels by shape).
Test(ranks, gpus_merge_to_the_one_gpu_run, .timeout = 600, .fini = cleanup) {
    const int gpus = test_cuda_gpus("--gpus");
    planted(TEST_GPU_ROWS(64 * 125, 64 * 40));  // shards of 1024 tokens: several either way
    cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s --set run.backend=cuda -o %s/one.h5", g_sets, g_dir), 0);
    const char *specs[2] = {"1", "all"};
    for (int i = 0; i < (gpus > 1 ? 2 : 1); i++) {
        cr_assert_eq(shf(QK_BIN " run -q configs/demo.ini %s --set output.shard_tokens=1024 --gpus %s -o %s/g%d && "
                        QK_BIN " merge %s/g%d -o %s/m%d.h5 > /dev/null",
                        g_sets, specs[i], g_dir, i, g_dir, i, g_dir, i),
                     0, "--gpus %s", specs[i]);
        char one[1024], m[1024], what[64];
        snprintf(one, sizeof one, "%s/one.h5", g_dir), snprintf(m, sizeof m, "%s/m%d.h5", g_dir, i);
        snprintf(what, sizeof what, "--gpus %s", specs[i]);
        expect_same_run(one, m, what);
    }
}
