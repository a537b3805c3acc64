// agg_io.h: the corpus aggregates of docs/FORMAT.md in HDF5: written by `qkscope run` for every
// analysed head, read back and summed by `qkscope merge`, summarised on stdout by both.
#pragma once
#include <stdio.h>

#include "analysis/analysis.h"
#include "io/chunk_writer.h"
#include "io/h5out.h"

// Writes aggregates/L.H/* for every head with aggs[l*H + h] != NULL, the histogram ranges and
// the summary table (summary/metric_mean, head_layer, head_index).
// cw (may be NULL): the per-feature datasets go through its parallel compression (written at
// its cw_flush, which must come before the file closes).
int agg_write_all(QkH5Out *o, ChunkWriter *cw, int L, int H, const HeadAggregates *const *aggs);

// Adds the aggregates of head `label` ("L.H") stored in `file` to *acc (initialised with
// head_agg_init for the same d_sae and the sketch capacity).
int agg_read_add(hid_t file, const char *path, int l, int h, HeadAggregates *acc);

// The heads of a run or shard file's summary/ (head_layer, head_index), read as untrusted input:
// equal lengths, every entry a head within gpt2.h's caps (GPT2_MAX_LAYER, GPT2_MAX_HEAD), none
// listed twice.  *hl, *hh (n) fresh; *L, *H one past the largest layer and head index.  0, or -1
// with qk_errmsg() naming the file and the dataset (nothing left allocated).
int agg_read_summary_heads(hid_t f, const char *path, int32_t **hl, int32_t **hh, int64_t *n, int *L, int *H);

// The per-head summary: metric means and the heaviest feature pair.
void agg_print_summary(FILE *f, int L, int H, const HeadAggregates *const *aggs);
