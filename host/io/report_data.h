// report_data.h: what `qkscope report` reads from a run (and optional static) file, as plain
// arrays: the per-head metric means, each recorded head's heaviest pairs with their example
// contexts, the strongest static-map entries, and the token text (the file's vocab/ group).
#pragma once
#include <hdf5.h>
#include <stdint.h>

#include "io/vocab_out.h"

typedef struct {
    int32_t f, g;
    double weight, sum;
    int64_t count;
} ReportPair;

typedef struct {
    int32_t f, g;
    int64_t window;
    int32_t qpos, kpos;
    float term;
} ReportExample;

typedef struct {
    int layer, head;
    ReportPair *pairs;     // heaviest first
    int n_pairs;
    ReportExample *ex;     // strongest first (all pairs)
    int n_ex;
    int32_t *st_f, *st_g;  // strongest static entries S[f, g], largest first (static file given)
    float *st_v;
    int n_static;
    int d_sae;
    char np_sae[64];       // Neuronpedia SAE id ("" when the release is not a known one)
} ReportHead;

typedef struct {
    hid_t run;
    const char *run_path, *static_path;
    char *model_dir, *model_sha, *backend, *heads_attr;
    int64_t tokens, windows;
    int L, H, M, T;
    char metric_names[16][32];
    double *means;         // (L * H * M), NaN where a head was not analysed
    ReportHead *rec;       // recorded heads
    int n_rec;
    QkVocabPieces vocab;   // token text (n 0 when the run had no vocabulary)
} ReportData;

int report_load(ReportData *d, const char *run_path, const char *static_path);
void report_free(ReportData *d);
// Row w of tokens (T ids) into out; -1 on failure.
int report_tokens(const ReportData *d, int64_t w, int32_t *out);
// The bytes of token id (NULL and *len 0 when unknown).
const uint8_t *report_piece(const ReportData *d, int32_t id, int64_t *len);
