// exact_sum.h: sums whose result does not depend on the order or grouping of their terms, so a
// corpus aggregate is bit-identical whether the corpus ran as one file, as shards of any size, or
// over any number of ranks.  A term (a double) is rounded once to a multiple of 2^-64 and held as
// three int64 limbs,
//     value = limb[0] * 2^-64 + limb[1] * 2^-32 + limb[2],
// and sums are limb-wise integer additions, which are exact and associative.  Normalised limbs
// have limb[0], limb[1] in [0, 2^32); between normalisations each addition changes them by at most
// 2^32, so 2^30 terms can be added safely (qk_exact_add's callers normalise far more often).  A
// term's magnitude is rounded (to nearest, ties to even), so x and -x cancel exactly.
// Range: a term beyond +-2^62 (4.6e18) is clamped to it, and a non-finite term (NaN, +-inf) adds
// nothing (the analysis refuses non-finite activations before they get here; this keeps the sums
// free of undefined behaviour whatever a caller passes).  A sum leaving +-2^63 saturates at
// INT64_MAX / INT64_MIN in its top limb (then, and only then, the order of the terms matters).
// Resolution: 2^-64 (5.4e-20).
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define QK_EXACT_LIMBS 3
#define QK_EXACT_MAX 4611686018427387904.0  // 2^62

// a + b, saturated at the int64 range (the top limb only: the lower ones stay within 2^62).
static inline int64_t qk_exact_sat_add(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static inline void qk_exact_add(int64_t *s, double x) {
    if (!isfinite(x)) return;
    if (x < -QK_EXACT_MAX) x = -QK_EXACT_MAX;
    if (x > QK_EXACT_MAX) x = QK_EXACT_MAX;
    // |x| split into limbs, then added or subtracted: for a magnitude a, a - floor(a) is exact
    // (Sterbenz), which x - floor(x) is not for negative x.
    double a = fabs(x), whole = floor(a), frac = a - whole;  // frac in [0, 1)
    double hi = floor(frac * 4294967296.0);                   // frac * 2^32: exact (a power of two)
    double lo = nearbyint((frac * 4294967296.0 - hi) * 4294967296.0);  // exact product, rounded once
    int64_t l0 = (int64_t)lo, l1 = (int64_t)hi, l2 = (int64_t)whole;  // l0 in [0, 2^32], l1 in [0, 2^32)
    if (x < 0) l0 = -l0, l1 = -l1, l2 = -l2;
    s[0] += l0, s[1] += l1, s[2] = qk_exact_sat_add(s[2], l2);
}

// Carries limb[0] and limb[1] into the limb above: the same value, canonical form.
static inline void qk_exact_normalize(int64_t *s) {
    int64_t c = s[0] >> 32;  // floor division (arithmetic shift): limbs go negative with negative terms
    s[0] -= c * 4294967296;
    s[1] += c;
    c = s[1] >> 32;
    s[1] -= c * 4294967296;
    s[2] = qk_exact_sat_add(s[2], c);
}

// The value as a double (from the canonical form, so equal sums give equal doubles).
static inline double qk_exact_value(const int64_t *s) {
    int64_t t[QK_EXACT_LIMBS] = {s[0], s[1], s[2]};
    qk_exact_normalize(t);
    long double frac = ((long double)t[1] * 4294967296.0L + (long double)t[0]) / 18446744073709551616.0L;  // exact
    return (double)((long double)t[2] + frac);
}

// n sums (n, QK_EXACT_LIMBS): their values (NULL: not wanted) and, when canon is not NULL, their
// canonical limbs.
static inline void qk_exact_values(const int64_t *limbs, size_t n, double *value, int64_t *canon) {
    for (size_t i = 0; i < n; i++) {
        const int64_t *s = limbs + i * QK_EXACT_LIMBS;
        if (value) value[i] = qk_exact_value(s);
        if (canon) {
            int64_t *t = canon + i * QK_EXACT_LIMBS;
            for (int q = 0; q < QK_EXACT_LIMBS; q++) t[q] = s[q];
            qk_exact_normalize(t);
        }
    }
}
