// testutil.h: small helpers shared by the Criterion suites (deterministic RNG, brute force).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

// xorshift64*: deterministic across platforms.
typedef struct {
    uint64_t s;
} TRng;

static inline uint64_t trng_u64(TRng *g) {
    g->s ^= g->s >> 12;
    g->s ^= g->s << 25;
    g->s ^= g->s >> 27;
    return g->s * 2685821657736338717ull;
}
// Uniform in [0, 1).
static inline double trng_unif(TRng *g) { return (trng_u64(g) >> 11) * (1.0 / 9007199254740992.0); }
// Standard normal (Box-Muller).
static inline double trng_normal(TRng *g) {
    double u = trng_unif(g), v = trng_unif(g);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}
// Integer in [lo, hi].
static inline int trng_int(TRng *g, int lo, int hi) { return lo + (int)(trng_u64(g) % (uint64_t)(hi - lo + 1)); }

static inline void trng_fill_normal(TRng *g, float *x, size_t n, double mean, double sd) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + sd * trng_normal(g));
}
