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
// A rescan raises the bar strictly: its queue holds qcap >= k + 1 distinct keys >= kth, so at
// least k of them are > kth, and the next kth is > kth.  qcap >= BN: the first tile (thr EMPTY,
// every key passes) never overflows.
#pragma once
#include <stdint.h>

#include "analysis/select.h"

#define QK_FSEL_BM 64                        // rows per block (4 warps x 16)
#define QK_FSEL_BN 64                        // columns per tile
#define QK_FSEL_DONE 0xffffffffffffffffull   // a bar no key passes: the row is done for this tile

// Queue slots per row: >= BN and >= k + 1 (see above), a multiple of 32 (merged 32 at a time).
QK_HD int qk_fsel_qcap(int k) { return k <= 32 ? 64 : 96; }

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
