// run_ranks.c: `qkscope run --gpus all|N|LIST` and `--ranks N`: one process, R ranks, one
// host thread each (run_ranks.h), each a Run of run_loop.h.  The config, model and SAEs are read from disk once and shared;
// each rank has its own backend (GPU ranks get the weights from rank 0's GPU over NCCL:
// QkBackend.share_weights).  The corpus is read once (a Feed) and cut into the shards of a
// sharded run, shard s going to rank s mod R: the pieces (batches cut at shard boundaries by
// shard_cut.h) are exactly those a one-rank run analyses, so every per-window record is identical.  Shards are
// written as OUT/shard-NNNNNN.h5 by their rank, the manifest lists the complete ones, and at the
// end the aggregates are reduced over the communicator (agg_comm.h: deterministic) and written
// once as OUT/aggregates.h5, which `qkscope merge OUT` takes instead of summing the shards.
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/exit_status.h"
#include "base/util.h"
#include "io/agg_io.h"
#include "io/h5out.h"
#include "run/agg_comm.h"
#include "run/comm.h"
#include "run/run_loop.h"
#include "run/run_ranks.h"
#include "run/shard_cut.h"

#define MAX_RANKS 1024
#define RANK_SHARD_BATCHES 64  // shard size when [output] shard_tokens = 0: batches per shard

// ---------------------------------------------------------------------------------------------
// --gpus all|N|LIST

// Parses SPEC: "all" (devices = NULL, *n = -1), a count N (0..N-1), or a comma-separated list of
// ordinals ("3," is device 3 alone).  A repeated device or a malformed entry is an error.
static int parse_gpus(const char *spec, int *devices, int *n) {
    *n = 0;
    if (!strcmp(spec, "all")) return *n = -1, 0;
    if (!strchr(spec, ',')) {
        char *end;
        long v = strtol(spec, &end, 10);
        if (*end || end == spec || v < 1 || v > MAX_RANKS)
            return qk_err("--gpus '%s': expected all, a GPU count N, or a list of device ordinals such as 0,2,3", spec);
        for (int i = 0; i < v; i++) devices[i] = i;
        return *n = (int)v, 0;
    }
    for (const char *p = spec; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 65535 || (*end && *end != ','))
            return qk_err("--gpus '%s': '%.*s' is not a device ordinal", spec, (int)strcspn(p, ","), p);
        for (int i = 0; i < *n; i++)
            if (devices[i] == v) return qk_err("--gpus '%s': device %ld listed twice (one rank per GPU)", spec, v);
        if (*n == MAX_RANKS) return qk_err("--gpus '%s': more than %d devices", spec, MAX_RANKS);
        devices[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return 0;
}

// The devices of a parsed --gpus against the visible ones.
static int resolve_gpus(const char *spec, int *devices, int *n) {
    char why[256] = "";
    int visible = qk_cuda_probe(why, sizeof why);
    if (visible < 1) return qk_err("--gpus %s: no usable CUDA device (%s)", spec, why);
    if (*n < 0) {
        *n = visible < MAX_RANKS ? visible : MAX_RANKS;
        for (int i = 0; i < *n; i++) devices[i] = i;
    }
    for (int i = 0; i < *n; i++)
        if (devices[i] >= visible)
            return qk_err("--gpus %s: %s %d but only %d CUDA device(s) visible", spec, strchr(spec, ',') ? "device" : "count",
                          strchr(spec, ',') ? devices[i] : *n, visible);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The feed: the corpus read once, in order, into whole shards; shard s waits in slot s mod R
// until rank s mod R takes it, so the reading runs at most one shard ahead of each rank.

typedef struct {
    int index;
    int64_t first_window, windows;
    QkWindowBatch *piece;  // (n_pieces) copies of corpus batches cut at the shard's bounds
    int n_pieces;
} Shard;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ShardCut cut;              // the corpus, cut as a one-rank run cuts it
    int ranks;
    Shard **slot;              // (ranks) shard read and not taken yet
    int next_read;             // index of the next shard to read
    int reading;               // a rank is reading it (outside mu: only the reader touches cut)
    int eof;                   // no shard from next_read on
    int stop;                  // a rank failed, or a signal: everyone stops
    char error[1024];          // the corpus error, when reading failed
    // Completed shards: manifest.json lists the prefix 0..complete-1.
    uint8_t *done;             // (done_cap) by shard index
    int done_cap, complete;
    int64_t tokens_done;       // processed by all ranks (progress)
    int ranks_running;
} Feed;

static void shard_free(Shard *s) {
    if (!s) return;
    for (int p = 0; p < s->n_pieces; p++) qk_window_batch_free(&s->piece[p]);
    free(s->piece);
    free(s);
}

// Windows [off, off + n) of batch b as a new piece of s.
static void add_piece(Shard *s, const QkWindowBatch *b, int off, int n) {
    s->piece = qk_realloc(s->piece, sizeof(QkWindowBatch) * (s->n_pieces + 1));
    QkWindowBatch *p = &s->piece[s->n_pieces++];
    const size_t T = (size_t)b->n_ctx;
    *p = (QkWindowBatch){.n = n, .n_ctx = b->n_ctx, .cap = n};
    p->tokens = qk_malloc(sizeof(int32_t) * n * T), p->length = qk_malloc(sizeof(int32_t) * n);
    p->prov = qk_malloc(sizeof(QkProvenance) * n);
    memcpy(p->tokens, b->tokens + off * T, sizeof(int32_t) * n * T);
    memcpy(p->length, b->length + off, sizeof(int32_t) * n);
    memcpy(p->prov, b->prov + off, sizeof(QkProvenance) * n);
    s->windows += n;
}

// Reads shard `index` (the reader only, outside f->mu): the pieces of f->cut up to the end of
// a shard.  *out NULL when the corpus has no more windows; *end 1 when it has none after this
// shard; -1 on a corpus error.
static int read_shard(Feed *f, int index, Shard **out, int *end) {
    Shard *s = qk_calloc(1, sizeof *s);
    s->index = index;
    *end = 0;
    ShardPiece p;
    for (;;) {
        int got = shard_cut_next(&f->cut, &p);
        if (got < 0) {
            shard_free(s);
            return -1;
        }
        if (got == 0) {
            *end = 1;
            break;
        }
        if (p.starts_shard) s->first_window = p.first_window;
        add_piece(s, &f->cut.wb, p.off, p.n);
        if (p.ends_shard) break;
    }
    if (!s->windows) {
        shard_free(s);
        s = NULL;
    }
    *out = s;
    return 0;
}

static void feed_stop(Feed *f) {
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

// Shard `want` for its rank: 1 and *out (free with shard_free), 0 when the corpus has no such
// shard, -1 when the run stops (f->error set if the corpus failed).
static int feed_take(Feed *f, int want, Shard **out) {
    *out = NULL;
    pthread_mutex_lock(&f->mu);
    int rc;
    for (;;) {
        if (run_rank_stop_signal()) f->stop = 1;
        Shard *ready = f->slot[want % f->ranks];
        if (f->stop) rc = -1;
        else if (ready && ready->index == want) {
            f->slot[want % f->ranks] = NULL;
            *out = ready;
            rc = 1;
        } else if (f->eof && want >= f->next_read) rc = 0;
        else if (!f->eof && !f->reading && f->next_read <= want && !f->slot[f->next_read % f->ranks]) {
            // This rank reads the next shard; the others go on meanwhile (taking theirs, counting).
            f->reading = 1;
            int index = f->next_read, end;
            pthread_mutex_unlock(&f->mu);
            Shard *s;
            int bad = read_shard(f, index, &s, &end);
            char why[1024];
            snprintf(why, sizeof why, "%s", bad ? qk_errmsg() : "");
            pthread_mutex_lock(&f->mu);
            f->reading = 0;
            pthread_cond_broadcast(&f->cv);
            if (bad) {
                snprintf(f->error, sizeof f->error, "%s", why);
                f->stop = f->eof = 1;
                rc = -1;
                break;
            }
            if (s) f->slot[f->next_read++ % f->ranks] = s;
            f->eof |= end || !s;
            continue;
        } else {  // wait for another rank: to read, or to take its shard; or for a signal
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
            continue;
        }
        break;
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

// Shard `index` is complete: the manifest lists the complete prefix (written by the rank that
// extends it).
static int feed_shard_done(Feed *f, const RunRank *rr, int index) {
    pthread_mutex_lock(&f->mu);
    if (index >= f->done_cap) {
        int cap = 2 * index + 16;
        f->done = qk_realloc(f->done, cap);
        memset(f->done + f->done_cap, 0, cap - f->done_cap);
        f->done_cap = cap;
    }
    f->done[index] = 1;
    int before = f->complete, rc = 0;
    while (f->complete < f->done_cap && f->done[f->complete]) f->complete++;
    if (f->complete > before) rc = run_rank_write_manifest(rr, f->complete, 0, f->ranks, NULL);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static void feed_add_tokens(Feed *f, int64_t tokens) {
    pthread_mutex_lock(&f->mu);
    f->tokens_done += tokens;
    pthread_mutex_unlock(&f->mu);
}

// ---------------------------------------------------------------------------------------------
// One rank

typedef struct {
    int ranks, threads, write;
    int first;                 // the first shard of this rank
    RunRank *rr;
    QkComm *comm;
    Feed *feed;
    int n_heads;               // L*H
    HeadAggregates *totals;    // (n_heads) this rank's shards, then (reduced) the whole run's
    HeadAggregates **analysed; // (n_heads) &totals[i] for analysed heads, else NULL
    int rc, stopped;
    char error[1024];
} Rank;

// The shards of this rank, one after another.
static int rank_shards(Rank *k) {
    for (int want = k->first;; want += k->ranks) {
        Shard *s;
        int got = feed_take(k->feed, want, &s);
        if (got < 0) return k->feed->error[0] ? qk_err("%s", k->feed->error) : (k->stopped = 1, 0);
        if (got == 0) return 0;
        int rc = run_rank_open_shard(k->rr, s->index, s->first_window);
        for (int p = 0; !rc && p < s->n_pieces; p++) {
            if (run_rank_stop_signal()) {
                k->stopped = 1;
                break;
            }
            int64_t before = run_rank_tokens(k->rr);
            rc = run_rank_process(k->rr, &s->piece[p]);
            feed_add_tokens(k->feed, run_rank_tokens(k->rr) - before);
        }
        if (!rc && !k->stopped) rc = run_rank_close_shard(k->rr, k->totals);
        else if (rc) run_rank_abandon_shard(k->rr);  // (a stop leaves it open: checkpoint() decides)
        if (!rc && !k->stopped && k->write) rc = feed_shard_done(k->feed, k->rr, s->index);
        shard_free(s);
        if (rc) return -1;
        if (k->stopped) return 0;
    }
}

static void *rank_main(void *arg) {
    Rank *k = arg;
    omp_set_num_threads(k->threads);
    QkBackend *be = run_rank_backend(k->rr);
    int rc = be->share_weights ? be->share_weights(be, run_rank_model(k->rr), k->comm, 0) : 0;
    if (!rc) rc = rank_shards(k);
    if (rc) {
        snprintf(k->error, sizeof k->error, "%s", qk_errmsg());
        feed_stop(k->feed);
    }
    // Every rank gets here, whatever happened: they agree whether to reduce the aggregates.
    int64_t status[2] = {rc != 0, k->stopped};
    if (k->comm->allreduce_i64(k->comm, status, 2)) {
        if (!rc) snprintf(k->error, sizeof k->error, "%s", qk_errmsg());
        rc = -1;
    } else if (!status[0] && !status[1]) {
        // A failed flush still joins the reduction (a collective), then fails the run.
        int frc = run_rank_finish(k->rr, k->totals);
        if (frc) snprintf(k->error, sizeof k->error, "%s", qk_errmsg());
        if (head_aggs_allreduce(k->comm, k->analysed, k->n_heads) && !frc) {
            snprintf(k->error, sizeof k->error, "%s", qk_errmsg());
            frc = -1;
        }
        if (frc) rc = -1;
    } else
        k->stopped |= !rc;  // another rank failed or stopped: this one stops too
    k->rc = rc;
    pthread_mutex_lock(&k->feed->mu);
    k->feed->ranks_running--;
    pthread_cond_broadcast(&k->feed->cv);
    pthread_mutex_unlock(&k->feed->mu);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// The driver

typedef struct {
    RunSetup s;
    int n;                   // ranks
    int devices[MAX_RANKS];  // GPU ranks: their devices
    int gpu;                 // 1: --gpus (CUDA + NCCL), 0: --ranks (CPU + threads)
    QkComm **comm;           // (n)
    Rank *rank;              // (n)
    Feed feed;
    int L, H;
    int64_t skip_windows, skip_tokens;
    int first_shard;
    RunEta eta;              // the progress line's estimate
} Ranks;

// After a stop (every rank joined): the first shard not complete, if a rank has it open with
// windows analysed and no later shard is complete, is closed as a complete shorter shard, the
// checkpoint of a one-rank run; every other open shard is abandoned (--resume redoes it).
static int checkpoint(Ranks *g) {
    Feed *f = &g->feed;
    int first = f->complete, later = 0, rc = 0;
    for (int j = first + 1; j < f->done_cap; j++) later |= f->done[j];
    for (int r = 0; r < g->n; r++) {
        RunRank *rr = g->rank[r].rr;
        int s;
        int64_t w = run_rank_open_windows(rr, &s);
        if (w > 0 && s == first && !later && g->s.cfg.write && !rc) {
            rc = run_rank_close_shard(rr, g->rank[r].totals);
            if (!rc) rc = feed_shard_done(f, rr, s);
        } else if (w >= 0)
            run_rank_abandon_shard(rr);
    }
    return rc;
}

// OUT/aggregates.h5: the whole run's aggregates, written once (docs/FORMAT.md).
static int write_aggregates(Ranks *g, const char *out_dir, int64_t windows, int64_t tokens, int shards) {
    QkH5Out o = {0};
    char *path = qk_path_join(out_dir, "aggregates.h5");
    int rc = qk_h5_create(&o, path) || run_setup_write_identity(&g->s, o.file, "qkscope-run-aggregates") ||
             qk_h5_attr_str(o.file, "config_hash", run_rank_config_hash(g->rank[0].rr)) ||
             qk_h5_attr_int(o.file, "windows", windows) || qk_h5_attr_int(o.file, "tokens_processed", tokens) ||
             qk_h5_attr_int(o.file, "shards", shards) || qk_h5_attr_int(o.file, "ranks", g->n) ||
             qk_h5_attr_str(o.file, "backend", run_rank_backend(g->rank[0].rr)->name) ||
             agg_write_all(&o, NULL, g->L, g->H, (const HeadAggregates *const *)g->rank[0].analysed);
    if (!rc) rc = qk_h5_finish(&o);
    else if (o.file) qk_h5_abort(&o);
    free(path);
    return rc ? -1 : 0;
}

// Resume: the aggregates of the complete shards a previous run wrote enter rank 0's totals.
static int add_skipped_shards(Ranks *g, const char *out_dir) {
    for (int s = 0; s < g->first_shard; s++) {
        char name[64];
        snprintf(name, sizeof name, QK_SHARD_NAME, s);
        char *path = qk_path_join(out_dir, name);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        int rc = f < 0 ? qk_err("%s: cannot open", path) : 0;
        for (int i = 0; !rc && i < g->L * g->H; i++)
            if (g->rank[0].analysed[i]) rc = agg_read_add(f, path, i / g->H, i % g->H, g->rank[0].analysed[i]);
        if (!rc) g->skip_tokens += qk_h5_attr_read_int(f, "tokens_processed");
        if (f >= 0) H5Fclose(f);
        free(path);
        if (rc) return -1;
    }
    return 0;
}

// The setup, the communicator and every rank (opened one after another on this thread).
static int open_ranks(Ranks *g, const RunArgs *a) {
    if (run_setup_open(&g->s, a->config, (char **)a->sets, a->n_sets, a->quiet, a->out, QK_OUT_FOLDER)) return -1;
    RunConfig *c = &g->s.cfg;
    c->part = a->part, c->n_parts = a->n_parts;
    if (!c->shard_tokens) {  // ranks write shards: 64 batches a shard unless the config says
        c->shard_tokens = (int64_t)RANK_SHARD_BATCHES * c->batch * c->n_ctx;
        if (!a->quiet && c->write)
            fprintf(stderr, "qkscope run: %d ranks write shards: %s is a folder of shards of %lld tokens\n", g->n, a->out,
                    (long long)c->shard_tokens);
    }
    if (run_setup_hashes_ready(&g->s)) return -1;
    hbool_t threadsafe = 0;
    H5is_library_threadsafe(&threadsafe);
    if (g->n > 1 && c->write && !threadsafe)
        return qk_err("%d ranks write shards at once, which needs an HDF5 library built thread-safe; this one is not "
                      "(use one rank, or [output] write = false)", g->n);
    g->L = g->s.model.cfg.n_layer, g->H = g->s.model.cfg.n_head;
    int rc = g->gpu ? qk_comm_nccl_create_group(g->n, g->devices, g->comm) : qk_comm_cpu_create_group(g->n, g->comm);
    if (rc) return -1;
    int total = c->threads ? c->threads : omp_get_max_threads(), per = total / g->n > 0 ? total / g->n : 1;
    for (int r = 0; r < g->n; r++) {
        Rank *k = &g->rank[r];
        RunSetup rs = g->s;  // this rank's backend, device and share of the threads
        rs.cfg.backend = g->gpu ? (char *)"cuda" : (char *)"cpu";
        rs.cfg.device = g->gpu ? g->devices[r] : 0;
        rs.cfg.threads = per;
        RunRank *rr = run_rank_open(&rs, r ? run_rank_corpus(g->rank[0].rr) : NULL, a->out);
        if (!rr) return qk_err("rank %d: %s", r, qk_errmsg());
        *k = (Rank){.ranks = g->n, .threads = per, .write = c->write, .rr = rr, .comm = g->comm[r],
                    .feed = &g->feed, .n_heads = g->L * g->H};
        k->totals = qk_calloc(k->n_heads, sizeof(HeadAggregates));
        k->analysed = qk_calloc(k->n_heads, sizeof(HeadAggregates *));
        for (int i = 0; i < k->n_heads; i++)
            if (g->s.analysed[i]) {
                head_agg_init(&k->totals[i], g->s.sae[i / g->H]->d_sae, c->sketch_capacity);
                k->analysed[i] = &k->totals[i];
            }
    }
    if (run_rank_prepare(g->rank[0].rr, a->resume, &g->skip_windows, &g->first_shard) ||
        add_skipped_shards(g, a->out))
        return -1;
    for (int r = 0; r < g->n; r++)  // shard s goes to rank s mod n; a resumed run starts at first_shard
        g->rank[r].first = g->first_shard + ((r - g->first_shard) % g->n + g->n) % g->n;
    if (g->first_shard && !a->quiet)
        fprintf(stderr, "qkscope run: resuming after %d complete shard(s), %lld windows\n", g->first_shard,
                (long long)g->skip_windows);
    Feed *f = &g->feed;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    shard_cut_init(&f->cut, run_rank_corpus(g->rank[0].rr), g->skip_windows, run_rank_shard_windows(g->rank[0].rr),
                   c->max_tokens);
    f->ranks = g->n;
    f->slot = qk_calloc(g->n, sizeof(Shard *));
    f->next_read = f->complete = g->first_shard;
    return 0;
}

static void close_ranks(Ranks *g) {
    for (int r = g->n - 1; r >= 0; r--) {  // rank 0, which owns the corpus, last
        Rank *k = &g->rank[r];
        run_rank_close(k->rr);
        for (int i = 0; k->totals && i < k->n_heads; i++)
            if (k->analysed[i]) head_agg_free(&k->totals[i]);
        free(k->totals), free(k->analysed);
    }
    qk_comm_free_group(g->comm, g->n);
    Feed *f = &g->feed;
    if (f->slot) {
        for (int r = 0; r < g->n; r++) shard_free(f->slot[r]);
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
    }
    free(f->slot), free(f->done);
    shard_cut_free(&f->cut);
    run_setup_close(&g->s);
}

// Runs the ranks' threads; this thread prints progress until they are done.
static void run_threads(Ranks *g, int quiet) {
    pthread_t *th = qk_calloc(g->n, sizeof(pthread_t));
    Feed *f = &g->feed;
    f->ranks_running = g->n;
    for (int r = 0; r < g->n; r++) pthread_create(&th[r], NULL, rank_main, &g->rank[r]);
    double t0 = qk_now(), last = t0, period = isatty(2) ? 1 : g->s.cfg.progress_seconds;
    pthread_mutex_lock(&f->mu);
    while (f->ranks_running) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        double now = qk_now();
        if (!quiet && f->ranks_running && now - last >= period) {
            last = now;
            char eta[64];
            run_eta(&g->eta, run_rank_corpus(g->rank[0].rr), g->s.cfg.max_tokens, f->tokens_done, now, eta, sizeof eta);
            fprintf(stderr, "qkscope run: %d ranks: %lld tokens, %.0f tokens/s%s, %d shard(s) complete\n", g->n,
                    (long long)f->tokens_done, f->tokens_done / (now - t0), eta, f->complete);
        }
    }
    pthread_mutex_unlock(&f->mu);
    for (int r = 0; r < g->n; r++) pthread_join(th[r], NULL);
    free(th);
}

int run_ranks(const RunArgs *a) {
    Ranks *g = qk_calloc(1, sizeof *g);
    g->gpu = a->gpus != NULL;
    int rc = 0;
    if (g->gpu && parse_gpus(a->gpus, g->devices, &g->n)) {
        fprintf(stderr, "qkscope run: %s\n", qk_errmsg());
        free(g);
        return QK_EXIT_USAGE;
    }
    if (!g->gpu) g->n = a->ranks;
    if (g->gpu) rc = resolve_gpus(a->gpus, g->devices, &g->n);
    double t0 = qk_now();
    if (!rc) {
        g->comm = qk_calloc(g->n, sizeof(QkComm *));
        g->rank = qk_calloc(g->n, sizeof(Rank));
        rc = open_ranks(g, a);
    }
    int stopped = 0;
    int64_t windows = 0, tokens = 0;
    if (!rc) {
        run_rank_install_signals();
        run_threads(g, a->quiet);
        for (int r = 0; r < g->n && !rc; r++)
            if (g->rank[r].rc) rc = qk_err("rank %d: %s", r, g->rank[r].error);
        for (int r = 0; r < g->n; r++) {
            stopped |= g->rank[r].stopped;
            windows += run_rank_windows(g->rank[r].rr), tokens += run_rank_tokens(g->rank[r].rr);
        }
    }
    int shards = g->feed.next_read, write = !rc && g->s.cfg.write;
    if (!rc && !stopped && windows + g->skip_windows == 0) rc = qk_err("%s: the corpus gave no windows", a->config);
    if (!rc && !stopped && write) {  // the whole run's aggregates, then the final manifest
        rc = write_aggregates(g, a->out, windows + g->skip_windows, tokens + g->skip_tokens, shards) ||
             run_rank_write_manifest(g->rank[0].rr, shards, 1, g->n, "aggregates.h5");
    }
    if (!rc && stopped) rc = checkpoint(g);
    if (!rc && stopped && write) rc = run_rank_write_manifest(g->rank[0].rr, g->feed.complete, 0, g->n, NULL);
    if (!rc && !stopped && !a->quiet) {
        agg_print_summary(stdout, g->L, g->H, (const HeadAggregates *const *)g->rank[0].analysed);
        double total = qk_now() - t0;
        fprintf(stderr, "qkscope run: %d %s ranks: %lld tokens in %.1f s (%.0f tokens/s) -> %s%s\n", g->n,
                g->gpu ? "GPU" : "CPU", (long long)tokens, total, tokens / total, a->out,
                write ? " (shards and aggregates.h5; `qkscope merge` combines them)" : "");
    }
    if (!rc && stopped && !a->quiet)
        fprintf(stderr, "qkscope run: signal %d: stopped after %d complete shard(s); exit %d (requeue and --resume)\n",
                run_rank_stop_signal(), g->feed.complete, QK_EXIT_INTERRUPTED);
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", rc ? qk_errmsg() : "");
    if (g->rank) close_ranks(g);
    free(g->comm), free(g->rank), free(g);
    if (rc) {
        fprintf(stderr, "qkscope run: %s\n", keep);
        return QK_EXIT_FAIL;
    }
    return stopped ? QK_EXIT_INTERRUPTED : QK_EXIT_OK;
}
