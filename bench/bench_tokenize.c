// bench_tokenize.c: qkscope's side of `make bench-tokenize` (bench/bench_tokenize.py drives it).
//   bench_tokenize VOCAB_DIR FILE [THREADS...]
// Prints one JSON object: single-threaded qk_bpe_encode over the whole file (best of 2), and the
// corpus pipeline (reader + THREADS tokenizers + windower, whole-file document) for each count.
#include <stdio.h>
#include <stdlib.h>

#include "base/util.h"
#include "text/bpe.h"
#include "text/corpus.h"

static int die(void) {
    fprintf(stderr, "bench_tokenize: %s\n", qk_errmsg());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenize VOCAB_DIR FILE [THREADS...]\n");
        return 2;
    }
    QkBpe *bpe = qk_bpe_load(argv[1]);
    if (!bpe) return die();
    size_t n;
    char *text = qk_read_file(argv[2], &n);
    if (!text) return die();
    QkBpeEncoder *enc = qk_bpe_encoder_new(bpe);
    QkIds ids = {0};
    double best = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        ids.n = 0;
        double t0 = qk_now();
        qk_bpe_encode(enc, (const uint8_t *)text, n, 0, &ids);
        double dt = qk_now() - t0;
        if (dt < best) best = dt;
    }
    free(text);
    printf("{\"bytes\": %zu, \"tokens\": %zu, \"single_s\": %.4f, \"pipeline\": [", n, ids.n, best);
    for (int a = 3; a < argc; a++) {
        const char *in[] = {argv[2]};
        QkCorpusOptions o = {.inputs = in, .n_inputs = 1, .bpe = bpe, .n_ctx = 1024, .pack = 1, .batch_size = 64,
                             .n_threads = atoi(argv[a])};
        double t0 = qk_now();
        QkCorpus *c = qk_corpus_open(&o);
        if (!c) return die();
        QkWindowBatch b = {0};
        int rc;
        while ((rc = qk_corpus_next_batch(c, &b)) == 1) {}
        if (rc < 0) return die();
        QkCorpusStats st;
        qk_corpus_stats(c, &st);
        qk_corpus_close(c);
        qk_window_batch_free(&b);
        printf("%s{\"threads\": %d, \"s\": %.4f, \"tokens\": %lld}", a > 3 ? ", " : "", o.n_threads, qk_now() - t0,
               (long long)st.tokens);
    }
    printf("]}\n");
    qk_ids_free(&ids);
    qk_bpe_encoder_free(enc);
    qk_bpe_free(bpe);
    return 0;
}
