// cmd_tokenize.c: `qkscope tokenize`: GPT-2 BPE encode (text -> ids) and decode (ids -> text).
// Output goes to FILE.tmp, renamed to FILE only when everything succeeded, so a failed run leaves
// no partial output file.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "cli/commands.h"
#include "io/npy.h"
#include "io/out_check.h"
#include "text/bpe.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: qkscope tokenize --vocab DIR [options] [FILES...]\n"
            "GPT-2 byte-level BPE, byte-exact with tiktoken's gpt2 encoding.  Reads FILES, or stdin when none.\n\n"
            "  --vocab DIR        folder with encoder.json (or vocab.json) and vocab.bpe (or merges.txt)\n"
            "  --decode           ids -> text: read whitespace-separated ids (or a .npy file) and write the\n"
            "                     bytes they stand for, inputs and lines concatenated with nothing between\n"
            "  --allow-special    encode: the text <|endoftext|> becomes the special token 50256\n"
            "                     (default: it is ordinary text, like tiktoken's encode_ordinary)\n"
            "  --npy              encode: write one 1-D .npy array (int32; documents separated by 50256)\n"
            "                     instead of text (one line of space-separated ids per input file)\n"
            "  --dtype T          with --npy: int32 (default) or uint16\n"
            "  -o FILE            write to FILE (via FILE.tmp, renamed on success) instead of stdout\n"
            "  -h, --help         this help\n");
}

typedef struct {
    const char *vocab, *out, *dtype;
    int decode, allow_special, npy;
    char **inputs;
    int n_inputs;
} Args;

static int parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof *a);
    a->dtype = "int32";
    a->inputs = qk_calloc(argc, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) return 1;
        else if (!strcmp(s, "--vocab") && has_val) a->vocab = argv[++i];
        else if (!strcmp(s, "-o") && has_val) a->out = argv[++i];
        else if (!strcmp(s, "--dtype") && has_val) a->dtype = argv[++i];
        else if (!strcmp(s, "--decode")) a->decode = 1;
        else if (!strcmp(s, "--allow-special")) a->allow_special = 1;
        else if (!strcmp(s, "--npy")) a->npy = 1;
        else if (s[0] == '-' && s[1]) return qk_err("tokenize: unknown option or missing value: %s", s);
        else a->inputs[a->n_inputs++] = argv[i];
    }
    if (!a->vocab) return qk_err("tokenize: --vocab DIR is required");
    if (strcmp(a->dtype, "int32") && strcmp(a->dtype, "uint16"))
        return qk_err("tokenize: --dtype must be int32 or uint16, not '%s'", a->dtype);
    if (a->npy && a->decode) return qk_err("tokenize: --npy is for encoding (--decode reads .npy inputs by name)");
    return 0;
}

// Reads a whole input ("-" or NULL: stdin).
static char *read_input(const char *path, size_t *n) {
    if (path && strcmp(path, "-")) return qk_read_file(path, n);
    size_t cap = 1 << 16, len = 0;
    char *buf = qk_malloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, stdin)) > 0)
        if ((len += got) + 1 == cap) buf = qk_realloc(buf, cap *= 2);
    if (ferror(stdin)) {
        free(buf);
        qk_err("stdin: read error");
        return NULL;
    }
    buf[len] = 0;
    *n = len;
    return buf;
}

// The ids as one 1-D .npy array: int32, or uint16 (each id's low 16 bits; GPT-2's fit).
static int write_npy(FILE *f, const char *name, const QkIds *ids, int u16) {
    const int64_t shape[1] = {(int64_t)ids->n};
    if (!u16) return qk_npy_write_to(f, name, "<i4", 1, shape, ids->ids);
    uint16_t *v = qk_malloc(sizeof(uint16_t) * (ids->n ? ids->n : 1));
    for (size_t i = 0; i < ids->n; i++) v[i] = (uint16_t)ids->ids[i];
    int rc = qk_npy_write_to(f, name, "<u2", 1, shape, v);
    free(v);
    return rc;
}

static int encode_inputs(const Args *a, QkBpe *bpe, FILE *out) {
    QkBpeEncoder *enc = qk_bpe_encoder_new(bpe);
    QkIds all = {0}, ids = {0};
    int rc = 0, n = a->n_inputs ? a->n_inputs : 1;
    for (int k = 0; k < n && !rc; k++) {
        size_t len;
        char *text = read_input(a->n_inputs ? a->inputs[k] : NULL, &len);
        if (!text) { rc = -1; break; }
        ids.n = 0;
        qk_bpe_encode(enc, (const uint8_t *)text, len, a->allow_special, &ids);
        free(text);
        if (a->npy) {
            if (k) qk_ids_push(&all, QK_GPT2_EOT);
            for (size_t i = 0; i < ids.n; i++) qk_ids_push(&all, ids.ids[i]);
        } else {
            for (size_t i = 0; i < ids.n; i++) fprintf(out, i ? " %d" : "%d", ids.ids[i]);
            fputc('\n', out);
        }
    }
    if (!rc && a->npy) rc = write_npy(out, a->out ? a->out : "stdout", &all, !strcmp(a->dtype, "uint16"));
    qk_ids_free(&all);
    qk_ids_free(&ids);
    qk_bpe_encoder_free(enc);
    return rc;
}

// Ids of a .npy file (any integer dtype, C order; io/npy.h) appended to *ids.
static int read_npy_ids(const char *path, QkIds *ids) {
    QkNpy a;
    if (qk_npy_read(&a, path)) return -1;
    int32_t *v = qk_malloc(sizeof(int32_t) * (a.numel ? a.numel : 1));
    int rc = qk_npy_to_i32(&a, v, path);
    for (size_t i = 0; !rc && i < a.numel; i++) qk_ids_push(ids, v[i]);
    free(v);
    qk_npy_free(&a);
    return rc;
}

// Parses whitespace-separated decimal ids; errors name the input and line.
static int parse_text_ids(const char *name, const char *s, QkIds *ids) {
    long line = 1;
    while (*s) {
        if (*s == '\n') line++;
        if (*s == ' ' || (*s >= '\t' && *s <= '\r')) { s++; continue; }
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < INT32_MIN || v > INT32_MAX || (*end && !(*end == ' ' || (*end >= '\t' && *end <= '\r'))))
            return qk_err("%s: line %ld: '%.20s' is not a token id", name, line, s);
        qk_ids_push(ids, (int32_t)v);
        s = end;
    }
    return 0;
}

static int decode_inputs(const Args *a, QkBpe *bpe, FILE *out) {
    int rc = 0, n = a->n_inputs ? a->n_inputs : 1;
    for (int k = 0; k < n && !rc; k++) {
        const char *name = a->n_inputs ? a->inputs[k] : "stdin";
        size_t len, nl = strlen(name);
        QkIds ids = {0};
        QkBytes bytes = {0};
        if (nl > 4 && !strcmp(name + nl - 4, ".npy")) {
            rc = read_npy_ids(name, &ids);
        } else {
            char *text = read_input(a->n_inputs ? name : NULL, &len);
            rc = text ? parse_text_ids(name, text, &ids) : -1;
            free(text);
        }
        if (!rc && qk_bpe_decode(bpe, ids.ids, ids.n, &bytes)) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", qk_errmsg());  // qk_err reuses the buffer qk_errmsg returns
            rc = qk_err("%s: %s", name, msg);
        }
        if (!rc) fwrite(bytes.data, 1, bytes.n, out);
        qk_ids_free(&ids);
        qk_bytes_free(&bytes);
    }
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    Args a;
    int pr = parse_args(argc, argv, &a);
    if (pr) {
        if (pr > 0) usage(stdout);
        else fprintf(stderr, "qkscope: %s\n", qk_errmsg());
        free(a.inputs);
        return pr > 0 ? QK_EXIT_OK : QK_EXIT_USAGE;
    }
    QkBpe *bpe = a.out && (qk_out_check_file(a.out, 0) || qk_out_check_not_input(a.out, (const char *const *)a.inputs, a.n_inputs)) ? NULL : qk_bpe_load(a.vocab);
    if (!bpe) {
        fprintf(stderr, "qkscope: %s\n", qk_errmsg());
        free(a.inputs);
        return QK_EXIT_FAIL;
    }
    char *tmp = NULL;
    FILE *out = stdout;
    if (a.out) {
        tmp = qk_malloc(strlen(a.out) + 5);
        sprintf(tmp, "%s.tmp", a.out);
        if (!(out = fopen(tmp, "wb"))) qk_err("%s: cannot create: %s", tmp, strerror(errno));
    }
    int rc = !out ? -1 : a.decode ? decode_inputs(&a, bpe, out) : encode_inputs(&a, bpe, out);
    if (out == stdout) {
        if (fflush(stdout) && !rc) rc = qk_err("stdout: write error: %s", strerror(errno));
    } else if (out && fclose(out) && !rc) {
        rc = qk_err("%s: write error: %s", tmp, strerror(errno));
    }
    if (tmp) {
        if (rc) remove(tmp);
        else if (rename(tmp, a.out)) rc = qk_err("%s: cannot rename to %s: %s", tmp, a.out, strerror(errno));
    }
    if (rc) fprintf(stderr, "qkscope: %s\n", qk_errmsg());
    free(tmp);
    free(a.inputs);
    qk_bpe_free(bpe);
    return rc ? QK_EXIT_FAIL : QK_EXIT_OK;
}
