// test_shards.c: sharded output, interruption by a signal, and --resume giving output identical
// to an uninterrupted run; a resume with another configuration is refused.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/h5out.h"
#include "model/planted.h"
#include "test_common.h"

static char *g_dir, *g_cfg;

static void setup(void) {
    g_dir = make_planted_dir(160);
    g_cfg = qk_malloc(600);
    snprintf(g_cfg, 600, "%s/shards.ini", g_dir);
    write_planted_ini(g_cfg, g_dir,
                      "[analysis]\nrecord_heads = 1.3\nk = 8\np = 4\n[output]\nshard_tokens = 1280\n[run]\nbackend = cpu\nthreads = 1\n");
}
static void teardown(void) { if (getenv("QK_KEEP")) return; rm_rf(g_dir); free(g_dir); free(g_cfg); }
TestSuite(shards, .init = setup, .fini = teardown);

static int sh(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// The aggregates of every head of two runs over the same windows split differently: bit for bit
// (the sums are exact: exact_sum.h).  Overflowing pair sketches depend on the split, so they are
// not compared (docs/FORMAT.md).
static void expect_aggregates_equal(const char *fa, const char *fb) {
    char obj[128];
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 4; h++) {
            const char *sets[] = {"metric_count", "metric_hist", "query_count", "key_count", "metric_sum", "metric_mean",
                                  "query_marginal", "key_marginal", "metric_sum_exact", "query_marginal_exact",
                                  "key_marginal_exact"};
            for (int q = 0; q < 11; q++) {
                snprintf(obj, sizeof obj, "/aggregates/%d.%d/%s", l, h, sets[q]);
                cr_expect(h5_same(fa, fb, obj, 0), "%s differs", obj);
            }
        }
}

// Two run files over the same windows: per-window datasets bit-identical, aggregates as above.
static void expect_runs_equal(const char *fa, const char *fb) {
    const char *exact[] = {"/heads", "/tokens", "/length", "/provenance"};
    for (int i = 0; i < 4; i++) cr_expect(h5_same(fa, fb, exact[i], 0), "%s differs", exact[i]);
    expect_aggregates_equal(fa, fb);
}

// A run stopped by `sig` (followed at once by SIGTERM with `twice`) once its second shard is complete,
// then resumed: the exit status, the checkpoint, and a result equal to the uninterrupted run's.
static void interrupt_and_resume(int sig, int twice) {
    char cmd[8192], out_a[600], out_b[600], probe[700], log[700];
    snprintf(out_a, sizeof out_a, "%s/a", g_dir);
    snprintf(out_b, sizeof out_b, "%s/b", g_dir);
    snprintf(log, sizeof log, "%s/signal.log", g_dir);
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s -o %s", g_cfg, out_a);
    cr_assert_eq(sh(cmd), 0);
    // Interrupted run: SIGUSR1 (Slurm's warning) once the second shard is complete.
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stderr);
        (void)f;
        execl(QK_BIN, "qkscope", "run", g_cfg, "-o", out_b, (char *)NULL);
        _exit(127);
    }
    snprintf(probe, sizeof probe, "%s/shard-000001.h5", out_b);
    for (int i = 0; i < 6000 && !qk_file_exists(probe); i++) usleep(5000);
    usleep(20000);  // into the third shard
    kill(pid, sig);
    if (twice) kill(pid, SIGTERM);  // another signal: two of one kind may merge into one
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st));
    int code = WEXITSTATUS(st);
    snprintf(probe, sizeof probe, "%s/shard-000007.h5", out_b);
    cr_assert(code == 75 && !qk_file_exists(probe), "exit %d: the signal came too late to test an interruption", code);
    snprintf(probe, sizeof probe, "%s/manifest.json", out_b);
    char *manifest = qk_read_file(probe, NULL);
    cr_expect(strstr(manifest, "\"complete\": false") != NULL, "%s", manifest);
    free(manifest);
    // The checkpoint holds every window analysed before the signal: the shards' `windows` add up
    // to what the run said it stopped after.  A second signal exits at once: no message, and
    // the open shard is lost, but every shard under its final name is complete.
    char *text = qk_read_file(log, NULL);
    const char *at = strstr(text, "stopped after ");
    cr_assert(twice ? !at : at != NULL, "%s", text);
    long long said = at ? atoll(at + strlen("stopped after ")) : 0, held = 0;
    for (int s = 0;; s++) {
        snprintf(probe, sizeof probe, "%s/shard-%06d.h5", out_b, s);
        if (!qk_file_exists(probe)) break;
        hid_t f = H5Fopen(probe, H5F_ACC_RDONLY, H5P_DEFAULT);
        cr_assert(f >= 0);
        cr_expect_eq(qk_h5_attr_read_int(f, "complete"), 1);
        held += qk_h5_attr_read_int(f, "windows");
        H5Fclose(f);
    }
    if (at) cr_expect(said > 40 && held == said, "stopped after %lld windows, shards hold %lld", said, held);
    else cr_expect(held >= 40, "shards hold %lld windows", held);
    free(text);
    // Resume: the result equals the uninterrupted run's.
    snprintf(cmd, sizeof cmd, QK_BIN " run -q --resume %s -o %s", g_cfg, out_b);
    cr_assert_eq(sh(cmd), 0);
    snprintf(probe, sizeof probe, "%s/manifest.json", out_b);
    manifest = qk_read_file(probe, NULL);
    cr_expect(strstr(manifest, "\"complete\": true") != NULL, "%s", manifest);
    free(manifest);
    snprintf(cmd, sizeof cmd, QK_BIN " merge %s -o %s.h5 > /dev/null && " QK_BIN " merge %s -o %s.h5 > /dev/null",
             out_a, out_a, out_b, out_b);
    cr_assert_eq(sh(cmd), 0);
    snprintf(probe, sizeof probe, "%s.h5", out_a);
    snprintf(log, sizeof log, "%s.h5", out_b);
    expect_runs_equal(probe, log);
}

Test(shards, sigusr1_checkpoint_then_resume_equals_uninterrupted, .timeout = 120) { interrupt_and_resume(SIGUSR1, 0); }
Test(shards, sigterm_checkpoint_then_resume_equals_uninterrupted, .timeout = 120) { interrupt_and_resume(SIGTERM, 0); }
Test(shards, second_signal_exits_at_once_and_resume_equals_uninterrupted, .timeout = 120) {
    interrupt_and_resume(SIGINT, 1);
}

// A resume with another analysis is refused, and a fresh run into used shards too.
Test(shards, resume_with_another_config_is_refused, .timeout = 120) {
    char cmd[8192], out_b[600];
    snprintf(out_b, sizeof out_b, "%s/b", g_dir);
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s -o %s", g_cfg, out_b);
    cr_assert_eq(sh(cmd), 0);
    snprintf(cmd, sizeof cmd, QK_BIN " run -q --resume %s --set analysis.k=4 -o %s 2>/dev/null", g_cfg, out_b);
    cr_expect_eq(sh(cmd), 1);
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s -o %s 2>/dev/null", g_cfg, out_b);
    cr_expect_eq(sh(cmd), 1);
}

// merge: per-window datasets bit-identical to a single-file run, aggregates equal to float
// rounding; a missing shard or an unfinished run is refused with no output.
Test(shards, merge_equals_single_file_and_refuses_holes, .timeout = 120) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             QK_BIN " run -q %s -o %s/sh && " QK_BIN " run -q %s --set output.shard_tokens=0 -o %s/single.h5 && "
             QK_BIN " merge %s/sh -o %s/merged.h5 > /dev/null",
             g_cfg, g_dir, g_cfg, g_dir, g_dir, g_dir);
    cr_assert_eq(sh(cmd), 0);
    char fa[700], fb[700];
    snprintf(fa, sizeof fa, "%s/single.h5", g_dir);
    snprintf(fb, sizeof fb, "%s/merged.h5", g_dir);
    expect_runs_equal(fa, fb);
    // A missing shard: refused, nothing written.
    snprintf(cmd, sizeof cmd, "mv %s/sh/shard-000003.h5 %s/away.h5 && ! " QK_BIN " merge %s/sh -o %s/bad.h5 2> %s/err.txt",
             g_dir, g_dir, g_dir, g_dir, g_dir);
    cr_expect_eq(sh(cmd), 0);
    char p[700];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = qk_read_file(p, NULL);
    cr_expect(strstr(err, "shard-000003.h5: shard missing or unreadable; refusing to merge") != NULL, "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/bad.h5", g_dir);
    cr_expect(!qk_file_exists(p));
}

// Kill tests: SIGKILL at 20 random points of a multi-shard run; each time --resume completes and
// every shard equals the uninterrupted run's.
Test(shards, sigkill_anywhere_then_resume_equals_uninterrupted, .timeout = 600) {
    char cmd[8192], ref[600], out[600];
    snprintf(ref, sizeof ref, "%s/ref", g_dir);
    snprintf(out, sizeof out, "%s/killed", g_dir);
    double t0 = qk_now();
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s -o %s", g_cfg, ref);
    cr_assert_eq(sh(cmd), 0);
    double full = qk_now() - t0;
    TRng g = {2024};
    for (int trial = 0; trial < 20; trial++) {
        snprintf(cmd, sizeof cmd, "rm -rf %s", out);
        cr_assert_eq(sh(cmd), 0);
        pid_t pid = fork();
        if (pid == 0) {
            execl(QK_BIN, "qkscope", "run", "-q", g_cfg, "-o", out, (char *)NULL);
            _exit(127);
        }
        usleep((useconds_t)(trng_unif(&g) * full * 1e6));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        snprintf(cmd, sizeof cmd, QK_BIN " run -q --resume %s -o %s", g_cfg, out);
        cr_assert_eq(sh(cmd), 0, "trial %d: resume failed", trial);
        for (int s = 0; s < 8; s++) {
            char fa[700], fb[700];
            snprintf(fa, sizeof fa, "%s/shard-%06d.h5", ref, s);
            snprintf(fb, sizeof fb, "%s/shard-%06d.h5", out, s);
            cr_expect(h5_same(fa, fb, "/heads", 0) && h5_same(fa, fb, "/aggregates", 0) && h5_same(fa, fb, "/tokens", 0),
                      "trial %d: shard %d differs", trial, s);
        }
    }
}

// Merge refuses an unfinished run and a shard from another configuration.
Test(shards, merge_refuses_unfinished_and_foreign_shards, .timeout = 120) {
    char cmd[8192], p[700];
    snprintf(cmd, sizeof cmd,
             QK_BIN " run -q %s -o %s/a && " QK_BIN " run -q %s --set analysis.k=4 -o %s/b && "
             "cp %s/b/shard-000002.h5 %s/a/shard-000002.h5 && ! " QK_BIN " merge %s/a -o %s/m.h5 2> %s/err.txt",
             g_cfg, g_dir, g_cfg, g_dir, g_dir, g_dir, g_dir, g_dir, g_dir);
    cr_assert_eq(sh(cmd), 0);
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = qk_read_file(p, NULL);
    cr_expect(strstr(err, "shard-000002.h5: config_hash differs from the manifest's") != NULL, "%s", err);
    free(err);
    // An unfinished run (the manifest says so) is refused.
    snprintf(cmd, sizeof cmd,
             "sed -i 's/\"complete\": true/\"complete\": false/' %s/b/manifest.json && "
             "! " QK_BIN " merge %s/b -o %s/m.h5 2> %s/err.txt",
             g_dir, g_dir, g_dir, g_dir);
    cr_assert_eq(sh(cmd), 0);
    err = qk_read_file(p, NULL);
    cr_expect(strstr(err, "the run is not complete") != NULL, "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/m.h5", g_dir);
    cr_expect(!qk_file_exists(p));
}

// Merge reads the heads of shard 0's summary (head_layer, head_index) as untrusted input: longer
// than head_layer, or naming no head, is one line naming the file and the dataset, and no output.
Test(shards, merge_refuses_a_summary_that_names_no_head, .timeout = 120) {
    char cmd[4096], p[700], out[700], shard0[800];
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s -o %s/c", g_cfg, g_dir);
    cr_assert_eq(sh(cmd), 0);
    snprintf(p, sizeof p, "%s/c", g_dir);
    snprintf(out, sizeof out, "%s/m.h5", g_dir);
    int32_t v[64];
    for (int i = 0; i < 64; i++) v[i] = i % 4;
    const struct {
        hsize_t n;
        int32_t first;
        const char *says;
    } cases[] = {{64, 0, "summary/head_index has 64 entries, summary/head_layer 8"},
                 {8, -1, "head 0.-1 is not a head"},
                 {8, 5000, "head 0.5000 is not a head"},
                 {8, 1, "head 0.1 listed twice"}};
    for (int c = 0; c < 4; c++) {
        v[0] = cases[c].first;
        snprintf(shard0, sizeof shard0, "%s/shard-000000.h5", p);
        h5_replace_i32(shard0, "summary/head_index", 1, &cases[c].n, v, 0);
        snprintf(cmd, sizeof cmd, QK_BIN " merge %s -o %s", p, out);
        char *err = expect_fail_in(g_dir, 1, cases[c].says, cmd);
        cr_expect(strstr(err, "shard-000000.h5"), "case %d: %s", c, err);
        free(err);
        cr_expect(!qk_file_exists(out), "case %d: %s written", c, out);
    }
}

// A full disk (a 1 MiB tmpfs): one clear line naming the file, exit 1, nothing that looks complete.
Test(shards, disk_full_is_a_clear_error, .timeout = 120) {
    char mnt[600], cmd[8192];
    snprintf(mnt, sizeof mnt, "%s/full", g_dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && mount -t tmpfs -o size=1m tmpfs %s 2>/dev/null", mnt, mnt);
    if (sh(cmd) != 0) cr_skip_test("cannot mount a small tmpfs here (needs root): disk-full test skipped");
    snprintf(cmd, sizeof cmd, QK_BIN " run -q %s --set output.shard_tokens=0 -o %s/out.h5 2> %s/err.txt", g_cfg, mnt,
             g_dir);
    int rc = sh(cmd);
    char p[700];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *err = qk_read_file(p, NULL);
    snprintf(p, sizeof p, "%s/out.h5", mnt);
    int out_exists = qk_file_exists(p);
    snprintf(p, sizeof p, "%s/out.h5.tmp", mnt);
    int tmp_exists = qk_file_exists(p);
    snprintf(cmd, sizeof cmd, "umount %s", mnt);
    sh(cmd);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(err, "out.h5.tmp: writing") && strstr(err, "disk full"), "%s", err);
    cr_expect(!out_exists && !tmp_exists, "an output file was left behind");
    free(err);
}
