// Fuzz target (libFuzzer): the token files of `qkscope cache --tokens` (host/text/token_file.c): text
// ids and .npy (host/io/npy.c); the first byte picks the format.
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "text/token_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *name = data[0] & 1 ? "fuzz.npy" : "fuzz.txt";
    int *tokens = (int *)1, B = -1, T = -1;
    int rc = qk_token_file_parse(name, data + 1, size - 1, &tokens, &B, &T);
    if (rc == 0 && (B < 1 || T < 1 || !tokens)) abort();
    if (rc != 0 && tokens) abort();  // nothing for the caller to free on failure
    if (rc == 0) {
        volatile int sink = 0;  // reads every id: ASan flags a buffer shorter than B x T
        for (size_t i = 0; i < (size_t)B * T; i++) sink ^= tokens[i];
        (void)sink;
    }
    free(tokens);
    return 0;
}
