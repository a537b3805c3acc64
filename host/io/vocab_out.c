// vocab_out.c: see vocab_out.h.
#include "io/vocab_out.h"

#include <hdf5_hl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "io/h5out.h"
#include "model/model_write.h"

void qk_token_set_init(QkTokenSet *s, int n) {
    s->n = n > 0 ? n : 0;
    s->bits = qk_calloc((size_t)s->n / 8 + 1, 1);
}

void qk_token_set_free(QkTokenSet *s) {
    free(s->bits);
    s->bits = NULL, s->n = 0;
}

void qk_token_set_clear(QkTokenSet *s) {
    if (s->bits) memset(s->bits, 0, (size_t)s->n / 8 + 1);
}

void qk_token_set_add(QkTokenSet *s, const int32_t *ids, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (ids[i] >= 0 && ids[i] < s->n) s->bits[ids[i] >> 3] |= (uint8_t)(1u << (ids[i] & 7));
}

static int has(const QkTokenSet *s, int id) { return (s->bits[id >> 3] >> (id & 7)) & 1; }

static const char k_note[] =
    "the bytes of every token id in this file's `tokens`: bytes[offsets[n]:offsets[n+1]] are token ids[n] "
    "(join a sequence's bytes before decoding UTF-8: a piece may hold part of a character)";

// The group from arrays (ids increasing; offsets n + 1).
static int write_group(hid_t file, const int32_t *ids, const int64_t *offsets, const uint8_t *bytes, size_t n,
                       const char *source) {
    hid_t g = H5Gcreate2(file, "vocab", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return qk_err("HDF5: cannot create group vocab/");
    hsize_t dn = n, dn1 = n + 1, db = (hsize_t)offsets[n];
    int rc = H5LTmake_dataset(g, "ids", 1, &dn, H5T_NATIVE_INT32, ids) < 0 ||
             H5LTmake_dataset(g, "offsets", 1, &dn1, H5T_NATIVE_INT64, offsets) < 0 ||
             H5LTmake_dataset(g, "bytes", 1, &db, H5T_NATIVE_UINT8, bytes) < 0
                 ? qk_err("HDF5: cannot write vocab/ datasets")
                 : 0;
    if (!rc) rc = qk_h5_attr_str(g, "source", source ? source : "") || qk_h5_attr_str(g, "note", k_note);
    H5Gclose(g);
    return rc;
}

int qk_vocab_write(hid_t file, const QkBpe *bpe, const QkTokenSet *s, const char *source) {
    size_t n = 0;
    for (int i = 0; i < s->n; i++) n += has(s, i);
    if (!n) return 0;
    int32_t *ids = qk_malloc(sizeof(int32_t) * n);
    int64_t *off = qk_malloc(sizeof(int64_t) * (n + 1));
    QkBytes b = {0};
    size_t k = 0;
    int rc = 0;
    for (int i = 0; !rc && i < s->n; i++) {
        if (!has(s, i)) continue;
        ids[k] = i, off[k++] = (int64_t)b.n;
        rc = qk_bpe_decode(bpe, &i, 1, &b);
    }
    off[n] = (int64_t)b.n;
    if (!rc) rc = write_group(file, ids, off, b.data ? b.data : (uint8_t *)"", n, source);
    free(ids), free(off), qk_bytes_free(&b);
    return rc;
}

int qk_vocab_read(hid_t file, const char *path, QkVocabPieces *p) {
    memset(p, 0, sizeof *p);
    if (H5Lexists(file, "vocab", H5P_DEFAULT) <= 0) return 0;
    // Each dataset whole (qk_h5_read_all: its buffer sized from its own shape).
    int64_t n = 0, n1 = 0, nb = 0;
    if (!(p->ids = qk_h5_read_all(file, path, "vocab/ids", H5T_NATIVE_INT32, 4, NULL, NULL, &n)) ||
        !(p->off = qk_h5_read_all(file, path, "vocab/offsets", H5T_NATIVE_INT64, 8, NULL, NULL, &n1)) ||
        !(p->bytes = qk_h5_read_all(file, path, "vocab/bytes", H5T_NATIVE_UINT8, 1, NULL, NULL, &nb)))
        return -1;
    if (n1 != n + 1) return qk_err("%s: vocab/: expected ids (N), offsets (N + 1) and bytes", path);
    p->n = (size_t)n;
    for (size_t i = 0; i < p->n; i++)
        if (p->off[i] < 0 || p->off[i] > p->off[i + 1] || p->off[i + 1] > nb || p->ids[i] < 0 ||
            (i && p->ids[i] <= p->ids[i - 1]))
            return qk_err("%s: vocab/: entry %zu (id %d) has bad offsets or ids out of order", path, i, p->ids[i]);
    return 0;
}

void qk_vocab_pieces_free(QkVocabPieces *p) { free(p->ids), free(p->off), free(p->bytes); }

int qk_vocab_merge(hid_t out, const hid_t *files, const char *const *paths, int nf) {
    // Union by id: for each id the first file's bytes; every later file must agree.
    QkVocabPieces *p = qk_calloc(nf ? nf : 1, sizeof(QkVocabPieces));
    int rc = 0, max_id = -1;
    char *source = NULL;
    for (int f = 0; !rc && f < nf; f++) {
        rc = qk_vocab_read(files[f], paths[f], &p[f]);
        if (!rc && p[f].n && p[f].ids[p[f].n - 1] > max_id) max_id = p[f].ids[p[f].n - 1];
        if (!rc && p[f].n && !source) {
            hid_t g = H5Gopen2(files[f], "vocab", H5P_DEFAULT);
            source = qk_h5_attr_read_str(g, "source");
            H5Gclose(g);
        }
    }
    int *owner = NULL, *at = NULL;  // per id: the file and entry that gives its bytes
    if (!rc && max_id >= 0) {
        owner = qk_malloc(sizeof(int) * (max_id + 1)), at = qk_malloc(sizeof(int) * (max_id + 1));
        for (int i = 0; i <= max_id; i++) owner[i] = -1;
        for (int f = 0; !rc && f < nf; f++)
            for (size_t e = 0; !rc && e < p[f].n; e++) {
                int id = p[f].ids[e];
                int64_t len = p[f].off[e + 1] - p[f].off[e];
                if (owner[id] < 0) {
                    owner[id] = f, at[id] = (int)e;
                    continue;
                }
                const QkVocabPieces *q = &p[owner[id]];
                int64_t qlen = q->off[at[id] + 1] - q->off[at[id]];
                if (qlen != len || memcmp(q->bytes + q->off[at[id]], p[f].bytes + p[f].off[e], (size_t)len))
                    rc = qk_err("%s and %s: token %d has different bytes in vocab/ (runs with different vocabularies)",
                                paths[owner[id]], paths[f], id);
            }
        size_t n = 0, nb = 0;
        for (int i = 0; !rc && i <= max_id; i++)
            if (owner[i] >= 0) n++, nb += (size_t)(p[owner[i]].off[at[i] + 1] - p[owner[i]].off[at[i]]);
        if (!rc) {
            int32_t *ids = qk_malloc(sizeof(int32_t) * n);
            int64_t *off = qk_malloc(sizeof(int64_t) * (n + 1));
            uint8_t *bytes = qk_malloc(nb + 1);
            size_t k = 0, b = 0;
            for (int i = 0; i <= max_id; i++) {
                if (owner[i] < 0) continue;
                const QkVocabPieces *q = &p[owner[i]];
                size_t len = (size_t)(q->off[at[i] + 1] - q->off[at[i]]);
                ids[k] = i, off[k++] = (int64_t)b;
                memcpy(bytes + b, q->bytes + q->off[at[i]], len);
                b += len;
            }
            off[n] = (int64_t)b;
            rc = write_group(out, ids, off, bytes, n, source);
            free(ids), free(off), free(bytes);
        }
    }
    for (int f = 0; f < nf; f++) qk_vocab_pieces_free(&p[f]);
    free(p), free(owner), free(at), free(source);
    return rc;
}

// Copies one file (whole, small: the GPT-2 vocabulary is ~1.5 MB).
static int copy_file(const char *src, const char *dst) {
    size_t len;
    char *data = qk_read_file(src, &len);
    if (!data) return -1;
    FILE *f = fopen(dst, "wb");
    int rc = !f || fwrite(data, 1, len, f) != len ? qk_err("%s: cannot write", dst) : 0;
    if (f && fclose(f)) rc = qk_err("%s: cannot write", dst);
    free(data);
    return rc;
}

int qk_vocab_copy(const char *src_dir, const char *dst_dir) {
    QkBpe *bpe = qk_bpe_load(src_dir);  // the files must load before they are copied
    if (!bpe) return -1;
    qk_bpe_free(bpe);
    const char *names[2][2] = {{"encoder.json", "vocab.json"}, {"vocab.bpe", "merges.txt"}};
    const char *dst_names[2] = {"encoder.json", "vocab.bpe"};
    int rc = qk_make_dirs(dst_dir);
    for (int k = 0; !rc && k < 2; k++) {
        char *src = qk_path_join(src_dir, names[k][0]);
        if (!qk_file_exists(src)) free(src), src = qk_path_join(src_dir, names[k][1]);
        char *dst = qk_path_join(dst_dir, dst_names[k]);
        rc = copy_file(src, dst);
        free(src), free(dst);
    }
    return rc;
}
