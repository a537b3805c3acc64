// agg_comm.h: the corpus aggregates of a multi-rank run combined across its ranks.
#pragma once
#include "analysis/analysis.h"
#include "run/comm.h"

// Reduces the aggregates of n heads (aggs[i] NULL for heads not analysed: the same on every rank,
// as are d_sae and the sketch capacities) across the ranks of c, so that every rank ends with the
// aggregates of the whole corpus: the dense fields (head_agg_fields) all-reduced, summed in rank
// order; the heavy-hitter sketches gathered (pair_sketch_pack) and merged in rank order 0..size-1
// into a fresh sketch of the same capacity.  Deterministic: the same inputs give bit-identical
// aggregates.  A collective: every rank calls it.
int head_aggs_allreduce(QkComm *c, HeadAggregates *const *aggs, int n);
