// chunk_writer.c: see chunk_writer.h.
#include "io/chunk_writer.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <libdeflate.h>

#include "base/util.h"
#include "io/h5out.h"

#define DEFLATE_LEVEL 1  // as qk_h5_dataset's filters
// Chunks in flight: at most RING_JOBS and RING_BYTES of raw chunk data (chunks are 64 KiB to
// 1 MiB), enough to absorb a batch's burst of records while the compute goes on.
#define RING_JOBS 1024
#define RING_BYTES ((size_t)64 << 20)

typedef struct {
    hid_t dset, type;
    int direct;          // chunks span whole rows: compressed here
    size_t row_bytes;    // bytes of one row (product of dims 1.. x element size)
    size_t elem;         // element size (the shuffle's stride)
    hsize_t chunk_rows;  // rows per chunk
    hsize_t rows;        // rows appended so far (the dataset's extent once flushed)
    hsize_t extent;      // the dataset's current extent along dim 0
    uint8_t *buf;        // (chunk_rows x row_bytes) the chunk being filled
    hsize_t buf_rows;    // rows in buf
    int owned;           // closed by cw_flush (cw_write_whole)
} Sink;

typedef struct {
    int sink;
    hsize_t chunk_index;
    uint8_t *raw;        // chunk bytes, owned
    size_t raw_bytes, elem;
    uint8_t *out;        // compressed, owned
    size_t out_bytes;
    int done, failed;
} Job;

struct ChunkWriter {
    Sink *sinks;
    int n_sinks;
    Job *jobs;           // ring of submitted jobs, written in order
    int cap, head, tail; // jobs[head..tail) are pending, in submission order
    int next_job;        // next job index to hand to a worker
    size_t pending_bytes;  // raw bytes of the jobs in the ring
    pthread_mutex_t mu;
    pthread_cond_t work, finished;
    pthread_t *threads;
    int n_threads, stop;
    double raw_total, out_total, seconds;  // statistics (under mu)
};

// HDF5's shuffle filter: byte b of element i goes to position b * n + i.
static void shuffle(const uint8_t *in, uint8_t *out, size_t bytes, size_t elem) {
    size_t n = bytes / elem;
    for (size_t b = 0; b < elem; b++)
        for (size_t i = 0; i < n; i++) out[b * n + i] = in[i * elem + b];
}

// Shuffles and deflates one chunk with the worker's compressor.  The output is a zlib stream, as
// HDF5's deflate filter writes it (any zlib stream inflates); libdeflate's level 1 is about twice
// zlib's speed at the same or better size (measured on qkscope's float records: 180-230 vs
// 100-140 MB/s per thread), which is what keeps the writer under the compute on a small CPU.
static void run_job(Job *j, struct libdeflate_compressor *c, uint8_t *sh) {
    if (j->elem > 1) shuffle(j->raw, sh, j->raw_bytes, j->elem);
    else memcpy(sh, j->raw, j->raw_bytes);
    size_t bound = libdeflate_zlib_compress_bound(c, j->raw_bytes);
    j->out = qk_malloc(bound);
    j->out_bytes = libdeflate_zlib_compress(c, sh, j->raw_bytes, j->out, bound);
    j->failed = j->out_bytes == 0;
}

// CPU seconds of the calling thread: the writer's throughput per thread, whatever else runs.
static double thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void *worker(void *arg) {
    ChunkWriter *w = arg;
    // Compression runs at idle priority: it fills the cores the compute leaves idle (serial
    // sections, waits on the GPU) instead of stretching the compute's parallel regions, where one
    // descheduled thread holds up the others.  When the ring is full the compute thread waits in
    // drain(), its core goes idle, and the workers run.  Measured on 2 cores (make bench-pipeline):
    // on/off 0.74-0.84 at normal priority, 0.93-0.95 at SCHED_IDLE.
    struct sched_param idle = {0};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(DEFLATE_LEVEL);
    uint8_t *sh = NULL;  // shuffle scratch, grown to the largest chunk
    size_t sh_bytes = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && w->next_job == w->tail) pthread_cond_wait(&w->work, &w->mu);
        if (w->stop && w->next_job == w->tail) break;
        Job *j = &w->jobs[w->next_job % w->cap];
        w->next_job++;
        pthread_mutex_unlock(&w->mu);
        double t = thread_cpu_seconds();
        if (j->raw_bytes > sh_bytes) sh = qk_realloc(sh, sh_bytes = j->raw_bytes);
        if (c) run_job(j, c, sh);
        else j->failed = 1;
        t = thread_cpu_seconds() - t;
        pthread_mutex_lock(&w->mu);
        w->seconds += t;
        w->raw_total += j->raw_bytes;
        w->out_total += j->out_bytes;
        j->done = 1;
        pthread_cond_broadcast(&w->finished);
    }
    pthread_mutex_unlock(&w->mu);
    libdeflate_free_compressor(c);
    free(sh);
    return NULL;
}

ChunkWriter *cw_open(int n_threads) {
    ChunkWriter *w = qk_calloc(1, sizeof *w);
    w->n_threads = n_threads < 1 ? 1 : n_threads;
    w->cap = RING_JOBS;  // bounded: memory does not grow with the output
    w->jobs = qk_calloc(w->cap, sizeof(Job));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_cond_init(&w->finished, NULL);
    w->threads = qk_calloc(w->n_threads, sizeof(pthread_t));
    for (int i = 0; i < w->n_threads; i++) pthread_create(&w->threads[i], NULL, worker, w);
    return w;
}

int cw_add(ChunkWriter *w, hid_t dset, hid_t mem_type) {
    hid_t space = H5Dget_space(dset), dcpl = H5Dget_create_plist(dset);
    hsize_t dims[8], chunk[8];
    int nd = H5Sget_simple_extent_dims(space, dims, NULL);
    int nc = H5Pget_chunk(dcpl, 8, chunk);
    H5Sclose(space), H5Pclose(dcpl);
    if (nd < 1 || nc != nd) return qk_err("chunk writer: dataset is not chunked");
    Sink s = {.dset = dset, .type = mem_type, .elem = H5Tget_size(mem_type), .chunk_rows = chunk[0], .rows = dims[0],
             .extent = dims[0]};
    s.row_bytes = s.elem;
    s.direct = 1;
    for (int d = 1; d < nd; d++) {
        s.row_bytes *= dims[d];
        s.direct &= chunk[d] == dims[d];
    }
    if (s.direct) s.buf = qk_malloc(s.chunk_rows * s.row_bytes);
    w->sinks = qk_realloc(w->sinks, sizeof(Sink) * (w->n_sinks + 1));
    w->sinks[w->n_sinks] = s;
    return w->n_sinks++;
}

// Writes finished jobs at the head of the ring, in order; with `all`, waits for every job.  With
// `discard`, drops them instead of writing.
static int drain(ChunkWriter *w, int all, int discard) {
    int rc = 0;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (w->head != w->tail && !w->jobs[w->head % w->cap].done && (all || w->tail - w->head == w->cap || w->pending_bytes > RING_BYTES))
            pthread_cond_wait(&w->finished, &w->mu);
        int ready = w->head != w->tail && w->jobs[w->head % w->cap].done;
        pthread_mutex_unlock(&w->mu);
        if (!ready) break;
        Job *j = &w->jobs[w->head % w->cap];
        Sink *s = &w->sinks[j->sink];
        hsize_t off[8] = {j->chunk_index * s->chunk_rows};  // other dims: 0 (whole rows)
        if (!rc && !discard && j->failed) rc = qk_err("chunk writer: deflate compression failed");
        if (!rc && !discard && H5Dwrite_chunk(s->dset, H5P_DEFAULT, 0, off, j->out_bytes, j->out) < 0) {
            char file[1024] = "?";
            H5Fget_name(s->dset, file, sizeof file);
            rc = qk_err("%s: writing a chunk failed (disk full?)", file);
        }
        size_t raw_bytes = j->raw_bytes;
        free(j->raw), free(j->out);
        memset(j, 0, sizeof *j);
        pthread_mutex_lock(&w->mu);
        w->pending_bytes -= raw_bytes;
        w->head++;
        pthread_mutex_unlock(&w->mu);
    }
    return rc;
}

// Hands the sink's filled buffer (a whole chunk) to the workers.
static int submit(ChunkWriter *w, int h) {
    Sink *s = &w->sinks[h];
    if (drain(w, 0, 0)) return -1;  // makes room when the ring is full
    hsize_t first_row = s->rows - s->buf_rows;
    Job j = {.sink = h, .chunk_index = first_row / s->chunk_rows, .raw = s->buf, .raw_bytes = s->chunk_rows * s->row_bytes,
             .elem = s->elem};
    s->buf = qk_malloc(s->chunk_rows * s->row_bytes);  // filled by appends; the last chunk is padded at flush
    s->buf_rows = 0;
    pthread_mutex_lock(&w->mu);
    w->jobs[w->tail % w->cap] = j;
    w->tail++;
    w->pending_bytes += j.raw_bytes;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static int set_extent(Sink *s) {
    if (s->extent >= s->rows) return 0;
    hid_t space = H5Dget_space(s->dset);
    hsize_t dims[8];
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    dims[0] = s->rows;
    if (H5Dset_extent(s->dset, dims) < 0) return qk_err("HDF5: cannot extend a dataset");
    s->extent = s->rows;
    return 0;
}

int cw_append(ChunkWriter *w, int h, const void *rows, size_t nrows) {
    Sink *s = &w->sinks[h];
    if (!s->direct) {
        s->rows += nrows;
        return qk_h5_append_rows(s->dset, s->type, nrows, rows);
    }
    const uint8_t *p = rows;
    while (nrows) {
        size_t take = s->chunk_rows - s->buf_rows < nrows ? s->chunk_rows - s->buf_rows : nrows;
        memcpy(s->buf + s->buf_rows * s->row_bytes, p, take * s->row_bytes);
        s->buf_rows += take, s->rows += take, p += take * s->row_bytes, nrows -= take;
        // The extent covers every row before its chunk is written (H5Dwrite_chunk needs it).
        if (s->buf_rows == s->chunk_rows && (set_extent(s) || submit(w, h))) return -1;
    }
    return 0;
}

// Frees the sinks' buffers and closes the datasets the writer owns (cw_write_whole).
static void forget_sinks(ChunkWriter *w) {
    for (int h = 0; h < w->n_sinks; h++) {
        free(w->sinks[h].buf);
        if (w->sinks[h].owned) H5Dclose(w->sinks[h].dset);
    }
    free(w->sinks);
    w->sinks = NULL;
    w->n_sinks = 0;
}

int cw_write_whole(ChunkWriter *w, hid_t dset, hid_t mem_type, const void *rows, size_t nrows) {
    int h = cw_add(w, dset, mem_type);
    if (h < 0) {
        H5Dclose(dset);
        return -1;
    }
    w->sinks[h].owned = 1;
    return cw_append(w, h, rows, nrows);
}

int cw_flush(ChunkWriter *w) {
    int rc = 0;
    for (int h = 0; h < w->n_sinks && !rc; h++) {
        Sink *s = &w->sinks[h];
        if (!s->direct) continue;
        rc = set_extent(s);
        if (!rc && s->buf_rows) {  // the last, partial chunk: padded with zeros beyond the extent
            memset(s->buf + s->buf_rows * s->row_bytes, 0, (s->chunk_rows - s->buf_rows) * s->row_bytes);
            rc = submit(w, h);
        }
    }
    if (drain(w, 1, 0)) rc = -1;
    forget_sinks(w);
    return rc;
}

void cw_discard(ChunkWriter *w) {
    drain(w, 1, 1);
    forget_sinks(w);
}

void cw_close(ChunkWriter *w) {
    if (!w) return;
    if (w->n_sinks) cw_flush(w);
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->n_threads; i++) pthread_join(w->threads[i], NULL);
    drain(w, 1, 0);
    free(w->threads), free(w->jobs);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->work);
    pthread_cond_destroy(&w->finished);
    free(w);
}

void cw_stats(ChunkWriter *w, double *raw_bytes, double *compressed_bytes, double *worker_seconds) {
    pthread_mutex_lock(&w->mu);
    *raw_bytes = w->raw_total, *compressed_bytes = w->out_total, *worker_seconds = w->seconds;
    pthread_mutex_unlock(&w->mu);
}
