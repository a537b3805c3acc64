// bpe.h: GPT-2 byte-level BPE, byte-exact with tiktoken's "gpt2" encoding.
//
// Encoding a text is three steps:
//   1. pre-tokenize: split the bytes into pieces with GPT-2's regex
//      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (hand-written matcher, Unicode classes from unicode_classes.c);
//   2. a piece that is itself a token becomes that token;
//   3. otherwise merge adjacent parts by rank, lowest first, leftmost on ties, starting from single
//      bytes; a pair may merge when the concatenation of its bytes is a ranked token (tiktoken's
//      rule, which equals GPT-2's merge-list rule for the GPT-2 vocabulary).
//
// Invalid UTF-8: each byte that does not start a valid (shortest-form, non-surrogate, <= U+10FFFF)
// UTF-8 sequence is one character of the class [^\s\p{L}\p{N}], exactly like the lone surrogate
// Python's "surrogateescape" makes of it.  So invalid bytes round-trip (decode(encode(x)) == x for
// every byte string) and never become U+FFFD.  tiktoken itself cannot run its regex on invalid
// UTF-8 (its encode takes str; its private _encode_bytes re-encodes everything after the first
// invalid byte as one piece, which its own source calls "not correct"); the committed reference
// applies tiktoken's BPE to pieces split this way (tests/reference/make_tokenizer_ref.py).
//
// `<|endoftext|>` (id 50256) is special only where the caller passes allow_special; otherwise
// the text "<|endoftext|>" is encoded as ordinary text (tiktoken's encode_ordinary).
#pragma once
#include <stddef.h>
#include <stdint.h>

#define QK_GPT2_EOT 50256

// A growable array of token ids.
typedef struct {
    int32_t *ids;
    size_t n, cap;
} QkIds;
void qk_ids_push(QkIds *v, int32_t id);
void qk_ids_free(QkIds *v);

// A growable byte buffer (decode output).
typedef struct {
    uint8_t *data;
    size_t n, cap;
} QkBytes;
void qk_bytes_append(QkBytes *b, const void *p, size_t n);
void qk_bytes_free(QkBytes *b);

// The vocabulary: immutable after loading, shared by any number of threads.
typedef struct QkBpe QkBpe;

// Loads DIR/encoder.json or DIR/vocab.json, and DIR/vocab.bpe or DIR/merges.txt.
QkBpe *qk_bpe_load(const char *dir);
// Loads the two named files (JSON token -> id map; merges list whose first line is "#version").
QkBpe *qk_bpe_load_files(const char *vocab_json, const char *merges);
void qk_bpe_free(QkBpe *bpe);
int qk_bpe_vocab_size(const QkBpe *bpe);  // one more than the largest id (50257 for GPT-2)
int qk_bpe_eot_id(const QkBpe *bpe);      // id of <|endoftext|>, -1 if the vocabulary has none

// Per-thread encoding state: scratch space and a cache of recently encoded pieces.
typedef struct QkBpeEncoder QkBpeEncoder;
QkBpeEncoder *qk_bpe_encoder_new(const QkBpe *bpe);
void qk_bpe_encoder_free(QkBpeEncoder *enc);

// Appends the ids of text[0..n) to *out.  allow_special: recognise "<|endoftext|>" as the special
// token (the text between occurrences is pre-tokenized separately, as tiktoken does).  Never fails.
void qk_bpe_encode(QkBpeEncoder *enc, const uint8_t *text, size_t n, int allow_special, QkIds *out);

// Appends the bytes of ids[0..n) to *out.  Returns -1 (qk_err names the position) for an id that
// is not in the vocabulary.
int qk_bpe_decode(const QkBpe *bpe, const int32_t *ids, size_t n, QkBytes *out);

// Pre-tokenizer: the end of the piece that starts at byte i of text[0..n) (i < n).
size_t qk_bpe_piece_end(const uint8_t *text, size_t n, size_t i);
