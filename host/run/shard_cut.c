// shard_cut.c: the corpus cut into pieces, shards and skips (shard_cut.h).
#include <stdint.h>
#include <string.h>

#include "base/util.h"
#include "run/shard_cut.h"

void shard_cut_init(ShardCut *c, QkCorpus *corpus, int64_t skip_windows, int64_t shard_windows, int64_t max_tokens) {
    memset(c, 0, sizeof *c);
    c->corpus = corpus;
    c->skip = skip_windows;
    c->shard_windows = shard_windows;
    c->max_tokens = max_tokens;
    c->shard_end = -1;
}

int shard_cut_next(ShardCut *c, ShardPiece *p) {
    for (;;) {
        if (c->end) return 0;
        if (c->off == c->wb.n) {
            double t = qk_now();
            int got = qk_corpus_next_batch(c->corpus, &c->wb);
            c->read_s += qk_now() - t;
            c->off = 0;
            if (got <= 0) {
                c->wb.n = 0;
                c->end = 1;
                return got < 0 ? -1 : 0;
            }
        }
        int avail = c->wb.n - c->off;
        if (c->skip > 0) {  // windows of shards a previous run completed
            int take = (int)(c->skip < avail ? c->skip : avail);
            c->skip -= take, c->off += take, c->window += take;
            continue;
        }
        if (c->max_tokens && c->tokens >= c->max_tokens) {
            c->end = 1;
            return 0;
        }
        p->starts_shard = c->shard_end < 0;
        if (c->shard_end < 0)
            c->shard_end = c->shard_windows ? (c->window / c->shard_windows + 1) * c->shard_windows : INT64_MAX;
        int take = (int)(avail < c->shard_end - c->window ? avail : c->shard_end - c->window);
        p->off = c->off, p->n = take, p->first_window = c->window;
        for (int b = 0; b < take; b++) c->tokens += c->wb.length[c->off + b];
        c->off += take, c->window += take;
        p->ends_shard = c->window == c->shard_end;
        if (p->ends_shard) c->shard_end = -1;
        p->ends_batch = c->off == c->wb.n;
        return 1;
    }
}

void shard_cut_free(ShardCut *c) { qk_window_batch_free(&c->wb); }
