// Fuzz target (libFuzzer): GPT-2 BPE (host/text/bpe.c) on arbitrary bytes: decode(encode(x)) must equal
// x, and every id must be in the vocabulary.  A first byte 'S' turns <|endoftext|> on.  The
// vocabulary comes from ../shared/data/gpt2 (run from the repository root).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/bpe.h"

static QkBpe *bpe;
static QkBpeEncoder *enc;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!bpe) {
        if (!(bpe = qk_bpe_load("../shared/data/gpt2"))) abort();
        enc = qk_bpe_encoder_new(bpe);
    }
    QkIds ids = {0};
    qk_bpe_encode(enc, data, size, size && data[0] == 'S', &ids);
    for (size_t i = 0; i < ids.n; i++)
        if (ids.ids[i] < 0 || ids.ids[i] >= qk_bpe_vocab_size(bpe)) abort();
    QkBytes out = {0};
    if (qk_bpe_decode(bpe, ids.ids, ids.n, &out)) abort();
    if (out.n != size || (size && memcmp(out.data, data, size))) abort();  // decode(encode(x)) == x
    qk_ids_free(&ids);
    qk_bytes_free(&out);
    return 0;
}
