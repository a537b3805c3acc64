// corpus.c: see corpus.h.  The pipeline:
//
//   reader thread --chunks--> ring[QUEUE] --> tokenizer threads --> (same ring, in order)
//       --> windowing thread --batches--> batch ring[NB] --> qk_corpus_next_batch (caller)
//
// A chunk is a run of document segments (text bytes, or token ids for pre-tokenized files) of
// about CHUNK_BYTES.  Chunks carry a sequence number; the ring slot of chunk k is k % QUEUE, so the
// reader blocks when it is QUEUE chunks ahead of the windower, and the windower consumes strictly
// in order whatever order the tokenizers finish in.  One mutex guards all state transitions.
#include "text/corpus.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>
#include <zstd.h>

#include "base/util.h"
#include "text/json_field.h"

#define CHUNK_BYTES (1u << 20)    // text bytes per chunk (a document is cut where it may be)
#define CHUNK_TOKENS (1u << 18)   // pre-tokenized ids per chunk
#define CHUNK_SEGS 4096           // segments (documents) per chunk
#define NB 4                      // batches queued for the caller
#define LLMC_MAGIC 20240520

// ---------------------------------------------------------------------------------------------
// Byte streams: plain, gzip or zstd, chosen by the file name.

typedef struct {
    const char *path;
    FILE *f;          // plain or zstd input
    gzFile gz;
    ZSTD_DCtx *zd;
    uint8_t *zin;     // zstd input buffer
    ZSTD_inBuffer in;
    size_t zlast;     // last ZSTD_decompressStream result: 0 = at a frame end
    int64_t offset;   // decompressed bytes delivered so far
    int64_t *in_pos;  // when set: the input file's read position (compressed bytes), published
} Stream;

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int stream_open(Stream *s, const char *path) {
    memset(s, 0, sizeof *s);
    s->path = path;
    if (ends_with(path, ".gz")) {
        if (!(s->gz = gzopen(path, "rb"))) return qk_err("%s: cannot open: %s", path, strerror(errno));
        gzbuffer(s->gz, 1 << 17);
        // zlib reads a file without the gzip magic as it is: a .gz name promises gzip data.
        if (gzdirect(s->gz)) return qk_err("%s: not gzip data (no gzip header at byte offset 0)", path);
        return 0;
    }
    if (!(s->f = fopen(path, "rb"))) return qk_err("%s: cannot open: %s", path, strerror(errno));
    if (ends_with(path, ".zst")) {
        s->zd = ZSTD_createDCtx();
        s->zin = qk_malloc(ZSTD_DStreamInSize());
        s->in = (ZSTD_inBuffer){s->zin, 0, 0};
    }
    return 0;
}

static void stream_close(Stream *s) {
    if (s->gz) gzclose(s->gz);
    if (s->f) fclose(s->f);
    ZSTD_freeDCtx(s->zd);
    free(s->zin);
    memset(s, 0, sizeof *s);
}

// Reads up to n bytes: returns the count, 0 at the end, -1 on error (a truncated or corrupt
// compressed file included).
static long stream_read(Stream *s, void *buf, size_t n) {
    long got = 0;
    if (s->gz) {
        int r = gzread(s->gz, buf, (unsigned)(n > (1u << 30) ? 1u << 30 : n));
        int err;
        const char *msg = gzerror(s->gz, &err);
        if (r < 0 || (err != Z_OK && err != Z_STREAM_END))
            return qk_err("%s: gzip: %s (after %lld decompressed bytes)", s->path, msg, (long long)s->offset);
        got = r;
    } else if (s->zd) {
        ZSTD_outBuffer out = {buf, n, 0};
        while (out.pos == 0) {
            if (s->in.pos == s->in.size) {
                s->in.size = fread(s->zin, 1, ZSTD_DStreamInSize(), s->f);
                s->in.pos = 0;
                if (s->in.size == 0) {
                    if (ferror(s->f)) return qk_err("%s: read error: %s", s->path, strerror(errno));
                    if (s->zlast != 0)
                        return qk_err("%s: zstd: truncated (after %lld decompressed bytes)", s->path, (long long)s->offset);
                    return 0;
                }
            }
            s->zlast = ZSTD_decompressStream(s->zd, &out, &s->in);
            if (ZSTD_isError(s->zlast))
                return qk_err("%s: zstd: %s (after %lld decompressed bytes)", s->path, ZSTD_getErrorName(s->zlast),
                              (long long)s->offset);
        }
        got = (long)out.pos;
    } else {
        got = (long)fread(buf, 1, n, s->f);
        if (got == 0 && ferror(s->f)) return qk_err("%s: read error: %s", s->path, strerror(errno));
    }
    s->offset += got;
    if (s->in_pos) *s->in_pos = s->gz ? (int64_t)gzoffset(s->gz) : (int64_t)ftell(s->f);  // for the ETA
    return got;
}

// Reads exactly n bytes; 0 ok, 1 clean end before any byte, -1 error or short read.
static int stream_read_full(Stream *s, void *buf, size_t n, const char *what) {
    size_t have = 0;
    while (have < n) {
        long r = stream_read(s, (uint8_t *)buf + have, n - have);
        if (r < 0) return -1;
        if (r == 0) {
            if (have == 0) return 1;
            return qk_err("%s: %s: file ends at byte offset %lld", s->path, what, (long long)s->offset);
        }
        have += (size_t)r;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Line reader: hands out lines, or fragments of a long line (complete = 0).

typedef struct {
    Stream s;
    uint8_t *buf;
    size_t cap, lo, hi;  // unread bytes are buf[lo..hi)
    int eof;
    int64_t line_no;     // 1-based number of the line the last piece belongs to
    int mid_line;        // the last piece was an incomplete fragment
} LineReader;

// by_line = 0: no line splitting (whole-file documents).  max_frag: the longest incomplete
// fragment handed out (0: never fragment; the buffer grows to hold the whole line).
// Returns 1 (a piece), 0 (end), -1 (error).
static int next_piece(LineReader *r, int by_line, size_t max_frag, const uint8_t **p, size_t *n, int *complete) {
    for (;;) {
        if (by_line && r->hi > r->lo) {
            uint8_t *nl = memchr(r->buf + r->lo, '\n', r->hi - r->lo);
            if (nl) {
                *p = r->buf + r->lo;
                *n = (size_t)(nl - *p);
                *complete = 1;
                r->lo += *n + 1;
                if (!r->mid_line) r->line_no++;
                r->mid_line = 0;
                return 1;
            }
        }
        if (r->eof) {
            if (r->hi == r->lo) return 0;
            *p = r->buf + r->lo;
            *n = r->hi - r->lo;
            *complete = 1;
            r->lo = r->hi;
            if (!r->mid_line) r->line_no++;
            r->mid_line = 0;
            return 1;
        }
        size_t avail = r->hi - r->lo;
        if (max_frag && avail >= max_frag) {
            // Hand out a fragment, holding back a final '\r' (it may be half of "\r\n").
            size_t k = avail - (r->buf[r->hi - 1] == '\r');
            *p = r->buf + r->lo;
            *n = k;
            *complete = 0;
            r->lo += k;
            if (!r->mid_line) r->line_no++;
            r->mid_line = 1;
            return 1;
        }
        if (r->lo > 0) {
            memmove(r->buf, r->buf + r->lo, avail);
            r->lo = 0;
            r->hi = avail;
        }
        if (r->hi == r->cap) {
            r->cap = r->cap ? 2 * r->cap : CHUNK_BYTES;
            r->buf = qk_realloc(r->buf, r->cap);
        }
        long got = stream_read(&r->s, r->buf + r->hi, r->cap - r->hi);
        if (got < 0) return -1;
        if (got == 0) r->eof = 1;
        r->hi += (size_t)got;
    }
}

// ---------------------------------------------------------------------------------------------
// Chunks and the shared state.

typedef struct {
    int32_t file;
    int64_t doc;
    uint8_t start, end;  // this segment starts / ends its document
    size_t b0, b1;       // text bytes (text chunks)
    size_t t0, t1;       // token ids (filled by a tokenizer for text chunks)
} Segment;

enum { SLOT_FREE, SLOT_FILLED, SLOT_CLAIMED, SLOT_DONE };

typedef struct {
    int state;
    int is_text;
    int final;    // the last chunk of the corpus
    char *error;  // the reader failed after this chunk's segments
    QkBytes text;
    QkIds toks;
    Segment *seg;
    int n_seg, cap_seg;
    int64_t in_bytes;  // input bytes read (all files) when the chunk was complete: for the ETA
} Chunk;

typedef struct {
    int kind;  // 0 batch, 1 end, 2 error
    QkWindowBatch b;
    char *error;
} BatchItem;

struct QkCorpus {
    QkCorpusOptions opt;
    int W, stride, n_vocab;
    char **files;
    int n_files;
    int first_file, end_file;  // the files this reader reads (a part of the plan, or all)

    pthread_mutex_t mu;
    pthread_cond_t cv_slot_free, cv_slot_filled, cv_slot_done, cv_batch_ready, cv_batch_space;
    int stop;
    int queue;          // ring size
    Chunk *ring;
    int64_t produced;   // chunks the reader has put in the ring
    int64_t claimed;    // chunks taken by tokenizers
    BatchItem items[NB];
    int64_t b_head, b_tail;  // batch ring: consumer reads b_head, windower writes b_tail
    QkCorpusStats stats;
    int64_t *file_bytes;   // (n_files) sizes on disk
    int64_t in_file_pos;   // read position in the file being read (Stream.in_pos; reader thread)
    int64_t files_bytes;   // sizes of the files read to the end (reader thread)

    pthread_t reader, windower, *workers;
    int n_workers, started;
};

// ---------------------------------------------------------------------------------------------
// Reader side: building chunks.

typedef struct {
    QkCorpus *c;
    Chunk cur;
    int doc_open;
    int32_t file;
    int64_t doc;
    QkBytes spill;  // scratch for the tail of a cut document
} Builder;

static Segment *cur_seg(Builder *b) { return &b->cur.seg[b->cur.n_seg - 1]; }

// Moves the chunk being built into its ring slot (waiting for the slot to be free) and takes the
// slot's old buffers for reuse.  Returns -1 if the corpus is being closed.
static int push_chunk(Builder *b) {
    QkCorpus *c = b->c;
    pthread_mutex_lock(&c->mu);
    Chunk *slot = &c->ring[c->produced % c->queue];
    while (slot->state != SLOT_FREE && !c->stop) pthread_cond_wait(&c->cv_slot_free, &c->mu);
    if (c->stop) {
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    Chunk old = *slot;
    b->cur.in_bytes = c->files_bytes + c->in_file_pos;
    *slot = b->cur;
    slot->state = SLOT_FILLED;
    c->produced++;
    pthread_cond_broadcast(&c->cv_slot_filled);
    pthread_mutex_unlock(&c->mu);
    b->cur = (Chunk){.text = old.text, .toks = old.toks, .seg = old.seg, .cap_seg = old.cap_seg};
    b->cur.text.n = b->cur.toks.n = 0;
    return 0;
}

static void add_segment(Builder *b, int start) {
    Chunk *k = &b->cur;
    if (k->n_seg == k->cap_seg) {
        k->cap_seg = k->cap_seg ? 2 * k->cap_seg : 64;
        k->seg = qk_realloc(k->seg, k->cap_seg * sizeof(Segment));
    }
    k->seg[k->n_seg++] = (Segment){.file = b->file, .doc = b->doc, .start = (uint8_t)start,
                                   .b0 = k->text.n, .b1 = k->text.n, .t0 = k->toks.n, .t1 = k->toks.n};
}

// Starts a document; a chunk of the other kind (text / tokens) is pushed first.
static int doc_begin(Builder *b, int is_text) {
    if (b->cur.n_seg && (b->cur.is_text != is_text || b->cur.n_seg >= CHUNK_SEGS) && push_chunk(b)) return -1;
    b->cur.is_text = is_text;
    add_segment(b, 1);
    b->doc_open = 1;
    return 0;
}

static int doc_end(Builder *b) {
    Segment *s = cur_seg(b);
    s->end = 1;
    s->b1 = b->cur.text.n;
    s->t1 = b->cur.toks.n;
    b->doc_open = 0;
    int empty = s->start && s->b1 == s->b0 && s->t1 == s->t0;
    pthread_mutex_lock(&b->c->mu);
    b->c->stats.documents++;
    b->c->stats.empty_documents += empty;
    pthread_mutex_unlock(&b->c->mu);
    b->doc++;
    if (b->cur.text.n >= CHUNK_BYTES || b->cur.toks.n >= CHUNK_TOKENS) return push_chunk(b);
    return 0;
}

static int is_ascii_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// The last position k in (lo, hi) where the pre-tokenizer must start a piece anyway: an ASCII
// whitespace byte after an ASCII non-whitespace byte (no piece spans a non-space and a following
// space, and the pattern never looks behind).  0 if none.
static size_t safe_cut(const uint8_t *t, size_t lo, size_t hi) {
    for (size_t k = hi - 1; k > lo; k--)
        if (is_ascii_space(t[k]) && t[k - 1] < 0x80 && !is_ascii_space(t[k - 1])) return k;
    return 0;
}

// Appends text to the open document; a full chunk is cut at a safe place and pushed, the rest of
// the document continuing in the next chunk.
static int doc_text(Builder *b, const uint8_t *p, size_t n) {
    qk_bytes_append(&b->cur.text, p, n);
    if (b->cur.text.n < CHUNK_BYTES) return 0;
    Segment *s = cur_seg(b);
    size_t k = safe_cut(b->cur.text.data, s->b0, b->cur.text.n);
    if (!k) return 0;  // no boundary yet: keep accumulating
    b->spill.n = 0;
    qk_bytes_append(&b->spill, b->cur.text.data + k, b->cur.text.n - k);
    b->cur.text.n = k;
    s->b1 = k;
    if (push_chunk(b)) return -1;
    b->cur.is_text = 1;
    add_segment(b, 0);
    qk_bytes_append(&b->cur.text, b->spill.data, b->spill.n);
    return 0;
}

// Appends token ids to the open document, pushing full chunks (ids may be cut anywhere).
static int doc_tokens(Builder *b, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) qk_ids_push(&b->cur.toks, ids[i]);
    if (b->cur.toks.n < CHUNK_TOKENS) return 0;
    cur_seg(b)->t1 = b->cur.toks.n;
    if (push_chunk(b)) return -1;
    b->cur.is_text = 0;
    add_segment(b, 0);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Reader side: the formats.

static int is_blank(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return 0;
    return 1;
}

static int read_text(Builder *b, LineReader *r) {
    QkDocSplit split = b->c->opt.split;
    const uint8_t *p;
    size_t n;
    int complete, rc, at_line_start = 1, crlf = 0;
    if (split == QK_SPLIT_FILE && doc_begin(b, 1)) return -1;
    while ((rc = next_piece(r, split != QK_SPLIT_FILE, CHUNK_BYTES, &p, &n, &complete)) == 1) {
        if (split == QK_SPLIT_FILE) {
            if (doc_text(b, p, n)) return -1;
            continue;
        }
        if (split == QK_SPLIT_BLANK_LINES && at_line_start && complete && is_blank(p, n)) {
            if (b->doc_open && doc_end(b)) return -1;
            continue;
        }
        int this_crlf = complete && n && p[n - 1] == '\r';
        n -= (size_t)this_crlf;
        if (!b->doc_open) {
            if (doc_begin(b, 1)) return -1;
        } else if (at_line_start && doc_text(b, (const uint8_t *)"\r\n" + !crlf, 1 + crlf)) {
            return -1;
        }
        if (doc_text(b, p, n)) return -1;
        at_line_start = complete;
        crlf = this_crlf;
        if (complete && split == QK_SPLIT_LINES && doc_end(b)) return -1;
    }
    if (rc < 0) return -1;
    if (b->doc_open) return doc_end(b);
    return 0;
}

static int read_jsonl(Builder *b, LineReader *r) {
    const char *field = b->c->opt.jsonl_field ? b->c->opt.jsonl_field : "text";
    const uint8_t *p;
    size_t n;
    int complete, rc;
    while ((rc = next_piece(r, 1, 0, &p, &n, &complete)) == 1) {
        if (is_blank(p, n)) continue;
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts((const char *)p, n, &end, 0);
        const cJSON *t = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, field) : NULL;
        int bad_json = !j || !is_blank((const uint8_t *)end, n - (size_t)(end - (const char *)p));
        if (bad_json || !cJSON_IsString(t)) {
            cJSON_Delete(j);
            if (b->c->opt.skip_bad_records) {
                pthread_mutex_lock(&b->c->mu);
                b->c->stats.skipped_records++;
                pthread_mutex_unlock(&b->c->mu);
                continue;
            }
            if (bad_json) return qk_err("%s: line %lld: not a JSON value", r->s.path, (long long)r->line_no);
            if (!t) return qk_err("%s: line %lld: no field '%s' in a JSON object", r->s.path, (long long)r->line_no, field);
            return qk_err("%s: line %lld: field '%s' is not a string", r->s.path, (long long)r->line_no, field);
        }
        // cJSON's strings end at a NUL: a line that may hold the escape \u0000 is decoded again,
        // NULs kept (host/text/json_field.h).
        char *text = NULL;
        size_t len = strlen(t->valuestring);
        if (memmem(p, n, "\\u0000", 6) && qk_json_field_string((const char *)p, n, field, &text, &len) != 1) {
            cJSON_Delete(j);
            return qk_err("%s: line %lld: field '%s' could not be decoded", r->s.path, (long long)r->line_no, field);
        }
        int fail = doc_begin(b, 1) || doc_text(b, (const uint8_t *)(text ? text : t->valuestring), len) || doc_end(b);
        free(text);
        cJSON_Delete(j);
        if (fail) return -1;
    }
    return rc;
}

// Parses an .npy header: dtype <u2 or <i4, C order; *count = product of the shape.
static int npy_header(Stream *s, int *elem, uint64_t *count) {
    uint8_t pre[10];
    if (stream_read_full(s, pre, 10, "npy header")) return qk_err("%s: npy header: file is shorter than 10 bytes", s->path);
    if (memcmp(pre, "\x93NUMPY", 6)) return qk_err("%s: npy header: bad magic (byte offset 0)", s->path);
    uint32_t hlen = pre[8] | pre[9] << 8;
    if (pre[6] >= 2) {
        uint8_t more[2];
        if (stream_read_full(s, more, 2, "npy header")) return qk_err("%s: npy header: truncated", s->path);
        hlen |= (uint32_t)more[0] << 16 | (uint32_t)more[1] << 24;
    }
    if (hlen > 1 << 20) return qk_err("%s: npy header: header length %u is too large", s->path, hlen);
    char *h = qk_malloc(hlen + 1);
    if (stream_read_full(s, h, hlen, "npy header")) {
        free(h);
        return qk_err("%s: npy header: truncated", s->path);
    }
    h[hlen] = 0;
    int rc = 0;
    const char *d = strstr(h, "'descr':"), *f = strstr(h, "'fortran_order':"), *sh = strstr(h, "'shape':");
    if (!d || !f || !sh) rc = qk_err("%s: npy header: missing descr, fortran_order or shape", s->path);
    else if (strncmp(d + 8 + strspn(d + 8, " "), "'<u2'", 5) == 0) *elem = 2;
    else if (strncmp(d + 8 + strspn(d + 8, " "), "'<i4'", 5) == 0) *elem = 4;
    else rc = qk_err("%s: npy header: descr must be '<u2' or '<i4'", s->path);
    if (!rc && strncmp(f + 16 + strspn(f + 16, " "), "False", 5))
        rc = qk_err("%s: npy header: fortran_order must be False", s->path);
    if (!rc) {
        const char *q = strchr(sh, '(');
        *count = 1;
        if (!q) rc = qk_err("%s: npy header: shape is not a tuple", s->path);
        for (q = q ? q + 1 : NULL; !rc && q && *q && *q != ')';) {
            char *e;
            unsigned long long v = strtoull(q, &e, 10);
            if (e == q) { q++; continue; }
            if (v && *count > UINT64_MAX / v) rc = qk_err("%s: npy header: shape overflows", s->path);
            *count *= v;
            q = e;
        }
    }
    free(h);
    return rc;
}

// Pre-tokenized files: `count` ids of `elem` bytes (2: uint16, 4: int32), documents split at 50256.
static int read_token_ids(Builder *b, Stream *s, int elem, uint64_t count, int64_t data_start) {
    enum { BLOCK = 1 << 16 };
    uint8_t *raw = qk_malloc((size_t)BLOCK * elem);
    int32_t *ids = qk_malloc(BLOCK * sizeof(int32_t));
    int rc = 0;
    uint64_t done = 0;
    while (!rc && done < count) {
        size_t want = count - done < BLOCK ? (size_t)(count - done) : BLOCK;
        int r = stream_read_full(s, raw, want * elem, "tokens");
        if (r) {
            rc = r < 0 ? -1 : qk_err("%s: header says %llu tokens but the data ends after %llu", s->path,
                                      (unsigned long long)count, (unsigned long long)done);
            break;
        }
        size_t run = 0;  // ids of the current document in ids[0..run)
        for (size_t i = 0; i < want && !rc; i++) {
            int64_t v = elem == 2 ? (int64_t)(raw[2 * i] | raw[2 * i + 1] << 8)
                                  : (int64_t)(int32_t)((uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                                                       (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24);
            if (v < 0 || v >= b->c->n_vocab) {
                rc = qk_err("%s: token %llu (byte offset %lld): id %lld is outside the vocabulary [0, %d)", s->path,
                            (unsigned long long)(done + i), (long long)(data_start + (done + i) * elem), (long long)v,
                            b->c->n_vocab);
                break;
            }
            if (v == QK_GPT2_EOT) {
                if ((run && doc_tokens(b, ids, run)) || (b->doc_open && doc_end(b))) rc = -1;
                run = 0;
                continue;
            }
            if (!b->doc_open && doc_begin(b, 0)) rc = -1;
            ids[run++] = (int32_t)v;
        }
        if (!rc && run && doc_tokens(b, ids, run)) rc = -1;
        done += want;
    }
    uint8_t extra;
    long more = rc ? 0 : stream_read(s, &extra, 1);  // also makes a truncated .gz / .zst say so
    if (more < 0) rc = -1;
    else if (more > 0) rc = qk_err("%s: bytes after the %llu tokens the header announces", s->path, (unsigned long long)count);
    if (!rc && b->doc_open) rc = doc_end(b);
    free(raw);
    free(ids);
    return rc;
}

static int read_llmc_bin(Builder *b, Stream *s) {
    int32_t h[256];
    if (stream_read_full(s, h, sizeof h, "llm.c header"))
        return qk_err("%s: llm.c header: file is shorter than 1024 bytes", s->path);
    if (h[0] != LLMC_MAGIC) return qk_err("%s: llm.c header[0] (byte offset 0): magic %d, want %d", s->path, h[0], LLMC_MAGIC);
    if (h[1] != 1) return qk_err("%s: llm.c header[1] (byte offset 4): version %d, want 1", s->path, h[1]);
    if (h[2] < 0) return qk_err("%s: llm.c header[2] (byte offset 8): token count %d is negative", s->path, h[2]);
    return read_token_ids(b, s, 2, (uint64_t)h[2], 1024);
}

static int read_npy(Builder *b, Stream *s) {
    int elem = 0;
    uint64_t count = 0;
    if (npy_header(s, &elem, &count)) return -1;
    return read_token_ids(b, s, elem, count, s->offset);
}

static int read_file(Builder *b, const char *path) {
    char *name = qk_strdup(path);
    if (ends_with(name, ".gz")) name[strlen(name) - 3] = 0;
    else if (ends_with(name, ".zst")) name[strlen(name) - 4] = 0;
    int is_bin = ends_with(name, ".bin"), is_npy = ends_with(name, ".npy");
    int is_jsonl = ends_with(name, ".jsonl") || ends_with(name, ".ndjson") || ends_with(name, ".json");
    free(name);
    if (!is_bin && !is_npy && !b->c->opt.bpe)
        return qk_err("%s: a text or JSONL input needs GPT-2's tokenizer: a folder with encoder.json and vocab.bpe "
                      "(qkscope run/static: config key [corpus] vocab, or --set corpus.vocab=DIR; qkscope tokenize: --vocab DIR)",
                      path);
    LineReader r = {0};
    if (stream_open(&r.s, path)) return stream_close(&r.s), -1;
    r.s.in_pos = &b->c->in_file_pos;
    int rc = is_bin ? read_llmc_bin(b, &r.s) : is_npy ? read_npy(b, &r.s) : is_jsonl ? read_jsonl(b, &r) : read_text(b, &r);
    stream_close(&r.s);
    free(r.buf);
    return rc;
}

static void *reader_main(void *arg) {
    Builder *b = arg;
    QkCorpus *c = b->c;
    char *error = NULL;
    for (int i = c->first_file; i < c->end_file && !error; i++) {
        b->file = i;
        b->doc = 0;
        b->doc_open = 0;
        if (read_file(b, c->files[i])) {
            pthread_mutex_lock(&c->mu);
            int stopping = c->stop;
            pthread_mutex_unlock(&c->mu);
            if (stopping) goto out;
            error = qk_strdup(qk_errmsg());
            // Segments of a half-read document are dropped: its windows would be incomplete.
            while (b->cur.n_seg && !cur_seg(b)->end) b->cur.n_seg--;
        } else {
            pthread_mutex_lock(&c->mu);
            c->stats.files_done++;
            c->files_bytes += c->file_bytes[i];
            c->in_file_pos = 0;
            pthread_mutex_unlock(&c->mu);
        }
    }
    b->cur.final = 1;
    b->cur.error = error;
    if (push_chunk(b)) free(error);
out:
    free(b->cur.text.data);
    free(b->cur.toks.ids);
    free(b->cur.seg);
    free(b->spill.data);
    free(b);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer threads.

static void *worker_main(void *arg) {
    QkCorpus *c = arg;
    QkBpeEncoder *enc = c->opt.bpe ? qk_bpe_encoder_new(c->opt.bpe) : NULL;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (!c->stop && (c->claimed == c->produced || c->ring[c->claimed % c->queue].state != SLOT_FILLED))
            pthread_cond_wait(&c->cv_slot_filled, &c->mu);
        if (c->stop) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        Chunk *k = &c->ring[c->claimed++ % c->queue];
        k->state = SLOT_CLAIMED;
        int final = k->final;
        pthread_mutex_unlock(&c->mu);
        if (k->is_text) {
            k->toks.n = 0;
            for (int i = 0; i < k->n_seg; i++) {
                Segment *s = &k->seg[i];
                s->t0 = k->toks.n;
                if (s->b1 > s->b0)  // (an empty document's chunk may have no text buffer at all)
                    qk_bpe_encode(enc, k->text.data + s->b0, s->b1 - s->b0, c->opt.allow_special, &k->toks);
                s->t1 = k->toks.n;
            }
        }
        pthread_mutex_lock(&c->mu);
        k->state = SLOT_DONE;
        pthread_cond_broadcast(&c->cv_slot_done);
        pthread_mutex_unlock(&c->mu);
        if (final) break;  // nothing comes after the final chunk
    }
    qk_bpe_encoder_free(enc);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Windowing thread.

typedef struct {
    QkCorpus *c;
    int32_t *tok;          // [W] the current window's tokens so far
    QkProvenance *prov;    // [W]
    int len, fresh;        // tokens held; tokens added since the last window was emitted
    QkWindowBatch batch;   // being filled
    int need_sep;          // pack: a separator goes before the next document's first token
    QkProvenance sep_prov;  // the separator counts as the token after the previous document
    int64_t doc_off;        // offset of the next token of the open document
    int64_t n_tokens;      // corpus tokens, published to stats with each batch
    int64_t in_bytes;      // the chunk being windowed: input bytes read up to its end
} Windower;

// Hands the batch being filled to the caller's queue; -1 if closing.
static int push_batch(Windower *w, int kind, char *error) {
    QkCorpus *c = w->c;
    pthread_mutex_lock(&c->mu);
    while (c->b_tail - c->b_head == NB && !c->stop) pthread_cond_wait(&c->cv_batch_space, &c->mu);
    if (c->stop) {
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    BatchItem *it = &c->items[c->b_tail % NB];
    QkWindowBatch old = it->b;
    it->kind = kind;
    it->error = error;
    it->b = w->batch;
    c->stats.windows += w->batch.n;
    c->stats.tokens = w->n_tokens;
    c->stats.input_bytes_done = w->in_bytes;
    c->b_tail++;
    pthread_cond_broadcast(&c->cv_batch_ready);
    pthread_mutex_unlock(&c->mu);
    w->batch = old;  // recycle the arrays
    w->batch.n = 0;
    return 0;
}

static int emit_window(Windower *w) {
    QkCorpus *c = w->c;
    QkWindowBatch *b = &w->batch;
    int n_ctx = c->opt.n_ctx, bos = c->opt.bos;
    if (b->cap == 0) {
        b->cap = c->opt.batch_size;
        b->n_ctx = n_ctx;
        b->tokens = qk_malloc((size_t)b->cap * n_ctx * sizeof(int32_t));
        b->length = qk_malloc(b->cap * sizeof(int32_t));
        b->prov = qk_malloc(b->cap * sizeof(QkProvenance));
    }
    int32_t *row = b->tokens + (size_t)b->n * n_ctx;
    if (bos) row[0] = QK_GPT2_EOT;
    memcpy(row + bos, w->tok, w->len * sizeof(int32_t));
    for (int i = bos + w->len; i < n_ctx; i++) row[i] = QK_GPT2_EOT;
    b->length[b->n] = bos + w->len;
    b->prov[b->n] = w->prov[0];
    b->n++;
    w->fresh = 0;
    if (b->n == b->cap) return push_batch(w, 0, NULL);
    return 0;
}

static int add_token(Windower *w, int32_t t, QkProvenance p) {
    w->tok[w->len] = t;
    w->prov[w->len] = p;
    w->len++;
    w->fresh++;
    if (w->len < w->c->W) return 0;
    if (emit_window(w)) return -1;
    int keep = w->c->W - w->c->stride;
    memmove(w->tok, w->tok + w->c->stride, keep * sizeof(int32_t));
    memmove(w->prov, w->prov + w->c->stride, keep * sizeof(QkProvenance));
    w->len = keep;
    return 0;
}

// End of a stream: the tokens not yet in any window form a last, shorter window.
static int flush_stream(Windower *w) {
    int rc = w->fresh ? emit_window(w) : 0;
    w->len = w->fresh = 0;
    w->need_sep = 0;
    return rc;
}

static int window_chunk(Windower *w, const Chunk *k) {
    QkCorpus *c = w->c;
    for (int i = 0; i < k->n_seg; i++) {
        const Segment *s = &k->seg[i];
        int64_t off = s->start ? 0 : w->doc_off;
        for (size_t t = s->t0; t < s->t1; t++) {
            if (off == 0 && w->need_sep) {
                if (add_token(w, QK_GPT2_EOT, w->sep_prov)) return -1;
                w->need_sep = 0;
            }
            if (add_token(w, k->toks.ids[t], (QkProvenance){s->file, s->doc, off++})) return -1;
        }
        w->n_tokens += (int64_t)(s->t1 - s->t0);
        w->doc_off = off;
        if (s->end && off > 0) {  // empty documents leave no trace in the windows
            if (!c->opt.pack) {
                if (flush_stream(w)) return -1;
            } else {
                w->need_sep = 1;
                w->sep_prov = (QkProvenance){s->file, s->doc, off};
            }
        }
    }
    return 0;
}

static void *windower_main(void *arg) {
    QkCorpus *c = arg;
    Windower w = {.c = c};
    w.tok = qk_malloc(c->W * sizeof(int32_t));
    w.prov = qk_malloc(c->W * sizeof(QkProvenance));
    for (int64_t seq = 0;; seq++) {
        pthread_mutex_lock(&c->mu);
        Chunk *k = &c->ring[seq % c->queue];
        while (!c->stop && !(seq < c->produced && k->state == SLOT_DONE)) pthread_cond_wait(&c->cv_slot_done, &c->mu);
        int stop = c->stop;
        pthread_mutex_unlock(&c->mu);
        if (stop) break;
        w.in_bytes = k->in_bytes;
        int rc = window_chunk(&w, k);
        int final = k->final;
        char *error = k->error;
        k->error = NULL;
        pthread_mutex_lock(&c->mu);
        k->state = SLOT_FREE;
        k->n_seg = 0;
        k->final = 0;
        pthread_cond_broadcast(&c->cv_slot_free);
        pthread_mutex_unlock(&c->mu);
        if (rc) {
            free(error);
            break;
        }
        if (final) {
            if (!error && flush_stream(&w)) break;
            if (w.batch.n && push_batch(&w, 0, NULL)) {
                free(error);
                break;
            }
            if (push_batch(&w, error ? 2 : 1, error)) free(error);
            break;
        }
    }
    free(w.tok);
    free(w.prov);
    qk_window_batch_free(&w.batch);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// File list.

typedef struct {
    char **v;
    int n, cap;
} StrList;

static void strlist_add(StrList *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = qk_realloc(l->v, l->cap * sizeof(char *));
    }
    l->v[l->n++] = qk_strdup(s);
}

static int add_path(StrList *l, const char *path, int from_glob);

static int add_dir(StrList *l, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return qk_err("%s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = qk_path_join(dir, e->d_name);
        rc = add_path(l, p, 1);
        free(p);
    }
    closedir(d);
    return rc;
}

static int add_path(StrList *l, const char *path, int from_glob) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return add_dir(l, path);
        if (S_ISREG(st.st_mode) || !from_glob) strlist_add(l, path);
        return 0;
    }
    if (!from_glob && strpbrk(path, "*?[")) {
        glob_t g;
        int r = glob(path, 0, NULL, &g);
        if (r == GLOB_NOMATCH) return qk_err("%s: the pattern matches no file", path);
        if (r) return qk_err("%s: glob failed", path);
        int rc = 0;
        for (size_t i = 0; i < g.gl_pathc && !rc; i++) rc = add_path(l, g.gl_pathv[i], 1);
        globfree(&g);
        return rc;
    }
    return qk_err("%s: no such file or directory", path);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int qk_corpus_plan(const char *const *inputs, int n_inputs, int n_parts, char ***files, int *n_files, int *first) {
    if (n_inputs <= 0) return qk_err("corpus options: no inputs");
    StrList l = {0};
    for (int i = 0; i < n_inputs; i++)
        if (add_path(&l, inputs[i], 0)) {
            for (int k = 0; k < l.n; k++) free(l.v[k]);
            free(l.v);
            return -1;
        }
    if (l.n) qsort(l.v, l.n, sizeof(char *), cmp_str);
    int n = 0;
    for (int i = 0; i < l.n; i++) {
        if (n && strcmp(l.v[n - 1], l.v[i]) == 0) free(l.v[i]);
        else l.v[n++] = l.v[i];
    }
    if (n == 0) {
        free(l.v);
        return qk_err("%s: no corpus files found (an empty directory? names starting with '.' are skipped)", inputs[0]);
    }
    if (n < n_parts) {
        for (int k = 0; k < n; k++) free(l.v[k]);
        free(l.v);
        return qk_err("%s: %d file(s) cannot make %d parts (a part is a range of whole files)", inputs[0], n, n_parts);
    }
    // Contiguous ranges of about total/n_parts bytes each, every part at least one file.
    double total = 0, *size = qk_malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) {
        struct stat st;
        size[i] = stat(l.v[i], &st) == 0 ? (double)st.st_size : 0;
        total += size[i];
    }
    double acc = 0;
    first[0] = 0;
    for (int p = 1, i = 0; p < n_parts; p++) {
        while (i < n - (n_parts - p) && (i < first[p - 1] + 1 || acc + size[i] / 2 < total * p / n_parts)) acc += size[i++];
        first[p] = i;
    }
    first[n_parts] = n;
    free(size);
    *files = l.v;
    *n_files = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Public API.

void qk_window_batch_free(QkWindowBatch *b) {
    free(b->tokens);
    free(b->length);
    free(b->prov);
    memset(b, 0, sizeof *b);
}

int qk_corpus_n_files(const QkCorpus *c) { return c->n_files; }
const char *qk_corpus_file(const QkCorpus *c, int i) { return i >= 0 && i < c->n_files ? c->files[i] : NULL; }

void qk_corpus_stats(QkCorpus *c, QkCorpusStats *st) {
    pthread_mutex_lock(&c->mu);
    *st = c->stats;
    pthread_mutex_unlock(&c->mu);
}

QkCorpus *qk_corpus_open(const QkCorpusOptions *opt) {
    QkCorpusOptions o = *opt;
    if (o.batch_size <= 0) o.batch_size = 8;
    if (o.n_threads <= 0) o.n_threads = 1;
    o.bos = !!o.bos;
    if (o.n_ctx <= o.bos) return qk_err("corpus options: n_ctx %d must exceed bos %d", o.n_ctx, o.bos), NULL;
    int W = o.n_ctx - o.bos, stride = o.stride ? o.stride : W;
    if (stride < 1 || stride > W) return qk_err("corpus options: stride %d must be in [1, %d]", o.stride, W), NULL;
    if (o.n_inputs <= 0) return qk_err("corpus options: no inputs"), NULL;
    char **files;
    int n, first[2] = {0, 0}, *bounds = o.n_parts > 0 ? qk_malloc(sizeof(int) * (o.n_parts + 1)) : first;
    if (o.n_parts > 0 && (o.part < 0 || o.part >= o.n_parts)) {
        free(bounds);
        return qk_err("corpus options: part %d of %d", o.part, o.n_parts), NULL;
    }
    if (qk_corpus_plan(o.inputs, o.n_inputs, o.n_parts > 0 ? o.n_parts : 1, &files, &n, bounds)) {
        if (bounds != first) free(bounds);
        return NULL;
    }
    int part = o.n_parts > 0 ? o.part : 0, first_file = bounds[part], end_file = bounds[part + 1];
    if (bounds != first) free(bounds);
    QkCorpus *c = qk_calloc(1, sizeof *c);
    c->opt = o;
    c->W = W;
    c->stride = stride;
    c->n_vocab = o.bpe ? qk_bpe_vocab_size(o.bpe) : QK_GPT2_EOT + 1;
    c->files = files;
    c->n_files = n;
    c->first_file = first_file;
    c->end_file = end_file;
    c->file_bytes = qk_calloc(c->n_files + 1, sizeof(int64_t));
    for (int i = first_file; i < end_file; i++) {
        struct stat st;
        c->file_bytes[i] = stat(c->files[i], &st) == 0 ? (int64_t)st.st_size : 0;
        c->stats.input_bytes_total += c->file_bytes[i];
    }
    c->queue = 2 * o.n_threads + 2;
    c->ring = qk_calloc(c->queue, sizeof(Chunk));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv_slot_free, NULL);
    pthread_cond_init(&c->cv_slot_filled, NULL);
    pthread_cond_init(&c->cv_slot_done, NULL);
    pthread_cond_init(&c->cv_batch_ready, NULL);
    pthread_cond_init(&c->cv_batch_space, NULL);
    Builder *b = qk_calloc(1, sizeof *b);
    b->c = c;
    c->n_workers = o.n_threads;
    c->workers = qk_calloc(c->n_workers, sizeof(pthread_t));
    pthread_create(&c->reader, NULL, reader_main, b);
    for (int i = 0; i < c->n_workers; i++) pthread_create(&c->workers[i], NULL, worker_main, c);
    pthread_create(&c->windower, NULL, windower_main, c);
    c->started = 1;
    return c;
}

static void copy_batch(QkWindowBatch *dst, const QkWindowBatch *src) {
    if (dst->cap < src->n || dst->n_ctx != src->n_ctx) {
        qk_window_batch_free(dst);
        dst->cap = src->cap;
        dst->n_ctx = src->n_ctx;
        dst->tokens = qk_malloc((size_t)dst->cap * dst->n_ctx * sizeof(int32_t));
        dst->length = qk_malloc(dst->cap * sizeof(int32_t));
        dst->prov = qk_malloc(dst->cap * sizeof(QkProvenance));
    }
    dst->n = src->n;
    memcpy(dst->tokens, src->tokens, (size_t)src->n * src->n_ctx * sizeof(int32_t));
    memcpy(dst->length, src->length, src->n * sizeof(int32_t));
    memcpy(dst->prov, src->prov, src->n * sizeof(QkProvenance));
}

int qk_corpus_next_batch(QkCorpus *c, QkWindowBatch *out) {
    pthread_mutex_lock(&c->mu);
    while (c->b_head == c->b_tail) pthread_cond_wait(&c->cv_batch_ready, &c->mu);
    BatchItem *it = &c->items[c->b_head % NB];
    int rc = 1;
    if (it->kind == 1) {
        rc = 0;  // stays at the end: later calls return 0 again
    } else if (it->kind == 2) {
        rc = qk_err("%s", it->error);
    } else {
        copy_batch(out, &it->b);
        c->b_head++;
        pthread_cond_broadcast(&c->cv_batch_space);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void qk_corpus_close(QkCorpus *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv_slot_free);
    pthread_cond_broadcast(&c->cv_slot_filled);
    pthread_cond_broadcast(&c->cv_slot_done);
    pthread_cond_broadcast(&c->cv_batch_space);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->reader, NULL);
    for (int i = 0; i < c->n_workers; i++) pthread_join(c->workers[i], NULL);
    pthread_join(c->windower, NULL);
    for (int i = 0; i < c->queue; i++) {
        free(c->ring[i].text.data);
        free(c->ring[i].toks.ids);
        free(c->ring[i].seg);
        free(c->ring[i].error);
    }
    for (int i = 0; i < NB; i++) {
        qk_window_batch_free(&c->items[i].b);
        free(c->items[i].error);
    }
    for (int i = 0; i < c->n_files; i++) free(c->files[i]);
    free(c->files);
    free(c->file_bytes);
    free(c->ring);
    free(c->workers);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv_slot_free);
    pthread_cond_destroy(&c->cv_slot_filled);
    pthread_cond_destroy(&c->cv_slot_done);
    pthread_cond_destroy(&c->cv_batch_ready);
    pthread_cond_destroy(&c->cv_batch_space);
    free(c);
}
