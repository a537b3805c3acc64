// cmd_slurm.c: sweeps on Slurm clusters.  The corpus work is embarrassingly parallel: `plan`
// splits a corpus into N deterministic parts, `submit` writes and submits a job array (one task
// per part, each `qkscope run --part P/N --resume`) and a merge job after it, `status` says which
// parts are done.  `qkscope merge OUT` combines the parts (cmd_merge.c).
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include "base/util.h"
#include "cli/commands.h"
#include "io/out_check.h"
#include "run/manifest.h"
#include "run/run_setup.h"
#include "text/corpus.h"

// The parts of CONFIG's corpus: files (whole list) and bounds first[0..tasks].
static int plan_parts(const char *config, char **sets, int n_sets, int tasks, char ***files, int *n_files, int **first) {
    RunConfig c;
    *first = NULL;
    int rc = run_config_load(&c, config, sets, n_sets);
    if (!rc && !c.n_paths) rc = qk_err("%s: [corpus] paths is required", config);
    if (!rc) {
        *first = qk_malloc(sizeof(int) * (tasks + 1));
        rc = qk_corpus_plan((const char *const *)c.paths, c.n_paths, tasks, files, n_files, *first);
    }
    run_config_free(&c);
    if (rc) free(*first), *first = NULL;
    return rc;
}

static void free_files(char **files, int n) {
    for (int i = 0; i < n; i++) free(files[i]);
    free(files);
}

static int parse_tasks(const char *s, int *tasks) {
    int64_t v;
    if (qk_parse_int64(s, 1, 100000, &v)) return qk_err("--tasks: '%s' is not an integer in [1, 100000]", s);
    *tasks = (int)v;
    return 0;
}

int cmd_plan(int argc, char **argv) {
    static const struct option opts[] = {{"tasks", required_argument, 0, 't'}, {"set", required_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    char *sets[QK_MAX_SETS];
    int n_sets = 0, tasks = 0;
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        if (ch == 't' && parse_tasks(optarg, &tasks)) return fprintf(stderr, "qkscope plan: %s\n", qk_errmsg()), QK_EXIT_USAGE;
        else if (ch == 's' && n_sets < QK_MAX_SETS) sets[n_sets++] = optarg;
        else if (ch == 'h') {
            printf("usage: qkscope plan CONFIG --tasks N [--set S.K=V ...]\n\n"
                   "Prints the deterministic split of CONFIG's corpus into N parts (contiguous ranges of the\n"
                   "sorted file list with about equal bytes): part P is what `qkscope run --part P/N` reads.\n");
            return QK_EXIT_OK;
        } else if (ch != 't')
            return fprintf(stderr, "qkscope plan: unknown or incomplete option '%s'\n", argv[optind - 1]), QK_EXIT_USAGE;
    }
    if (optind != argc - 1 || !tasks) return fprintf(stderr, "qkscope plan: expected CONFIG and --tasks N\n"), QK_EXIT_USAGE;
    char **files;
    int n, *first = NULL;
    if (plan_parts(argv[optind], sets, n_sets, tasks, &files, &n, &first)) {
        fprintf(stderr, "qkscope plan: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    for (int p = 0; p < tasks; p++) {
        double bytes = 0;
        for (int i = first[p]; i < first[p + 1]; i++) {
            struct stat st;
            if (!stat(files[i], &st)) bytes += st.st_size;
        }
        printf("part %d/%d: files %d..%d (%d files, %.1f MB): %s%s\n", p, tasks, first[p], first[p + 1] - 1,
               first[p + 1] - first[p], bytes / 1e6, files[first[p]], first[p + 1] - first[p] > 1 ? " ..." : "");
    }
    free_files(files, n);
    free(first);
    return QK_EXIT_OK;
}

// Reads a template and replaces every @KEY@ by its value.
static char *fill(const char *path, const char *const (*kv)[2], int n_kv) {
    char *t = qk_read_file(path, NULL);
    if (!t) return NULL;
    for (int k = 0; k < n_kv; k++) {
        char key[64];
        snprintf(key, sizeof key, "@%s@", kv[k][0]);
        for (char *at; (at = strstr(t, key));) {
            size_t pre = at - t, vl = strlen(kv[k][1]), kl = strlen(key), rest = strlen(at + kl);
            char *u = qk_malloc(pre + vl + rest + 1);
            memcpy(u, t, pre), memcpy(u + pre, kv[k][1], vl), memcpy(u + pre + vl, at + kl, rest + 1);
            free(t);
            t = u;
        }
    }
    return t;
}

static int write_text(const char *path, const char *text, int exec) {
    FILE *f = fopen(path, "w");
    if (!f) return qk_err("%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    if (exec) chmod(path, 0755);
    return ok ? 0 : qk_err("%s: write failed", path);
}

// The folder of the slurm/ templates: QK_SLURM_DIR, else next to the binary (bin/../slurm).
static void template_dir(char *buf, size_t n) {
    const char *env = getenv("QK_SLURM_DIR");
    if (env) {
        snprintf(buf, n, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 16);
    exe[len > 0 ? len : 0] = 0;
    char *slash = strrchr(exe, '/');
    strcpy(slash ? slash : exe, "/../slurm");  // room kept above
    snprintf(buf, n, "%s", exe);
}

// Shell-quotes s with single quotes into buf.
static void quote(const char *s, char *buf, size_t n) {
    size_t o = 0;
    buf[o++] = '\'';
    for (; *s && o + 5 < n; s++) {
        if (*s == '\'') o += snprintf(buf + o, n - o, "'\\''");
        else buf[o++] = *s;
    }
    buf[o++] = '\'';
    buf[o] = 0;
}

int cmd_submit(int argc, char **argv) {
    static const struct option opts[] = {
        {"tasks", required_argument, 0, 't'},     {"gpus-per-task", required_argument, 0, 'g'},
        {"partition", required_argument, 0, 'p'}, {"time", required_argument, 0, 'T'},
        {"set", required_argument, 0, 's'},       {"output", required_argument, 0, 'o'},
        {"dry-run", no_argument, 0, 'n'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    char *sets[QK_MAX_SETS];
    int n_sets = 0, tasks = 1, dry = 0;
    const char *gpus = "1", *partition = NULL, *time_limit = "24:00:00", *out = NULL;
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1;) {
        switch (ch) {
        case 't': if (parse_tasks(optarg, &tasks)) return fprintf(stderr, "qkscope submit: %s\n", qk_errmsg()), QK_EXIT_USAGE; break;
        case 'g': gpus = optarg; break;
        case 'p': partition = optarg; break;
        case 'T': time_limit = optarg; break;
        case 's': if (n_sets < QK_MAX_SETS) sets[n_sets++] = optarg; break;
        case 'o': out = optarg; break;
        case 'n': dry = 1; break;
        case 'h':
            printf("usage: qkscope submit CONFIG -o OUT [--tasks N] [--gpus-per-task G] [--partition P]\n"
                   "                      [--time T] [--set S.K=V ...] [--dry-run]\n\n"
                   "Writes OUT/qkscope.sbatch (a job array, one task per part of `qkscope plan CONFIG --tasks N`,\n"
                   "--gres=gpu:G, %%A_%%a logs, --requeue, --signal=B:USR1@120 with a trap so pre-empted tasks\n"
                   "checkpoint and resume) and OUT/merge.sbatch (qkscope merge after every task succeeded), from\n"
                   "the templates in slurm/, and submits both with sbatch (--dry-run: writes and prints them).\n"
                   "Each task writes shards (shard_tokens, default 1000000 when the config has none) under\n"
                   "OUT/part-NNN, with a rank per GPU (qkscope run --gpus all) when G > 1; `qkscope status OUT`\n"
                   "shows progress.\n");
            return QK_EXIT_OK;
        default: return fprintf(stderr, "qkscope submit: unknown or incomplete option '%s'\n", argv[optind - 1]), QK_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !out) return fprintf(stderr, "qkscope submit: expected CONFIG and -o OUT\n"), QK_EXIT_USAGE;
    const char *config = argv[optind];
    char **files;
    int n, *first = NULL, rc = 0;
    if (qk_out_check_folder(out)) return fprintf(stderr, "qkscope submit: %s\n", qk_errmsg()), QK_EXIT_FAIL;
    // The plan must work now, so the tasks will not fail on it later.
    if (plan_parts(config, sets, n_sets, tasks, &files, &n, &first)) {
        fprintf(stderr, "qkscope submit: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    free_files(files, n);
    free(first);
    RunConfig c;
    if (run_config_load(&c, config, sets, n_sets)) {
        fprintf(stderr, "qkscope submit: %s\n", qk_errmsg());
        run_config_free(&c);
        return QK_EXIT_FAIL;
    }
    int sharded = c.shard_tokens > 0, n_settings = run_config_n_settings(&c);
    char abs_out[PATH_MAX], abs_cfg[PATH_MAX], exe[PATH_MAX], logs[PATH_MAX + 8], tdir[PATH_MAX + 16];
    mkdir(out, 0777);
    snprintf(logs, sizeof logs, "%s/logs", out);
    mkdir(logs, 0777);
    if (!realpath(out, abs_out) || !realpath(config, abs_cfg)) {
        fprintf(stderr, "qkscope submit: %s: %s\n", out, strerror(errno));
        return QK_EXIT_FAIL;
    }
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = 0;
    // The --set overrides, shell-quoted, plus resumable shards when the config has none.
    size_t cap = 256;
    for (int i = 0; i < n_sets; i++) cap += 4 * strlen(sets[i]) + 16;
    char *set_text = qk_malloc(cap), q[4096];
    size_t o = 0;
    set_text[0] = 0;
    for (int i = 0; i < n_sets; i++) {
        quote(sets[i], q, sizeof q);
        o += snprintf(set_text + o, cap - o, "%s--set %s", o ? " " : "", q);
    }
    if (!sharded) snprintf(set_text + o, cap - o, "%s--set output.shard_tokens=1000000", o ? " " : "");
    char ppath[PATH_MAX + 64];
    snprintf(ppath, sizeof ppath, "%s/plan.json", abs_out);
    // plan.json names the sweep (tasks, settings, the config's hash): an OUT holding another
    // sweep is refused, so nothing of it is overwritten; the same sweep may be submitted again.
    char plan[512], hash[65];
    run_config_hash(&c, hash);
    if (n_settings > 1)
        snprintf(plan, sizeof plan, "{\"format\": \"qkscope-plan\", \"tasks\": %d, \"settings\": %d, \"config_hash\": \"%s\"}\n",
                 tasks, n_settings, hash);
    else snprintf(plan, sizeof plan, "{\"format\": \"qkscope-plan\", \"tasks\": %d, \"config_hash\": \"%s\"}\n", tasks, hash);
    char *old = qk_file_exists(ppath) ? qk_read_file(ppath, NULL) : NULL;
    if (old && strcmp(old, plan))
        rc = qk_err("%s holds another sweep (%s differs: other config, tasks or settings); use another -o", out, ppath);
    free(old);
    // One case per setting: its --set overrides and its output folder; every setting is checked now.
    size_t ccap = 1024, co = 0, mcap = 1024, mo = 0;
    char *cases = qk_malloc(ccap), *merges = qk_malloc(mcap);
    cases[0] = merges[0] = 0;
    for (int st = 0; st < n_settings && !rc; st++) {
        char **ov = qk_calloc(c.n_sweep + 1, sizeof(char *)), sdir[PATH_MAX + 32];
        run_config_setting(&c, st, ov);
        if (n_settings > 1) snprintf(sdir, sizeof sdir, "%s/setting-%03d", abs_out, st);
        else snprintf(sdir, sizeof sdir, "%s", abs_out);
        char **all = qk_calloc(n_sets + c.n_sweep + 1, sizeof(char *));
        for (int i = 0; i < n_sets; i++) all[i] = sets[i];
        for (int i = 0; i < c.n_sweep; i++) all[n_sets + i] = ov[i];
        RunConfig check;
        if (run_config_load(&check, config, all, n_sets + c.n_sweep)) rc = -1;
        else run_config_free(&check);
        size_t need = strlen(sdir) * 3 + 256;
        for (int i = 0; i < c.n_sweep; i++) need += 4 * strlen(ov[i]) + 16;
        while (co + need >= ccap) cases = qk_realloc(cases, ccap *= 2);
        while (mo + need >= mcap) merges = qk_realloc(merges, mcap *= 2);
        co += snprintf(cases + co, ccap - co, "%d) setting=(", st);
        for (int i = 0; i < c.n_sweep; i++) {
            quote(ov[i], q, sizeof q);
            co += snprintf(cases + co, ccap - co, "%s--set %s", i ? " " : "", q);
        }
        co += snprintf(cases + co, ccap - co, "); dir=\"%s\" ;;\n", sdir);
        mo += snprintf(merges + mo, mcap - mo, "%s merge \"%s\" -o \"%s/all.h5\"\n", exe, sdir, sdir);
        if (n_settings > 1) {  // the setting's own plan.json, for merge and status
            mkdir(sdir, 0777);
            char pj[PATH_MAX + 64], txt[256];
            snprintf(pj, sizeof pj, "%s/plan.json", sdir);
            snprintf(txt, sizeof txt, "{\"format\": \"qkscope-plan\", \"tasks\": %d}\n", tasks);
            if (!rc) rc = write_text(pj, txt, 0);
        }
        for (int i = 0; i < c.n_sweep; i++) free(ov[i]);
        free(ov), free(all);
    }
    if (co) cases[co - 1] = 0;  // no trailing newline before esac
    if (mo) merges[mo - 1] = 0;
    char last[32], ntasks[32], part_line[256] = "", job[PATH_MAX + 16];
    snprintf(last, sizeof last, "%d", n_settings * tasks - 1);
    snprintf(ntasks, sizeof ntasks, "%d", tasks);
    if (partition) snprintf(part_line, sizeof part_line, "#SBATCH --partition=%s", partition);
    char gres_line[128] = "";  // --gpus-per-task 0: a CPU sweep, no GPU requested
    if (strcmp(gpus, "0")) snprintf(gres_line, sizeof gres_line, "#SBATCH --gres=gpu:%s", gpus);
    const char *count = strrchr(gpus, ':');  // G or TYPE:G
    const char *ranks = atoi(count ? count + 1 : gpus) > 1 ? " --gpus all" : "";  // a rank per GPU of the task
    const char *base = strrchr(abs_out, '/');
    snprintf(job, sizeof job, "qkscope-%s", base ? base + 1 : abs_out);
    const char *kv[][2] = {{"JOB", job},       {"LAST", last},          {"GRES_LINE", gres_line}, {"TIME", time_limit},
                           {"OUT", abs_out},   {"PARTITION_LINE", part_line}, {"QKSCOPE", exe}, {"CONFIG", abs_cfg},
                           {"SETS", set_text}, {"TASKS", ntasks},     {"CASES", cases},     {"MERGES", merges},
                           {"RANKS", ranks}};
    template_dir(tdir, sizeof tdir);
    char tpath[PATH_MAX + 64], spath[PATH_MAX + 64], mpath[PATH_MAX + 64];
    snprintf(tpath, sizeof tpath, "%s/qkscope.sbatch", tdir);
    char *array = fill(tpath, kv, sizeof kv / sizeof kv[0]);
    snprintf(tpath, sizeof tpath, "%s/qkscope-merge.sbatch", tdir);
    char *merge = array ? fill(tpath, kv, sizeof kv / sizeof kv[0]) : NULL;
    snprintf(spath, sizeof spath, "%s/qkscope.sbatch", abs_out);
    snprintf(mpath, sizeof mpath, "%s/merge.sbatch", abs_out);
    if (rc || !array || !merge || write_text(spath, array, 1) || write_text(mpath, merge, 1) || write_text(ppath, plan, 0))
        rc = -1;
    if (!rc && dry) printf("%s\n# --- %s\n%s\n# --- %s\n%s\n# dry run: sbatch --parsable %s; sbatch --dependency=afterok:<id> %s\n",
                           spath, spath, array, mpath, merge, spath, mpath);
    else if (!rc) {
        char cmd[2 * PATH_MAX + 128], id[64] = "";
        snprintf(cmd, sizeof cmd, "sbatch --parsable '%s'", spath);
        FILE *p = popen(cmd, "r");
        if (!p || !fgets(id, sizeof id, p) || pclose(p) != 0) rc = qk_err("sbatch failed for %s (is Slurm available?)", spath);
        else {
            id[strcspn(id, ";\n")] = 0;
            snprintf(cmd, sizeof cmd, "sbatch --parsable --dependency=afterok:%s '%s'", id, mpath);
            if (system(cmd) != 0) rc = qk_err("sbatch failed for %s", mpath);
            else printf("submitted array job %s (%d tasks) and its merge job; qkscope status %s\n", id, tasks, out);
        }
    }
    free(array), free(merge), free(set_text), free(cases), free(merges);
    run_config_free(&c);
    if (rc) {
        fprintf(stderr, "qkscope submit: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}

// Prints the state of parts OUT/part-000.. of one setting; returns how many are done.
static int status_parts(const char *dir, int tasks, int *missing) {
    char path[PATH_MAX + 64];
    int done = 0;
    for (int p = 0; p < tasks; p++) {
        snprintf(path, sizeof path, "%s/part-%03d", dir, p);
        QkManifest m = {0};
        char *mpath = qk_path_join(path, "manifest.json");
        int have = qk_file_exists(mpath) && qk_manifest_read(&m, path) == 0, started = qk_file_exists(path);
        const char *state = have && m.complete ? "done" : have ? "incomplete (running, or stopped: it resumes when requeued)"
                            : qk_file_exists(mpath) ? "manifest.json unreadable (see qkscope info)"
                            : started ? "started, no complete shard yet" : "missing (not started or failed)";
        printf("%s/part-%03d: %-58s %d shard(s)\n", dir, p, state, m.n_shards);
        done += have && m.complete;
        *missing += !have && !started;
        qk_manifest_free(&m);
        free(mpath);
    }
    snprintf(path, sizeof path, "%s/all.h5", dir);
    printf("%s: merged file %s\n", dir, qk_file_exists(path) ? "written" : "not yet");
    return done;
}

// A plain sharded run folder (`qkscope run -o OUT` with shards or ranks): its manifest.json.
static int status_shards(const char *dir) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    if (!qk_file_exists(path)) {
        fprintf(stderr, "qkscope status: %s: neither plan.json (a `qkscope submit` sweep) nor manifest.json (a sharded "
                        "`qkscope run -o %s`) is there\n", dir, dir);
        return QK_EXIT_FAIL;
    }
    QkManifest m;
    if (qk_manifest_read(&m, dir)) return fprintf(stderr, "qkscope status: %s\n", qk_errmsg()), QK_EXIT_FAIL;
    const int complete = m.complete;
    printf("%s: sharded run, %s, %d complete shard(s)", dir,
           complete ? "done" : "incomplete (running, or stopped: `qkscope run --resume` continues it)", m.n_shards);
    if (m.ranks) printf(", %d ranks", m.ranks);
    printf("\n");
    qk_manifest_free(&m);
    snprintf(path, sizeof path, "%s/all.h5", dir);
    printf("%s: merged file %s%s%s%s\n", dir, qk_file_exists(path) ? "written" : "not yet", complete && !qk_file_exists(path) ? " (qkscope merge " : "",
           complete && !qk_file_exists(path) ? dir : "", complete && !qk_file_exists(path) ? " -o all.h5)" : "");
    return QK_EXIT_OK;
}

int cmd_status(int argc, char **argv) {
    if (argc != 2 || !strcmp(argv[1], "--help")) {
        printf("usage: qkscope status OUT\n\nFor a sweep made by `qkscope submit ... -o OUT`: which parts (of every setting) are\n"
               "done, incomplete (running, or stopped and waiting to resume) or missing, and which merged files exist.\n"
               "For a sharded run folder (`qkscope run -o OUT`, manifest.json): done or incomplete, and its shards.\n");
        return argc == 2 ? QK_EXIT_OK : QK_EXIT_USAGE;
    }
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/plan.json", argv[1]);
    if (!qk_file_exists(path)) return status_shards(argv[1]);  // a plain sharded run folder
    int tasks, settings, done = 0, missing = 0;
    if (qk_plan_read(argv[1], &tasks, &settings)) {
        fprintf(stderr, "qkscope status: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    for (int st = 0; st < settings; st++) {
        char dir[PATH_MAX + 32];
        if (settings > 1) snprintf(dir, sizeof dir, "%s/setting-%03d", argv[1], st);
        else snprintf(dir, sizeof dir, "%s", argv[1]);
        done += status_parts(dir, tasks, &missing);
    }
    printf("%d of %d part(s) done, %d missing\n", done, tasks * settings, missing);
    return QK_EXIT_OK;
}
