// test_exact_sum.c: exact sums (host/analysis/exact_sum.h) are independent of the order and grouping of
// their terms, and their value is the terms' sum to within the 2^-64 rounding of each term.
#include "analysis/exact_sum.h"
#include "test_common.h"

#define N 20000

static double term(TRng *g) {  // mixed signs and magnitudes, 1e-12 .. 1e9
    return trng_normal(g) * pow(10.0, trng_int(g, -12, 9));
}

Test(exact_sum, any_order_and_grouping_gives_the_same_limbs) {
    TRng g = {42};
    double *x = qk_malloc(sizeof(double) * N);
    for (int i = 0; i < N; i++) x[i] = term(&g);
    // In order, in reverse, and as uneven groups summed separately then added.
    int64_t fwd[3] = {0}, rev[3] = {0}, grouped[3] = {0};
    long double ref = 0;
    for (int i = 0; i < N; i++) qk_exact_add(fwd, x[i]), ref += x[i];
    for (int i = N - 1; i >= 0; i--) qk_exact_add(rev, x[i]);
    for (int lo = 0; lo < N;) {
        int hi = lo + 1 + trng_int(&g, 0, 3000);
        if (hi > N) hi = N;
        int64_t part[3] = {0};
        for (int i = lo; i < hi; i++) qk_exact_add(part, x[i]);
        qk_exact_normalize(part);
        for (int q = 0; q < 3; q++) grouped[q] += part[q];
        lo = hi;
    }
    qk_exact_normalize(fwd), qk_exact_normalize(rev), qk_exact_normalize(grouped);
    cr_expect(memcmp(fwd, rev, sizeof fwd) == 0 && memcmp(fwd, grouped, sizeof fwd) == 0);
    cr_expect(fwd[0] >= 0 && fwd[0] < (1LL << 32) && fwd[1] >= 0 && fwd[1] < (1LL << 32), "not canonical");
    // The value: within N half-units of 2^-64 plus the long double reference's own rounding.
    double v = qk_exact_value(fwd);
    cr_expect(fabsl((long double)v - ref) <= 1e-15L * fabsl(ref) + N * 0x1p-64, "%.17g vs %.17Lg", v, ref);
    // A double sum of the same terms in another order is not bit-stable: what this is for.
    double a = 0, b = 0;
    for (int i = 0; i < N; i++) a += x[i];
    for (int i = N - 1; i >= 0; i--) b += x[i];
    cr_log_info("double sums forward/backward differ by %g", a - b);
    free(x);
}

Test(exact_sum, small_terms_negative_values_and_clamping) {
    int64_t s[3] = {0};
    qk_exact_add(s, -1.5);
    cr_expect_eq(qk_exact_value(s), -1.5);
    qk_exact_add(s, 0x1p-64);  // the resolution
    qk_exact_add(s, 1.5);
    cr_expect_eq(qk_exact_value(s), 0x1p-64);
    qk_exact_add(s, 0x1p-70);  // below it: rounds to 0
    cr_expect_eq(qk_exact_value(s), 0x1p-64);
    int64_t c[3] = {0};
    qk_exact_add(c, 1e30);  // clamped to 2^62
    cr_expect_eq(qk_exact_value(c), 0x1p62);
    int64_t z[3] = {0};
    for (int i = 0; i < 1000; i++) qk_exact_add(z, 0.1), qk_exact_add(z, -0.1);
    cr_expect_eq(qk_exact_value(z), 0.0);
}

// Huge and non-finite terms (a model that overflows; UBSan found signed overflow here): NaN and
// +-inf add nothing, a sum leaving the int64 range saturates, and nothing is undefined behaviour
// (make test-asan runs this under UBSan).
Test(exact_sum, huge_and_non_finite_terms_are_defined) {
    int64_t s[3] = {0};
    qk_exact_add(s, 2.0);
    qk_exact_add(s, NAN), qk_exact_add(s, INFINITY), qk_exact_add(s, -INFINITY);
    cr_expect_eq(qk_exact_value(s), 2.0, "non-finite terms must add nothing");
    int64_t big[3] = {0}, neg[3] = {0};
    for (int i = 0; i < 8; i++) qk_exact_add(big, 1e30), qk_exact_add(neg, -1e30);  // 8 x 2^62 > 2^63
    qk_exact_normalize(big), qk_exact_normalize(neg);
    cr_expect_eq(big[2], INT64_MAX);
    cr_expect_eq(neg[2], INT64_MIN);
    cr_expect(qk_exact_value(big) > 9e18 && qk_exact_value(neg) < -9e18);
    int64_t sum[3] = {big[0], big[1], big[2]};
    sum[2] = qk_exact_sat_add(sum[2], big[2]);  // merging two saturated sums stays saturated
    cr_expect_eq(sum[2], INT64_MAX);
}
