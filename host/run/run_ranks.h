// run_ranks.h: multi-rank `qkscope run` (--gpus / --ranks): one host thread a rank, the corpus
// read once and cut into shards (shard_cut.h), shard s analysed by rank s mod R with the Run of
// run_loop.h, the aggregates reduced over a communicator (comm.h) at the end.
#pragma once
#include "run/run_setup.h"

// The `qkscope run` of RunArgs with --gpus or --ranks; returns the exit status (errors printed).
int run_ranks(const RunArgs *a);
