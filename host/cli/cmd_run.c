// cmd_run.c: `qkscope run CONFIG -o OUT.h5`: the command line of the corpus analysis; the run
// itself is run/run_loop.c (one process) or run/run_ranks.c (--gpus / --ranks).
#include <stdio.h>

#include "base/util.h"
#include "cli/commands.h"
#include "run/run_loop.h"
#include "run/run_ranks.h"
#include "run/run_setup.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope run CONFIG -o OUT.h5 [--set section.key=value ...]\n\n"
            "The feature-space attention analysis of a corpus (docs/ANALYSIS.md): for every analysed head,\n"
            "corpus aggregates (metric means and histograms, heavy-hitter feature pairs, per-feature\n"
            "marginals); for the recorded heads, per-token records (look-for features, attended keys,\n"
            "the decomposition of their scores into feature pairs, fidelity metrics).  CONFIG is an INI\n"
            "file (configs/README.md documents every key); the output layout is docs/FORMAT.md.\n\n"
            "  --set S.K=V        override a config key, e.g. --set analysis.k=16 (repeatable)\n"
            "  -o, --output PATH  the HDF5 file (written as PATH.tmp, renamed when complete); with\n"
            "                     [output] shard_tokens > 0, a folder of shards PATH/shard-NNNNNN.h5 (each\n"
            "                     complete on its own) and PATH/manifest.json\n"
            "  --resume           continue a sharded run after its last complete shard (the config must\n"
            "                     give the same analysis: config_hash is checked); starts fresh if none\n"
            "  --part P/N         analyse only part P (0-based) of the corpus split into N (qkscope plan;\n"
            "                     the Slurm array task P)\n"
            "  --gpus all|N|LIST  one process, several GPUs: a rank per GPU (every visible one, the first N,\n"
            "                     or a comma-separated list of device ordinals), each with a host thread and\n"
            "                     a CUDA backend; weights broadcast and aggregates reduced with NCCL\n"
            "  --ranks N          the same with N ranks on the CPU backend (threads; the OpenMP threads are\n"
            "                     split between them): a machine without GPUs, and the tests\n"
            "                     With either, PATH is a folder of shards as with shard_tokens > 0 (0 there\n"
            "                     means 64 batches a shard): shard s is analysed by rank s mod R, and the\n"
            "                     aggregates of the whole run, reduced over the ranks, go to PATH/aggregates.h5;\n"
            "                     `qkscope merge PATH` gives what a one-rank run gives\n"
            "  -q, --quiet        no progress, notices or summary\n"
            "\nExit status: 0 done; 1 error; 2 usage; 75 a sharded run stopped by SIGTERM/SIGINT/SIGUSR1\n"
            "after the batch in flight, the open shard closed as a checkpoint (requeue with --resume);\n"
            "128 + the signal (130 for Ctrl-C) a single-file run stopped so, which writes nothing.  A\n"
            "second signal exits at once with the same status (the open file or shard is removed; the\n"
            "output stays consistent).\n"
            "  -h, --help         this text\n");
}

int cmd_run(int argc, char **argv) {
    RunArgs a;
    int st = run_args_parse(argc, argv, "run", 1, usage, &a);
    if (st >= 0) return st;
    if (a.gpus || a.ranks) return run_ranks(&a);
    st = run_single(&a);  // exit status, or -1
    if (st < 0) {
        fprintf(stderr, "qkscope run: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return st;
}
