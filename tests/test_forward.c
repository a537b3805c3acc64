// test_forward.c: the forward pass and its activation cache against TransformerLens's
// run_with_cache and Hugging Face's logits on tiny random GPT-2 models (tests/reference/).
#include "activations.h"
#include "gpt2.h"
#include "test_common.h"
#include "token_file.h"

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
