// cpu_features.c: see cpu_features.h.
#include "base/cpu_features.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static int cpu_has_avx512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;  // libgcc also checks that the OS saves zmm state
#else
    return 0;
#endif
}

// -1 bad value, 0 avx2, 1 avx512, 2 auto
static int isa_request(void) {
    const char *s = getenv("QK_ISA");
    if (!s || !*s || !strcmp(s, "auto")) return 2;
    if (!strcmp(s, "avx2")) return 0;
    if (!strcmp(s, "avx512")) return 1;
    return -1;
}

int qk_cpu_check(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return qk_err("this CPU lacks AVX2/FMA, which this build of qkscope targets (x86-64-v3); "
                      "rebuild with `make ARCH=-march=native` on it");
#endif
    int req = isa_request();
    if (req < 0) return qk_err("QK_ISA=%s: expected auto, avx2 or avx512", getenv("QK_ISA"));
    if (req == 1 && !cpu_has_avx512()) return qk_err("QK_ISA=avx512: this CPU has no AVX-512");
    return 0;
}

static _Atomic int cached = -1;

void qk_cpu_reload(void) { cached = -1; }

int qk_cpu_avx512(void) {
    int v = cached;
    if (v < 0) {
        v = isa_request() != 0 && cpu_has_avx512();
        cached = v;
    }
    return v;
}
