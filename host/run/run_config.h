// run_config.h: the INI configuration of `qkscope run` and `qkscope static` (configs/*.ini).
// Every key is documented in configs/README.md.  Unknown sections or keys and bad values are
// errors "FILE:LINE: ..."; `--set section.key=value` overrides are applied after the file and
// reported as "--set section.key: ...".
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "text/corpus.h"

#define QK_MAX_LAYERS 64

typedef struct {
    char *path;      // the config file
    char *text;      // its full text plus the --set overrides (stored in every output file)
    // [model]
    char *model_dir;
    // [sae]
    char *sae_dir[QK_MAX_LAYERS];  // NULL: no SAE for that layer's resid_pre
    int sae_center[QK_MAX_LAYERS]; // ",center": the SAE expects x - mean(x) (jb release)
    int sae_max_active;            // stored features per token for ReLU / JumpReLU SAEs
    // [corpus]
    char **paths;
    int n_paths;
    char *vocab;         // tokenizer folder (encoder.json + vocab.bpe), for text and JSONL corpora
    QkDocSplit split;
    char *jsonl_field;
    int skip_bad_records, allow_special;
    int n_ctx, bos, pack, stride, batch, tokenizer_threads;
    int64_t max_tokens;  // 0: the whole corpus
    // [analysis]
    char *heads;         // "all", or a list "L.H,L.*": heads analysed (aggregates)
    char *record_heads;  // heads with per-token records ("none" allowed)
    int k, a, p, encoder, enc_slots, sketch_pairs, sketch_capacity;
    int record_patterns;  // recorded heads also get full attention rows, real and reconstructed
    int part, n_parts;    // `run --part P/N` (command line, not INI): this task's part of the corpus
    // [sweep] section.key = V1 | V2 | ...: the settings `qkscope submit` expands (run ignores it).
    int n_sweep;
    char **sweep_key;     // (n_sweep) "section.key"
    char **sweep_values;  // (n_sweep) "V1 | V2 | ..." as written
    int static_k;        // top-k of the weights-only maps
    // [output]
    int64_t shard_tokens;  // 0: one file; else OUT is a folder of shards of about this many tokens
    int progress_seconds;  // progress line period when stderr is not a terminal
    int write;             // 0: analyse but write nothing (to measure the cost of writing)
    // [run]
    char *backend;
    int device, threads;
    char *precision;     // fp32 | tf32 | bf16
} RunConfig;

#define QK_MAX_SETTINGS 4096  // a [sweep] giving more is refused at load

// On failure, qk_errmsg() names the file and line (or the --set) and the key; *c is still freed
// with run_config_free.
int run_config_load(RunConfig *c, const char *path, char *const *sets, int n_sets);
// The same on the file's text in memory (data[len]); `path` names it in errors.
int run_config_parse(RunConfig *c, const char *path, const char *data, size_t len, char *const *sets, int n_sets);
void run_config_free(RunConfig *c);

// The number of settings of the [sweep] (the product of the value counts, <= QK_MAX_SETTINGS as
// checked at load; 1 without a sweep), and
// the --set overrides "section.key=V" of setting `index` (mixed radix, first key slowest) into
// out[n_sweep] (fresh strings).
int run_config_n_settings(const RunConfig *c);
void run_config_setting(const RunConfig *c, int index, char **out);

// hex[65]: SHA-256 of every setting that changes the output (not [run] threads, backend, device
// or [output] progress_seconds), so a resumed run can check it continues the same analysis.
void run_config_hash(const RunConfig *c, char hex[65]);

// Parses a head list ("all", "none", "5.1,5.5,9.*") against L layers x H heads into
// chosen[L*H] (1 = chosen).  `what` names the key in errors.
int run_config_heads(const char *spec, int L, int H, uint8_t *chosen, const char *what);
