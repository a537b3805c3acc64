// commands.h: the CLI subcommands.  Each takes the arguments after its name (argv[0] is the
// command name) and returns the process exit status (base/exit_status.h).
#pragma once
#include "base/exit_status.h"

int cmd_cache(int argc, char **argv);     // run_with_cache for C users (cmd_cache.c)
int cmd_tokenize(int argc, char **argv);  // GPT-2 BPE encode / decode (cmd_tokenize.c)
int cmd_static(int argc, char **argv);    // weights-only feature maps (cmd_static.c)
int cmd_run(int argc, char **argv);       // the corpus analysis (cmd_run.c)
int cmd_merge(int argc, char **argv);     // one file over the shards of a run (cmd_merge.c)
int cmd_info(int argc, char **argv);      // describe a file or folder (cmd_info.c)
int cmd_plan(int argc, char **argv);      // split a corpus for Slurm tasks (cmd_slurm.c)
int cmd_submit(int argc, char **argv);    // write and submit the sbatch scripts (cmd_slurm.c)
int cmd_status(int argc, char **argv);    // progress of a submitted sweep (cmd_slurm.c)
int cmd_planted(int argc, char **argv);   // synthetic GPT-2 + SAEs with planted circuits (cmd_planted.c)
int cmd_report(int argc, char **argv);    // one HTML page of a run (cmd_report.c)
int cmd_random(int argc, char **argv);    // random GPT-2-shaped model + SAEs for benchmarks (cmd_random.c)
int cmd_probe(int argc, char **argv);     // probe corpora for known circuits, recovery scores (cmd_probe.c)
