// test_run.c: `qkscope run` and `qkscope static` end to end on the planted-circuit model: both
// rank every planted (query feature, key feature) pair first for its head, the metrics show it,
// the file is complete and self-describing, and bad configs fail cleanly with no output.
#include <hdf5_hl.h>
#include <stdarg.h>
#include <sys/wait.h>

#include "base/cpu_features.h"
#include "io/agg_io.h"
#include "model/planted.h"
#include "test_common.h"

static char *g_dir;
static QkPlanted g_info;

static void setup(void) { g_dir = make_planted_dir_info(0, &g_info); }
static void teardown(void) { rm_rf(g_dir); free(g_dir); }
TestSuite(run, .init = setup, .fini = teardown);

// Writes DIR/NAME.ini for the planted model with `extra` appended (INI text); returns the path.
static char *write_config(const char *name, const char *extra) {
    char text[4096], *path = qk_malloc(600);
    snprintf(path, 600, "%s/%s.ini", g_dir, name);
    snprintf(text, sizeof text,
             "[analysis]\nheads = all\nrecord_heads = 0.1,1.2\nk = 8\na = 2\np = 4\nencoder = true\nstatic_k = 4\n"
             "[run]\nbackend = cpu\n%s",
             extra);
    write_planted_ini(path, g_dir, text);
    return path;
}

static void *read_all(hid_t f, const char *name, hid_t type, size_t elem, size_t *n) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    cr_assert(d >= 0, "dataset %s missing", name);
    hid_t sp = H5Dget_space(d);
    *n = (size_t)H5Sget_simple_extent_npoints(sp);
    void *buf = qk_malloc(*n * elem + 1);
    cr_assert(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(sp), H5Dclose(d);
    return buf;
}

static int64_t attr_int(hid_t obj, const char *name) {
    int64_t v = -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    cr_assert(a >= 0, "attribute %s missing", name);
    H5Aread(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    return v;
}

static int is_planted(int l, int h) {
    for (int c = 0; c < g_info.n_circuits; c++)
        if (g_info.circuits[c].layer == l && g_info.circuits[c].head == h) return 1;
    return 0;
}

Test(run, planted_circuits_found_by_run_and_static) {
    char *cfg = write_config("run", "");
    cr_assert_eq(shf(QK_BIN " run -q %s -o %s/run.h5", cfg, g_dir), 0);
    cr_assert_eq(shf(QK_BIN " static -q %s -o %s/static.h5", cfg, g_dir), 0);
    char path[700];
    snprintf(path, sizeof path, "%s/run.h5", g_dir);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    snprintf(path, sizeof path, "%s/static.h5", g_dir);
    hid_t fs = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0 && fs >= 0);
    cr_expect_eq(attr_int(f, "complete"), 1);
    cr_expect_eq(attr_int(f, "format_version"), 1);
    cr_expect_eq(attr_int(f, "tokens_processed"), (int64_t)g_info.n_windows * g_info.n_ctx);
    cr_expect_eq(attr_int(fs, "complete"), 1);
    double planted_weight_min = INFINITY, null_weight_max = 0;
    for (int l = 0; l < g_info.n_layer; l++)
        for (int h = 0; h < g_info.n_head; h++) {
            char name[128];
            size_t n;
            snprintf(name, sizeof name, "aggregates/%d.%d/pairs_weight", l, h);
            double *w = read_all(f, name, H5T_NATIVE_DOUBLE, 8, &n);
            snprintf(name, sizeof name, "aggregates/%d.%d/metric_mean", l, h);
            double *mean = read_all(f, name, H5T_NATIVE_DOUBLE, 8, &n);
            if (is_planted(l, h)) {
                planted_weight_min = fmin(planted_weight_min, w[0]);
                cr_expect_geq(mean[3], 0.9, "head %d.%d top1 %g", l, h, mean[3]);      // top1
                cr_expect_leq(mean[5], 0.1, "head %d.%d error share %g", l, h, mean[5]);  // error_share
            } else
                null_weight_max = fmax(null_weight_max, w[0]);
            free(w), free(mean);
        }
    // The planted heads' heaviest pairs carry far more than anything a null head has.
    cr_expect_gt(planted_weight_min, 10 * null_weight_max, "planted %g vs null %g", planted_weight_min, null_weight_max);
    for (int c = 0; c < g_info.n_circuits; c++) {
        const QkPlantedCircuit *pc = &g_info.circuits[c];
        char name[128];
        size_t n;
        snprintf(name, sizeof name, "aggregates/%d.%d/pairs_query_feature", pc->layer, pc->head);
        uint32_t *pf = read_all(f, name, H5T_NATIVE_UINT32, 4, &n);
        snprintf(name, sizeof name, "aggregates/%d.%d/pairs_key_feature", pc->layer, pc->head);
        uint32_t *pg = read_all(f, name, H5T_NATIVE_UINT32, 4, &n);
        cr_expect(pf[0] == (uint32_t)pc->query_feature && pg[0] == (uint32_t)pc->key_feature,
                  "run: head %d.%d heaviest pair %u -> %u, planted %d -> %d", pc->layer, pc->head, pf[0], pg[0],
                  pc->query_feature, pc->key_feature);
        snprintf(name, sizeof name, "static/%d.%d/q2k_idx", pc->layer, pc->head);
        uint32_t *q2k = read_all(fs, name, H5T_NATIVE_UINT32, 4, &n);
        snprintf(name, sizeof name, "static/%d.%d/k2q_idx", pc->layer, pc->head);
        uint32_t *k2q = read_all(fs, name, H5T_NATIVE_UINT32, 4, &n);
        cr_expect_eq(q2k[(size_t)pc->query_feature * 4], (uint32_t)pc->key_feature, "static q2k of %d.%d", pc->layer, pc->head);
        cr_expect_eq(k2q[(size_t)pc->key_feature * 4], (uint32_t)pc->query_feature, "static k2q of %d.%d", pc->layer, pc->head);
        free(pf), free(pg), free(q2k), free(k2q);
    }
    // Records exist only for the recorded heads, with labelled dimensions.
    cr_expect(H5Lexists(f, "heads/0.1", H5P_DEFAULT) > 0 && H5Lexists(f, "heads/1.2", H5P_DEFAULT) > 0);
    cr_expect(H5Lexists(f, "heads/1.0", H5P_DEFAULT) == 0);
    hid_t d = H5Dopen2(f, "heads/0.1/pair_value", H5P_DEFAULT);
    char label[32] = "";
    H5DSget_label(d, 2, label, sizeof label);
    cr_expect_str_eq(label, "attended");
    H5Dclose(d);
    H5Fclose(f), H5Fclose(fs);
    free(cfg);
}

// Same config at 1 and 2 threads and batch 4 vs 8: bit-identical records and aggregates.
Test(run, deterministic_across_threads_and_batches) {
    char *a = write_config("a", "threads = 1\n"), *b = write_config("b", "threads = 2\n");
    cr_assert_eq(shf(QK_BIN " run -q %s -o %s/a.h5", a, g_dir), 0);
    cr_assert_eq(shf(QK_BIN " run -q %s --set corpus.batch=8 -o %s/b.h5", b, g_dir), 0);
    const char *objs[] = {"/heads", "/aggregates", "/summary", "/tokens", "/provenance"};
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/a.h5", g_dir);
    snprintf(pb, sizeof pb, "%s/b.h5", g_dir);
    for (int i = 0; i < 5; i++)
        cr_expect(h5_same(pa, pb, objs[i], 0), "%s differs", objs[i]);
    free(a), free(b);
}

// A backend that holds the dense aggregates back until QkBackend.analysis_flush (the CUDA backend
// keeps them on the device) and hands a batch's records, sketch and examples over a batch late
// (the CUDA backend's pipeline) writes the same files: the pipeline flushes wherever it reads them
// and before a shard's records are closed.  QK_AGG_DEFER=1 makes the CPU backend behave so: a
// single file, shards, two ranks (shards and aggregates.h5) and the summary of a run that writes
// nothing, each against the plain run.
Test(run, held_back_aggregates_are_flushed_wherever_they_are_read, .timeout = 240) {
    char *c = write_config("defer", "threads = 2\n");
    const char *modes[2] = {"", "QK_AGG_DEFER=1 "}, *tag[2] = {"plain", "defer"};
    for (int q = 0; q < 2; q++) {
        cr_assert_eq(shf("%s" QK_BIN " run -q %s -o %s/%s.h5", modes[q], c, g_dir, tag[q]), 0, "%s", tag[q]);
        cr_assert_eq(shf("%s" QK_BIN " run -q %s --set output.shard_tokens=1024 -o %s/%s_shards", modes[q], c, g_dir,
                         tag[q]), 0, "%s shards", tag[q]);
        cr_assert_eq(shf("%s" QK_BIN " run -q %s --set output.shard_tokens=1024 --ranks 2 -o %s/%s_ranks", modes[q], c,
                         g_dir, tag[q]), 0, "%s ranks", tag[q]);
        cr_assert_eq(shf("%s" QK_BIN " run %s --set output.write=false -o %s/%s_nw.h5 > %s/%s_summary.txt 2>/dev/null",
                         modes[q], c, g_dir, tag[q], g_dir, tag[q]), 0, "%s no-write", tag[q]);
    }
    const char *files[] = {"%s.h5", "%s_shards/shard-000000.h5", "%s_shards/shard-000003.h5",
                           "%s_ranks/shard-000001.h5"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char name[64], pa[700], pb[700];
        snprintf(name, sizeof name, files[i], "plain");
        snprintf(pa, sizeof pa, "%s/%s", g_dir, name);
        snprintf(name, sizeof name, files[i], "defer");
        snprintf(pb, sizeof pb, "%s/%s", g_dir, name);
        cr_expect(h5_same(pa, pb, "/aggregates", 0), "%s: the aggregates differ with QK_AGG_DEFER=1", pb);
        // records arrive a batch late with QK_AGG_DEFER=1: every one before the shard closes
        cr_expect(h5_same(pa, pb, "/heads", 0), "%s: the records differ with QK_AGG_DEFER=1", pb);
        cr_expect(h5_same(pa, pb, "/tokens", 0), "%s: the tokens differ with QK_AGG_DEFER=1", pb);
    }
    // The ranks' reduced aggregates.h5 (no examples there: h5diff cannot compare empty datasets):
    // every dense field of every head, read back, equal as integers.
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/plain_ranks/aggregates.h5", g_dir);
    snprintf(pb, sizeof pb, "%s/defer_ranks/aggregates.h5", g_dir);
    hid_t fa = H5Fopen(pa, H5F_ACC_RDONLY, H5P_DEFAULT), fb = H5Fopen(pb, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(fa >= 0 && fb >= 0);
    for (int l = 0; l < g_info.n_layer; l++)
        for (int h = 0; h < g_info.n_head; h++) {
            HeadAggregates x, y;
            head_agg_init(&x, g_info.d_sae, 16), head_agg_init(&y, g_info.d_sae, 16);
            cr_assert_eq(agg_read_add(fa, pa, l, h, &x), 0, "%s", qk_errmsg());
            cr_assert_eq(agg_read_add(fb, pb, l, h, &y), 0, "%s", qk_errmsg());
            HeadAggFields u, v;
            head_agg_fields(&x, &u), head_agg_fields(&y, &v);
            cr_expect_gt(x.queries, 0, "head %d.%d counted no query", l, h);
            for (int q = 0; q < HEAD_AGG_I64; q++)
                cr_expect(!memcmp(u.i64[q], v.i64[q], u.n_i64[q] * 8), "aggregates.h5: head %d.%d field %d differs with "
                          "QK_AGG_DEFER=1", l, h, q);
            head_agg_free(&x), head_agg_free(&y);
        }
    H5Fclose(fa), H5Fclose(fb);
    cr_expect_eq(shf("grep -q '^' %s/plain_summary.txt && cmp -s %s/plain_summary.txt %s/defer_summary.txt", g_dir, g_dir,
                     g_dir), 0, "the summary of a run that writes nothing differs with QK_AGG_DEFER=1");
    free(c);
}

// The AVX-512 paths (taken at run time where the CPU has them) and the AVX2 ones write the same
// file, bit for bit: the default build runs on both kinds of node of a cluster.
Test(run, avx512_and_avx2_paths_write_the_same_file) {
    unsetenv("QK_ISA");
    qk_cpu_reload();
    if (!qk_cpu_avx512()) cr_skip_test("this CPU has no AVX-512: only the AVX2 path exists here");
    char *a = write_config("isa", "threads = 2\n");
    cr_assert_eq(shf(QK_BIN " run -q %s -o %s/isa_auto.h5", a, g_dir), 0);
    cr_assert_eq(shf("QK_ISA=avx2 " QK_BIN " run -q %s -o %s/isa_avx2.h5", a, g_dir), 0);
    const char *objs[] = {"/heads", "/aggregates", "/summary"};
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/isa_auto.h5", g_dir);
    snprintf(pb, sizeof pb, "%s/isa_avx2.h5", g_dir);
    for (int i = 0; i < 3; i++) cr_expect(h5_same(pa, pb, objs[i], 0), "%s differs between AVX-512 and AVX2", objs[i]);
    free(a);
}

// A bad config: one line naming the file, line and key; exit 1; nothing left that looks complete.
static void expect_failure(const char *cfg, const char *sets, const char *out, const char *what) {
    int rc = shf(QK_BIN " run -q %s %s -o %s 2> %s/err.txt", cfg, sets, out, g_dir);
    cr_expect_eq(rc, 1, "%s", what);
    char p[700];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = qk_read_file(p, NULL);
    cr_expect(strstr(err, what) != NULL, "stderr lacks '%s': %s", what, err);
    free(err);
    cr_expect(!qk_file_exists(out), "%s exists", out);
    snprintf(p, sizeof p, "%s.tmp", out);
    cr_expect(!qk_file_exists(p), "%s exists", p);
}

Test(run, bad_configs_fail_cleanly) {
    char out[600];
    snprintf(out, sizeof out, "%s/bad.h5", g_dir);
    char *c1 = write_config("unknown", "colour = blue\n");
    expect_failure(c1, "", out, "unknown.ini:21: unknown key 'colour' in section [run]");
    char *c2 = write_config("badval", "");
    expect_failure(c2, "--set analysis.k=zero", out, "--set analysis.k: [analysis] k = 'zero': expected an integer");
    expect_failure(c2, "--set sae.layer.1=none --set analysis.heads=1.2", out, "head 1.x is analysed but [sae] has no layer.1");
    expect_failure(c2, "--set sae.layer.1=tests/reference/data/sae/topk_ln_bdec", out,
                   "key 'd_in': 80 does not match the model's d_model 64");
    expect_failure(c2, "--set analysis.heads=7.1", out, "'7.1' is not a head");
    expect_failure(c2, "", "/nonexistent-dir/out.h5", "/nonexistent-dir/out.h5.tmp: cannot write the output");
    free(c1), free(c2);
}

// With heads = all and no SAE for layer 0, layer 0 is skipped with a notice (SPEC §3).
Test(run, layer_without_sae_is_skipped_when_all_heads) {
    char *c = write_config("skip", "");
    cr_assert_eq(shf(QK_BIN " run %s --set sae.layer.0=none --set analysis.record_heads=1.0 -o %s/s.h5 > /dev/null 2> %s/err.txt",
                    c, g_dir, g_dir),
                 0);
    char p[700];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = qk_read_file(p, NULL);
    cr_expect(strstr(err, "layer 0 skipped: no SAE for blocks.0.hook_resid_pre") != NULL, "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/s.h5", g_dir);
    hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_expect(H5Lexists(f, "aggregates/0.1", H5P_DEFAULT) == 0 && H5Lexists(f, "aggregates/1.1", H5P_DEFAULT) > 0);
    H5Fclose(f);
    free(c);
}

// qkscope info describes a run file, a model folder and an SAE folder; a bad path is an error.
Test(run, info_describes_files_and_folders) {
    char *cfg = write_config("info", "");
    cr_assert_eq(shf(QK_BIN " run -q %s -o %s/info.h5", cfg, g_dir), 0);
    cr_expect_eq(shf(QK_BIN " info %s/info.h5 > %s/i1.txt && " QK_BIN " info %s/model > %s/i2.txt && "
                    QK_BIN " info %s/sae/layer_1 > %s/i3.txt", g_dir, g_dir, g_dir, g_dir, g_dir, g_dir), 0);
    const char *want[3][2] = {{"i1.txt", "qkscope-run"}, {"i2.txt", "GPT-2 model, 2 layers x 4 heads"},
                              {"i3.txt", "hook blocks.1.hook_resid_pre"}};
    for (int i = 0; i < 3; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/%s", g_dir, want[i][0]);
        char *t = qk_read_file(p, NULL);
        cr_expect(t && strstr(t, want[i][1]), "%s lacks '%s': %s", want[i][0], want[i][1], t ? t : "");
        free(t);
    }
    cr_expect_eq(shf(QK_BIN " info %s/nothing-here 2>/dev/null", g_dir), 1);
    free(cfg);
}
