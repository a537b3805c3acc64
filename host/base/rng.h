// rng.h: the synthetic generators' RNG (`qkscope planted`, `qkscope random`): xorshift64*, seeded
// through splitmix64, so a seed gives the same draws on every machine.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s;
} Rng;

static inline void rng_seed(Rng *r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    r->s = z ? z : 1;
}
static inline uint64_t rng_u64(Rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}
static inline double rng_unif(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
static inline double rng_normal(Rng *r) {
    double u = rng_unif(r), v = rng_unif(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}
static inline int rng_below(Rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }
static inline void fill_normal(Rng *r, float *x, size_t n, double sd) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(sd * rng_normal(r));
}
static inline void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}
