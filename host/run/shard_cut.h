// shard_cut.h: the corpus cut into the pieces a run analyses.  One rule for a single process
// (run_loop.c) and for the reader of a multi-rank run (run_ranks.c), so that both cut the same
// pieces and every per-window record is identical whatever the rank count:
//   - resume: the windows of complete shards (skip) are read and passed over;
//   - [corpus] max_tokens: no piece starts once that many tokens were handed out;
//   - shards end on multiples of shard_windows counted from window 0 of the run (or part), so a
//     shard closed early by a signal is followed, after --resume, by one that ends where the
//     interrupted one would have, and the rest are as in an uninterrupted run;
//   - a piece is a run of windows of one corpus batch inside one shard (a batch is cut at a
//     shard's end; without shards, shard_windows = 0, a piece is the rest of the batch).
#pragma once
#include <stdint.h>

#include "text/corpus.h"

typedef struct {
    QkCorpus *corpus;
    QkWindowBatch wb;        // the corpus batch being cut
    int off;                 // its windows already handed out or skipped
    int64_t skip;            // windows still to skip
    int64_t window;          // corpus window index of wb[off]
    int64_t shard_windows;   // windows per shard; 0: no shards
    int64_t max_tokens;      // 0: the whole corpus
    int64_t tokens;          // tokens of the windows handed out
    int64_t shard_end;       // corpus window where the open shard ends; -1: none open
    int end;                 // the corpus (or max_tokens) is done
    double read_s;           // seconds spent reading the corpus
} ShardCut;

// Windows [off, off + n) of cut->wb, corpus windows [first_window, first_window + n).
typedef struct {
    int off, n;
    int64_t first_window;
    int starts_shard;  // the first piece of a shard (of the run, without shards)
    int ends_shard;    // its last piece: the shard's windows are all handed out
    int ends_batch;    // the last piece of cut->wb
} ShardPiece;

void shard_cut_init(ShardCut *c, QkCorpus *corpus, int64_t skip_windows, int64_t shard_windows, int64_t max_tokens);
// The next piece: 1, 0 when there is none, -1 on a corpus error (qk_errmsg).  The piece's rows
// stay valid until the next call.
int shard_cut_next(ShardCut *c, ShardPiece *p);
void shard_cut_free(ShardCut *c);
