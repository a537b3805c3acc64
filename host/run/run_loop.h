// run_loop.h: the run of `qkscope run`: a corpus through GPT-2, the SAE code of every analysed
// layer and the analysis of every analysed head (docs/ANALYSIS.md), into one file or a folder
// of shards with a manifest (docs/FORMAT.md).  One Run does this for a single process
// (run_single) and for each rank of a multi-rank run (run_ranks.c, through the RunRank
// functions below): the same code opens and closes outputs and shards, writes the records and
// the manifest, and the corpus is cut by the same rule (shard_cut.h).
#pragma once
#include <stdint.h>

#include "analysis/analysis.h"
#include "backend.h"
#include "run/run_setup.h"
#include "text/corpus.h"

// The file name of shard S of a run folder (docs/FORMAT.md), a printf format of an int.
#define QK_SHARD_NAME "shard-%06d.h5"

// The `qkscope run` of RunArgs without --gpus / --ranks: the exit status (base/exit_status.h),
// or -1 with qk_errmsg.
int run_single(const RunArgs *a);

typedef struct RunRank RunRank;

// A rank over the setup s (config, model, SAEs: loaded once and shared read-only by every rank;
// its hashes joined; s->cfg.backend / device / threads are this rank's), shards written into the
// folder out_path.  corpus: NULL for the rank that opens it (run_rank_corpus then gives it to the
// others; that rank closes it).  NULL with qk_errmsg on failure.
RunRank *run_rank_open(const RunSetup *s, QkCorpus *corpus, const char *out_path);
void run_rank_close(RunRank *rr);
QkCorpus *run_rank_corpus(RunRank *rr);
QkBackend *run_rank_backend(RunRank *rr);
const GPT2Model *run_rank_model(const RunRank *rr);  // the model its backend runs (for share_weights)
const char *run_rank_config_hash(const RunRank *rr);
int64_t run_rank_shard_windows(const RunRank *rr);  // windows per shard

// The output folder (one rank, before the others start): a fresh one, or with resume the windows
// of the complete shards before the first missing one, and that shard's index.
int run_rank_prepare(RunRank *rr, int resume, int64_t *skip_windows, int *first_shard);

// One shard: open (its first window is corpus window first_window), the windows of each piece
// through the model and every analysed head, then close (written and renamed into place, its
// aggregates added to totals[L*H] first) or abandon (on a stop: removed).
int run_rank_open_shard(RunRank *rr, int shard, int64_t first_window);
int run_rank_process(RunRank *rr, const QkWindowBatch *piece);
int run_rank_close_shard(RunRank *rr, HeadAggregates *totals);
void run_rank_abandon_shard(RunRank *rr);
// After the last shard: adds to totals what close_shard did not ([output] write = false).
int run_rank_finish(RunRank *rr, HeadAggregates *totals);
int64_t run_rank_tokens(const RunRank *rr);   // processed by this rank
int64_t run_rank_windows(const RunRank *rr);
// The windows analysed in the open shard, whose index goes to *shard; -1 when none is open.
int64_t run_rank_open_windows(const RunRank *rr, int *shard);

// OUT/manifest.json listing shards 0..n_shards-1, with the rank count and the aggregates file
// (NULL: none yet).
int run_rank_write_manifest(const RunRank *rr, int n_shards, int done, int ranks, const char *aggregates);

// The SIGTERM / SIGINT / SIGUSR1 handling of `qkscope run`; the signal received (0: none).
void run_rank_install_signals(void);
int run_rank_stop_signal(void);
