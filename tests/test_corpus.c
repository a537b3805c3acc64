// test_corpus.c: the streaming corpus reader: every input format, document splitting, windowing
// and provenance, errors that name the file and place, and bounded memory on large corpora.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "base/util.h"
#include "text/bpe.h"
#include "text/corpus.h"

#define VOCAB "../shared/data/gpt2"
#define SHAKESPEARE "../shared/data/text/tinyshakespeare.txt"

static QkBpe *g_bpe;
static char g_dir[64];

static void setup(void) {
    g_bpe = qk_bpe_load(VOCAB);
    cr_assert(g_bpe, "%s", qk_errmsg());
    strcpy(g_dir, "/tmp/qk_corpus_XXXXXX");
    cr_assert(mkdtemp(g_dir));
}

static void teardown(void) {
    qk_bpe_free(g_bpe);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(corpus, .init = setup, .fini = teardown);

static char *tpath(const char *name) { return qk_path_join(g_dir, name); }

static char *write_file(const char *name, const void *data, size_t n) {
    char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    return p;
}

static char *write_gz(const char *name, const void *data, size_t n) {
    char *p = tpath(name);
    gzFile g = gzopen(p, "wb");
    cr_assert(g);
    cr_assert_eq(gzwrite(g, data, (unsigned)n), (int)n);
    gzclose(g);
    return p;
}

static char *write_zst(const char *name, const void *data, size_t n) {
    size_t cap = ZSTD_compressBound(n);
    void *buf = qk_malloc(cap);
    size_t z = ZSTD_compress(buf, cap, data, n, 3);
    cr_assert(!ZSTD_isError(z));
    char *p = write_file(name, buf, z);
    free(buf);
    return p;
}

// An llm.c shard: 256 x int32 header, uint16 ids.
static char *write_llmc(const char *name, const uint16_t *ids, int n, int magic) {
    int32_t h[256] = {magic, 1, n};
    size_t bytes = sizeof h + 2 * (size_t)n;
    uint8_t *buf = qk_malloc(bytes);
    memcpy(buf, h, sizeof h);
    memcpy(buf + sizeof h, ids, 2 * (size_t)n);
    char *p = write_file(name, buf, bytes);
    free(buf);
    return p;
}

static char *write_npy(const char *name, const void *ids, int n, int elem) {
    char hdr[118];
    int len = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }", elem == 2 ? "<u2" : "<i4", n);
    memset(hdr + len, ' ', sizeof hdr - len - 1);
    hdr[sizeof hdr - 1] = '\n';
    size_t bytes = 10 + sizeof hdr + (size_t)elem * n;
    uint8_t *buf = qk_malloc(bytes);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = sizeof hdr;
    buf[9] = 0;
    memcpy(buf + 10, hdr, sizeof hdr);
    memcpy(buf + 10 + sizeof hdr, ids, (size_t)elem * n);
    char *p = write_file(name, buf, bytes);
    free(buf);
    return p;
}

// All windows of a corpus, flattened.
typedef struct {
    QkIds tokens;          // windows concatenated, n_ctx each
    QkIds length;
    QkProvenance *prov;
    int n;
    int rc;                // last qk_corpus_next_batch result
    QkCorpusStats stats;
} Windows;

static QkCorpusOptions opts(const char **inputs, int n_inputs, int n_ctx) {
    return (QkCorpusOptions){.inputs = inputs, .n_inputs = n_inputs, .bpe = g_bpe, .n_ctx = n_ctx, .pack = 1, .batch_size = 5};
}

static Windows run(const QkCorpusOptions *o) {
    Windows w = {0};
    QkCorpus *c = qk_corpus_open(o);
    cr_assert(c, "open: %s", qk_errmsg());
    QkWindowBatch b = {0};
    while ((w.rc = qk_corpus_next_batch(c, &b)) == 1) {
        cr_assert(b.n >= 1 && b.n <= (o->batch_size ? o->batch_size : 8));
        w.prov = qk_realloc(w.prov, (w.n + b.n) * sizeof(QkProvenance));
        for (int i = 0; i < b.n; i++) {
            for (int t = 0; t < o->n_ctx; t++) qk_ids_push(&w.tokens, b.tokens[(size_t)i * o->n_ctx + t]);
            qk_ids_push(&w.length, b.length[i]);
            w.prov[w.n++] = b.prov[i];
        }
    }
    qk_corpus_stats(c, &w.stats);
    qk_window_batch_free(&b);
    qk_corpus_close(c);
    return w;
}

// Field by field (the struct has padding).
static int same_prov(const QkProvenance *a, const QkProvenance *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i].file != b[i].file || a[i].doc != b[i].doc || a[i].offset != b[i].offset) return 0;
    return 1;
}

static void windows_free(Windows *w) {
    qk_ids_free(&w->tokens);
    qk_ids_free(&w->length);
    free(w->prov);
}

// The valid tokens of window i decoded to text.
static QkBytes window_text(const Windows *w, int i, int n_ctx) {
    QkBytes b = {0};
    cr_assert_eq(qk_bpe_decode(g_bpe, w->tokens.ids + (size_t)i * n_ctx, w->length.ids[i], &b), 0);
    return b;
}

static void expect_window_text(const Windows *w, int i, int n_ctx, const char *want, size_t n) {
    QkBytes b = window_text(w, i, n_ctx);
    cr_assert(b.n == n && memcmp(b.data, want, n) == 0, "window %d is '%.*s', want '%.*s'", i, (int)b.n, b.data, (int)n, want);
    qk_bytes_free(&b);
}

static QkIds encode(const void *text, size_t n) {
    QkBpeEncoder *e = qk_bpe_encoder_new(g_bpe);
    QkIds ids = {0};
    qk_bpe_encode(e, text, n, 0, &ids);
    qk_bpe_encoder_free(e);
    return ids;
}

// Packed windows without BOS are the token stream cut every n_ctx: check against the encoder.
static void expect_stream(const Windows *w, int n_ctx, const QkIds *want) {
    size_t k = 0;
    for (int i = 0; i < w->n; i++) {
        cr_assert(w->length.ids[i] == n_ctx || i == w->n - 1, "window %d is short (%d)", i, w->length.ids[i]);
        for (int t = 0; t < w->length.ids[i]; t++, k++) {
            cr_assert_lt(k, want->n);
            cr_assert_eq(w->tokens.ids[(size_t)i * n_ctx + t], want->ids[k], "token %zu", k);
        }
        for (int t = w->length.ids[i]; t < n_ctx; t++) cr_assert_eq(w->tokens.ids[(size_t)i * n_ctx + t], QK_GPT2_EOT);
    }
    cr_assert_eq(k, want->n);
}

Test(corpus, whole_file_text_equals_encoder_output_across_chunks_and_threads) {
    // 1.1 MB: longer than one reader chunk, so the document is cut and tokenized in parts.
    size_t n;
    char *text = qk_read_file(SHAKESPEARE, &n);
    QkIds want = encode(text, n);
    const char *in[] = {SHAKESPEARE};
    for (int threads = 1; threads <= 3; threads += 2) {
        QkCorpusOptions o = opts(in, 1, 1000);
        o.n_threads = threads;
        Windows w = run(&o);
        cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
        expect_stream(&w, 1000, &want);
        cr_assert_eq(w.stats.documents, 1);
        cr_assert_eq(w.stats.tokens, (int64_t)want.n);
        cr_assert_eq(w.stats.windows, w.n);
        for (int i = 0; i < w.n; i++) {
            cr_assert_eq(w.prov[i].file, 0);
            cr_assert_eq(w.prov[i].doc, 0);
            cr_assert_eq(w.prov[i].offset, (int64_t)i * 1000);
        }
        windows_free(&w);
    }
    qk_ids_free(&want);
    free(text);
}

Test(corpus, same_windows_for_any_thread_count) {
    const char *in[] = {SHAKESPEARE};
    QkCorpusOptions o = opts(in, 1, 64);
    o.split = QK_SPLIT_LINES;
    o.pack = 0;
    o.n_threads = 1;
    Windows a = run(&o);
    o.n_threads = 4;
    o.batch_size = 3;
    Windows b = run(&o);
    cr_assert_eq(a.n, b.n);
    cr_assert_gt(a.n, 30000);
    cr_assert(memcmp(a.tokens.ids, b.tokens.ids, a.tokens.n * 4) == 0);
    cr_assert(same_prov(a.prov, b.prov, a.n));
    windows_free(&a);
    windows_free(&b);
}

Test(corpus, blank_line_and_line_splitting_with_crlf) {
    const char text[] = "a b\r\nc\r\n\r\n \t\r\nd\n\n";
    char *p = write_file("crlf.txt", text, sizeof text - 1);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 32);
    o.pack = 0;
    o.split = QK_SPLIT_BLANK_LINES;
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    cr_assert_eq(w.n, 2);
    expect_window_text(&w, 0, 32, "a b\r\nc", 6);
    expect_window_text(&w, 1, 32, "d", 1);
    cr_assert_eq(w.prov[1].doc, 1);
    windows_free(&w);

    o.split = QK_SPLIT_LINES;
    w = run(&o);
    cr_assert_eq(w.n, 4);
    const char *lines[] = {"a b", "c", " \t", "d"};
    const int docs[] = {0, 1, 3, 4};
    for (int i = 0; i < 4; i++) {
        expect_window_text(&w, i, 32, lines[i], strlen(lines[i]));
        cr_assert_eq(w.prov[i].doc, docs[i], "line window %d", i);
    }
    cr_assert_eq(w.stats.documents, 6);  // two empty lines are empty documents
    cr_assert_eq(w.stats.empty_documents, 2);
    windows_free(&w);

    o.split = QK_SPLIT_FILE;  // the whole file, bytes as they are
    w = run(&o);
    expect_window_text(&w, 0, 32, text, sizeof text - 1);
    windows_free(&w);
    free(p);
}

Test(corpus, nul_bytes_and_invalid_utf8_survive) {
    const char text[] = "a\0b\0\0 c\xff\xfe d";
    char *p = write_file("nul.txt", text, sizeof text - 1);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 32);
    Windows w = run(&o);
    cr_assert_eq(w.n, 1);
    expect_window_text(&w, 0, 32, text, sizeof text - 1);
    windows_free(&w);
    free(p);
}

Test(corpus, empty_documents_are_counted_and_skipped) {
    char *e = write_file("empty.txt", "", 0);
    const char jl[] = "{\"text\": \"\"}\n{\"text\": \"x\"}\n\n{\"text\": \"\"}\n{\"text\": \"y\"}\n";
    char *j = write_file("z.jsonl", jl, sizeof jl - 1);
    const char *in[] = {e, j};
    QkCorpusOptions o = opts(in, 2, 8);
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    cr_assert_eq(w.stats.documents, 5);
    cr_assert_eq(w.stats.empty_documents, 3);
    // Packed: "x" EOT "y" -- no separators for the empty documents.
    cr_assert_eq(w.n, 1);
    cr_assert_eq(w.length.ids[0], 3);
    cr_assert_eq(w.tokens.ids[1], QK_GPT2_EOT);
    cr_assert_eq(w.prov[0].file, 1);  // z.jsonl sorts after empty.txt
    cr_assert_eq(w.prov[0].doc, 1);
    windows_free(&w);
    free(e);
    free(j);
}

Test(corpus, jsonl_plain_gz_zst_agree_and_use_the_field) {
    const char jl[] = "{\"id\": 1, \"body\": \"First doc.\"}\r\n{\"body\": \"Second: caf\\u00e9 \\ud83d\\ude00\"}\n";
    char *p[3] = {write_file("a.jsonl", jl, sizeof jl - 1), write_gz("b.jsonl.gz", jl, sizeof jl - 1),
                  write_zst("c.jsonl.zst", jl, sizeof jl - 1)};
    for (int k = 0; k < 3; k++) {
        const char *in[] = {p[k]};
        QkCorpusOptions o = opts(in, 1, 16);
        o.jsonl_field = "body";
        o.pack = 0;
        Windows w = run(&o);
        cr_assert_eq(w.rc, 0, "%s: %s", p[k], qk_errmsg());
        cr_assert_eq(w.n, 2, "%s", p[k]);
        expect_window_text(&w, 0, 16, "First doc.", 10);
        expect_window_text(&w, 1, 16, "Second: caf\xc3\xa9 \xf0\x9f\x98\x80", 18);
        windows_free(&w);
        free(p[k]);
    }
}

Test(corpus, bad_jsonl_lines_are_errors_or_counted_skips) {
    const char jl[] = "{\"text\": \"ok\"}\nnot json\n{\"other\": 1}\n{\"text\": 5}\n{\"text\": \"fine\"}\n";
    char *p = write_file("bad.jsonl", jl, sizeof jl - 1);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 16);
    o.pack = 0;
    Windows w = run(&o);
    cr_assert_eq(w.rc, -1);
    cr_assert(strstr(qk_errmsg(), "bad.jsonl: line 2: not a JSON value"), "%s", qk_errmsg());
    cr_assert_eq(w.n, 1);  // the document before the error was delivered
    windows_free(&w);

    const char jl2[] = "{\"text\": \"ok\"}\n{\"other\": 1}\n";
    char *p2 = write_file("bad2.jsonl", jl2, sizeof jl2 - 1);
    in[0] = p2;
    w = run(&o);
    cr_assert_eq(w.rc, -1);
    cr_assert(strstr(qk_errmsg(), "bad2.jsonl: line 2: no field 'text'"), "%s", qk_errmsg());
    windows_free(&w);

    in[0] = p;
    o.skip_bad_records = 1;
    w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    cr_assert_eq(w.n, 2);
    cr_assert_eq(w.stats.skipped_records, 3);
    expect_window_text(&w, 1, 16, "fine", 4);
    windows_free(&w);
    free(p);
    free(p2);
}

// \u0000 in the field is a NUL byte of the document; the six characters escaped (\\u0000), or in
// another field, are nothing special (every such line was rejected).
Test(corpus, jsonl_u0000_is_a_nul_byte_and_escapes_are_text) {
    const char jl[] = "{\"text\": \"a\\u0000b\", \"id\": [1, {\"x\": \"}\"}]}\n"
                      "{\"note\": \"\\u0000\", \"text\": \"c\\\\u0000d\"}\n"
                      "{\"text\": \"\\u0000\\ud83d\\ude00\"}\n";
    char *p = write_file("nul.jsonl", jl, sizeof jl - 1);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 16);
    o.pack = 0;
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    cr_assert_eq(w.n, 3);
    expect_window_text(&w, 0, 16, "a\0b", 3);
    expect_window_text(&w, 1, 16, "c\\u0000d", 8);
    expect_window_text(&w, 2, 16, "\0\xf0\x9f\x98\x80", 5);
    windows_free(&w);
    free(p);
}

// A .gz name promises gzip: plain text under it is an error (zlib would read it as it is).
Test(corpus, gz_that_is_not_gzip_is_an_error) {
    const char text[] = "plain text, not gzip\n";
    char *p = write_file("doc.txt.gz", text, sizeof text - 1);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 16);
    Windows w = run(&o);
    cr_assert_eq(w.rc, -1, "read as text");
    cr_assert(strstr(qk_errmsg(), "doc.txt.gz: not gzip data"), "%s", qk_errmsg());
    windows_free(&w);
    free(p);
}

// An empty folder: a clear error (qsort(NULL, 0) was undefined behaviour).
Test(corpus, empty_folder_is_a_clear_error) {
    char *d = tpath("empty");
    cr_assert_eq(mkdir(d, 0777), 0);
    const char *in[] = {d};
    QkCorpusOptions o = opts(in, 1, 16);
    cr_assert_null(qk_corpus_open(&o));
    cr_assert(strstr(qk_errmsg(), "empty: no corpus files found"), "%s", qk_errmsg());
    free(d);
}

// Three documents as text, and as llm.c .bin / .npy shards (50256 before every document).
static const char *k_docs[] = {"The first document.", "Second, somewhat longer, document here.", "Third."};

static QkIds shard_ids(void) {
    QkIds ids = {0};
    for (int d = 0; d < 3; d++) {
        qk_ids_push(&ids, QK_GPT2_EOT);
        QkIds t = encode(k_docs[d], strlen(k_docs[d]));
        for (size_t i = 0; i < t.n; i++) qk_ids_push(&ids, t.ids[i]);
        qk_ids_free(&t);
    }
    return ids;
}

Test(corpus, pretokenized_bin_npy_match_text) {
    QkIds ids = shard_ids();
    uint16_t *u16 = qk_malloc(ids.n * 2);
    for (size_t i = 0; i < ids.n; i++) u16[i] = (uint16_t)ids.ids[i];
    char text[256];
    snprintf(text, sizeof text, "%s\n%s\n%s\n", k_docs[0], k_docs[1], k_docs[2]);
    char *p[5] = {write_file("t.txt", text, strlen(text)), write_llmc("s.bin", u16, (int)ids.n, 20240520),
                  write_npy("u.npy", u16, (int)ids.n, 2), write_npy("i.npy", ids.ids, (int)ids.n, 4), NULL};
    size_t bin_bytes = 1024 + 2 * ids.n;
    uint8_t *bin = (uint8_t *)qk_read_file(p[1], NULL);
    p[4] = write_gz("z.bin.gz", bin, bin_bytes);
    free(bin);
    Windows ref = {0};
    for (int k = 0; k < 5; k++) {
        const char *in[] = {p[k]};
        QkCorpusOptions o = opts(in, 1, 5);
        o.split = QK_SPLIT_LINES;
        o.bos = 1;
        Windows w = run(&o);
        cr_assert_eq(w.rc, 0, "%s: %s", p[k], qk_errmsg());
        cr_assert_eq(w.stats.documents, 3, "%s", p[k]);
        if (k == 0) {
            ref = w;
            cr_assert_gt(ref.n, 3);
            continue;
        }
        cr_assert_eq(w.n, ref.n, "%s", p[k]);
        cr_assert(memcmp(w.tokens.ids, ref.tokens.ids, ref.tokens.n * 4) == 0, "%s", p[k]);
        cr_assert(memcmp(w.length.ids, ref.length.ids, ref.length.n * 4) == 0, "%s", p[k]);
        cr_assert(same_prov(w.prov, ref.prov, ref.n), "%s", p[k]);
        windows_free(&w);
    }
    windows_free(&ref);
    for (int k = 0; k < 5; k++) free(p[k]);
    free(u16);
    qk_ids_free(&ids);
}

static void expect_error(const char *path, const char *want) {
    const char *in[] = {path};
    QkCorpusOptions o = opts(in, 1, 16);
    Windows w = run(&o);
    cr_assert_eq(w.rc, -1, "%s: expected an error", path);
    cr_assert(strstr(qk_errmsg(), path) && strstr(qk_errmsg(), want), "error '%s' should name %s and say '%s'",
              qk_errmsg(), path, want);
    windows_free(&w);
}

Test(corpus, bad_pretokenized_files) {
    uint16_t ids[] = {50256, 10, 20, 50257, 30};
    char *magic = write_llmc("magic.bin", ids, 3, 20240521);
    expect_error(magic, "magic 20240521");
    char *big = write_llmc("big.bin", ids, 5, 20240520);
    expect_error(big, "token 3 (byte offset 1030): id 50257");
    char *npy = write_npy("big.npy", ids, 5, 2);
    expect_error(npy, "token 3 (byte offset 134): id 50257");
    // Header announces 5 tokens, file holds 3.
    uint8_t buf[1024 + 6];
    int32_t h[256] = {20240520, 1, 5};
    memcpy(buf, h, 1024);
    memcpy(buf + 1024, ids, 6);
    char *shortf = write_file("short.bin", buf, sizeof buf);
    expect_error(shortf, "file ends");
    free(magic);
    free(big);
    free(npy);
    free(shortf);
}

Test(corpus, truncated_gz_and_zst_are_errors) {
    size_t n;
    char *text = qk_read_file(SHAKESPEARE, &n);
    char *gz = write_gz("whole.txt.gz", text, n);
    size_t gzn;
    char *gzdata = qk_read_file(gz, &gzn);
    char *tr = write_file("trunc.txt.gz", gzdata, gzn / 2);
    expect_error(tr, "gzip");
    char *zs = write_zst("whole.txt.zst", text, n);
    size_t zn;
    char *zdata = qk_read_file(zs, &zn);
    char *trz = write_file("trunc.txt.zst", zdata, zn / 2);
    expect_error(trz, "zstd");
    // The untruncated ones read fine and agree with the plain file.
    QkIds want = encode(text, n);
    const char *in[] = {gz};
    QkCorpusOptions o = opts(in, 1, 1024);
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    expect_stream(&w, 1024, &want);
    windows_free(&w);
    in[0] = zs;
    w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    expect_stream(&w, 1024, &want);
    windows_free(&w);
    qk_ids_free(&want);
    free(text), free(gz), free(gzdata), free(tr), free(zs), free(zdata), free(trz);
}

// One document of N ids 1..N (pre-tokenized): windows with BOS and overlapping stride.
Test(corpus, stride_bos_and_provenance) {
    enum { N = 23 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = 100 + i;
    char *p = write_npy("doc.npy", ids, N, 4);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 8);
    o.bos = 1;
    o.stride = 4;
    o.pack = 0;
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    const int W = 7;
    int i = 0;
    for (int s = 0;; s += 4, i++) {
        int len = s + W <= N ? W : N - s;
        cr_assert_lt(i, w.n);
        cr_assert_eq(w.length.ids[i], 1 + len, "window %d", i);
        cr_assert_eq(w.tokens.ids[i * 8], QK_GPT2_EOT);
        for (int t = 0; t < len; t++) cr_assert_eq(w.tokens.ids[i * 8 + 1 + t], 100 + s + t);
        cr_assert_eq(w.prov[i].offset, s);
        if (s + W >= N) break;
    }
    cr_assert_eq(w.n, i + 1);
    windows_free(&w);
    o.stride = 8;  // > n_ctx - bos
    cr_assert_null(qk_corpus_open(&o));
    cr_assert(strstr(qk_errmsg(), "stride"), "%s", qk_errmsg());
    free(p);
}

Test(corpus, packing_separators_and_provenance) {
    char *a = write_file("a.txt", "one two three", 13);  // 3 tokens
    char *b = write_file("b.txt", "four five six seven", 19);  // 4 tokens
    const char *in[] = {b, a};  // sorted: a first
    QkCorpusOptions o = opts(in, 2, 4);
    Windows w = run(&o);
    cr_assert_eq(w.rc, 0, "%s", qk_errmsg());
    cr_assert_eq(w.n, 2);
    cr_assert_eq(w.tokens.ids[3], QK_GPT2_EOT);
    expect_window_text(&w, 0, 4, "one two three<|endoftext|>", 26);
    expect_window_text(&w, 1, 4, "four five six seven", 19);
    cr_assert(w.prov[0].file == 0 && w.prov[0].doc == 0 && w.prov[0].offset == 0);
    cr_assert(w.prov[1].file == 1 && w.prov[1].doc == 0 && w.prov[1].offset == 0);
    cr_assert_str_eq(strrchr(a, '/'), "/a.txt");
    windows_free(&w);
    // The separator itself starts a window: it counts as the token after document a.
    o.n_ctx = 3;
    w = run(&o);
    cr_assert(w.n == 3 && w.tokens.ids[3] == QK_GPT2_EOT);
    cr_assert(w.prov[1].file == 0 && w.prov[1].offset == 3);
    windows_free(&w);
    free(a);
    free(b);
}

Test(corpus, directories_and_globs_in_sorted_order) {
    char *sub = tpath("sub");
    cr_assert_eq(mkdir(sub, 0700), 0);
    char *f[] = {write_file("b.txt", "b", 1), write_file("a.txt", "a", 1), write_file("sub/c.txt", "c", 1),
                 write_file(".hidden", "h", 1)};
    const char *in[] = {g_dir};
    QkCorpusOptions o = opts(in, 1, 4);
    o.pack = 0;
    QkCorpus *c = qk_corpus_open(&o);
    cr_assert(c, "%s", qk_errmsg());
    cr_assert_eq(qk_corpus_n_files(c), 3);
    cr_assert(strstr(qk_corpus_file(c, 0), "/a.txt") && strstr(qk_corpus_file(c, 1), "/b.txt") &&
              strstr(qk_corpus_file(c, 2), "/sub/c.txt"));
    qk_corpus_close(c);
    char *pattern = tpath("*.txt");
    in[0] = pattern;
    Windows w = run(&o);
    cr_assert_eq(w.n, 2);
    expect_window_text(&w, 0, 4, "a", 1);
    expect_window_text(&w, 1, 4, "b", 1);
    windows_free(&w);
    char *none = tpath("*.nothing");
    in[0] = none;
    cr_assert_null(qk_corpus_open(&o));
    cr_assert(strstr(qk_errmsg(), "matches no file"), "%s", qk_errmsg());
    for (int i = 0; i < 4; i++) free(f[i]);
    free(sub), free(pattern), free(none);
}

Test(corpus, close_mid_corpus) {
    const char *in[] = {SHAKESPEARE};
    QkCorpusOptions o = opts(in, 1, 16);
    o.n_threads = 2;
    QkCorpus *c = qk_corpus_open(&o);
    QkWindowBatch b = {0};
    cr_assert_eq(qk_corpus_next_batch(c, &b), 1);
    qk_corpus_close(c);
    qk_window_batch_free(&b);
}

// Peak resident memory of this process (kB).
static long vm_hwm_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &v) == 1) break;
    if (f) fclose(f);
    return v;
}

// Counts windows and checks every valid token against `expect` (position in the stream -> id).
static int64_t stream_all(const QkCorpusOptions *o, int32_t (*expect)(int64_t)) {
    QkCorpus *c = qk_corpus_open(o);
    cr_assert(c, "%s", qk_errmsg());
    QkWindowBatch b = {0};
    int rc;
    int64_t pos = 0;
    while ((rc = qk_corpus_next_batch(c, &b)) == 1)
        for (int i = 0; i < b.n; i++)
            for (int t = 0; t < b.length[i]; t++, pos++) {
                int32_t e = expect(pos);
                if (b.tokens[(size_t)i * b.n_ctx + t] != e)
                    cr_assert_fail("stream token %lld is %d, want %d", (long long)pos, b.tokens[(size_t)i * b.n_ctx + t], e);
            }
    cr_assert_eq(rc, 0, "%s", qk_errmsg());
    qk_window_batch_free(&b);
    qk_corpus_close(c);
    return pos;
}

static int32_t hello_stream(int64_t pos) { return pos == 0 ? 31373 : 23748; }  // "hello", " hello"
static int32_t zero_stream(int64_t pos) { (void)pos; return 0; }

// A single 100 MB line ("hello hello ..."), split by lines: memory stays far below its size.
Test(corpus, hundred_megabyte_single_line, .timeout = 120) {
    char *p = tpath("long.txt");
    FILE *f = fopen(p, "wb");
    cr_assert(f);
    enum { REPS = 100 * 1000 * 1000 / 6 };
    char block[6 * 4096];
    for (int i = 0; i < 4096; i++) memcpy(block + 6 * i, " hello", 6);
    fputs("hello", f);
    int64_t written = 1;
    while (written < REPS) {
        int64_t k = REPS - written < 4096 ? REPS - written : 4096;
        fwrite(block, 6, (size_t)k, f);
        written += k;
    }
    fputc('\n', f);
    fclose(f);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 1024);
    o.split = QK_SPLIT_LINES;
    o.n_threads = 2;
    o.batch_size = 16;
    long before = vm_hwm_kb();
    int64_t n = stream_all(&o, hello_stream);
    long after = vm_hwm_kb();
    cr_assert_eq(n, REPS);
    cr_assert_lt(after - before, 48 * 1024, "peak RSS grew by %ld kB reading a 100 MB line", after - before);
    unlink(p);
    free(p);
}

// >= 1 GiB corpus (a sparse llm.c shard of 2^29 zero ids, so it costs no disk and little time):
// the peak resident memory stays under a fixed bound while every token streams through.
Test(corpus, one_gigabyte_corpus_in_bounded_memory, .timeout = 300) {
    const int32_t n_tok = 1 << 29;  // 1 GiB of uint16
    char *p = tpath("big.bin");
    FILE *f = fopen(p, "wb");
    cr_assert(f);
    int32_t h[256] = {20240520, 1, n_tok};
    fwrite(h, 4, 256, f);
    fclose(f);
    cr_assert_eq(truncate(p, 1024 + 2 * (off_t)n_tok), 0);
    const char *in[] = {p};
    QkCorpusOptions o = opts(in, 1, 1024);
    o.batch_size = 64;
    long before = vm_hwm_kb();
    int64_t n = stream_all(&o, zero_stream);
    long after = vm_hwm_kb();
    cr_assert_eq(n, n_tok);
    cr_assert_lt(after, before + 64 * 1024, "peak RSS %ld kB (was %ld before) for a 1 GiB corpus", after, before);
    unlink(p);
    free(p);
}

// How far the corpus is (for the progress line's ETA): input_bytes_total is the files' size;
// input_bytes_done grows with the batches delivered, stays below the total while chunks remain,
// and reaches it at the end.  Three files of about 3 chunks each (uint16 ids, 2 bytes a token).
Test(corpus, input_bytes_progress_for_the_eta) {
    const int n = 1500000;
    uint16_t *ids = qk_malloc(2 * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = (uint16_t)(i % 50000);
    char *in[3];
    int64_t total = 0;
    for (int f = 0; f < 3; f++) {
        char name[32];
        snprintf(name, sizeof name, "part%d.npy", f);
        in[f] = write_npy(name, ids, n, 2);
        struct stat st;
        cr_assert_eq(stat(in[f], &st), 0);
        total += st.st_size;
    }
    QkCorpusOptions o = opts((const char **)in, 3, 1024);
    o.batch_size = 64;
    QkCorpus *c = qk_corpus_open(&o);
    cr_assert(c, "%s", qk_errmsg());
    QkWindowBatch b = {0};
    QkCorpusStats st;
    qk_corpus_stats(c, &st);
    cr_expect_eq(st.input_bytes_total, total);
    int64_t last = 0;
    int rc, below = 0, batches = 0;
    while ((rc = qk_corpus_next_batch(c, &b)) == 1) {
        qk_corpus_stats(c, &st);
        cr_assert(st.input_bytes_done >= last && st.input_bytes_done <= total, "done %lld after %lld (total %lld)",
                  (long long)st.input_bytes_done, (long long)last, (long long)total);
        last = st.input_bytes_done;
        below += last < total / 2;
        batches++;
    }
    cr_assert_eq(rc, 0, "%s", qk_errmsg());
    qk_corpus_stats(c, &st);
    cr_expect_eq(st.input_bytes_done, total);
    cr_expect(below > batches / 10, "the position ran ahead: %d of %d batches below half", below, batches);
    qk_window_batch_free(&b);
    qk_corpus_close(c);
    for (int f = 0; f < 3; f++) free(in[f]);
    free(ids);
}
