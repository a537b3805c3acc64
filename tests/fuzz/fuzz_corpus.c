// Fuzz target (libFuzzer): every corpus reader of host/text/corpus.c through the public streaming API:
// plain text, JSONL (`jsonl_field`), .gz and .zst (bytes as given, and text compressed here so the
// readers behind the decompressors see fuzzed text too), .npy and llm.c .bin token files.
// Input: two option bytes, then the file.  The GPT-2 vocabulary comes from ../shared/data/gpt2
// (run from the repository root).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "fuzz_common.h"
#include "text/corpus.h"

static QkBpe *g_bpe;

static const struct {
    const char *name;
    int compress;  // 1: gzip here, 2: zstd here
} k_formats[8] = {{"doc.txt", 0},     {"doc.jsonl", 0},     {"doc.txt.gz", 1}, {"doc.jsonl.zst", 2},
                  {"doc.txt.gz", 0},  {"doc.jsonl.zst", 0}, {"doc.npy", 0},    {"doc.bin", 0}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    if (!g_bpe && !(g_bpe = qk_bpe_load("../shared/data/gpt2"))) abort();
    uint8_t o0 = data[0], o1 = data[1];
    data += 2, size -= 2;
    char path[160];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), k_formats[o0 & 7].name);
    int how = k_formats[o0 & 7].compress;
    if (how == 1) {
        gzFile g = gzopen(path, "wb1");
        if (!g || (size && gzwrite(g, data, (unsigned)size) != (int)size) || gzclose(g) != Z_OK) abort();
    } else if (how == 2) {
        size_t cap = ZSTD_compressBound(size);
        void *z = malloc(cap);
        size_t n = ZSTD_compress(z, cap, data, size, 1);
        if (ZSTD_isError(n)) abort();
        fuzz_write(path, z, n);
        free(z);
    } else fuzz_write(path, data, size);
    const char *inputs[1] = {path};
    QkCorpusOptions opt = {.inputs = inputs, .n_inputs = 1, .bpe = g_bpe, .split = (QkDocSplit)((o0 >> 3) % 3),
                           .jsonl_field = o0 & 0x20 ? "text" : "t", .skip_bad_records = o0 >> 6 & 1,
                           .allow_special = o0 >> 7, .n_ctx = 2 + (o1 & 15), .bos = o1 >> 4 & 1, .pack = o1 >> 5 & 1,
                           .batch_size = 1 + (o1 >> 6), .n_threads = 1 + (o1 >> 7)};
    opt.stride = (o1 & 3) % (opt.n_ctx - opt.bos + 1);
    QkCorpus *c = qk_corpus_open(&opt);
    if (!c) return 0;
    QkWindowBatch wb = {0};
    for (int i = 0; i < 256; i++) {  // a bounded look: long inputs are stopped mid-corpus
        int got = qk_corpus_next_batch(c, &wb);
        if (got <= 0) break;
        for (int w = 0; w < wb.n; w++) {
            if (wb.length[w] < 1 || wb.length[w] > wb.n_ctx) abort();
            for (int t = 0; t < wb.n_ctx; t++)
                if (wb.tokens[(size_t)w * wb.n_ctx + t] < 0 || wb.tokens[(size_t)w * wb.n_ctx + t] > 50256) abort();
        }
    }
    QkCorpusStats st;
    qk_corpus_stats(c, &st);
    qk_corpus_close(c);
    qk_window_batch_free(&wb);
    return 0;
}
