// bpe.c: see bpe.h.  Data layout:
//   tok_bytes/tok_off: the bytes of token id i are tok_bytes[tok_off[i] .. tok_off[i+1]);
//   rank[i]: merge priority of token i (lower merges first), -1 if not mergeable (special);
//   a bytes -> id hash (whole-piece lookup) and a (left id, right id) -> merged id hash (BPE).
#include "text/bpe.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "text/unicode_classes.h"

// ---------------------------------------------------------------------------------------------
// Small containers.

void qk_ids_push(QkIds *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 256;
        v->ids = qk_realloc(v->ids, v->cap * sizeof(int32_t));
    }
    v->ids[v->n++] = id;
}

void qk_ids_free(QkIds *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

void qk_bytes_append(QkBytes *b, const void *p, size_t n) {
    if (n == 0) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->data = qk_realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->n, p, n);
    b->n += n;
}

void qk_bytes_free(QkBytes *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

// A fast 64-bit hash of a short byte string (8 bytes at a time, multiply-xorshift mixing).
static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 32);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    return x;
}

// ---------------------------------------------------------------------------------------------
// The vocabulary.

struct QkBpe {
    int n_vocab;
    uint8_t *tok_bytes;
    uint32_t *tok_off;     // [n_vocab + 1]
    int32_t *rank;         // [n_vocab]
    int eot;               // id of <|endoftext|> or -1
    uint32_t bmask;        // bytes -> id open-addressing table, capacity bmask + 1
    int32_t *btab;         // id or -1
    uint32_t pmask;        // (left, right) -> merged table
    uint64_t *pkey;        // left << 32 | right, UINT64_MAX = empty
    int32_t *pval;         // merged id
    int32_t byte_id[256];  // id of each single byte
};

static const uint8_t *tok_ptr(const QkBpe *b, int id, size_t *len) {
    *len = b->tok_off[id + 1] - b->tok_off[id];
    return b->tok_bytes + b->tok_off[id];
}

// Id of the mergeable token whose bytes are p[0..n), or -1.
static int bytes_lookup(const QkBpe *b, const uint8_t *p, size_t n) {
    for (uint32_t h = (uint32_t)hash_bytes(p, n) & b->bmask;; h = (h + 1) & b->bmask) {
        int id = b->btab[h];
        if (id < 0) return -1;
        size_t len;
        const uint8_t *t = tok_ptr(b, id, &len);
        if (len == n && memcmp(t, p, n) == 0) return id;
    }
}

static void bytes_insert(QkBpe *b, int id) {
    size_t len;
    const uint8_t *t = tok_ptr(b, id, &len);
    uint32_t h = (uint32_t)hash_bytes(t, len) & b->bmask;
    while (b->btab[h] >= 0) h = (h + 1) & b->bmask;
    b->btab[h] = id;
}

// Merged id of the adjacent pair (l, r), or -1.
static inline int pair_lookup(const QkBpe *b, int32_t l, int32_t r) {
    uint64_t k = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint32_t h = (uint32_t)hash_u64(k) & b->pmask;; h = (h + 1) & b->pmask) {
        if (b->pkey[h] == k) return b->pval[h];
        if (b->pkey[h] == UINT64_MAX) return -1;
    }
}

static void pair_insert(QkBpe *b, int32_t l, int32_t r, int32_t merged) {
    uint64_t k = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint32_t h = (uint32_t)hash_u64(k) & b->pmask;
    while (b->pkey[h] != UINT64_MAX && b->pkey[h] != k) h = (h + 1) & b->pmask;
    b->pkey[h] = k;
    b->pval[h] = merged;
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100 upwards.
// byte_order[k] is the byte of rank k (the order tiktoken's data_gym loader ranks single bytes).
static void gpt2_byte_map(uint32_t byte_to_cp[256], uint8_t byte_order[256]) {
    int k = 0, extra = 0;
    for (int c = 0; c < 256; c++)
        if ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)) {
            byte_to_cp[c] = (uint32_t)c;
            byte_order[k++] = (uint8_t)c;
        }
    for (int c = 0; c < 256; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) {
            byte_to_cp[c] = 256 + (uint32_t)extra++;
            byte_order[k++] = (uint8_t)c;
        }
}

// Converts a GPT-2 unicode-mapped token string (UTF-8) to raw bytes appended to *out.
static int unmap_token(const char *path, const char *what, const char *s, const int16_t *cp_to_byte,
                       QkBytes *out) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = qk_utf8_decode((const uint8_t *)s, n, i, &cp);
        if (!len || cp >= 512 || cp_to_byte[cp] < 0)
            return qk_err("%s: %s '%s': byte offset %zu is not a GPT-2 byte character", path, what, s, i);
        uint8_t byte = (uint8_t)cp_to_byte[cp];
        qk_bytes_append(out, &byte, 1);
        i += len;
    }
    return 0;
}

static uint32_t pow2_above(size_t n) {
    uint32_t c = 1024;
    while (c < 2 * n) c *= 2;
    return c;
}

// Parses the token -> id JSON into b->tok_* (ids must be exactly 0..n-1, each once).
static int load_vocab_json(QkBpe *b, const char *path, const int16_t *cp_to_byte) {
    cJSON *root = qk_json_load(path);  // token string -> id
    if (!root) return -1;
    int n = cJSON_GetArraySize(root), rc = 0;
    QkBytes *tb = qk_calloc(n ? n : 1, sizeof(QkBytes));
    const cJSON *e;
    b->eot = -1;
    cJSON_ArrayForEach(e, root) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(v >= 0 && v < n) || (double)(int)v != v) {
            rc = qk_err("%s: token '%s': id is not an integer in [0, %d)", path, e->string, n);
            break;
        }
        int id = (int)v;
        if (tb[id].data) {
            rc = qk_err("%s: token '%s': id %d is used twice", path, e->string, id);
            break;
        }
        if (strcmp(e->string, "<|endoftext|>") == 0) {
            b->eot = id;
            qk_bytes_append(&tb[id], e->string, strlen(e->string));
        } else if ((rc = unmap_token(path, "token", e->string, cp_to_byte, &tb[id]))) {
            break;
        } else if (tb[id].n == 0) {
            rc = qk_err("%s: token '%s' (id %d) is empty", path, e->string, id);
            break;
        }
    }
    cJSON_Delete(root);
    if (rc == 0) {
        size_t total = 0;
        for (int i = 0; i < n; i++) total += tb[i].n;
        b->n_vocab = n;
        b->tok_off = qk_malloc((n + 1) * sizeof(uint32_t));
        b->tok_bytes = qk_malloc(total ? total : 1);
        size_t o = 0;
        for (int i = 0; i < n; i++) {
            b->tok_off[i] = (uint32_t)o;
            memcpy(b->tok_bytes + o, tb[i].data, tb[i].n);
            o += tb[i].n;
        }
        b->tok_off[n] = (uint32_t)o;
    }
    for (int i = 0; i < n; i++) qk_bytes_free(&tb[i]);
    free(tb);
    return rc;
}

// Reads the merge list and sets ranks: single bytes 0..255 (in GPT-2 byte order), then merge k
// (0-based line after the "#version" line) gets 256 + k, as tiktoken's data_gym loader does.
static int load_merges(QkBpe *b, const char *path, const int16_t *cp_to_byte, const uint8_t *byte_order) {
    size_t len;
    char *text = qk_read_file(path, &len);
    if (!text) return -1;
    for (int i = 0; i < b->n_vocab; i++) b->rank[i] = -1;
    for (int k = 0; k < 256; k++) {
        int id = bytes_lookup(b, &byte_order[k], 1);
        if (id < 0) {
            free(text);
            return qk_err("%s: the vocabulary has no token for byte 0x%02x", path, byte_order[k]);
        }
        b->rank[id] = k;
        b->byte_id[byte_order[k]] = id;
    }
    int rc = 0, line_no = 0, n_merges = 0;
    QkBytes merged = {0};
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[--ll] = 0;
        if (line_no == 1) {
            if (strncmp(line, "#version", 8) != 0) { rc = qk_err("%s: line 1: expected '#version: 0.2'", path); break; }
            continue;
        }
        if (ll == 0) continue;
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) {
            rc = qk_err("%s: line %d: expected two tokens separated by one space", path, line_no);
            break;
        }
        *sp = 0;
        merged.n = 0;
        if ((rc = unmap_token(path, "merge left", line, cp_to_byte, &merged)) ||
            (rc = unmap_token(path, "merge right", sp + 1, cp_to_byte, &merged)))
            break;
        int id = bytes_lookup(b, merged.data, merged.n);
        if (id < 0) { rc = qk_err("%s: line %d: merge result '%s%s' is not in the vocabulary", path, line_no, line, sp + 1); break; }
        if (b->rank[id] >= 0) { rc = qk_err("%s: line %d: merge result '%s%s' is ranked twice", path, line_no, line, sp + 1); break; }
        b->rank[id] = 256 + n_merges++;
    }
    qk_bytes_free(&merged);
    free(text);
    if (rc) return rc;
    for (int i = 0; i < b->n_vocab; i++)
        if (b->rank[i] < 0 && i != b->eot) {
            size_t l;
            tok_ptr(b, i, &l);
            return qk_err("%s: token id %d (%zu bytes) is neither a byte nor the result of a merge", path, i, l);
        }
    return 0;
}

// Pair table: every split of every ranked token into two ranked tokens.
static void build_pairs(QkBpe *b) {
    size_t n_pairs = 0;
    for (int i = 0; i < b->n_vocab; i++) n_pairs += b->tok_off[i + 1] - b->tok_off[i];
    uint32_t cap = pow2_above(n_pairs);
    b->pmask = cap - 1;
    b->pkey = qk_malloc(cap * sizeof(uint64_t));
    b->pval = qk_malloc(cap * sizeof(int32_t));
    memset(b->pkey, 0xFF, cap * sizeof(uint64_t));
    for (int t = 0; t < b->n_vocab; t++) {
        if (b->rank[t] < 0) continue;
        size_t len;
        const uint8_t *p = tok_ptr(b, t, &len);
        for (size_t k = 1; k < len; k++) {
            int l = bytes_lookup(b, p, k), r = bytes_lookup(b, p + k, len - k);
            if (l >= 0 && r >= 0) pair_insert(b, l, r, t);
        }
    }
}

QkBpe *qk_bpe_load_files(const char *vocab_json, const char *merges) {
    uint32_t byte_to_cp[256];
    uint8_t byte_order[256];
    int16_t cp_to_byte[512];
    gpt2_byte_map(byte_to_cp, byte_order);
    for (int i = 0; i < 512; i++) cp_to_byte[i] = -1;
    for (int c = 0; c < 256; c++) cp_to_byte[byte_to_cp[c]] = (int16_t)c;

    QkBpe *b = qk_calloc(1, sizeof *b);
    if (load_vocab_json(b, vocab_json, cp_to_byte)) {
        qk_bpe_free(b);
        return NULL;
    }
    uint32_t cap = pow2_above(b->n_vocab);
    b->bmask = cap - 1;
    b->btab = qk_malloc(cap * sizeof(int32_t));
    memset(b->btab, 0xFF, cap * sizeof(int32_t));
    for (int i = 0; i < b->n_vocab; i++)
        if (i != b->eot) bytes_insert(b, i);
    b->rank = qk_malloc(b->n_vocab * sizeof(int32_t));
    if (load_merges(b, merges, cp_to_byte, byte_order)) {
        qk_bpe_free(b);
        return NULL;
    }
    build_pairs(b);
    return b;
}

// The first of dir/a, dir/b that exists (dir/a if neither does, so the error names it).
static char *pick(const char *dir, const char *a, const char *b) {
    char *p = qk_path_join(dir, a);
    if (qk_file_exists(p)) return p;
    char *q = qk_path_join(dir, b);
    if (qk_file_exists(q)) {
        free(p);
        return q;
    }
    free(q);
    return p;
}

QkBpe *qk_bpe_load(const char *dir) {
    char *v = pick(dir, "encoder.json", "vocab.json");
    char *m = pick(dir, "vocab.bpe", "merges.txt");
    QkBpe *b = qk_bpe_load_files(v, m);
    free(v);
    free(m);
    return b;
}

void qk_bpe_free(QkBpe *b) {
    if (!b) return;
    free(b->tok_bytes);
    free(b->tok_off);
    free(b->rank);
    free(b->btab);
    free(b->pkey);
    free(b->pval);
    free(b);
}

int qk_bpe_vocab_size(const QkBpe *b) { return b->n_vocab; }
int qk_bpe_eot_id(const QkBpe *b) { return b->eot; }

int qk_bpe_decode(const QkBpe *b, const int32_t *ids, size_t n, QkBytes *out) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= b->n_vocab)
            return qk_err("decode: id %ld at position %zu is outside the vocabulary [0, %d)", (long)ids[i], i, b->n_vocab);
        size_t len;
        const uint8_t *p = tok_ptr(b, ids[i], &len);
        qk_bytes_append(out, p, len);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer.

enum { CL_L, CL_N, CL_S, CL_O };  // letter, number, whitespace, other ([^\s\p{L}\p{N}])

static const uint8_t k_ascii_class[128] = {
#define O CL_O
#define S CL_S
#define L CL_L
#define N CL_N
    O, O, O, O, O, O, O, O, O, S, S, S, S, S, O, O,  // 0x00: \t \n \v \f \r are White_Space
    O, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,
    S, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,  // ' ' then punctuation
    N, N, N, N, N, N, N, N, N, N, O, O, O, O, O, O,
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,
#undef O
#undef S
#undef L
#undef N
};

// Class and byte length of the character at s[i]; an invalid byte is one CL_O character.
static inline int char_class(const uint8_t *s, size_t n, size_t i, size_t *len) {
    if (s[i] < 0x80) {
        *len = 1;
        return k_ascii_class[s[i]];
    }
    uint32_t cp;
    size_t l = qk_utf8_decode(s, n, i, &cp);
    if (!l) {
        *len = 1;
        return CL_O;
    }
    *len = l;
    if (qk_uni_is_letter(cp)) return CL_L;
    if (qk_uni_is_number(cp)) return CL_N;
    if (qk_uni_is_space(cp)) return CL_S;
    return CL_O;
}

// End of the run of class `cl` characters starting at i.
static inline size_t run_end(const uint8_t *s, size_t n, size_t i, int cl) {
    while (i < n) {
        size_t len;
        if (char_class(s, n, i, &len) != cl) break;
        i += len;
    }
    return i;
}

size_t qk_bpe_piece_end(const uint8_t *s, size_t n, size_t i) {
    // 's|'t|'re|'ve|'m|'ll|'d  (lowercase only: the pattern is case-sensitive)
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t c = s[i + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
        if (i + 2 < n && ((c == 'r' && s[i + 2] == 'e') || (c == 'v' && s[i + 2] == 'e') || (c == 'l' && s[i + 2] == 'l')))
            return i + 3;
    }
    size_t l0;
    int c0 = char_class(s, n, i, &l0);
    //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+   (the optional prefix is U+0020 only)
    if (s[i] == ' ' && i + 1 < n) {
        size_t l1;
        int c1 = char_class(s, n, i + 1, &l1);
        if (c1 != CL_S) return run_end(s, n, i + 1 + l1, c1);
    }
    if (c0 != CL_S) return run_end(s, n, i + l0, c0);
    // \s+(?!\S) | \s+ : a whitespace run; if a non-space follows, its last character is left to
    // start the next piece (when the run has two or more characters).
    size_t last = i, j = i;
    while (j < n) {
        size_t len;
        if (char_class(s, n, j, &len) != CL_S) break;
        last = j;
        j += len;
    }
    if (j == n || last == i) return j;
    return last;
}

// ---------------------------------------------------------------------------------------------
// Encoder.

#define CACHE_SLOTS 16384  // direct-mapped piece cache
#define CACHE_MAX_LEN 24   // pieces longer than this are not cached

typedef struct {
    uint8_t len, n_ids;  // len 0 = empty slot
    uint8_t bytes[CACHE_MAX_LEN];
    int32_t ids[CACHE_MAX_LEN];
} CacheEntry;

// One entry of the merge heap (long pieces): the pair starting at part `pos`.
typedef struct {
    int32_t rank;
    uint32_t pos;
    uint32_t ver_l, ver_r;  // versions of the two parts when pushed (stale if changed)
} HeapItem;

struct QkBpeEncoder {
    const QkBpe *bpe;
    CacheEntry *cache;
    // BPE scratch, indexed by part start byte: token, next/prev part start, version.
    size_t cap;
    int32_t *tok;
    uint32_t *next, *prev, *ver;
    HeapItem *heap;
    size_t heap_n, heap_cap;
};

QkBpeEncoder *qk_bpe_encoder_new(const QkBpe *bpe) {
    QkBpeEncoder *e = qk_calloc(1, sizeof *e);
    e->bpe = bpe;
    e->cache = qk_calloc(CACHE_SLOTS, sizeof(CacheEntry));
    return e;
}

void qk_bpe_encoder_free(QkBpeEncoder *e) {
    if (!e) return;
    free(e->cache);
    free(e->tok);
    free(e->next);
    free(e->prev);
    free(e->ver);
    free(e->heap);
    free(e);
}

static void reserve(QkBpeEncoder *e, size_t n) {
    if (n <= e->cap) return;
    e->cap = n;
    e->tok = qk_realloc(e->tok, n * sizeof(int32_t));
    e->next = qk_realloc(e->next, n * sizeof(uint32_t));
    e->prev = qk_realloc(e->prev, n * sizeof(uint32_t));
    e->ver = qk_realloc(e->ver, n * sizeof(uint32_t));
}

static inline int32_t pair_rank(const QkBpe *b, int32_t l, int32_t r, int32_t *merged) {
    int m = pair_lookup(b, l, r);
    *merged = m;
    return m < 0 ? INT32_MAX : b->rank[m];
}

// Short pieces: tiktoken's quadratic scan over an array of parts (fast for small n).
static size_t merge_small(QkBpeEncoder *e, const uint8_t *p, size_t n, int32_t *out) {
    const QkBpe *b = e->bpe;
    int32_t tok[64], rk[64], mg[64];
    size_t m = n;
    for (size_t i = 0; i < n; i++) tok[i] = b->byte_id[p[i]];
    for (size_t i = 0; i + 1 < m; i++) rk[i] = pair_rank(b, tok[i], tok[i + 1], &mg[i]);
    while (m > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < m; i++)
            if (rk[i] < rk[best]) best = i;
        if (rk[best] == INT32_MAX) break;
        tok[best] = mg[best];
        memmove(tok + best + 1, tok + best + 2, (m - best - 2) * sizeof(int32_t));
        memmove(rk + best + 1, rk + best + 2, (m - best - 2) * sizeof(int32_t));
        memmove(mg + best + 1, mg + best + 2, (m - best - 2) * sizeof(int32_t));
        m--;
        if (best > 0) rk[best - 1] = pair_rank(b, tok[best - 1], tok[best], &mg[best - 1]);
        if (best + 1 < m) rk[best] = pair_rank(b, tok[best], tok[best + 1], &mg[best]);
    }
    memcpy(out, tok, m * sizeof(int32_t));
    return m;
}

static int heap_less(const HeapItem *a, const HeapItem *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(QkBpeEncoder *e, HeapItem it) {
    if (e->heap_n == e->heap_cap) {
        e->heap_cap = e->heap_cap ? 2 * e->heap_cap : 1024;
        e->heap = qk_realloc(e->heap, e->heap_cap * sizeof(HeapItem));
    }
    size_t i = e->heap_n++;
    while (i > 0 && heap_less(&it, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = it;
}

static HeapItem heap_pop(QkBpeEncoder *e) {
    HeapItem top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!heap_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static void push_pair(QkBpeEncoder *e, uint32_t l, uint32_t end) {
    uint32_t r = e->next[l];
    if (r == end) return;
    int32_t m;
    int32_t rk = pair_rank(e->bpe, e->tok[l], e->tok[r], &m);
    if (rk != INT32_MAX) heap_push(e, (HeapItem){rk, l, e->ver[l], e->ver[r]});
}

// Long pieces: the same merge order (lowest rank, then leftmost) with a heap and a linked list
// of parts, O(n log n).  Parts are named by their start byte.
static size_t merge_large(QkBpeEncoder *e, const uint8_t *p, size_t n, QkIds *out) {
    reserve(e, n + 1);
    const uint32_t end = (uint32_t)n;
    for (uint32_t i = 0; i < end; i++) {
        e->tok[i] = e->bpe->byte_id[p[i]];
        e->next[i] = i + 1;
        e->prev[i] = i ? i - 1 : UINT32_MAX;
        e->ver[i] = 0;
    }
    e->heap_n = 0;
    for (uint32_t i = 0; i + 1 < end; i++) push_pair(e, i, end);
    while (e->heap_n) {
        HeapItem it = heap_pop(e);
        uint32_t l = it.pos, r = e->next[l];
        if (e->ver[l] != it.ver_l || e->ver[l] == UINT32_MAX || r == end || e->ver[r] != it.ver_r) continue;
        int32_t m;
        pair_rank(e->bpe, e->tok[l], e->tok[r], &m);
        e->tok[l] = m;
        e->ver[l]++;
        e->ver[r] = UINT32_MAX;  // dead
        e->next[l] = e->next[r];
        if (e->next[l] != end) e->prev[e->next[l]] = l;
        if (e->prev[l] != UINT32_MAX) push_pair(e, e->prev[l], end);
        push_pair(e, l, end);
    }
    size_t k = 0;
    for (uint32_t i = 0; i != end; i = e->next[i], k++) qk_ids_push(out, e->tok[i]);
    return k;
}

static void encode_piece(QkBpeEncoder *e, const uint8_t *p, size_t n, QkIds *out) {
    const QkBpe *b = e->bpe;
    int id = bytes_lookup(b, p, n);
    if (id >= 0) {
        qk_ids_push(out, id);
        return;
    }
    if (n > CACHE_MAX_LEN) {
        if (n <= 64) {
            int32_t ids[64];
            size_t k = merge_small(e, p, n, ids);
            for (size_t i = 0; i < k; i++) qk_ids_push(out, ids[i]);
        } else {
            merge_large(e, p, n, out);
        }
        return;
    }
    CacheEntry *c = &e->cache[hash_bytes(p, n) & (CACHE_SLOTS - 1)];
    if (c->len != n || memcmp(c->bytes, p, n) != 0) {
        c->n_ids = (uint8_t)merge_small(e, p, n, c->ids);
        c->len = (uint8_t)n;
        memcpy(c->bytes, p, n);
    }
    for (size_t i = 0; i < c->n_ids; i++) qk_ids_push(out, c->ids[i]);
}

static void encode_ordinary(QkBpeEncoder *e, const uint8_t *s, size_t n, QkIds *out) {
    for (size_t i = 0; i < n;) {
        size_t j = qk_bpe_piece_end(s, n, i);
        encode_piece(e, s + i, j - i, out);
        i = j;
    }
}

void qk_bpe_encode(QkBpeEncoder *e, const uint8_t *s, size_t n, int allow_special, QkIds *out) {
    static const char k_eot[] = "<|endoftext|>";
    const size_t eot_len = sizeof k_eot - 1;
    if (!allow_special || e->bpe->eot < 0) {
        encode_ordinary(e, s, n, out);
        return;
    }
    for (;;) {
        const uint8_t *hit = memmem(s, n, k_eot, eot_len);
        if (!hit) break;
        encode_ordinary(e, s, (size_t)(hit - s), out);
        qk_ids_push(out, e->bpe->eot);
        n -= (size_t)(hit - s) + eot_len;
        s = hit + eot_len;
    }
    encode_ordinary(e, s, n, out);
}
