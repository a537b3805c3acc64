// test_head_qk.c: the folded query/key maps reproduce TransformerLens's hook_q / hook_k from the
// raw residual and the frozen LN scale (SPEC §2), for every head of every reference model.
#include "analysis/head_qk.h"
#include "test_common.h"

static void check(const char *name) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, REF_DIR "/gpt2_%s", name);
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, dir), 0, "%s", qk_errmsg());
    QkSafetensors ref;
    snprintf(path, sizeof path, "%s/cache.safetensors", dir);
    cr_assert_eq(qk_st_open(&ref, path), 0, "%s", qk_errmsg());
    const GPT2Config *c = &m.cfg;
    const int C = c->d_model, H = c->n_head, dh = c->d_head;
    for (int l = 0; l < c->n_layer; l++) {
        char key[128];
        size_t n, ns, nq;
        snprintf(key, sizeof key, "blocks.%d.hook_resid_pre", l);
        float *x = ref_tensor(&ref, key, &n);
        snprintf(key, sizeof key, "blocks.%d.ln1.hook_scale", l);
        float *sigma = ref_tensor(&ref, key, &ns);
        int N = (int)(n / C);
        cr_assert_eq(ns, (size_t)N);
        for (int kind = 0; kind < 2; kind++) {
            snprintf(key, sizeof key, "blocks.%d.attn.hook_%s", l, kind ? "k" : "q");
            float *want = ref_tensor(&ref, key, &nq);  // (N, H, dh)
            float *got = qk_malloc(sizeof(float) * N * dh), *w = qk_malloc(sizeof(float) * N * dh);
            for (int h = 0; h < H; h++) {
                HeadQK hq;
                head_qk_fold(&hq, &m, l, h);
                head_qk_project(&hq, kind, x, sigma, N, got);
                for (int i = 0; i < N; i++) memcpy(w + (size_t)i * dh, want + ((size_t)i * H + h) * dh, sizeof(float) * dh);
                size_t at = 0;
                double e = rel_err(got, w, (size_t)N * dh, &at);
                // TL's own fp32 hook_q is ~1e-5 from the exact (float64) value, and the fold in
                // float64 is exact to 1e-7; 1e-4 is the project's tolerance for every hook.
                cr_expect(e < 1e-4, "%s layer %d head %d %s: folded map differs from TL by %.3g", name, l, h,
                          kind ? "k" : "q", e);
                head_qk_free(&hq);
            }
            free(got);
            free(w);
            free(want);
        }
        free(x);
        free(sigma);
    }
    qk_st_close(&ref);
    gpt2_free(&m);
}

Test(head_qk, folded_maps_match_transformerlens_tiny_a) { check("tiny_a"); }
Test(head_qk, folded_maps_match_transformerlens_tiny_b) { check("tiny_b"); }
Test(head_qk, folded_maps_match_transformerlens_tiny_c) { check("tiny_c"); }

// Wq~ kills the all-ones direction: adding a constant to every residual coordinate changes no
// query (this is why the SAE's mu*1 term never reaches a score).
Test(head_qk, centred_map_ignores_the_mean) {
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, REF_DIR "/gpt2_tiny_a"), 0, "%s", qk_errmsg());
    HeadQK h;
    head_qk_fold(&h, &m, 1, 2);
    for (int j = 0; j < h.d_head; j++) {
        double s = 0, mag = 0;
        for (int i = 0; i < h.d_model; i++) s += h.Wq[(size_t)i * h.d_head + j], mag += fabs(h.Wq[(size_t)i * h.d_head + j]);
        cr_expect(fabs(s) < 1e-6 * mag, "column %d of Wq~ sums to %g", j, s);
    }
    head_qk_free(&h);
    gpt2_free(&m);
}
