// probe_corpus.c: the probe corpora of probe.h.  corpus.npy holds the windows as flat rows of
// n_ctx - bos tokens, never 50256 (the corpus reader splits documents there), so a run with
// `bos` as probe.json says, `pack = true` and `n_ctx` sees exactly these windows, in order.
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "base/util.h"
#include "io/npy.h"
#include "model/model_write.h"
#include "probe/probe.h"
#include "text/bpe.h"

static int write_corpus(const char *dir, const int32_t *tok, int windows, int row) {
    char *p = qk_path_join(dir, "corpus.npy");
    int64_t shape[2] = {windows, row};
    int rc = qk_npy_write(p, "<i4", 2, shape, tok);
    free(p);
    return rc;
}

int qk_probe_induction_write(const char *dir, const QkInductionProbe *o) {
    if (o->windows < 1 || o->rep < 2) return qk_err("probe induction: windows >= 1 and rep >= 2 needed");
    if (o->token_lo < 0 || o->token_hi <= o->token_lo + 1)
        return qk_err("probe induction: token range [%d, %d) holds fewer than 2 ids", o->token_lo, o->token_hi);
    if (o->token_lo <= QK_GPT2_EOT && QK_GPT2_EOT < o->token_hi && o->token_hi - o->token_lo < 3)
        return qk_err("probe induction: token range [%d, %d) is too small", o->token_lo, o->token_hi);
    if (qk_make_dirs(dir)) return -1;
    int row = 2 * o->rep;
    int32_t *tok = qk_malloc(sizeof(int32_t) * (size_t)o->windows * row);
    Rng r;
    rng_seed(&r, o->seed);
    for (int w = 0; w < o->windows; w++) {
        int32_t *x = tok + (size_t)w * row;
        for (int i = 0; i < o->rep; i++) {
            int t;
            do t = o->token_lo + rng_below(&r, o->token_hi - o->token_lo);
            while (t == QK_GPT2_EOT);  // 50256 would split the window (and BOS is added by the run)
            x[i] = x[o->rep + i] = t;
        }
    }
    int rc = write_corpus(dir, tok, o->windows, row);
    free(tok);
    if (rc) return -1;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "task", "induction");
    cJSON_AddStringToObject(j, "corpus", "corpus.npy");
    cJSON_AddNumberToObject(j, "windows", o->windows);
    cJSON_AddNumberToObject(j, "rep", o->rep);
    cJSON_AddNumberToObject(j, "bos", o->bos);
    cJSON_AddNumberToObject(j, "n_ctx", row + o->bos);
    cJSON_AddNumberToObject(j, "token_lo", o->token_lo);
    cJSON_AddNumberToObject(j, "token_hi", o->token_hi);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    cJSON_AddStringToObject(j, "run_with", "[corpus] paths = DIR/corpus.npy, bos and n_ctx as here, pack = true");
    cJSON_AddStringToObject(j, "note", "every window is a random run r of `rep` tokens written twice; at a second-copy "
                                        "position i the induction target is i - rep + 1 (the token after the "
                                        "earlier occurrence of the current token)");
    return qk_write_json(dir, "probe.json", j);
}

// ---- IOI ----------------------------------------------------------------------------------

// Templates of Wang et al. (2022).  Words start with their leading space (GPT-2's pre-tokenizer
// keeps " word" together), so the ids of a prompt are the concatenated ids of its parts.  {A} and
// {B} are the two names of the first clause; {S} repeats the subject; the prompt ends before the
// answer, so its last token is END.
static const char *k_templates[] = {
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the restaurant, {S} gave a necklace to",
    "While {A} and {B} were working at the office, {S} gave a book to",
    "Then, {A} and {B} had a lot of fun at the school. {S} gave a ring to",
    "Friends {A} and {B} found a bone at the garden. {S} gave it to",
    "The local big {A} and {B} were walking to the house. {S} handed a kiss to",
    "When {A} and {B} got a snack at the hospital, {S} decided to give it to",
};
#define N_TEMPLATES (int)(sizeof k_templates / sizeof k_templates[0])
static const char *k_names[] = {" Mary", " John", " Tom", " James", " Dan", " Sid", " Martin", " Amy",
                                " Paul", " Kate", " Anne", " Mark", " Sarah", " Jack", " Lisa", " Alex"};
#define N_NAMES (int)(sizeof k_names / sizeof k_names[0])

typedef struct {
    int io, s1, s2, end, io_tok, s_tok, len;
} IoiPrompt;

// The GPT-2 ids of one prompt from template t with names io and s (ABBA when io comes first).
static void gpt2_prompt(QkBpeEncoder *enc, const int32_t *name_id, int t, int io, int s, int io_first, QkIds *out,
                        IoiPrompt *p) {
    out->n = 0;
    const char *x = k_templates[t];
    p->io = p->s1 = p->s2 = -1;
    while (*x) {
        const char *brace = strchr(x, '{');
        size_t n = brace ? (size_t)(brace - x) : strlen(x);
        // text up to the name, without the space that belongs to the name
        size_t m = n && x[n - 1] == ' ' && brace ? n - 1 : n;
        if (m) qk_bpe_encode(enc, (const uint8_t *)x, m, 0, out);
        if (!brace) break;
        int slot = brace[1] == 'S' ? 2 : (brace[1] == 'A') == io_first ? 0 : 1;  // 0 IO, 1 S1, 2 S2
        int pos = (int)out->n;
        qk_ids_push(out, name_id[slot == 0 ? io : s]);
        if (slot == 0) p->io = pos;
        else if (slot == 1) p->s1 = pos;
        else p->s2 = pos;
        x = brace + 3;
    }
    p->end = (int)out->n - 1;
    p->io_tok = name_id[io], p->s_tok = name_id[s];
    p->len = (int)out->n;
}

static int planted_tokens(const char *dir, int layer, int head, QkIds *io_tok, QkIds *end_tok, QkIds *bg_tok,
                          int *vocab) {
    char *path = qk_path_join(dir, "planted.json");
    cJSON *j = qk_json_load(path);
    free(path);
    if (!j) return -1;
    int rc = qk_err("%s/planted.json: no circuit for head %d.%d", dir, layer, head);
    const cJSON *vs = cJSON_GetObjectItem(j, "vocab_size");
    *vocab = cJSON_IsNumber(vs) ? vs->valueint : 0;
    uint8_t *used = qk_calloc(*vocab > 0 ? *vocab : 1, 1);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "circuits")) {
        const cJSON *ly = cJSON_GetObjectItem(c, "layer"), *hd = cJSON_GetObjectItem(c, "head");
        const cJSON *qt = cJSON_GetObjectItem(c, "query_tokens"), *kt = cJSON_GetObjectItem(c, "key_tokens");
        if (!cJSON_IsArray(qt) || !cJSON_IsArray(kt)) {
            rc = qk_err("%s/planted.json: circuits[].query_tokens / key_tokens missing", dir);
            break;
        }
        int mine = cJSON_IsNumber(ly) && cJSON_IsNumber(hd) && ly->valueint == layer && hd->valueint == head;
        const cJSON *t;
        cJSON_ArrayForEach(t, qt) {
            if (t->valueint >= 0 && t->valueint < *vocab) used[t->valueint] = 1;
            if (mine) qk_ids_push(end_tok, t->valueint);
        }
        cJSON_ArrayForEach(t, kt) {
            if (t->valueint >= 0 && t->valueint < *vocab) used[t->valueint] = 1;
            if (mine) qk_ids_push(io_tok, t->valueint);
        }
        if (mine) rc = 0;
    }
    for (int t = 0; t < *vocab; t++)
        if (!used[t]) qk_ids_push(bg_tok, t);
    if (!rc && (*vocab <= 0 || bg_tok->n < 2)) rc = qk_err("%s/planted.json: vocab_size missing or too small", dir);
    free(used);
    cJSON_Delete(j);
    return rc;
}

int qk_probe_ioi_write(const char *dir, const QkIoiProbe *o) {
    if (o->windows < 1 || o->n_ctx < 16) return qk_err("probe ioi: windows >= 1 and n_ctx >= 16 needed");
    if (!o->vocab == !o->planted) return qk_err("probe ioi: give a GPT-2 vocabulary (--vocab) or a planted folder (--planted)");
    int bos = o->vocab != NULL, row = o->n_ctx - bos, rc = 0;
    QkBpe *bpe = NULL;
    QkBpeEncoder *enc = NULL;
    int32_t name_id[N_NAMES];
    QkIds io_tok = {0}, end_tok = {0}, bg_tok = {0}, ids = {0};
    int vocab = 0, filler = 198;  // GPT-2 "\n": after END, unseen by END's attention
    if (o->vocab) {
        if (!(bpe = qk_bpe_load(o->vocab))) return -1;
        enc = qk_bpe_encoder_new(bpe);
        for (int i = 0; i < N_NAMES && !rc; i++) {
            ids.n = 0;
            qk_bpe_encode(enc, (const uint8_t *)k_names[i], strlen(k_names[i]), 0, &ids);
            if (ids.n != 1) rc = qk_err("probe ioi: name '%s' is %zu tokens in %s (one needed)", k_names[i], ids.n, o->vocab);
            else name_id[i] = ids.ids[0];
        }
    } else if (planted_tokens(o->planted, o->planted_layer, o->planted_head, &io_tok, &end_tok, &bg_tok, &vocab)) {
        rc = -1;
    }
    if (!rc) rc = qk_make_dirs(dir);
    int32_t *tok = qk_malloc(sizeof(int32_t) * (size_t)o->windows * row);
    cJSON *prompts = cJSON_CreateArray();
    Rng r;
    rng_seed(&r, o->seed);
    for (int w = 0; w < o->windows && !rc; w++) {
        int32_t *x = tok + (size_t)w * row;
        IoiPrompt p;
        int t = w % N_TEMPLATES, io_first = (w / N_TEMPLATES) % 2;
        int io = rng_below(&r, N_NAMES), s;
        do s = rng_below(&r, N_NAMES);
        while (s == io);
        if (bpe) {
            gpt2_prompt(enc, name_id, t, io, s, io_first, &ids, &p);
        } else {
            // The same roles in a fixed layout of background tokens: [w A w B w w w w w S w w w END]
            int len = 14;
            ids.n = 0;
            for (int i = 0; i < len; i++) qk_ids_push(&ids, bg_tok.ids[rng_below(&r, (int)bg_tok.n)]);
            int s_tok = bg_tok.ids[rng_below(&r, (int)bg_tok.n)];
            p.io = io_first ? 1 : 3, p.s1 = io_first ? 3 : 1, p.s2 = 9, p.end = len - 1, p.len = len;
            p.io_tok = io_tok.ids[rng_below(&r, (int)io_tok.n)], p.s_tok = s_tok;
            ids.ids[p.io] = p.io_tok, ids.ids[p.s1] = ids.ids[p.s2] = s_tok;
            ids.ids[p.end] = end_tok.ids[rng_below(&r, (int)end_tok.n)];
        }
        if (p.len > row) {
            rc = qk_err("probe ioi: prompt %d has %d tokens, more than n_ctx %d allows", w, p.len, o->n_ctx);
            break;
        }
        for (int i = 0; i < row; i++) x[i] = i < p.len ? ids.ids[i] : bpe ? filler : bg_tok.ids[0];
        cJSON *e = cJSON_CreateObject();
        // positions in the window as the model sees it (after the BOS the run adds)
        cJSON_AddNumberToObject(e, "io", p.io + bos);
        cJSON_AddNumberToObject(e, "s1", p.s1 + bos);
        cJSON_AddNumberToObject(e, "s2", p.s2 + bos);
        cJSON_AddNumberToObject(e, "end", p.end + bos);
        cJSON_AddNumberToObject(e, "io_token", p.io_tok);
        cJSON_AddNumberToObject(e, "s_token", p.s_tok);
        cJSON_AddNumberToObject(e, "end_token", ids.ids[p.end]);
        cJSON_AddNumberToObject(e, "template", bpe ? t : -1);
        cJSON_AddItemToArray(prompts, e);
    }
    if (!rc) rc = write_corpus(dir, tok, o->windows, row);
    free(tok);
    qk_ids_free(&io_tok), qk_ids_free(&end_tok), qk_ids_free(&bg_tok), qk_ids_free(&ids);
    if (enc) qk_bpe_encoder_free(enc);
    if (bpe) qk_bpe_free(bpe);
    if (rc) {
        cJSON_Delete(prompts);
        return -1;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "task", "ioi");
    cJSON_AddStringToObject(j, "corpus", "corpus.npy");
    cJSON_AddNumberToObject(j, "windows", o->windows);
    cJSON_AddNumberToObject(j, "bos", bos);
    cJSON_AddNumberToObject(j, "n_ctx", o->n_ctx);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    cJSON_AddStringToObject(j, "source", o->vocab ? "gpt2 templates" : "planted");
    if (o->planted) {
        char h[32];
        snprintf(h, sizeof h, "%d.%d", o->planted_layer, o->planted_head);
        cJSON_AddStringToObject(j, "planted_head", h);
    }
    cJSON_AddStringToObject(j, "run_with", "[corpus] paths = DIR/corpus.npy, bos and n_ctx as here, pack = true; "
                                           "record the heads to score (record_heads)");
    cJSON_AddStringToObject(j, "note", "one prompt per window: IO and S1 are the two names of the first clause, S2 "
                                        "repeats S, END is the last prompt token (the name movers attend END -> IO); "
                                        "positions count from the window start as the model sees it");
    cJSON_AddItemToObject(j, "prompts", prompts);
    return qk_write_json(dir, "probe.json", j);
}
