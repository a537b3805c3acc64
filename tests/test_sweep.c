// test_sweep.c: Slurm sweeps without Slurm: `plan` splits the corpus deterministically, `submit
// --dry-run` writes the array and merge scripts, the array tasks are emulated by running each
// part's command, `status` follows them, and `merge` over the parts equals one whole run.
#include <sys/stat.h>
#include <sys/wait.h>

#include "io/npy.h"
#include "model/planted.h"
#include "test_common.h"

static char *g_dir;

static int sh(const char *fmt, const char *a, const char *b) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, fmt, a, b, a, b, a, b);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *dir, const char *name) {
    char *p = qk_path_join(dir, name), *t = qk_read_file(p, NULL);
    free(p);
    return t ? t : qk_strdup("");
}

Test(sweep, plan_submit_status_merge_equal_one_run, .timeout = 300) {
    g_dir = make_planted_dir(32);
    // The corpus as 4 files of 8 windows (one document each: pack = false, no separators).
    QkNpy all;
    char path[700];
    snprintf(path, sizeof path, "%s/corpus.npy", g_dir);
    cr_assert_eq(qk_npy_read(&all, path), 0);
    snprintf(path, sizeof path, "%s/corpus", g_dir);
    mkdir(path, 0777);
    for (int f = 0; f < 4; f++) {
        int64_t shape[2] = {8, 64};
        snprintf(path, sizeof path, "%s/corpus/c%d.npy", g_dir, f);
        cr_assert_eq(qk_npy_write(path, "<i4", 2, shape, (int32_t *)all.data + f * 8 * 64), 0);
    }
    qk_npy_free(&all);
    char text[2048];
    snprintf(text, sizeof text,
             "[model]\ndir = %s/model\n[sae]\nlayer.0 = %s/sae/layer_0\nlayer.1 = %s/sae/layer_1\n"
             "[corpus]\npaths = %s/corpus\nn_ctx = 64\nbos = false\npack = false\nbatch = 4\n"
             "[analysis]\nrecord_heads = 1.3\nk = 8\np = 4\n[run]\nbackend = cpu\n",
             g_dir, g_dir, g_dir, g_dir);
    snprintf(path, sizeof path, "%s/sweep.ini", g_dir);
    write_bytes(path, text, strlen(text));

    cr_assert_eq(sh(QK_BIN " plan %s/sweep.ini --tasks 3 > %s/plan.txt", g_dir, g_dir), 0);
    char *plan = slurp(g_dir, "plan.txt");
    cr_expect(strstr(plan, "part 0/3: files 0..0") && strstr(plan, "part 2/3: files 3..3"), "%s", plan);
    free(plan);
    cr_expect_eq(sh(QK_BIN " plan %s/sweep.ini --tasks 5 2> %s/err.txt", g_dir, g_dir), 1, "5 parts of 4 files");
    char *err = slurp(g_dir, "err.txt");
    cr_expect(strstr(err, "4 file(s) cannot make 5 parts") != NULL, "%s", err);
    free(err);

    cr_assert_eq(sh(QK_BIN " submit %s/sweep.ini --tasks 3 --gpus-per-task 2 --partition gpu -o %s/out --dry-run > /dev/null",
                    g_dir, g_dir), 0);
    char out[700];
    snprintf(out, sizeof out, "%s/out", g_dir);
    char *sb = slurp(out, "qkscope.sbatch"), *mb = slurp(out, "merge.sbatch");
    const char *want[] = {"#SBATCH --array=0-2", "#SBATCH --gres=gpu:2", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                          "#SBATCH --partition=gpu", "logs/%A_%a.out", "--part \"$p/3\" --resume --gpus all -o",
                          "trap 'kill -USR1", "scontrol requeue"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) cr_expect(strstr(sb, want[i]) != NULL, "array script lacks %s", want[i]);
    cr_expect(strstr(mb, " merge ") != NULL && strstr(mb, "all.h5") != NULL, "%s", mb);
    free(sb), free(mb);
    cr_expect_eq(sh(QK_BIN " status %s/out > %s/st.txt", g_dir, g_dir), 0);
    char *st = slurp(g_dir, "st.txt");
    cr_expect(strstr(st, "0 of 3 part(s) done, 3 missing") != NULL, "%s", st);
    free(st);
    // Another sweep into the same folder is refused (nothing overwritten); a part out of range too.
    cr_expect_eq(sh(QK_BIN " submit %s/sweep.ini --tasks 2 -o %s/out --dry-run 2> /dev/null", g_dir, g_dir), 1);
    cr_expect_eq(sh(QK_BIN " run -q %s/sweep.ini --part 3/3 -o %s/p3 2> /dev/null", g_dir, g_dir), 2);
    // Merging before the parts exist is refused.
    cr_expect_eq(sh(QK_BIN " merge %s/out -o %s/out/all.h5 2>/dev/null", g_dir, g_dir), 1);
    // The array tasks, as Slurm would run them.
    for (int p = 0; p < 3; p++) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, QK_BIN " run -q %s/sweep.ini --set output.shard_tokens=1000 --part %d/3 --resume -o %s/out/part-%03d",
                 g_dir, p, g_dir, p);
        cr_assert_eq(system(cmd), 0, "part %d", p);
    }
    cr_expect_eq(sh(QK_BIN " status %s/out > %s/st.txt", g_dir, g_dir), 0);
    st = slurp(g_dir, "st.txt");
    cr_expect(strstr(st, "3 of 3 part(s) done, 0 missing") != NULL, "%s", st);
    free(st);
    cr_assert_eq(sh(QK_BIN " merge %s/out -o %s/out/all.h5 > /dev/null", g_dir, g_dir), 0);
    cr_assert_eq(sh(QK_BIN " run -q %s/sweep.ini -o %s/whole.h5", g_dir, g_dir), 0);
    const char *objs[] = {"/heads", "/tokens", "/length", "/provenance"};
    char whole[700], merged[700];
    snprintf(whole, sizeof whole, "%s/whole.h5", g_dir);
    snprintf(merged, sizeof merged, "%s/out/all.h5", g_dir);
    for (int i = 0; i < 4; i++) cr_expect(h5_same(whole, merged, objs[i], 0), "%s differs between the sweep and one run", objs[i]);
    rm_rf(g_dir);
    free(g_dir);
}

// A [sweep] over two k values: the generated scripts themselves run every (setting, part) task
// (srun and scontrol stubbed), the merge script writes one file per setting, each with its k.
Test(sweep, settings_run_through_the_generated_scripts, .timeout = 300) {
    g_dir = make_planted_dir(16);
    char text[2048], path[1024];
    // The corpus twice, as two files: two parts.
    snprintf(path, sizeof path, "%s/sweep.ini", g_dir);
    snprintf(text, sizeof text,
             "[model]\ndir = %s/model\n[sae]\nlayer.0 = %s/sae/layer_0\nlayer.1 = %s/sae/layer_1\n"
             "[corpus]\npaths = %s/c\nn_ctx = 64\nbos = false\npack = false\n"
             "[analysis]\nrecord_heads = 0.1\np = 4\n[run]\nbackend = cpu\n[sweep]\nanalysis.k = 4 | 8\n",
             g_dir, g_dir, g_dir, g_dir);
    write_bytes(path, text, strlen(text));
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/c %s/stub && cp %s/corpus.npy %s/c/a.npy && cp %s/corpus.npy %s/c/b.npy && "
             "printf '#!/bin/sh\\nexec \"$@\"\\n' > %s/stub/srun && printf '#!/bin/sh\\nexit 0\\n' > %s/stub/scontrol && "
             "chmod +x %s/stub/srun %s/stub/scontrol",
             g_dir, g_dir, g_dir, g_dir, g_dir, g_dir, g_dir, g_dir, g_dir, g_dir);
    cr_assert_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, QK_BIN " submit %s/sweep.ini --tasks 2 -o %s/out --dry-run > /dev/null", g_dir, g_dir);
    cr_assert_eq(system(cmd), 0);
    char out[700];
    snprintf(out, sizeof out, "%s/out", g_dir);
    char *sb = slurp(out, "qkscope.sbatch");
    cr_expect(strstr(sb, "#SBATCH --array=0-3") && strstr(sb, "--set 'analysis.k=4'") && strstr(sb, "--set 'analysis.k=8'"),
              "%s", sb);
    free(sb);
    for (int task = 0; task < 4; task++) {
        snprintf(cmd, sizeof cmd, "cd %s && PATH=%s/stub:$PATH SLURM_ARRAY_TASK_ID=%d SLURM_JOB_ID=1 bash qkscope.sbatch", out,
                 g_dir, task);
        cr_assert_eq(system(cmd), 0, "array task %d", task);
    }
    snprintf(cmd, sizeof cmd, QK_BIN " status %s > %s/st.txt && bash %s/merge.sbatch > /dev/null", out, g_dir, out);
    cr_assert_eq(system(cmd), 0);
    char *st = slurp(g_dir, "st.txt");
    cr_expect(strstr(st, "4 of 4 part(s) done, 0 missing") != NULL, "%s", st);
    free(st);
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/setting-%03d/all.h5", out, s);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        cr_assert(f >= 0, "%s missing", path);
        hid_t d = H5Dopen2(f, "heads/0.1/lookfor_top_idx", H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t dims[3];
        H5Sget_simple_extent_dims(sp, dims, NULL);
        cr_expect_eq(dims[2], (hsize_t)(s ? 8 : 4), "setting %d has k = %llu", s, (unsigned long long)dims[2]);
        cr_expect_eq(dims[0], (hsize_t)32, "setting %d: %llu windows over both parts", s, (unsigned long long)dims[0]);
        H5Sclose(sp), H5Dclose(d), H5Fclose(f);
    }
    rm_rf(g_dir);
    free(g_dir);
}
