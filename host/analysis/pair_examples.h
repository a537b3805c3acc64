// pair_examples.h: example contexts of the heavy (query feature, key feature) pairs of a head: the
// strongest occurrences of each pair at a query's most attended key j*, kept so that the result
// is the same whatever the batch, shard, part or rank split.
//
// An occurrence is (f, g, term, window, query pos i, key pos j*), fed for each of the
// `[analysis] sketch_pairs` pairs a query gives the heavy-hitter sketch.  Total order ("stronger
// first"): |term| descending, then window, i, j, f, g ascending (window: the run's corpus window
// index; one query gives each pair once, so no two occurrences tie).  The kept set is
//     R(S) = the `capacity` strongest of { the `per_pair` strongest occurrences of each pair in S }.
// R is composable: R(A u B) = R(R(A) u R(B)) (an occurrence beaten within R(A) by c others is
// beaten by at least c in R(A u B), pair by pair), so streaming with periodic compaction, merging
// shards and merging ranks all give R of the whole corpus, bit for bit.  Pairs whose occurrences
// are all weaker than the capacity-th kept one have none: the heaviest pairs by summed |term|
// are, in practice, those with the strongest occurrences.
#pragma once
#include <hdf5.h>
#include <stdint.h>

#include "io/h5out.h"

// Defaults for every run: examples per pair and examples per head.
enum { QK_EXAMPLES_PER_PAIR = 4, QK_EXAMPLES_CAPACITY = 1024 };

typedef struct {
    int64_t window;
    int32_t qpos, kpos, f, g;
    float term;
} PairExample;

typedef struct {
    PairExample *e;
    int n, cap;          // entries held, allocated (a buffer of 4 x capacity before compaction)
    int per_pair, capacity;
} PairExamples;

void pair_examples_init(PairExamples *x, int per_pair, int capacity);
void pair_examples_free(PairExamples *x);
void pair_examples_add(PairExamples *x, int32_t f, int32_t g, float term, int64_t window, int32_t qpos, int32_t kpos);
// Adds every entry of `o` (then R of the union holds).
void pair_examples_merge(PairExamples *x, const PairExamples *o);
// Compacts to R and sorts, strongest first; returns the count.
int pair_examples_finish(PairExamples *x);

// Writes `prefix`examples_{query_feature,key_feature,window,query_pos,key_pos,term} (finished
// first); feature indices in the file type of d_sae.
int pair_examples_write(PairExamples *x, QkH5Out *o, const char *prefix, int d_sae);
// Adds a file's examples under `prefix` (absent: nothing), window indices plus `rebase`.
int pair_examples_read_add(PairExamples *x, hid_t f, const char *path, const char *prefix, int64_t rebase);
