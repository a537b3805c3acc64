// topk_fused_select.h: the selection rules of the fused bilinear top-k (kernels/analysis/
// topk_fused_kernel.cuh), as __host__ __device__ functions, so the CPU suite
// (tests/test_topk_fused_select.c) runs the very rules the kernel runs against host/topk.c.
// Keys, their order and the output rules are select.h's.
//
// Per row of a block's BM rows, in shared memory:
//   T      [tslots] keys: the row's running best, sorted descending (the warp queue of select.h;
//          tslots = qk_fsel_tslots(k): 32 or 64)
//   queue  [qcap] keys: this column tile's survivors, unsorted (slots taken by atomicAdd)
//   cnt    how many survivors tried to enter (may exceed qcap: the excess is not stored)
//   thr    slot k-1 of T: a tile's score matters only when its key is above it
//   pthr   the bar of the current pass over the tile (thr on the first pass)
//
// One column tile (BN columns) of a row, after the MMA has put its scores in registers:
//   pass: every key above pthr takes slot cnt++ and is stored if the slot is < qcap;
//   merge: kth = slot k-1 of top64(T U queue[0..min(cnt,qcap)));
//   resolve: cnt <= qcap: nothing was lost, T becomes the merge, thr = kth, the row is done;
//            cnt >  qcap: some keys were lost; T stays as it was, and the next pass over the same
//            registers takes exactly the tile's keys >= kth (pthr = kth - 1).  Every key of the
//            true top-k of T U tile is >= kth (kth is the k-th of a subset), so none is missed, and
//            none is taken twice (T holds columns of earlier tiles only).
// Seeding (topk_fused.h, QK_FUSED_SEED): before the walk a block scores a seed tile, the (at most)
// QK_FSEL_SEEDS columns with the best c_j (seed keys: c_j in the walk's order, ties by lower index,
// NaN never), sorted by column index, and offers it as its first tile, so T and thr start at the
// seeds' best instead of EMPTY.  The walk then SKIPS every seed column (the tile's mask,
// qk_fsel_seed_mask): each column is offered exactly once, so the argument above holds as is (the
// seed tile is one more tile, in front) and the result is the unseeded one, ties included; only
// the number of survivors changes.
//
// A rescan raises the bar strictly: its queue holds qcap >= k + 1 distinct keys >= kth, so at
// least k of them are > kth, and the next kth is > kth.  qcap >= BN: no pass overflows at all (the
// first tile's, thr EMPTY, included), so the kernel (qk_fsel_qcap = BN) never rescans.
#pragma once
#include <stdint.h>

#include "analysis/select.h"

#define QK_FSEL_BM 64                        // rows per block (4 warps x 16)
#define QK_FSEL_BN 64                        // columns per tile
#define QK_FSEL_DONE 0xffffffffffffffffull   // a bar no key passes: the row is done for this tile

// Queue slots per row: BN.  A pass offers each of the tile's BN columns of a row at most once, so
// a queue of BN slots never overflows, whatever k (the rescan below is then never needed by the
// kernel; the rules still hold for any qcap >= k + 1, which the CPU suite checks with smaller
// queues).  A multiple of 32 (merged 32 at a time).  (96 for k > 32 made top + bottom need
// 185,144 B of shared memory, over an A100's 166,912 B opt-in.)
QK_HD int qk_fsel_qcap(int k) {
    (void)k;
    return QK_FSEL_BN;
}

// T slots kept per row between merges: the merge makes the best 64 (the warp queue's two halves),
// but only the best k can ever be output or set the bar, so k <= 32 keeps the first half alone
// (the second reloads as EMPTY): less shared memory, more blocks per SM.
QK_HD int qk_fsel_tslots(int k) { return k <= 32 ? 32 : 64; }

// Stores a survivor in the slot it took; returns 0 when the slot is past the queue (lost: the
// row will be rescanned).
QK_HD int qk_fsel_store(uint64_t *queue, int qcap, int slot, uint64_t key) {
    if (slot >= qcap) return 0;
    queue[slot] = key;
    return 1;
}

// How many of a row's survivors are in its queue.
QK_HD int qk_fsel_held(int cnt, int qcap) { return cnt < qcap ? cnt : qcap; }

// After the merge of a row with cnt survivors (cnt >= 1) whose slot k-1 is kth: returns 1 when
// the merge is committed (T <- merge, *thr = kth, *pthr = DONE), 0 when the row is rescanned
// (T kept, *thr kept, *pthr = kth - 1).
QK_HD int qk_fsel_resolve(int cnt, int qcap, uint64_t kth, uint64_t *thr, uint64_t *pthr) {
    if (cnt <= qcap) {
        *thr = kth;
        *pthr = QK_FSEL_DONE;
        return 1;
    }
    // kth is a real key here (qcap >= k keys were held), so kth - 1 does not wrap.
    *pthr = kth - 1;
    return 0;
}

// The cheap first test of a score, before its key is built: the value of a bar (keys order by
// value first, so key > bar implies value(key) >= value(bar)).  EMPTY: -inf (every non-NaN score
// may pass); DONE: NaN (no score passes).  sv is the score as the key orders it (sign * v).
QK_HD float qk_fsel_bar_value(uint64_t bar) {
    if (bar == QK_SEL_EMPTY) return -__builtin_inff();
    if (bar == QK_FSEL_DONE) return __builtin_nanf("");
    return qk_sel_unpack_v(bar);
}

// 0 only when sv's key cannot be above the bar whose value is bv (NaN scores never pass).
QK_HD int qk_fsel_may_pass(float sv, float bv) { return sv >= bv; }

#define QK_FSEL_SEEDS 64            // seed columns per problem: one tile
#define QK_FSEL_NOSEED 0x7fffffff   // an unused slot of a seed list: above every column index

// The key under which column j competes for a seed slot: c_j in the order of the top queue
// (sign -1 for bottom), lower index first among equals; EMPTY (never a seed) for NaN.
QK_HD uint64_t qk_fsel_seed_key(float cj, int32_t j, float sign) { return qk_sel_key(cj, j, sign, 0, 0.0f); }

// Where seed key keys[x] goes in the column-sorted list: how many of the n keys (distinct
// columns, EMPTY = no seed) have a lower column.  -1 for EMPTY.
QK_HD int qk_fsel_seed_rank(const uint64_t *keys, int n, int x) {
    if (keys[x] == QK_SEL_EMPTY) return -1;
    const int32_t jx = qk_sel_unpack_i(keys[x]);
    int rank = 0;
    for (int y = 0; y < n; y++) rank += keys[y] != QK_SEL_EMPTY && qk_sel_unpack_i(keys[y]) < jx;
    return rank;
}

// The seeded columns of tile [j0, j0 + BN) as bits (bit e: column j0 + e), from seeds
// [QK_FSEL_SEEDS] sorted ascending, padded with QK_FSEL_NOSEED; *sp is the first seed not yet
// consumed and advances past this tile's.  Tiles must come in increasing j0 (the walk's order),
// so every seed left is >= j0; j0 + BN must not overflow (M <= INT_MAX - BN).
QK_HD uint64_t qk_fsel_seed_mask(const int32_t *seeds, int *sp, int j0) {
    uint64_t m = 0;
    while (*sp < QK_FSEL_SEEDS && seeds[*sp] < j0 + QK_FSEL_BN) m |= 1ull << (seeds[*sp] - j0), ++*sp;
    return m;
}

// Whether the walk offers column j0 + e of a tile: inside the problem and not a seed.
QK_HD int qk_fsel_walk_col(int j0, int e, int M, uint64_t seeded) { return j0 + e < M && !((seeded >> e) & 1u); }
