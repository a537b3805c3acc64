// test_bpe.c: GPT-2 BPE against tiktoken's ids (tests/reference/make_tokenizer_ref.py), and the
// round trip decode(encode(x)) == x, invalid UTF-8 included.
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "base/util.h"
#include "text/bpe.h"
#include "test_common.h"

#define VOCAB "../shared/data/gpt2"
#define REF "tests/reference/data/tokenizer/"

static QkBpe *g_bpe;
static QkBpeEncoder *g_enc;

static void setup(void) {
    g_bpe = qk_bpe_load(VOCAB);
    cr_assert(g_bpe, "load: %s", qk_errmsg());
    g_enc = qk_bpe_encoder_new(g_bpe);
}
static void teardown(void) {
    qk_bpe_encoder_free(g_enc);
    qk_bpe_free(g_bpe);
}

// Encodes, compares with the expected u16 ids, then checks the round trip.
static void check_case(const uint8_t *text, size_t n, int allow, const uint16_t *want, size_t n_want, const char *what) {
    QkIds ids = {0};
    qk_bpe_encode(g_enc, text, n, allow, &ids);
    size_t first_diff = 0;
    while (first_diff < ids.n && first_diff < n_want && ids.ids[first_diff] == want[first_diff]) first_diff++;
    cr_assert(ids.n == n_want && first_diff == n_want, "%s: %zu ids, want %zu; first difference at id %zu (got %d want %d)",
              what, ids.n, n_want, first_diff, first_diff < ids.n ? ids.ids[first_diff] : -1,
              first_diff < n_want ? want[first_diff] : -1);
    QkBytes back = {0};
    cr_assert_eq(qk_bpe_decode(g_bpe, ids.ids, ids.n, &back), 0, "%s", qk_errmsg());
    cr_assert(back.n == n && (n == 0 || memcmp(back.data, text, n) == 0), "%s: decode(encode(x)) != x", what);
    qk_bytes_free(&back);
    qk_ids_free(&ids);
}

static void check_file(const char *txt, const char *ref) {
    size_t n, nref;
    char *text = qk_read_file(txt, &n);
    char *ids = qk_read_file(ref, &nref);
    cr_assert(text && ids, "%s", qk_errmsg());
    cr_assert(nref % 2 == 0 && nref > 0);
    check_case((const uint8_t *)text, n, 0, (const uint16_t *)ids, nref / 2, txt);
    free(text);
    free(ids);
}

TestSuite(bpe, .init = setup, .fini = teardown);

Test(bpe, vocabulary) {
    cr_assert_eq(qk_bpe_vocab_size(g_bpe), 50257);
    cr_assert_eq(qk_bpe_eot_id(g_bpe), QK_GPT2_EOT);
}

Test(bpe, tinyshakespeare_matches_tiktoken) { check_file("../shared/data/text/tinyshakespeare.txt", REF "tinyshakespeare.u16"); }
Test(bpe, utf8_demo_matches_tiktoken) { check_file("../shared/data/text/utf8-demo.txt", REF "utf8-demo.u16"); }

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

// Edge cases of SPEC §6 and 10,000 random strings (ASCII, multi-byte, whitespace runs,
// contractions, invalid bytes, <|endoftext|>).
Test(bpe, edge_cases_and_random_strings_match_tiktoken) {
    size_t n;
    uint8_t *f = (uint8_t *)qk_read_file(REF "cases.bin", &n);
    cr_assert(f, "%s", qk_errmsg());
    cr_assert(n >= 12 && memcmp(f, "QKTOKREF", 8) == 0);
    uint32_t count = rd32(f + 8);
    cr_assert_geq(count, 10000);
    size_t o = 12;
    int n_invalid = 0;
    for (uint32_t c = 0; c < count; c++) {
        cr_assert_leq(o + 5, n);
        int allow = f[o] & 1;
        uint32_t len = rd32(f + o + 1);
        const uint8_t *text = f + o + 5;
        o += 5 + len;
        uint32_t nid = rd32(f + o);
        uint16_t *want = qk_malloc(nid * 2 + 2);
        memcpy(want, f + o + 4, nid * 2);
        o += 4 + 2 * (size_t)nid;
        cr_assert_leq(o, n);
        char what[64];
        snprintf(what, sizeof what, "case %u", c);
        check_case(text, len, allow, want, nid, what);
        for (uint32_t i = 0; i < len; i++)
            if (text[i] >= 0x80) { n_invalid++; break; }
        free(want);
    }
    cr_assert_eq(o, n, "trailing bytes in cases.bin");
    cr_assert_gt(n_invalid, 1000);
    free(f);
}

// Pieces of the pre-tokenizer for the divergent cases of SPEC §6.
static void expect_pieces(const char *s, const char *const *want, int n_want) {
    size_t n = strlen(s), i = 0;
    int k = 0;
    while (i < n) {
        size_t j = qk_bpe_piece_end((const uint8_t *)s, n, i);
        cr_assert_gt(j, i);
        cr_assert_lt(k, n_want, "'%s': more pieces than expected", s);
        cr_assert(strlen(want[k]) == j - i && memcmp(want[k], s + i, j - i) == 0, "'%s': piece %d is '%.*s', want '%s'", s,
                  k, (int)(j - i), s + i, want[k]);
        i = j;
        k++;
    }
    cr_assert_eq(k, n_want, "'%s': %d pieces, want %d", s, k, n_want);
}

Test(bpe, pretokenizer_pieces) {
    expect_pieces("DON'T", (const char *[]){"DON", "'", "T"}, 3);
    expect_pieces("I’m", (const char *[]){"I", "’", "m"}, 3);
    expect_pieces("hello   ", (const char *[]){"hello", "   "}, 2);
    expect_pieces("a  b", (const char *[]){"a", " ", " b"}, 3);
    expect_pieces("a\xc2\xa0" "b", (const char *[]){"a", "\xc2\xa0", "b"}, 3);
    expect_pieces("x\xc2\xb2", (const char *[]){"x", "\xc2\xb2"}, 2);
    expect_pieces("e\xcc\x81", (const char *[]){"e", "\xcc\x81"}, 2);
    expect_pieces("we're 12345678901234", (const char *[]){"we", "'re", " 12345678901234"}, 3);
    expect_pieces("a\xff\xfe b", (const char *[]){"a", "\xff\xfe", " b"}, 3);
}

Test(bpe, special_token_only_when_allowed) {
    const char *s = "a<|endoftext|>b";
    QkIds plain = {0}, special = {0};
    qk_bpe_encode(g_enc, (const uint8_t *)s, strlen(s), 0, &plain);
    qk_bpe_encode(g_enc, (const uint8_t *)s, strlen(s), 1, &special);
    cr_assert_eq(special.n, 3);
    cr_assert_eq(special.ids[1], QK_GPT2_EOT);
    for (size_t i = 0; i < plain.n; i++) cr_assert_neq(plain.ids[i], QK_GPT2_EOT);
    qk_ids_free(&plain);
    qk_ids_free(&special);
}

// Long pieces take the heap merge path: it must agree with the short path piece by piece.
Test(bpe, long_pieces_roundtrip_and_match_short_path) {
    QkIds whole = {0}, parts = {0};
    char buf[4000];
    for (int i = 0; i < 3999; i++) buf[i] = "-=*#~"[(i * 7 / 3) % 5];
    buf[3999] = 0;
    qk_bpe_encode(g_enc, (const uint8_t *)buf, 3999, 0, &whole);
    QkBytes back = {0};
    cr_assert_eq(qk_bpe_decode(g_bpe, whole.ids, whole.n, &back), 0);
    cr_assert(back.n == 3999 && memcmp(back.data, buf, 3999) == 0);
    // A run of one repeated byte merges greedily from the left: "----" ... pairs of the longest.
    memset(buf, '1', 3000);
    qk_bpe_encode(g_enc, (const uint8_t *)buf, 3000, 0, &parts);
    qk_bytes_free(&back);
    cr_assert_eq(qk_bpe_decode(g_bpe, parts.ids, parts.n, &back), 0);
    cr_assert_eq(back.n, 3000);
    qk_bytes_free(&back);
    qk_ids_free(&whole);
    qk_ids_free(&parts);
}

Test(bpe, decode_rejects_out_of_range) {
    int32_t ids[] = {1, 50257};
    QkBytes out = {0};
    cr_assert_eq(qk_bpe_decode(g_bpe, ids, 2, &out), -1);
    cr_assert(strstr(qk_errmsg(), "position 1"), "%s", qk_errmsg());
    qk_bytes_free(&out);
}

Test(bpe, missing_vocabulary_is_an_error) {
    cr_assert_null(qk_bpe_load("/nonexistent-dir"));
    cr_assert(strstr(qk_errmsg(), "/nonexistent-dir/encoder.json"), "%s", qk_errmsg());
}

// ---------------------------------------------------------------------------------------------
// The CLI (bin/qkscope, built by `make test`).

static int sh(const char *fmt, const char *dir) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, fmt, dir, dir, dir, dir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(bpe, cli_encode_npy_decode_roundtrip_and_clean_failure) {
    char dir[] = "/tmp/qk_tok_cli_XXXXXX";
    cr_assert(mkdtemp(dir));
    // uint16 .npy of tinyshakespeare: the data equals tiktoken's reference ids byte for byte.
    cr_assert_eq(sh(QK_BIN " tokenize --vocab " VOCAB " --npy --dtype uint16 -o %s/ts.npy "
                    "../shared/data/text/tinyshakespeare.txt", dir), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/ts.npy", dir);
    size_t n, nref;
    char *npy = qk_read_file(path, &n);
    char *ref = qk_read_file(REF "tinyshakespeare.u16", &nref);
    cr_assert(npy && ref);
    size_t hl = 10 + ((uint8_t)npy[8] | (uint8_t)npy[9] << 8);
    cr_assert(n - hl == nref && memcmp(npy + hl, ref, nref) == 0, "npy data differs from the reference ids");
    // Text ids, decoded back (from the text ids and from the .npy): the original bytes.
    cr_assert_eq(sh(QK_BIN " tokenize --vocab " VOCAB " ../shared/data/text/utf8-demo.txt > %s/ids.txt && "
                    QK_BIN " tokenize --vocab " VOCAB " --decode -o %s/back.txt %s/ids.txt && "
                    "cmp -s %s/back.txt ../shared/data/text/utf8-demo.txt", dir), 0);
    cr_assert_eq(sh(QK_BIN " tokenize --vocab " VOCAB " --decode %s/ts.npy > %s/ts.txt && "
                    "cmp -s %s/ts.txt ../shared/data/text/tinyshakespeare.txt%.0s", dir), 0);
    // Bad input: non-zero exit, one line on stderr naming the input and line, no output file.
    cr_assert_neq(sh("printf '1 2\\n3 banana\\n' | " QK_BIN " tokenize --vocab " VOCAB " --decode -o %s/bad.txt "
                     "2> %s/err.txt", dir), 0);
    snprintf(path, sizeof path, "%s/bad.txt", dir);
    cr_assert(!qk_file_exists(path));
    snprintf(path, sizeof path, "%s/bad.txt.tmp", dir);
    cr_assert(!qk_file_exists(path));
    snprintf(path, sizeof path, "%s/err.txt", dir);
    char *err = qk_read_file(path, &n);
    cr_assert(err && strstr(err, "stdin: line 2: 'banana") && strchr(err, '\n') == err + n - 1, "stderr: %s", err);
    cr_assert_eq(sh("echo 50257 | " QK_BIN " tokenize --vocab " VOCAB " --decode -o %s/big.txt 2> %s/err2.txt; "
                    "test $? = 1 && grep -q 'outside the vocabulary' %s/err2.txt && test ! -e %s/big.txt", dir), 0);
    // --help names every option.
    cr_assert_eq(sh(QK_BIN " tokenize --help > %s/help.txt", dir), 0);
    snprintf(path, sizeof path, "%s/help.txt", dir);
    char *help = qk_read_file(path, &n);
    const char *opts[] = {"--vocab", "--decode", "--allow-special", "--npy", "--dtype", "-o FILE", "--help"};
    for (int i = 0; i < 7; i++) cr_assert(help && strstr(help, opts[i]), "--help lacks %s", opts[i]);
    sh("rm -rf %s", dir);
    free(npy), free(ref), free(err), free(help);
}
