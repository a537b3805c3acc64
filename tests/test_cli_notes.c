// test_cli_notes.c: what the CLI tells a new user (issue 18): --version, status on a plain shard
// folder, the hint to download GPT-2, planted --check-run on another model's file, the no-GPU
// notice, static's progress in a log, and one consistent "time per stage".
#include <unistd.h>

#include "io/npy.h"
#include "test_common.h"

// Output (stdout and stderr) of a shell command, and its exit status.
static char *out_of(int *status, const char *fmt, ...) QK_PRINTF(2, 3);
static char *out_of(int *status, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t cap = 1 << 16, n = 0;
    char *buf = qk_malloc(cap);
    for (size_t got; (got = fread(buf + n, 1, cap - n - 1, p)) > 0;) {
        n += got;
        if (n + 1 == cap) buf = qk_realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

// A small planted demo in dir (seed), and the --set flags that point demo.ini at it.
static void planted(const char *dir, int seed, char *sets, size_t n) {
    cr_assert_eq(shf(QK_BIN " planted --out %s --tokens 256 --seed %d -q", dir, seed), 0);
    snprintf(sets, n, "--set model.dir=%s/model --set sae.layer.0=%s/sae/layer_0 --set sae.layer.1=%s/sae/layer_1 "
                      "--set corpus.paths=%s/corpus.npy --set run.backend=cpu", dir, dir, dir, dir);
}

Test(cli_notes, version) {
    int st;
    char *o = out_of(&st, QK_BIN " --version 2>&1");
    cr_assert_eq(st, 0, "%s", o);
    cr_assert(strstr(o, "qkscope 0.1.0\n") && strstr(o, "\ncommit: ") && strstr(o, "\nbuild: "), "%s", o);
#ifdef QK_HAVE_CUDA
    cr_assert(strstr(o, "\nCUDA: yes"), "%s", o);
#else
    cr_assert(strstr(o, "\nCUDA: no"), "%s", o);
#endif
#ifdef QK_HAVE_NCCL
    cr_assert(strstr(o, "\nNCCL: yes"), "%s", o);
#else
    cr_assert(strstr(o, "\nNCCL: no"), "%s", o);
#endif
    free(o);
}

Test(cli_notes, status_of_a_shard_folder) {
    char *d = make_tmpdir(), sets[2048];
    planted(d, 1, sets, sizeof sets);
    cr_assert_eq(shf(QK_BIN " run configs/demo.ini %s --set output.shard_tokens=128 -q -o %s/out", sets, d), 0);
    int st;
    char *o = out_of(&st, QK_BIN " status %s/out 2>&1", d);
    cr_assert_eq(st, 0, "%s", o);
    cr_assert(strstr(o, "sharded run, done, 2 complete shard(s)") && strstr(o, "qkscope merge"), "%s", o);
    free(o);
    o = out_of(&st, QK_BIN " status %s 2>&1", d);  // neither a sweep nor a sharded run
    cr_assert(st != 0 && strstr(o, "neither plan.json") && strstr(o, "manifest.json"), "%s", o);
    free(o);
    rm_rf(d), free(d);
}

Test(cli_notes, missing_model_points_at_the_download) {
    int st;
    char *o = out_of(&st, QK_BIN " run configs/gpt2-small.ini --set model.dir=/nonexistent/gpt2 -q -o /tmp/x.h5 2>&1");
    cr_assert(st != 0 && strstr(o, "scripts/download_gpt2.sh") && strstr(o, "model.dir") && strstr(o, "/nonexistent/gpt2"),
              "%s", o);
    free(o);
    o = out_of(&st, QK_BIN " static configs/demo.ini --set model.dir=/nonexistent/m -q -o /tmp/x.h5 2>&1");
    cr_assert(st != 0 && strstr(o, "scripts/download_gpt2.sh"), "%s", o);
    free(o);
}

Test(cli_notes, check_run_of_another_model) {
    char *a = make_tmpdir(), *b = make_tmpdir(), sets[2048], sets_b[2048];
    planted(a, 1, sets, sizeof sets);
    planted(b, 2, sets_b, sizeof sets_b);
    cr_assert_eq(shf(QK_BIN " run configs/demo.ini %s -q -o %s/run.h5", sets, a), 0);
    int st;
    char *o = out_of(&st, QK_BIN " planted --out %s --check-run %s/run.h5 2>&1", b, a);
    cr_assert(st != 0 && strstr(o, "model_sha256") && strstr(o, "another model") && !strstr(o, "MISSED"), "%s", o);
    free(o);
    o = out_of(&st, QK_BIN " planted --out %s --check-run %s/run.h5 2>&1", a, a);  // its own: found
    cr_assert(st == 0 && strstr(o, "FOUND") && !strstr(o, "MISSED"), "%s", o);
    free(o);
    rm_rf(a), rm_rf(b), free(a), free(b);
}

Test(cli_notes, notices_progress_and_stage_times) {
    char *d = make_tmpdir(), sets[2048];
    planted(d, 1, sets, sizeof sets);
    int st;
    // backend auto, not quiet, stderr to a pipe (not a TTY).
    char *o = out_of(&st, QK_BIN " run configs/demo.ini %s --set run.backend=auto -o %s/run.h5 2>&1 >/dev/null", sets, d);
    cr_assert_eq(st, 0, "%s", o);
#if defined(QK_HAVE_CUDA)
    if (access("/proc/driver/nvidia/version", F_OK) && access("/dev/nvidia0", F_OK))
        cr_assert(strstr(o, "no NVIDIA GPU or driver on this machine") && !strstr(o, "insufficient"), "%s", o);
#else
    cr_assert(strstr(o, "this build has no CUDA backend") && !strstr(o, "insufficient"), "%s", o);
#endif
    // The last progress line and the closing line give the same shares, in the same order.
    const char *prog = NULL, *p = o;
    while ((p = strstr(p, "tokens/s; read "))) prog = p += 10;
    const char *fin = strstr(o, "wall time includes setup): ");
    cr_assert(prog && fin, "%s", o);
    fin += strlen("wall time includes setup): ");
    size_t n = strcspn(prog, "\n");
    cr_assert(n > 10 && !strncmp(prog, fin, n) && fin[n] == '\n', "stage shares differ:\n%s", o);
    free(o);
    o = out_of(&st, QK_BIN " static configs/demo.ini %s -o %s/static.h5 2>&1 >/dev/null", sets, d);
    cr_assert(st == 0 && !strchr(o, '\r') && strstr(o, "(8 of 8)\n"), "static progress in a log:\n%s", o);
    free(o);
    rm_rf(d), free(d);
}

// A pre-tokenized corpus with ids the model lacks: the error names the file and the fix (the
// config key corpus.vocab), never an option `run` does not have.
Test(cli_notes, token_outside_the_model_vocabulary) {
    char *d = make_tmpdir();
    cr_assert_eq(shf(QK_BIN " random --out %s --layers 2 --heads 2 --d-model 16 --n-ctx 16 --vocab 512 --d-sae 32 "
                     "--k 4 --tokens 64 -q", d), 0);
    int32_t ids[16];
    for (int i = 0; i < 16; i++) ids[i] = i == 5 ? 3797 : i;
    char npy[1024];
    snprintf(npy, sizeof npy, "%s/mine.npy", d);
    int64_t shape[1] = {16};
    cr_assert_eq(qk_npy_write(npy, "<i4", 1, shape, ids), 0);
    int st;
    char *o = out_of(&st, QK_BIN " run configs/demo.ini --set model.dir=%s/model --set sae.layer.0=%s/sae/layer_0 "
                          "--set sae.layer.1=%s/sae/layer_1 --set corpus.paths=%s --set corpus.n_ctx=16 --set analysis.record_heads=0.0 "
                          "--set run.backend=cpu -q -o %s/x.h5 2>&1", d, d, d, npy, d);
    cr_assert(st != 0 && strstr(o, npy) && strstr(o, "token id 3797") && strstr(o, "[0, 512)") && strstr(o, "[corpus] vocab") &&
                  !strstr(o, "--vocab"),
              "%s", o);
    free(o);
    rm_rf(d), free(d);
}
