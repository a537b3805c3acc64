// fuzz_common.h: helpers shared by the libFuzzer harnesses (the list, and the campaigns: results/fuzz.md).
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

// Two inputs from one: a 2-byte little-endian length of the first part, then the parts.
static inline void fuzz_split(const uint8_t *d, size_t n, const uint8_t **a, size_t *na, const uint8_t **b, size_t *nb) {
    size_t len = n >= 2 ? (size_t)(d[0] | d[1] << 8) : 0;
    d += n >= 2 ? 2 : n, n -= n >= 2 ? 2 : n;
    if (len > n) len = n;
    *a = d, *na = len, *b = d + len, *nb = n - len;
}

// A private folder for harnesses whose API reads files (the corpus reader streams them): tmpfs
// when there is one, removed at exit.
static char g_fuzz_dir[64];
static inline void fuzz_rmdir(void) {
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_fuzz_dir);
    if (system(cmd)) {}
}
static inline const char *fuzz_dir(void) {
    if (!g_fuzz_dir[0]) {
        struct stat st;
        snprintf(g_fuzz_dir, sizeof g_fuzz_dir, "%s/qkscope-fuzz-%d", stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp",
                 (int)getpid());
        mkdir(g_fuzz_dir, 0700);
        atexit(fuzz_rmdir);
    }
    return g_fuzz_dir;
}

static inline void fuzz_write(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n)) abort();
    fclose(f);
}
