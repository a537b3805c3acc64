// sha256.h: SHA-256 (FIPS 180-4) of files, to record the identity of model and SAE weights.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;      // bytes hashed so far
    uint8_t buf[64];
    size_t fill;
} QkSha256;

void qk_sha256_init(QkSha256 *s);
void qk_sha256_update(QkSha256 *s, const void *data, size_t n);
void qk_sha256_final(QkSha256 *s, uint8_t out[32]);
// hex[65] = the lowercase hex digest of the file; -1 with qk_errmsg when it cannot be read.
int qk_sha256_file(const char *path, char hex[65]);
