// test_sha256.c: SHA-256 against the FIPS 180-4 examples and a file digest made by sha256sum.
#include <stdio.h>

#include "io/sha256.h"
#include "test_common.h"

static void hex_of(const char *msg, size_t n, char out[65]) {
    QkSha256 s;
    uint8_t d[32];
    qk_sha256_init(&s);
    qk_sha256_update(&s, msg, n);
    qk_sha256_final(&s, d);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

Test(sha256, fips_examples) {
    char h[65];
    hex_of("abc", 3, h);
    cr_expect_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hex_of("", 0, h);
    cr_expect_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(two, strlen(two), h);
    cr_expect_str_eq(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

// A multi-block file against the system's sha256sum.
Test(sha256, file_matches_sha256sum) {
    char h[65], want[65] = "";
    cr_assert_eq(qk_sha256_file(REF_DIR "/gpt2_tiny_a/model.safetensors", h), 0, "%s", qk_errmsg());
    FILE *p = popen("sha256sum " REF_DIR "/gpt2_tiny_a/model.safetensors", "r");
    cr_assert_not_null(p);
    cr_assert_eq(fscanf(p, "%64s", want), 1);
    pclose(p);
    cr_expect_str_eq(h, want);
}
