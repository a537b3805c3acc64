// vocab_out.h: the vocabulary pieces a run file needs to show its tokens as text (docs/FORMAT.md,
// group `vocab/`), and the copy of a GPT-2 BPE folder that `qkscope planted --vocab` makes.
//
// A run whose config names a vocabulary (`[corpus] vocab`) stores, per output file, the bytes of
// every token id that occurs in its `tokens` dataset (padding and separators included):
//   vocab/ids      int32 (N)      the ids, increasing
//   vocab/offsets  int64 (N + 1)  the bytes of ids[n] are bytes[offsets[n] : offsets[n + 1]]
//   vocab/bytes    uint8 (B)      the pieces' raw bytes (a piece may be part of a UTF-8 character)
// and the attributes `source` (the vocabulary folder) and `note`.  `qkscope merge` writes the union
// of its shards' groups.  Files of runs without a vocabulary (pre-tokenized corpora) have no group.
#pragma once
#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "text/bpe.h"

// A set of token ids in [0, n): a bitmap.
typedef struct {
    uint8_t *bits;
    int n;
} QkTokenSet;
void qk_token_set_init(QkTokenSet *s, int n);
void qk_token_set_free(QkTokenSet *s);
void qk_token_set_clear(QkTokenSet *s);
// Adds ids[0..count); ids outside [0, n) are ignored (the corpus reader has rejected them already).
void qk_token_set_add(QkTokenSet *s, const int32_t *ids, size_t count);

// Writes group vocab/ of `file` with the pieces of the ids in `s` (nothing when `s` is empty).
int qk_vocab_write(hid_t file, const QkBpe *bpe, const QkTokenSet *s, const char *source);

// A file's vocab/ group in memory: ids[i] has bytes[off[i] .. off[i + 1]).
typedef struct {
    int32_t *ids;
    int64_t *off;
    uint8_t *bytes;
    size_t n;
} QkVocabPieces;
// Reads the vocab/ group of `file` (opened from `path`, which errors name) as untrusted input:
// ids (N) non-negative and increasing, offsets (N + 1) non-decreasing within bytes.  No group:
// p empty (n 0).  0, or -1 with one line naming the file; free p either way.
int qk_vocab_read(hid_t file, const char *path, QkVocabPieces *p);
void qk_vocab_pieces_free(QkVocabPieces *p);

// Writes into `out` the union of the vocab/ groups of files[0..n) (nothing when none has one).
// A token id whose bytes differ between two files is an error naming both.
int qk_vocab_merge(hid_t out, const hid_t *files, const char *const *paths, int n);

// Copies the GPT-2 BPE files of src_dir (encoder.json or vocab.json, vocab.bpe or merges.txt) into
// dst_dir as encoder.json and vocab.bpe, after checking that they load.
int qk_vocab_copy(const char *src_dir, const char *dst_dir);
