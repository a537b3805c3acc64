// test_planted.c: `qkscope planted` writes a synthetic GPT-2 + SAEs that the loaders accept, and
// the circuits it claims to plant are really there, checked with the library only (no analysis
// code): the weights-only map ranks each planted pair first, in the forward pass queries carrying
// the planted query feature put most of their attention on keys carrying the planted key feature
// in the planted head and not elsewhere, and the SAEs reconstruct the stream.  Also the
// safetensors writer.
#include <cblas.h>

#include "analysis/head_qk.h"
#include "analysis/topk.h"
#include "io/npy.h"
#include "io/safetensors_write.h"
#include "model/activations.h"
#include "model/gpt2.h"
#include "model/planted.h"
#include "model/sae.h"
#include "test_common.h"

static char *g_dir;
static QkPlanted g_info;
static void setup(void) { g_dir = make_planted_dir_info(0, &g_info); }
static void teardown(void) {
    rm_rf(g_dir);
    free(g_dir);
}
TestSuite(planted, .init = setup, .fini = teardown);

static char *sub(const char *name) { return qk_path_join(g_dir, name); }

static void load_model(GPT2Model *m) {
    char *d = sub("model");
    cr_assert_eq(gpt2_load(m, d), 0, "%s", qk_errmsg());
    free(d);
}

static void load_sae(QkSae *s, int layer) {
    char name[64];
    snprintf(name, sizeof name, "sae/layer_%d", layer);
    char *d = sub(name);
    cr_assert_eq(qk_sae_load(s, d, g_info.d_model, 0), 0, "%s", qk_errmsg());
    free(d);
}

static int32_t *load_corpus(int *B, int *T) {
    char *p = sub("corpus.npy");
    int32_t *tok = read_windows_npy(p, B, T);
    free(p);
    return tok;
}

Test(planted, files_load_and_match_the_manifest) {
    QkPlanted r;
    cr_assert_eq(qk_planted_read(g_dir, &r), 0, "%s", qk_errmsg());
    const QkPlanted *w = &g_info;
    cr_expect(r.n_layer == w->n_layer && r.n_head == w->n_head && r.d_model == w->d_model && r.d_head == w->d_head &&
                  r.n_ctx == w->n_ctx && r.vocab_size == w->vocab_size && r.d_sae == w->d_sae && r.k == w->k &&
                  r.n_windows == w->n_windows && r.seed == w->seed && r.score == w->score,
              "planted.json's sizes do not read back as written");
    cr_assert(r.n_circuits == w->n_circuits && r.n_null == w->n_null);
    for (int i = 0; i < r.n_circuits; i++)
        cr_expect(!memcmp(&r.circuits[i], &w->circuits[i], sizeof r.circuits[i]), "circuit %d differs", i);
    for (int i = 0; i < r.n_null; i++)
        cr_expect(!memcmp(&r.null_heads[i], &w->null_heads[i], sizeof r.null_heads[i]), "null head %d differs", i);
    cr_expect(g_info.n_circuits >= 2 && g_info.n_null >= 2, "%d circuits, %d null heads", g_info.n_circuits, g_info.n_null);
    cr_expect_eq(g_info.n_circuits + g_info.n_null, g_info.n_layer * g_info.n_head, "every head is planted or null");

    GPT2Model m;
    load_model(&m);
    const GPT2Config *c = &m.cfg;
    cr_expect(c->n_layer == g_info.n_layer && c->n_head == g_info.n_head && c->d_model == g_info.d_model &&
              c->d_head == g_info.d_head && c->n_ctx == g_info.n_ctx && c->vocab_size == g_info.vocab_size);
    cr_expect_float_eq(c->ln_eps, 1e-5f, 1e-12);
    for (int l = 0; l < c->n_layer; l++) {
        QkSae s;
        load_sae(&s, l);
        char hook[64];
        snprintf(hook, sizeof hook, "blocks.%d.hook_resid_pre", l);
        cr_expect_str_eq(s.hook_name, hook);
        cr_expect(s.arch == QK_SAE_TOPK && s.k == g_info.k && s.d_sae == g_info.d_sae && s.norm == QK_SAE_NORM_NONE);
        qk_sae_free(&s);
    }
    int B, T;
    int32_t *tok = load_corpus(&B, &T);
    cr_expect(B == g_info.n_windows && T == g_info.n_ctx, "corpus is [%d, %d]", B, T);
    cr_expect_eq(gpt2_check_tokens(c, tok, B, T, "corpus.npy"), 0, "%s", qk_errmsg());
    free(tok);
    gpt2_free(&m);
}

// Weights only: S[f, g] = Qd[f] . Kd[g] / sqrt(dh) with Qd = W_dec Wq~, Kd = W_dec Wk~.  Each
// planted head ranks its key feature first for its query feature (q2k) and the query feature first
// for the key feature (k2q), by a wide margin.
Test(planted, weights_only_map_ranks_each_planted_pair_first) {
    GPT2Model m;
    load_model(&m);
    const int M = g_info.d_sae, C = g_info.d_model, dh = g_info.d_head;
    float *Qd = qk_malloc(sizeof(float) * M * dh), *Kd = qk_malloc(sizeof(float) * M * dh);
    float *a = qk_malloc(sizeof(float) * M), *val = qk_malloc(sizeof(float) * M * 2);
    int32_t *idx = qk_malloc(sizeof(int32_t) * M * 2);
    for (int i = 0; i < M; i++) a[i] = 1.0f / sqrtf((float)dh);
    QkTopkOpts o = {.k = 2};
    for (int ci = 0; ci < g_info.n_circuits; ci++) {
        const QkPlantedCircuit *p = &g_info.circuits[ci];
        QkSae s;
        load_sae(&s, p->layer);
        HeadQK h;
        head_qk_fold(&h, &m, p->layer, p->head);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, dh, C, 1.0f, s.W_dec, C, h.Wq, dh, 0.0f, Qd, dh);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, dh, C, 1.0f, s.W_dec, C, h.Wk, dh, 0.0f, Kd, dh);
        for (int dir = 0; dir < 2; dir++) {  // q2k, then k2q
            cr_assert_eq(qk_topk(M, M, dh, dir ? Kd : Qd, dh, a, dir ? Qd : Kd, NULL, &o, idx, val, NULL), 0, "%s",
                         qk_errmsg());
            int from = dir ? p->key_feature : p->query_feature, want = dir ? p->query_feature : p->key_feature;
            cr_expect_eq(idx[from * 2], want, "head %d.%d %s: feature %d's top partner is %d, not the planted %d",
                         p->layer, p->head, dir ? "k2q" : "q2k", from, idx[from * 2], want);
            cr_expect(val[from * 2] > 0.2f && val[from * 2] > 5 * fabsf(val[from * 2 + 1]),
                      "head %d.%d %s: planted S = %g, runner-up %g", p->layer, p->head, dir ? "k2q" : "q2k",
                      val[from * 2], val[from * 2 + 1]);
        }
        head_qk_free(&h);
        qk_sae_free(&s);
    }
    free(Qd), free(Kd), free(a), free(val), free(idx);
    gpt2_free(&m);
}

static int carries(const QkSaeCode *code, int i, int f) {
    int n = code->n_active[i] < code->slots ? code->n_active[i] : code->slots;
    for (int s = 0; s < n; s++)
        if (code->idx[(size_t)i * code->slots + s] == f) return 1;
    return 0;
}

// The forward pass on the corpus (through the backend under test), the SAE code of every layer's
// resid_pre, then: (1) the SAE reconstructs the stream (relative error < 0.1); (2) for every head
// and every circuit, the mean attention that queries carrying the query feature put on earlier
// keys carrying the key feature: > 0.5 in the planted head, < 0.3 in every other head.
Test(planted, forward_pass_shows_the_planted_circuits) {
    GPT2Model m;
    load_model(&m);
    const GPT2Config *c = &m.cfg;
    const int L = c->n_layer, H = c->n_head, C = c->d_model;
    int B, T;
    int32_t *tok = load_corpus(&B, &T);
    const int N = B * T;
    QkBackend *be = test_backend();
    GPT2Acts acts = {0};
    gpt2_acts_alloc(&acts, c, B, T, 1, 0);
    cr_assert_eq(be->forward(be, &m, tok, &acts), 0, "%s", qk_errmsg());

    QkSaeCode *code = qk_calloc(L, sizeof(QkSaeCode));
    float *xhat = qk_malloc(sizeof(float) * N * C), *err = qk_malloc(sizeof(float) * N);
    for (int l = 0; l < L; l++) {
        QkSae s;
        load_sae(&s, l);
        const float *x = acts_resid(&acts, c, l);
        cr_assert_eq(qk_sae_code_alloc(&code[l], &s, N, 0), 0, "%s", qk_errmsg());
        cr_assert_eq(qk_sae_encode(&s, x, C, N, &code[l]), 0, "%s", qk_errmsg());
        qk_sae_decode(&s, &code[l], N, xhat);
        qk_sae_recon_error(N, C, x, C, xhat, err);
        double worst = 0, mean = 0;
        for (int i = 0; i < N; i++) {
            double nx = 0;
            for (int j = 0; j < C; j++) nx += (double)x[(size_t)i * C + j] * x[(size_t)i * C + j];
            double rel = err[i] / sqrt(nx);
            mean += rel / N;
            if (rel > worst) worst = rel;
        }
        cr_expect(worst < 0.1, "layer %d: SAE relative error up to %.3f (mean %.4f)", l, worst, mean);
        qk_sae_free(&s);
    }

    for (int ci = 0; ci < g_info.n_circuits; ci++) {
        const QkPlantedCircuit *p = &g_info.circuits[ci];
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                const float *A = acts_pattern(&acts, c, l);
                double sum = 0;
                int n = 0;
                for (int b = 0; b < B; b++)
                    for (int i = 0; i < T; i++) {
                        if (!carries(&code[l], b * T + i, p->query_feature)) continue;
                        double mass = 0;
                        int keys = 0;
                        for (int j = 0; j < i; j++)
                            if (carries(&code[l], b * T + j, p->key_feature)) {
                                keys++;
                                mass += A[(((size_t)b * H + h) * T + i) * T + j];
                            }
                        if (keys) sum += mass, n++;
                    }
                cr_assert(n >= 50, "circuit %d.%d: only %d queries with a key in the corpus", p->layer, p->head, n);
                double mean = sum / n;
                if (l == p->layer && h == p->head)
                    cr_expect(mean > 0.5, "planted head %d.%d: queries carrying %d put only %.3f on keys carrying %d",
                              l, h, p->query_feature, mean, p->key_feature);
                else
                    cr_expect(mean < 0.3, "head %d.%d puts %.3f of feature %d's attention on feature %d (planted in %d.%d)",
                              l, h, mean, p->query_feature, p->key_feature, p->layer, p->head);
            }
    }
    for (int l = 0; l < L; l++) qk_sae_code_free(&code[l]);
    free(code), free(xhat), free(err), free(tok);
    gpt2_acts_free(&acts);
    qk_backend_close(be);
    gpt2_free(&m);
}

// The CLI: same seed, byte-identical files; another seed, other circuits.
Test(planted, cli_is_deterministic_per_seed) {
    const char *files[] = {"model/model.safetensors", "model/config.json", "sae/layer_0/sae_weights.safetensors",
                           "sae/layer_1/cfg.json", "corpus.npy", "planted.json"};
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             QK_BIN " planted -q --out %s/a --seed 7 --tokens 1000 && " QK_BIN " planted -q --out %s/b --seed 7 "
             "--tokens 1000 && " QK_BIN " planted -q --out %s/c --seed 8 --tokens 1000",
             g_dir, g_dir, g_dir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(cmd, sizeof cmd, "cmp -s %s/a/%s %s/b/%s", g_dir, files[i], g_dir, files[i]);
        cr_expect_eq(system(cmd), 0, "seed 7 twice: %s differs", files[i]);
    }
    snprintf(cmd, sizeof cmd, "cmp -s %s/a/model/model.safetensors %s/c/model/model.safetensors", g_dir, g_dir);
    cr_expect_neq(system(cmd), 0, "seeds 7 and 8 wrote the same model");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/a", g_dir);
    QkPlanted r;
    cr_assert_eq(qk_planted_read(dir, &r), 0, "%s", qk_errmsg());
    cr_expect(r.seed == 7 && r.n_windows == 16, "seed %llu, %d windows (1000 tokens -> 16 windows of 64)",
              (unsigned long long)r.seed, r.n_windows);
    snprintf(cmd, sizeof cmd, QK_BIN " planted -q --seed 7 2>/dev/null");
    cr_expect_neq(system(cmd), 0, "--out is required");
    snprintf(cmd, sizeof cmd, QK_BIN " planted -q --out %s/d --tokens 0 2>/dev/null", g_dir);
    cr_expect_neq(system(cmd), 0, "--tokens 0 is rejected");
}

// ---- the safetensors writer ----
static char *w_dir;
static void w_setup(void) { w_dir = make_tmpdir(); }
static void w_teardown(void) {
    rm_rf(w_dir);
    free(w_dir);
}
TestSuite(safetensors_write, .init = w_setup, .fini = w_teardown);

// Tensors given out of name order come back by name, with sorted contiguous offsets, the values
// and the metadata; the header is space-padded to a multiple of 8.
Test(safetensors_write, round_trips_through_the_reader) {
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {-1.5f, 0, 1e-30f}, s = 42;
    QkStTensor t[4] = {{"zeta", 2, {2, 3}, a}, {"alpha.weight", 1, {3}, b}, {"scalar", 0, {0}, &s}, {"empty", 2, {0, 4}, NULL}};
    const char *meta[] = {"format", "pt", "note", "x \"quoted\"", NULL};
    char *path = qk_path_join(w_dir, "t.safetensors");
    cr_assert_eq(qk_st_write_f32(path, t, 4, meta), 0, "%s", qk_errmsg());
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, path), 0, "%s", qk_errmsg());
    cr_expect_eq(st.n_tensors, 4);
    cr_expect_eq(st.data_start % 8, 0, "header not padded to 8 bytes");
    cr_expect_str_eq(qk_st_meta(&st, "format"), "pt");
    cr_expect_str_eq(qk_st_meta(&st, "note"), "x \"quoted\"");
    const char *order[4] = {"alpha.weight", "empty", "scalar", "zeta"};
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        const QkTensorInfo *ti = qk_st_find(&st, order[i]);
        cr_assert_not_null(ti, "%s missing", order[i]);
        cr_expect_eq(ti->begin, off, "%s starts at %zu, not %zu", order[i], ti->begin, off);
        off = ti->end;
    }
    float got[6];
    cr_assert_eq(qk_st_read_f32(&st, qk_st_find(&st, "zeta"), got), 0);
    cr_expect_eq(memcmp(got, a, sizeof a), 0);
    cr_assert_eq(qk_st_read_f32(&st, qk_st_find(&st, "alpha.weight"), got), 0);
    cr_expect_eq(memcmp(got, b, sizeof b), 0);
    cr_expect_eq(qk_st_find(&st, "scalar")->ndim, 0);
    qk_st_close(&st);
    free(path);
}

Test(safetensors_write, rejects_duplicate_and_reserved_names) {
    float a[2] = {1, 2};
    char *path = qk_path_join(w_dir, "bad.safetensors");
    QkStTensor dup[2] = {{"w", 1, {2}, a}, {"w", 1, {2}, a}};
    cr_expect_eq(qk_st_write_f32(path, dup, 2, NULL), -1);
    cr_expect(strstr(qk_errmsg(), "'w' given twice") != NULL, "%s", qk_errmsg());
    QkStTensor res[1] = {{"__metadata__", 1, {2}, a}};
    cr_expect_eq(qk_st_write_f32(path, res, 1, NULL), -1);
    cr_expect_eq(qk_file_exists(path), 0, "a failed write left %s behind", path);
    free(path);
}
