// corpus.h: a streaming corpus reader that turns files into batches of model input windows.
//
// Inputs are files, directories (walked recursively, hidden entries skipped) and glob patterns;
// the expanded list is sorted (strcmp) and de-duplicated, and read in that order.  The format
// comes from the file name, after an optional compression suffix (.gz: zlib, .zst: zstd):
//   .jsonl .ndjson .json   one JSON object per line; its string field `jsonl_field` ("text") is a
//                          document.  Empty lines are ignored.  A line that is not JSON or lacks
//                          the field is an error "FILE: line N: ..." unless skip_bad_records,
//                          which counts it in QkCorpusStats.skipped_records instead.  A \u0000
//                          in the field is a NUL byte of the document, as in plain text.
//   .bin                   llm.c token shard: 256 x int32 header (magic 20240520, version 1,
//                          header[2] = token count), then uint16 tokens.
//   .npy                   1-D or 2-D C-order array of <u2 or <i4 token ids.
//   anything else          plain text (bytes as they are, NUL bytes and invalid UTF-8 included),
//                          split into documents by `split`: the whole file, blank lines (a line
//                          that is empty or holds only spaces, tabs and \r), or each line.  The
//                          newline ("\n" or "\r\n") that ends a document is not part of it.
// Pre-tokenized files hold documents separated by <|endoftext|> (llm.c writes one before every
// document): the separators are dropped and the windowing re-inserts them, so a text corpus and
// its pre-tokenized form give the same windows.  Ids >= the vocabulary size are an error naming
// the file and the token's byte offset.  Empty documents are counted, numbered and skipped.
//
// Windows: W = n_ctx - bos corpus tokens each, preceded by 50256 when bos.  With pack, documents
// are concatenated into one stream with 50256 between consecutive documents; otherwise every
// document is its own stream.  Windows start at stream positions 0, stride, 2*stride, ... (stride
// in [1, W]; 0 means W, no overlap); a stream's last window may be shorter (length[] says how
// many tokens are valid; the rest is padded with 50256).  A window's provenance is that of its
// first corpus token: source file index, document number within the file (from 0) and token
// offset within the document (a packing separator counts as the token after the end of the
// document before it).
//
// Threads: one reader thread (decompression, parsing, splitting into chunks of <= ~1 MB, cut
// where the pre-tokenizer must split anyway), n_threads tokenizer threads and one windowing
// thread, connected by bounded queues, so memory does not grow with the corpus (a single text
// document with no whitespace-after-non-whitespace boundary is the exception: it is held whole).
// The output order is deterministic and independent of n_threads.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "text/bpe.h"

typedef enum { QK_SPLIT_FILE = 0, QK_SPLIT_BLANK_LINES, QK_SPLIT_LINES } QkDocSplit;

typedef struct {
    const char *const *inputs;  // files, directories, globs
    int n_inputs;
    const QkBpe *bpe;           // required for text and JSONL; bounds pre-tokenized ids (else 50257)
    QkDocSplit split;           // plain text only
    const char *jsonl_field;    // NULL: "text"
    int skip_bad_records;       // JSONL: count and skip bad lines instead of failing
    int allow_special;          // text: "<|endoftext|>" becomes id 50256
    int n_ctx;                  // window length in tokens, including the BOS (> bos)
    int bos;                    // 1: every window starts with 50256
    int pack;                   // 1: pack documents with 50256 separators; 0: one document per window
    int stride;                 // 0: W (= n_ctx - bos)
    int batch_size;             // windows per batch; 0: 8
    int n_threads;              // tokenizer threads; 0: 1
    int part, n_parts;          // n_parts > 0: read only part `part` (0-based) of qk_corpus_plan's split;
                                // provenance file indices stay those of the whole sorted list
} QkCorpusOptions;

typedef struct {
    int32_t file;    // index into the sorted file list (qk_corpus_file)
    int64_t doc;     // document number within the file
    int64_t offset;  // token offset within the document
} QkProvenance;

// Filled by qk_corpus_next_batch (which allocates the arrays); free with qk_window_batch_free.
typedef struct {
    int n;               // windows in this batch (1 .. batch_size)
    int n_ctx;
    int32_t *tokens;     // [n][n_ctx], row-major
    int32_t *length;     // [n] valid tokens of each row (BOS included)
    QkProvenance *prov;  // [n]
    int cap;             // rows allocated
} QkWindowBatch;
void qk_window_batch_free(QkWindowBatch *b);

typedef struct {
    int64_t files_done;       // files read to the end
    int64_t documents;        // documents read (empty ones included)
    int64_t empty_documents;
    int64_t skipped_records;  // bad JSONL lines skipped (skip_bad_records)
    int64_t tokens;           // corpus tokens windowed (separators and BOS excluded)
    int64_t windows;
    int64_t input_bytes_done;   // input read up to the chunk the last queued batch came from, and
    int64_t input_bytes_total;  // the size of every input file (compressed bytes for .gz / .zst):
                                // how far the corpus is, for an ETA (1 MiB granularity)
} QkCorpusStats;

typedef struct QkCorpus QkCorpus;

// Expands the inputs and starts the threads.  NULL (qk_errmsg) for bad options, an input that
// matches nothing, or an unreadable file.
QkCorpus *qk_corpus_open(const QkCorpusOptions *opt);
// 1: *out holds the next batch; 0: the corpus is done; -1: an error (qk_errmsg names the file and
// line, token or byte offset).  Every window before the error has been delivered.
int qk_corpus_next_batch(QkCorpus *c, QkWindowBatch *out);
// Stops the threads (also mid-corpus) and frees everything.
void qk_corpus_close(QkCorpus *c);

// The deterministic split of a corpus into n_parts for Slurm tasks: the sorted, de-duplicated file
// list in contiguous ranges of about equal total bytes.  *files gets the whole list (free each and
// the array), first[0..n_parts] the range bounds (part p reads files [first[p], first[p+1]).
// Fewer files than parts is an error naming both counts.
int qk_corpus_plan(const char *const *inputs, int n_inputs, int n_parts, char ***files, int *n_files, int *first);

int qk_corpus_n_files(const QkCorpus *c);
const char *qk_corpus_file(const QkCorpus *c, int i);
// A snapshot of the counters (final once next_batch has returned 0).
void qk_corpus_stats(QkCorpus *c, QkCorpusStats *st);
