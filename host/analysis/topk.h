// topk.h: the bilinear top-k primitive of SPEC §5.
//
//     s_ij = a_i * (U_i . V_j) + c_j          i < n rows, j < M columns (features)
//     out_i = the k best j of row i, with their values
//
// "Best" is a total order, so the result is unique and the same for any thread count:
//   top    (default): value descending, then index ascending;
//   bottom (bottom=1): value ascending, then index ascending (the features a query avoids).
// V is walked in fixed column blocks: one qk_gemm per (row block, column block) tile into a
// per-thread buffer, then a vectorised threshold scan keeps a running k-heap per row.  Memory is
// O(threads x row block x column block + n x k), never n x M.  NaN scores are never selected.
//
// Activations (`act`), applied as SAELens does:
//   QK_TOPK_PLAIN: the k best scores, values as computed.  count[i] = number of valid entries
//                  (k unless the row had fewer than k non-NaN scores).
//   QK_TOPK_RELU:  SAELens TopK: select the k largest FIRST, then ReLU them.  Selected entries
//                  with value <= 0 keep their index but get value 0; since rows are sorted by
//                  value, they are exactly the entries from count[i] on, where count[i] = number
//                  of selected entries with value > 0.
//   QK_TOPK_GATED: ReLU / JumpReLU: an entry j is active iff s_ij > gate_j, with gate_j =
//                  gates[j] (gates != NULL) or the scalar `gate`.  The k best ACTIVE entries are
//                  stored; count[i] = the number of active entries in the whole row (may exceed
//                  k: truncation is visible as count[i] > k).  Slots past min(count[i], k) hold
//                  index -1 and value 0.  (ReLU: gate 0; JumpReLU: gates[j] = max(threshold_j, 0).)
// bottom=1 is only allowed with QK_TOPK_PLAIN.
#pragma once
#include <stdint.h>

typedef enum { QK_TOPK_PLAIN = 0, QK_TOPK_RELU = 1, QK_TOPK_GATED = 2 } QkTopkAct;

// GEMM precision of a device top-k (kernels/analysis/bilinear_topk.h); the CPU computes in fp32 only.
typedef enum { QK_PREC_FP32 = 0, QK_PREC_TF32 = 1, QK_PREC_BF16 = 2 } QkPrecision;
// Parses "fp32", "tf32" or "bf16".
int qk_precision_parse(const char *s, QkPrecision *p);
const char *qk_precision_name(QkPrecision p);

typedef struct {
    int k;               // slots per row, 1 <= k <= M
    int bottom;          // 0: k largest; 1: k smallest (QK_TOPK_PLAIN only)
    QkTopkAct act;
    float gate;          // QK_TOPK_GATED with gates == NULL: one gate for every column
    const float *gates;  // [M] or NULL: per-column gates for QK_TOPK_GATED
    // QK_TOPK_PLAIN with bottom = 0 only: also the k smallest, from the same GEMM tiles (value
    // ascending, index ascending), into bottom_idx / bottom_val [n x k]; NULL: not asked.
    int32_t *bottom_idx;
    float *bottom_val;
    int row_block;       // rows per GEMM tile; 0 = default
    int col_block;       // columns per GEMM tile; 0 = default
} QkTopkOpts;

// U [n x r] with row stride ldu >= r; V [M x r] contiguous; a [n] or NULL (= 1);
// c [M] or NULL (= 0).  Outputs: idx [n x k] int32, val [n x k], count [n] (may be NULL).
// Runs on OMP_NUM_THREADS threads (call it outside any parallel region).  Returns 0, or -1 with
// qk_errmsg() naming the bad argument.
int qk_topk(int n, int M, int r, const float *U, int ldu, const float *a, const float *V,
            const float *c, const QkTopkOpts *opts, int32_t *idx, float *val, int32_t *count);

// The default tile sizes for a given r (what row_block/col_block = 0 mean).
void qk_topk_default_blocks(int r, int *row_block, int *col_block);
