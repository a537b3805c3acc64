// test_robust.c: the CLI on inputs and situations a careful user meets by mistake (issue 13):
// bad token files, outputs that cannot or must not be written (checked before any work), a model
// that overflows to non-finite activations, an empty corpus folder, Ctrl-C on a single-file run.
// Every failure is one line naming the file and the field, a non-zero exit, nothing left behind.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/h5out.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/planted.h"
#include "test_common.h"

static char *g_dir;

static void setup(void) { g_dir = make_planted_dir(160); }
static void teardown(void) { rm_rf(g_dir); free(g_dir); }
TestSuite(robust, .init = setup, .fini = teardown);

#define TINY REF_DIR "/gpt2_tiny_a"

// DIR/NAME as a fresh string.
static char *at(const char *name) { return qk_path_join(g_dir, name); }

// The planted model's run config, with `extra` INI lines; returns its path.
static char *write_config(const char *extra) {
    char text[4096], *path = at("run.ini");
    snprintf(text, sizeof text, "[analysis]\nrecord_heads = 1.3\nk = 8\np = 4\n[run]\nbackend = cpu\nthreads = 1\n%s", extra);
    write_planted_ini(path, g_dir, text);
    return path;
}

// The backend a test's run uses: QK_BACKEND (make test-gpu, scripts/gpu.sh: cuda), else the CPU.
static const char *run_backend(void) {
    const char *b = getenv("QK_BACKEND");
    b = b && *b ? b : "cpu";
    if (!strcmp(b, "cuda")) test_cuda_gpus("QK_BACKEND=cuda");
    return b;
}

// expect_fail_in (test_common.h) in the suite's folder.
static char *expect_fail(int code, const char *want, const char *cmd) { return expect_fail_in(g_dir, code, want, cmd); }

static void write_npy(const char *name, const char *descr, const void *data, int64_t n) {
    char *p = at(name);
    cr_assert_eq(qk_npy_write(p, descr, 1, &n, data), 0, "%s", qk_errmsg());
    free(p);
}

// A float32 .npy or int64 ids >= 2^31: a clean error naming the file and the field (it was a
// double free that lost the message), and no output.
Test(robust, cache_refuses_float_and_huge_token_ids) {
    float f[3] = {1, 2, 3};
    int64_t big[3] = {1, 2, (int64_t)1 << 31};
    write_npy("f32.npy", "<f4", f, 3);
    write_npy("i64.npy", "<i8", big, 3);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, QK_BIN " cache -q --backend cpu --model " TINY " --tokens %s/f32.npy -o %s/c.h5", g_dir, g_dir);
    free(expect_fail(1, "f32.npy: npy 'descr' <f4: token ids must be integers", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " cache -q --backend cpu --model " TINY " --tokens %s/i64.npy -o %s/c.h5", g_dir, g_dir);
    free(expect_fail(1, "i64.npy: npy element 2: value 2147483648 is outside the int32 range", cmd));
    char *out = at("c.h5"), *tmp = at("c.h5.tmp");
    cr_expect(!qk_file_exists(out) && !qk_file_exists(tmp));
    free(out), free(tmp);
}

// --hooks '' selects nothing: an error, not an empty file with exit 0.
Test(robust, cache_with_no_hook_is_an_error) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, QK_BIN " cache -q --backend cpu --model " TINY " --tokens " TINY "/tokens.txt --hooks '' -o %s/c.h5",
             g_dir);
    free(expect_fail(2, "--hooks '' names no hook and there is no --sae: nothing to write", cmd));
    char *out = at("c.h5");
    cr_expect(!qk_file_exists(out));
    free(out);
}

// -o is checked before any work: a folder, an input file that is not HDF5 (left untouched), a
// place that cannot be written.  Every command that writes.
Test(robust, outputs_are_checked_before_any_work, .timeout = 120) {
    char *cfg = write_config(""), *ini = at("keep.ini"), *sub = at("sub"), cmd[4096];
    write_bytes(ini, "[model]\n", 8);
    cr_assert_eq(mkdir(sub, 0777), 0);
    const char *bad[3][2] = {{"sub", "is a folder"}, {"keep.ini", "exists and is not an HDF5 file"},
                             {"missing/x.h5", "missing/x.h5.tmp: cannot write the output: No such file or directory"}};
    for (int i = 0; i < 3; i++) {
        char out[700];
        snprintf(out, sizeof out, "%s/%s", g_dir, bad[i][0]);
        snprintf(cmd, sizeof cmd, QK_BIN " run %s -o %s", cfg, out);
        char *err = expect_fail(1, bad[i][1], cmd);
        cr_expect(!strstr(err, "tokens/s"), "the analysis ran before the output was checked: %s", err);
        free(err);
        snprintf(cmd, sizeof cmd, QK_BIN " static -q %s -o %s", cfg, out);
        free(expect_fail(1, bad[i][1], cmd));
        snprintf(cmd, sizeof cmd, QK_BIN " cache -q --backend cpu --model " TINY " --tokens " TINY "/tokens.txt -o %s", out);
        free(expect_fail(1, bad[i][1], cmd));
        snprintf(cmd, sizeof cmd, QK_BIN " merge %s -o %s", g_dir, out);
        free(expect_fail(1, bad[i][1], cmd));
    }
    char *text = qk_read_file(ini, NULL);
    cr_expect_str_eq(text, "[model]\n", "the config was overwritten");
    free(text);
    // Folders: a file where a folder goes; a folder whose parent is missing.
    snprintf(cmd, sizeof cmd, QK_BIN " run %s --set output.shard_tokens=1280 -o %s", cfg, ini);
    free(expect_fail(1, "keep.ini: exists and is not a folder", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " run %s --ranks 2 -o %s", cfg, ini);
    free(expect_fail(1, "keep.ini: exists and is not a folder", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " planted -q --out %s", ini);
    free(expect_fail(1, "keep.ini: exists and is not a folder", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " random -q --out %s/missing/r", g_dir);
    free(expect_fail(1, "its parent is not an existing folder", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " submit %s --dry-run -o %s", cfg, ini);
    free(expect_fail(1, "keep.ini: exists and is not a folder", cmd));
    // tokenize: -o naming its own input.
    snprintf(cmd, sizeof cmd, QK_BIN " tokenize --vocab ../shared/data/gpt2 %s -o %s", ini, ini);
    free(expect_fail(1, "-o names the input", cmd));
    text = qk_read_file(ini, NULL);
    cr_expect_str_eq(text, "[model]\n");
    free(text);
    // report: -o naming its input (through another name), or any HDF5 file (a run, a static file).
    char link[700], h5[700];
    snprintf(link, sizeof link, "%s/keep-link.ini", g_dir);
    cr_assert_eq(symlink(ini, link), 0);
    snprintf(cmd, sizeof cmd, QK_BIN " report %s -o %s", ini, link);
    free(expect_fail(1, "-o names the input", cmd));
    snprintf(h5, sizeof h5, "%s/other.h5", g_dir);
    hid_t f = H5Fcreate(h5, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert(f >= 0);
    H5Fclose(f);
    snprintf(cmd, sizeof cmd, QK_BIN " report %s -o %s", ini, h5);
    free(expect_fail(1, "other.h5: exists and is an HDF5 file", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " tokenize --vocab ../shared/data/gpt2 %s -o %s", ini, h5);
    free(expect_fail(1, "other.h5: exists and is an HDF5 file", cmd));
    cr_expect(H5Fis_hdf5(h5) > 0, "the HDF5 file was overwritten");
    text = qk_read_file(ini, NULL);
    cr_expect_str_eq(text, "[model]\n");
    free(text), free(cfg), free(ini), free(sub);
}

// Overwrites float32 element `index` of tensor `name` in the safetensors file `path`.
static void poke_f32(const char *path, const char *name, size_t index, float v) {
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, path), 0, "%s", qk_errmsg());
    const QkTensorInfo *t = qk_st_find(&st, name);
    cr_assert(t && t->dtype == QK_DT_F32 && index < t->numel);
    long off = (long)(st.data_start + t->begin + 4 * index);
    qk_st_close(&st);
    FILE *f = fopen(path, "r+b");
    cr_assert(f && fseek(f, off, SEEK_SET) == 0 && fwrite(&v, 4, 1, f) == 1);
    fclose(f);
}

// Finite weights that overflow: both projection biases of layer 0 at 3e38 make layer 1's residual
// stream +inf.  The run stops naming layer and window, and writes nothing: no aggregate of
// -9e18 or NaN.
Test(robust, non_finite_activations_stop_the_run, .timeout = 120) {
    char *st = at("model/model.safetensors"), *cfg = write_config(""), cmd[2048];
    poke_f32(st, "h.0.attn.c_proj.bias", 0, 3e38f);
    poke_f32(st, "h.0.mlp.c_proj.bias", 0, 3e38f);
    // the backend under test (CUDA: the device analysis's own check, kernels/model/finite_check.cu)
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s --set run.backend=%s -o %s/r.h5", cfg, run_backend(), g_dir);
    free(expect_fail(1, "layer 1, window 0 of the batch, position 0: non-finite resid_pre", cmd));
    char *out = at("r.h5"), *tmp = at("r.h5.tmp");
    cr_expect(!qk_file_exists(out) && !qk_file_exists(tmp));
    free(out), free(tmp), free(st), free(cfg);
}

// A NaN weight: refused when the model is loaded, naming the tensor (it gave exit 0 and garbage).
Test(robust, nan_weight_is_refused_naming_the_tensor) {
    char *st = at("model/model.safetensors"), cmd[2048];
    poke_f32(st, "h.0.attn.c_attn.weight", 0, NAN);
    snprintf(cmd, sizeof cmd, QK_BIN " info %s/model", g_dir);
    free(expect_fail(1, "tensor 'h.0.attn.c_attn.weight' element 0 is NaN: weights must be finite", cmd));
    free(st);
}

// An empty folder as the corpus: one clear line (it was qsort(NULL, 0), undefined behaviour).
Test(robust, empty_corpus_folder_is_a_clear_error) {
    char *empty = at("empty"), *cfg = write_config(""), cmd[2048];
    cr_assert_eq(mkdir(empty, 0777), 0);
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s --set corpus.paths=%s -o %s/r.h5", cfg, empty, g_dir);
    free(expect_fail(1, "empty: no corpus files found (an empty directory?", cmd));
    free(empty), free(cfg);
}

// Ctrl-C on an interactive single-file run: a message that fits (no requeue or --resume, since a
// single file keeps nothing), exit 130 (128 + SIGINT), no NAME.tmp.  A second signal right after
// the first exits at once and leaves no NAME.tmp either.
static void interrupt_single_file(int twice) {
    char *cfg = write_config(""), *out = at("r.h5"), *tmp = at("r.h5.tmp"), *log = at("log.txt");
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stderr);
        (void)f;
        execl(QK_BIN, "qkscope", "run", cfg, "-o", out, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 6000 && !qk_file_exists(tmp); i++) usleep(5000);  // the analysis is under way
    usleep(50000);
    kill(pid, SIGINT);
    if (twice) kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    char *text = qk_read_file(log, NULL);
    // (Two signals may reach two threads in either order: 128 + whichever came first.)
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    cr_assert(code == 130 || (twice && code == 128 + SIGTERM), "exit %d: %s", code, text);
    cr_expect(!qk_file_exists(tmp) && !qk_file_exists(out), "%s left behind", tmp);
    if (!twice) {
        cr_expect(strstr(text, "interrupted by signal 2") && strstr(text, "nothing written") && strstr(text, "exit 130"),
                  "%s", text);
        cr_expect(!strstr(text, "--resume") && !strstr(text, "requeue"), "%s", text);
    }
    free(text), free(cfg), free(out), free(tmp), free(log);
}
Test(robust, ctrl_c_on_a_single_file_run, .timeout = 120) { interrupt_single_file(0); }
Test(robust, second_signal_leaves_no_tmp, .timeout = 120) { interrupt_single_file(1); }

// plan.json and manifest.json are read with every field checked: a huge task count is an error
// naming the field, not a loop over two billion parts.
Test(robust, status_and_merge_check_plan_and_manifest, .timeout = 60) {
    char *plan = at("plan.json"), *man = at("manifest.json"), cmd[2048];
    const char *p = "{\"format\": \"qkscope-plan\", \"tasks\": 1e12}";
    write_bytes(plan, p, strlen(p));
    snprintf(cmd, sizeof cmd, QK_BIN " status %s", g_dir);
    free(expect_fail(1, "plan.json: field 'tasks' must be an integer in [1, 100000]", cmd));
    remove(plan);
    const char *m = "{\"config_hash\": \"0000000000000000000000000000000000000000000000000000000000000000\", "
                    "\"complete\": true, \"shards\": [\"..\"]}";
    write_bytes(man, m, strlen(m));
    snprintf(cmd, sizeof cmd, QK_BIN " merge %s -o %s/all.h5", g_dir, g_dir);
    free(expect_fail(1, "manifest.json: shards[0] is not a file name", cmd));
    free(plan), free(man);
}

// Integer options: the whole argument, decimal, in range; nothing a lenient strtol would take
// (empty, blanks, '+', trailing text, overflow) sets a value.  `random --seed ''` was seed 0.
Test(robust, integer_options_take_whole_decimals) {
    int64_t v = 77;
    const char *bad[] = {"", " 5", "+5", "5 ", "12x", "0x10", "-", "99999999999999999999", "-9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_expect_eq(qk_parse_int64(bad[i], -5, 1000, &v), -1, "'%s' taken", bad[i]);
        cr_expect_eq(v, 77, "'%s' set a value", bad[i]);
    }
    cr_expect_eq(qk_parse_int64("1000", -5, 1000, &v), 0);
    cr_expect_eq(v, 1000);
    cr_expect_eq(qk_parse_int64("-5", -5, 1000, &v), 0);
    cr_expect_eq(v, -5);
    cr_expect_eq(qk_parse_int64("1001", -5, 1000, &v), -1);
    cr_expect_eq(qk_parse_int64("9223372036854775807", 0, INT64_MAX, &v), 0);
    cr_expect_eq(v, INT64_MAX);
    char cmd[800];
    snprintf(cmd, sizeof cmd, QK_BIN " random --seed '' --out %s/never", g_dir);
    free(expect_fail(2, "--seed '': expected an integer in [0, 2^53)", cmd));
    snprintf(cmd, sizeof cmd, QK_BIN " planted -q --seed ' 5' --out %s/never", g_dir);
    free(expect_fail(2, "--seed: ' 5' is not an integer", cmd));
}

// Elements of dataset NAME of FILE.
static hsize_t ds_points(const char *file, const char *name) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT), d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
    cr_assert_geq(sp, 0, "%s: %s", file, name);
    const hsize_t n = (hsize_t)H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp), H5Dclose(d), H5Fclose(f);
    return n;
}

// A dataset of dataspace H5S_NULL (rank 0 like a scalar, but no element) in place of `name`.
static void h5_replace_null(const char *file, const char *name) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0, "%s", file);
    cr_assert_geq(H5Ldelete(f, name, H5P_DEFAULT), 0, "%s: %s", file, name);
    hid_t sp = H5Screate(H5S_NULL), d = H5Dcreate2(f, name, H5T_NATIVE_INT32, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert_geq(d, 0, "%s: %s", file, name);
    H5Dclose(d), H5Sclose(sp), H5Fclose(f);
}

// Merge and report read the datasets of their input files as untrusted: a shape of 2^62 elements
// (a few bytes of file; summary heads, a head's pair table), a dataset with no element (H5S_NULL),
// an example or vocabulary dataset of another rank or length, a per-window dataset of another
// shape in one shard, a summary head that is not a head (INT32_MAX too), metric means not one per
// head and metric, an example position outside the window (naming the column at fault), a
// windows attribute that is not the tokens' rows, vocabulary offsets past its bytes: each one line
// naming the file and the dataset, exit 1, no output.  (Merge overflowed its buffers on the 2^62
// shapes and the example table, read an element H5S_NULL does not have, and mapped a shard's
// tokens of another width; report wrote out of bounds on a negative head, read out of bounds on
// the position, and failed with an empty message on the windows.)  A head listed twice in
// recorded_heads is loaded once.
Test(robust, merge_and_report_refuse_malformed_datasets, .timeout = 180) {
    char *pv = at("pv"), *ini = at("pv.ini"), *shards = at("pv/c"), *run = at("pv/r.h5"), *out = at("pv/out");
    char cmd[4096], vocab[700], shard0[700], keep[700], keep_run[700], want[400];
    snprintf(cmd, sizeof cmd, QK_BIN " planted -q --out %s --tokens 4096 --vocab ../shared/data/gpt2", pv);
    cr_assert_eq(shf("%s", cmd), 0, "%s", cmd);
    snprintf(vocab, sizeof vocab, "vocab = %s/vocab\n[analysis]\nrecord_heads = 1.3\nk = 8\np = 4\n[run]\nbackend = cpu\n"
             "threads = 1\n", pv);
    write_planted_ini(ini, pv, vocab);
    cr_assert_eq(shf(QK_BIN " run -q %s --set output.shard_tokens=1280 -o %s", ini, shards), 0);
    cr_assert_eq(shf(QK_BIN " run -q %s -o %s", ini, run), 0);
    snprintf(shard0, sizeof shard0, "%s/shard-000000.h5", shards);
    snprintf(keep, sizeof keep, "%s/kept.h5", pv);
    snprintf(keep_run, sizeof keep_run, "%s/kept-run.h5", pv);
    cr_assert_eq(shf("cp %s %s && cp %s %s", shard0, keep, run, keep_run), 0);

    const hsize_t huge = (hsize_t)1 << 62, ex[2] = {ds_points(shard0, "aggregates/0.0/examples_query_feature"), 3};
    const hsize_t ids[2] = {ds_points(shard0, "vocab/ids"), 2};
    h5_replace_i32(shard0, "summary/head_layer", 1, &huge, NULL, 1);
    snprintf(cmd, sizeof cmd, QK_BIN " merge %s -o %s", shards, out);
    free(expect_fail(1, "shard-000000.h5: dataset 'summary/head_layer': its shape needs more memory than there is", cmd));
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    static const char *const pair_col[6] = {"pairs_query_feature", "pairs_key_feature", "pairs_weight",
                                            "pairs_weight_err",    "pairs_sum",         "pairs_count"};
    for (int c = 0; c < 6; c++) {  // every column 2^62 long: their common length sized merge's buffers
        snprintf(want, sizeof want, "aggregates/0.0/%s", pair_col[c]);
        h5_replace_i32(shard0, want, 1, &huge, NULL, 1);
    }
    free(expect_fail(1, "shard-000000.h5: dataset 'aggregates/0.0/pairs_query_feature': its shape needs more memory", cmd));
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    h5_replace_null(shard0, "summary/head_layer");
    snprintf(want, sizeof want, "shard-000000.h5: summary/head_index has %llu entries, summary/head_layer 0",
             (unsigned long long)ds_points(shard0, "summary/head_index"));
    free(expect_fail(1, want, cmd));
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    const hsize_t nh = ds_points(shard0, "summary/head_index");
    int32_t *far_layer = qk_calloc(nh, 4);
    far_layer[0] = INT32_MAX;  // checked, and not used as a layer count (its + 1 overflowed)
    h5_replace_i32(shard0, "summary/head_layer", 1, &nh, far_layer, 0);
    free(far_layer);
    free(expect_fail(1, "shard-000000.h5: summary/head_layer, head_index [0]: head 2147483647.", cmd));
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    h5_replace_i32(shard0, "aggregates/0.0/examples_key_feature", 2, ex, NULL, 0);
    snprintf(want, sizeof want, "aggregates/0.0/examples_key_feature has %llu elements, aggregates/0.0/examples_query_feature %llu",
             (unsigned long long)(ex[0] * 3), (unsigned long long)ex[0]);
    free(expect_fail(1, want, cmd));
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    h5_replace_i32(shard0, "vocab/ids", 2, ids, NULL, 0);
    free(expect_fail(1, "shard-000000.h5: vocab/: expected ids (N), offsets (N + 1) and bytes", cmd));
    cr_expect(!qk_file_exists(out), "%s written", out);
    cr_assert_eq(shf("cp %s %s", keep, shard0), 0);
    snprintf(want, sizeof want, "%s/shard-000001.h5", shards);
    snprintf(keep, sizeof keep, "%s/kept1.h5", pv);
    cr_assert_eq(shf("cp %s %s", want, keep), 0);
    const hsize_t wide[2] = {ds_points(want, "tokens") / 64, 65};  // n_ctx 64
    h5_replace_i32(want, "tokens", 2, wide, NULL, 0);
    free(expect_fail(1, "shard-000001.h5: dataset '/tokens': not of ", cmd));
    cr_expect(!qk_file_exists(out), "%s written", out);
    cr_assert_eq(shf("cp %s %s", keep, want), 0);
    cr_expect_eq(shf("%s > /dev/null", cmd), 0, "the restored shards do not merge");

    const hsize_t eight = 8, one = 1;
    const int32_t bad_head[8] = {-1, 1, 2, 3, 0, 1, 2, 3}, zero = 0;
    snprintf(cmd, sizeof cmd, QK_BIN " report %s -o %s.html", run, out);
    h5_replace_i32(run, "summary/head_index", 1, &eight, bad_head, 0);
    free(expect_fail(1, "r.h5: summary/head_layer, head_index [0]: head 0.-1 is not a head", cmd));
    cr_assert_eq(shf("cp %s %s", keep_run, run), 0);
    h5_replace_i32(run, "summary/metric_mean", 1, &one, &zero, 0);
    free(expect_fail(1, "r.h5: summary/metric_mean has 1 values, not one per head (8) and metric", cmd));
    cr_assert_eq(shf("cp %s %s", keep_run, run), 0);
    const hsize_t nq = ds_points(run, "aggregates/1.3/examples_query_pos");
    int32_t *far = qk_malloc(4 * nq + 4);
    for (hsize_t i = 0; i < nq; i++) far[i] = 1 << 20;
    h5_replace_i32(run, "aggregates/1.3/examples_query_pos", 1, &nq, far, 0);
    free(far);
    free(expect_fail(1, "r.h5: aggregates/1.3/examples_query_pos [0]: window ", cmd));
    cr_assert_eq(shf("cp %s %s", keep_run, run), 0);
    {  // more windows than tokens has rows: examples in them would read past the dataset
        hid_t f = H5Fopen(run, H5F_ACC_RDWR, H5P_DEFAULT);
        cr_assert_geq(f, 0);
        const int64_t w = qk_h5_attr_read_int(f, "windows");
        cr_assert_geq(H5Adelete(f, "windows"), 0);
        cr_assert_eq(qk_h5_attr_int(f, "windows", w + 5), 0, "%s", qk_errmsg());
        H5Fclose(f);
        snprintf(want, sizeof want, "r.h5: tokens holds %lld windows of 64 tokens; the attribute windows says %lld",
                 (long long)w, (long long)w + 5);
        free(expect_fail(1, want, cmd));
    }
    cr_assert_eq(shf("cp %s %s", keep_run, run), 0);
    const hsize_t no = ds_points(run, "vocab/offsets");
    int32_t *off = qk_malloc(4 * no + 4);
    for (hsize_t i = 0; i < no; i++) off[i] = i ? 1 << 30 : 0;  // entry 0 ends past the bytes
    h5_replace_i32(run, "vocab/offsets", 1, &no, off, 0);
    free(off);
    free(expect_fail(1, "r.h5: vocab/: entry 0 (id ", cmd));
    snprintf(want, sizeof want, "%s.html", out);
    cr_expect(!qk_file_exists(want), "%s written", want);
    cr_assert_eq(shf("cp %s %s", keep_run, run), 0);
    hid_t f = H5Fopen(run, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    char heads[4 * 200 + 1] = "";
    for (int i = 0; i < 200; i++) strcat(heads, i ? ",1.3" : "1.3");
    cr_assert_geq(H5Adelete(f, "recorded_heads"), 0);
    cr_assert_eq(qk_h5_attr_str(f, "recorded_heads", heads), 0, "%s", qk_errmsg());
    H5Fclose(f);
    cr_expect_eq(shf("%s 2> /dev/null", cmd), 0, "report with a head listed 200 times in recorded_heads");
    cr_expect(qk_file_exists(want), "%s missing", want);
    free(pv), free(ini), free(shards), free(run), free(out);
}
