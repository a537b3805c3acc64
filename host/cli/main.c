// main.c: `qkscope COMMAND [options]`: dispatches to the commands of commands.h.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "base/cpu_features.h"
#include "base/util.h"
#include "cli/commands.h"
#include "cli/version.h"

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} Command;

static const Command k_commands[] = {
    {"run", cmd_run, "the feature-space attention analysis of a corpus, for every head (config: configs/)"},
    {"static", cmd_static, "weights-only feature-to-feature maps (q2k, k2q, key prior) for every head"},
    {"merge", cmd_merge, "one file over all shards of a sharded run (virtual datasets, summed aggregates)"},
    {"plan", cmd_plan, "split a corpus into N deterministic parts for Slurm array tasks"},
    {"submit", cmd_submit, "write and submit a Slurm job array over the parts, and a merge job after it"},
    {"status", cmd_status, "which parts of a submitted sweep are done, running, failed or missing"},
    {"report", cmd_report, "one self-contained HTML page of a run: metric grids, pairs, example contexts as text"},
    {"info", cmd_info, "describe a run file, a sharded run folder, a model folder or an SAE folder"},
    {"cache", cmd_cache, "run GPT-2 on token windows and write TransformerLens hooks (and SAE codes) to HDF5"},
    {"tokenize", cmd_tokenize, "GPT-2 byte-level BPE: text to token ids, or ids back to text"},
    {"planted", cmd_planted, "write a tiny synthetic GPT-2 + SAEs with planted circuits (offline demo, checks)"},
    {"probe", cmd_probe, "probe corpora for known circuits (induction, IOI) and recovery scores from a run"},
    {"random", cmd_random, "write a random GPT-2-shaped model, SAEs and corpus at real sizes (benchmarks)"},
};
#define N_COMMANDS (int)(sizeof k_commands / sizeof k_commands[0])

static void usage(FILE *f) {
    fprintf(f,
            "qkscope: which SAE features at the query look for which features at the key, for every\n"
            "attention head of GPT-2.\n\n"
            "usage: qkscope COMMAND [options]      (qkscope COMMAND --help for its options)\n"
            "       qkscope --version              version, commit, build flags, CUDA and NCCL\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", k_commands[i].name, k_commands[i].summary);
}

int main(int argc, char **argv) {
    // Idle OpenMP threads sleep instead of spinning: the pipeline has serial stretches and its own
    // threads (tokenizer, compression) that spinning threads would starve.  libgomp reads the
    // variable when it loads, before main, so it is set and the program re-executed once.  A
    // user's own OMP_WAIT_POLICY wins.
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
    }
    // qkscope closes every HDF5 object itself.  Without this, HDF5's exit handler retries closing a
    // file whose close already failed (a full disk) and crashes inside the library.
    H5dont_atexit();
    if (qk_cpu_check()) {
        fprintf(stderr, "qkscope: %s\n", qk_errmsg());
        return QK_EXIT_USAGE;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? QK_EXIT_USAGE : QK_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        qk_print_version(stdout);
        return QK_EXIT_OK;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], k_commands[i].name)) return k_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qkscope: unknown command '%s' (qkscope --help lists them)\n", argv[1]);
    return QK_EXIT_USAGE;
}
