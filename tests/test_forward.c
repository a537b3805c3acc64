// test_forward.c: the forward pass and its activation cache against TransformerLens's
// run_with_cache and Hugging Face's logits on tiny random GPT-2 models (tests/reference/).
#include "model/activations.h"
#include "model/gpt2.h"
#include "test_common.h"
#include "text/token_file.h"

static const char *k_models[] = {"tiny_a", "tiny_b", "tiny_c"};
#define TOL 1e-4

// Runs the backend under test on the model's reference tokens, `bs` windows per batch, and
// compares every cached hook and the logits with the reference.
static void check_model(const char *name, int bs) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, REF_DIR "/gpt2_%s", name);
    QkBackend *be = test_backend();
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, dir), 0, "%s", qk_errmsg());
    const GPT2Config *c = &m.cfg;
    int *tokens, B, T;
    snprintf(path, sizeof path, "%s/tokens.txt", dir);
    cr_assert_eq(qk_token_file_read(path, &tokens, &B, &T), 0, "%s", qk_errmsg());
    QkSafetensors ref;
    snprintf(path, sizeof path, "%s/cache.safetensors", dir);
    cr_assert_eq(qk_st_open(&ref, path), 0, "%s", qk_errmsg());
    size_t n;
    const QkTensorInfo *ti = qk_st_find(&ref, "tokens");
    cr_assert(ti && ti->dtype == QK_DT_I32 && ti->numel == (size_t)B * T, "tokens.txt and the reference disagree on the batch shape");
    cr_assert_eq(memcmp(ref.map + ref.data_start + ti->begin, tokens, ti->numel * 4), 0);

    size_t BT = (size_t)T, C = c->d_model;
    for (int b0 = 0; b0 < B; b0 += bs) {
        int nb = B - b0 < bs ? B - b0 : bs;
        GPT2Acts a;
        gpt2_acts_alloc(&a, c, nb, T, 1, 1);
        cr_assert_eq(be->forward(be, &m, tokens + (size_t)b0 * T, &a), 0, "%s", qk_errmsg());
        for (int l = 0; l < c->n_layer; l++) {
            struct { const char *hook; const float *x; size_t per_window; } h[] = {
                {"hook_resid_pre", acts_resid(&a, c, l), BT * C},
                {"hook_resid_post", acts_resid(&a, c, l + 1), BT * C},
                {"ln1.hook_scale", a.ln1_scale + (size_t)l * nb * BT, BT},
                {"attn.hook_q", a.q + (size_t)l * nb * BT * C, BT * C},
                {"attn.hook_k", a.k + (size_t)l * nb * BT * C, BT * C},
                {"attn.hook_attn_scores", acts_scores(&a, c, l), (size_t)c->n_head * T * T},
                {"attn.hook_pattern", acts_pattern(&a, c, l), (size_t)c->n_head * T * T},
            };
            for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
                char key[128];
                snprintf(key, sizeof key, "blocks.%d.%s", l, h[i].hook);
                float *r = ref_tensor(&ref, key, &n);
                cr_assert_eq(n, B * h[i].per_window, "%s: reference has %zu values", key, n);
                size_t at = 0;
                double e = rel_err(h[i].x, r + b0 * h[i].per_window, nb * h[i].per_window, &at);
                cr_expect(e <= TOL, "%s %s (batch %d..): relative error %.3g at element %zu (%g vs %g)", name, key, b0,
                          e, at, h[i].x[at], r[b0 * h[i].per_window + at]);
                free(r);
            }
        }
        float *r = ref_tensor(&ref, "logits", &n);
        size_t per = BT * c->vocab_size, at = 0;
        double e = rel_err(a.logits, r + b0 * per, nb * per, &at);
        cr_expect(e <= TOL, "%s logits: relative error %.3g at %zu", name, e, at);
        free(r);
        gpt2_acts_free(&a);
    }
    qk_st_close(&ref);
    free(tokens);
    gpt2_free(&m);
    qk_backend_close(be);
}

Test(forward, tiny_a_d80_dhead20_full_ctx) { check_model(k_models[0], 8); }
Test(forward, tiny_b_single_head_len1_f16) { check_model(k_models[1], 8); }
Test(forward, tiny_c_prefixed_tied_bf16) { check_model(k_models[2], 8); }
// Batch size must not change any value: one window per forward pass.
Test(forward, tiny_a_batch_of_one) { check_model(k_models[0], 1); }

// The first reference model and its token batch.
static void load_tiny_a(GPT2Model *m, int **tokens, int *B, int *T) {
    cr_assert_eq(gpt2_load(m, REF_DIR "/gpt2_tiny_a"), 0, "%s", qk_errmsg());
    cr_assert_eq(qk_token_file_read(REF_DIR "/gpt2_tiny_a/tokens.txt", tokens, B, T), 0);
}

// With keep_attn off, only one layer's scores are held, but every other hook is unchanged.
Test(forward, keep_attn_off_same_residuals) {
    QkBackend *be = test_backend();
    GPT2Model m;
    int *tokens, B, T;
    load_tiny_a(&m, &tokens, &B, &T);
    GPT2Acts a, b;
    gpt2_acts_alloc(&a, &m.cfg, B, T, 1, 0);
    gpt2_acts_alloc(&b, &m.cfg, B, T, 0, 0);
    cr_assert_eq(be->forward(be, &m, tokens, &a), 0);
    cr_assert_eq(be->forward(be, &m, tokens, &b), 0);
    size_t n = (size_t)(m.cfg.n_layer + 1) * B * T * m.cfg.d_model;
    cr_expect_eq(memcmp(a.resid, b.resid, n * sizeof(float)), 0);
    gpt2_acts_free(&a);
    gpt2_acts_free(&b);
    free(tokens);
    gpt2_free(&m);
    qk_backend_close(be);
}

// The backend's own host memory (page-locked for CUDA) holds the same values as plain memory.
Test(forward, backend_host_memory_same_values) {
    QkBackend *be = test_backend();
    GPT2Model m;
    int *tokens, B, T;
    load_tiny_a(&m, &tokens, &B, &T);
    GPT2Acts a, b;
    gpt2_acts_alloc(&a, &m.cfg, B, T, 1, 0);
    gpt2_acts_alloc_in(&b, &m.cfg, B, T, 1, 0, &be->host_mem);
    cr_assert_eq(be->forward(be, &m, tokens, &a), 0);
    cr_assert_eq(be->forward(be, &m, tokens, &b), 0);
    size_t L = m.cfg.n_layer, BT = (size_t)B * T, C = m.cfg.d_model, HTT = (size_t)B * m.cfg.n_head * T * T;
    cr_expect_eq(memcmp(a.resid, b.resid, (L + 1) * BT * C * sizeof(float)), 0);
    cr_expect_eq(memcmp(a.q, b.q, L * BT * C * sizeof(float)), 0);
    cr_expect_eq(memcmp(a.k, b.k, L * BT * C * sizeof(float)), 0);
    cr_expect_eq(memcmp(a.ln1_scale, b.ln1_scale, L * BT * sizeof(float)), 0);
    cr_expect_eq(memcmp(a.pattern, b.pattern, L * HTT * sizeof(float)), 0);
    gpt2_acts_free(&a);
    gpt2_acts_free(&b);
    free(tokens);
    gpt2_free(&m);
    qk_backend_close(be);
}

// The backend's device caches follow the model: a weight changed in place (same address, same
// dimensions) is seen, and one backend runs models of other dimensions in turn, each giving what
// a fresh backend gives (bit for bit).
static void forward_fresh(const GPT2Model *m, const int *tokens, int B, int T, GPT2Acts *out) {
    QkBackend *be = test_backend();
    gpt2_acts_alloc(out, &m->cfg, B, T, 1, 1);
    cr_assert_eq(be->forward(be, m, tokens, out), 0, "%s", qk_errmsg());
    qk_backend_close(be);
}

static void expect_same_acts(const GPT2Acts *a, const GPT2Acts *b, const GPT2Config *c, const char *what) {
    size_t L = c->n_layer, BT = (size_t)a->B * a->T, C = c->d_model, HTT = (size_t)a->B * c->n_head * a->T * a->T;
    cr_expect_eq(memcmp(a->resid, b->resid, (L + 1) * BT * C * sizeof(float)), 0, "%s: resid", what);
    cr_expect_eq(memcmp(a->q, b->q, L * BT * C * sizeof(float)), 0, "%s: q", what);
    cr_expect_eq(memcmp(a->ln1_scale, b->ln1_scale, L * BT * sizeof(float)), 0, "%s: ln1 scale", what);
    cr_expect_eq(memcmp(a->pattern, b->pattern, L * HTT * sizeof(float)), 0, "%s: pattern", what);
    cr_expect_eq(memcmp(a->logits, b->logits, BT * c->vocab_size * sizeof(float)), 0, "%s: logits", what);
}

Test(forward, one_backend_follows_model_changes) {
    const char *names[] = {"gpt2_tiny_a", "gpt2_tiny_b", "gpt2_tiny_a"};
    QkBackend *be = test_backend();
    for (int i = 0; i < 3; i++) {
        char dir[256], path[300];
        snprintf(dir, sizeof dir, REF_DIR "/%s", names[i]);
        snprintf(path, sizeof path, "%s/tokens.txt", dir);
        GPT2Model m;
        int *tokens, B, T;
        cr_assert_eq(gpt2_load(&m, dir), 0, "%s", qk_errmsg());
        cr_assert_eq(qk_token_file_read(path, &tokens, &B, &T), 0);
        for (int change = 0; change < 2; change++) {
            if (change) m.layers[0].ln1_b[0] += 0.5f, m.wpe[0] -= 0.25f;  // in place: same address, same shapes
            GPT2Acts a, ref;
            gpt2_acts_alloc(&a, &m.cfg, B, T, 1, 1);
            cr_assert_eq(be->forward(be, &m, tokens, &a), 0, "%s", qk_errmsg());
            forward_fresh(&m, tokens, B, T, &ref);
            expect_same_acts(&a, &ref, &m.cfg, names[i]);
            gpt2_acts_free(&a);
            gpt2_acts_free(&ref);
        }
        free(tokens);
        gpt2_free(&m);
    }
    qk_backend_close(be);
}

// n_run = 1 (the analysis's last layer is 0): layer 0's hooks as in a full pass, nothing written
// past it (the host buffers keep what they held).
Test(forward, n_run_stops_and_copies_only_the_layers_run) {
    QkBackend *be = test_backend();
    GPT2Model m;
    int *tokens, B, T;
    load_tiny_a(&m, &tokens, &B, &T);
    const GPT2Config *c = &m.cfg;
    cr_assert_geq(c->n_layer, 2);
    GPT2Acts full, part;
    gpt2_acts_alloc(&full, c, B, T, 0, 0);
    gpt2_acts_alloc_in(&part, c, B, T, 0, 0, &be->host_mem);
    size_t BT = (size_t)B * T, C = c->d_model, L = c->n_layer, HTT = (size_t)B * c->n_head * T * T;
    for (size_t i = 0; i < (L + 1) * BT * C; i++) part.resid[i] = NAN;
    for (size_t i = 0; i < L * BT * C; i++) part.q[i] = NAN;
    cr_assert_eq(be->forward(be, &m, tokens, &full), 0, "%s", qk_errmsg());
    part.n_run = 1;
    cr_assert_eq(be->forward(be, &m, tokens, &part), 0, "%s", qk_errmsg());
    cr_expect_eq(memcmp(part.resid, full.resid, 2 * BT * C * sizeof(float)), 0, "resid_pre 0 and resid_post 0");
    cr_expect_eq(memcmp(part.q, full.q, BT * C * sizeof(float)), 0, "hook_q 0");
    cr_expect(isnan(part.resid[2 * BT * C]) && isnan(part.resid[(L + 1) * BT * C - 1]), "resid past layer 0 written");
    cr_expect(isnan(part.q[BT * C]), "hook_q of layer 1 written");
    // the one attention slot holds layer 0's pattern: rows sum to 1
    for (size_t r = 0; r < HTT / T; r++) {
        double s = 0;
        for (int j = 0; j < T; j++) s += part.pattern[r * T + j];
        cr_assert(fabs(s - 1) < 1e-5, "pattern row %zu sums to %g", r, s);
    }
    gpt2_acts_free(&full);
    gpt2_acts_free(&part);
    free(tokens);
    gpt2_free(&m);
    qk_backend_close(be);
}

// tf32 and bf16 (CUDA only) stay close to fp32: residuals within their rounding, i.e. the largest
// error at most 4 unit roundoffs of the mode (tf32: 10-bit mantissas, u = 2^-11; bf16: 7 bits,
// u = 2^-8) of the largest residual (every GEMM output is within a few u of its own scale, and
// the residual stream adds a few of them per layer; an error relative to each element would
// blow up where the stream crosses zero); back to fp32 gives fp32's bits again.
Test(forward, precisions_track_fp32) {
    QkBackend *be = test_backend();
    if (!be->set_precision) {
        const char *name = be->name;  // a string literal of the backend's
        qk_backend_close(be);
        cr_skip_test("precision modes: the %s backend computes in fp32 only", name);
    }
    GPT2Model m;
    int *tokens, B, T;
    load_tiny_a(&m, &tokens, &B, &T);
    const GPT2Config *c = &m.cfg;
    size_t n = (size_t)(c->n_layer + 1) * B * T * c->d_model;
    GPT2Acts ref, a;
    gpt2_acts_alloc(&ref, c, B, T, 1, 1);
    gpt2_acts_alloc(&a, c, B, T, 1, 1);
    cr_assert_eq(be->forward(be, &m, tokens, &ref), 0, "%s", qk_errmsg());
    const char *modes[] = {"tf32", "bf16", "fp32"};
    const double tol[] = {4 * 0x1p-11, 4 * 0x1p-8, 0};
    double scale = 0;
    for (size_t j = 0; j < n; j++) scale = fmax(scale, fabs(ref.resid[j]));
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(qk_backend_set_precision(be, modes[i]), 0, "%s", qk_errmsg());
        cr_assert_eq(be->forward(be, &m, tokens, &a), 0, "%s: %s", modes[i], qk_errmsg());
        size_t at = 0;
        double e = 0;
        for (size_t j = 0; j < n; j++)
            if (fabs((double)a.resid[j] - ref.resid[j]) > e) e = fabs((double)a.resid[j] - ref.resid[j]), at = j;
        e /= scale;
        cr_expect(e <= tol[i], "%s: residual error %.3g of the largest residual (%g) at %zu (%g vs %g)", modes[i], e,
                  scale, at, a.resid[at], ref.resid[at]);
        for (size_t j = 0; j < n; j++) cr_assert(isfinite(a.resid[j]), "%s: resid[%zu] = %g", modes[i], j, a.resid[j]);
    }
    cr_expect_eq(memcmp(a.resid, ref.resid, n * sizeof(float)), 0, "fp32 again: not the same bits");
    gpt2_acts_free(&ref);
    gpt2_acts_free(&a);
    free(tokens);
    gpt2_free(&m);
    qk_backend_close(be);
}
