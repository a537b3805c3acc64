// pair_sketch.h: heavy-hitter feature pairs with the space-saving sketch (Metwally et al. 2005).
// Keeps at most `capacity` (f, g) pairs.  Each update adds a non-negative weight (|term value|);
// a pair not kept replaces the lightest one and inherits its weight as an over-estimate
// (`err`).  Every pair whose true total weight exceeds (total weight / capacity) is kept, and a
// kept pair's true weight lies in [weight - err, weight].  The signed sum and the count are exact
// from the moment the pair entered.  Deterministic: the same updates give the same table.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t f, g;
    double weight;  // summed |value| (+ err inherited at entry)
    double err;     // over-estimate inherited at entry
    double sum;     // summed signed value since entry
    int64_t count;  // updates since entry
    int32_t hpos;   // internal: the entry's position in the hash table
} PairEntry;

typedef struct {
    int capacity, size;
    PairEntry *heap;  // (capacity) min-heap on (weight, f, g)
    int32_t *slot;    // (table_size) hash table: heap position or -1
    int table_size;   // power of two >= 2 * capacity
    double total;     // total weight of all updates
    double pruned;    // of which summarised away before reaching the table (pair_sketch_add_pruned)
} PairSketch;

void pair_sketch_init(PairSketch *s, int capacity);
void pair_sketch_free(PairSketch *s);
void pair_sketch_add(PairSketch *s, int32_t f, int32_t g, double value);
// Adds a summarised entry (another sketch's): weight w of which err is over-estimate, signed sum
// and count.  The merged table keeps the guarantees with err bounds summed.
void pair_sketch_add_entry(PairSketch *s, int32_t f, int32_t g, double w, double err, double value, int64_t count);
// Counts weight w of updates that were summarised away before reaching the table (the CUDA
// analysis merges only each batch's heaviest distinct pairs): w enters the total and `pruned`, and
// the guarantees widen by it: true weight <= weight + pruned; every pair heavier than
// total / capacity + pruned is kept.
void pair_sketch_add_pruned(PairSketch *s, double w);
// Adds every entry of `other`, heaviest first (used to combine shards, threads or ranks;
// order-dependent only through ties).  The total becomes the sum of both totals (all updates
// either sketch saw), not of the weights kept.
void pair_sketch_merge(PairSketch *s, const PairSketch *other);
// A sketch as bytes, to send between ranks: the total (float64), the entry count (int64), then
// per entry, heaviest first, f, g (int32), weight, err, sum (float64), count (int64).
size_t pair_sketch_packed_size(const PairSketch *s);
void pair_sketch_pack(const PairSketch *s, void *out);
// pair_sketch_merge of a packed sketch read from buf[0..len); *used gets its length in bytes.
// -1 (one line) when buf is shorter than the entries it announces.
int pair_sketch_merge_packed(PairSketch *s, const void *buf, size_t len, size_t *used);
// The kept entries sorted by weight descending (ties: lower f, then g); returns the count.
int pair_sketch_sorted(const PairSketch *s, PairEntry *out);
