// test_cache_sae.c: `qkscope cache --sae` writes the SAE code of resid_pre: the same features and
// values as encoding TransformerLens's residuals directly, and an error norm that matches a dense
// reconstruction from the stored code.
#include <sys/wait.h>

#include "model/sae.h"
#include "test_common.h"

#define MODEL REF_DIR "/gpt2_tiny_a"

static char *g_dir;
static void setup(void) { g_dir = make_tmpdir(); }
static void teardown(void) { rm_rf(g_dir); free(g_dir); }
TestSuite(cache_sae, .init = setup, .fini = teardown);

static void *read_dataset(hid_t f, const char *name, hid_t type, size_t elem, size_t *n) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    cr_assert(d >= 0, "dataset %s missing", name);
    hid_t sp = H5Dget_space(d);
    *n = (size_t)H5Sget_simple_extent_npoints(sp);
    void *buf = qk_malloc(*n * elem);
    cr_assert(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
    return buf;
}

// Runs the CLI for SAE `name` on layer 1 and compares with qk_sae_encode on TL's resid_pre.
static void check(const char *name, int dense_none_check) {
    char cmd[2048], out[512], sae_dir[256];
    snprintf(out, sizeof out, "%s/out.h5", g_dir);
    snprintf(sae_dir, sizeof sae_dir, REF_DIR "/sae/%s", name);
    snprintf(cmd, sizeof cmd,
             QK_BIN " cache -q --backend cpu --batch 2 --model " MODEL " --tokens " MODEL "/tokens.txt "
             "--hooks logits --sae 1=%s --sae-max-active 16 -o %s",
             sae_dir, out);
    cr_assert_eq(system(cmd), 0, "%s", cmd);

    QkSafetensors ref;
    cr_assert_eq(qk_st_open(&ref, MODEL "/cache.safetensors"), 0);
    size_t nx;
    float *x = ref_tensor(&ref, "blocks.1.hook_resid_pre", &nx);
    const int C = 80, N = (int)(nx / C);
    QkSae sae;
    cr_assert_eq(qk_sae_load(&sae, sae_dir, C, 0), 0, "%s", qk_errmsg());
    QkSaeCode code;
    cr_assert_eq(qk_sae_code_alloc(&code, &sae, N, 16), 0);
    cr_assert_eq(qk_sae_encode(&sae, x, C, N, &code), 0);

    hid_t f = H5Fopen(out, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0);
    size_t n_idx, n_val, n_act, n_err;
    const char *g = "sae/blocks.1.hook_resid_pre/";
    char path[128];
    snprintf(path, sizeof path, "%ssae_idx", g);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    hid_t t = H5Dget_type(d);
    cr_expect_eq(H5Tget_size(t), 2, "d_sae = %d fits uint16", sae.d_sae);
    H5Tclose(t);
    H5Dclose(d);
    uint32_t *idx = read_dataset(f, path, H5T_NATIVE_UINT32, 4, &n_idx);
    snprintf(path, sizeof path, "%ssae_val", g);
    float *val = read_dataset(f, path, H5T_NATIVE_FLOAT, 4, &n_val);
    snprintf(path, sizeof path, "%ssae_n_active", g);
    int32_t *act = read_dataset(f, path, H5T_NATIVE_INT32, 4, &n_act);
    snprintf(path, sizeof path, "%ssae_err_norm", g);
    float *err = read_dataset(f, path, H5T_NATIVE_FLOAT, 4, &n_err);
    H5Fclose(f);
    int slots = code.slots;
    cr_assert_eq(n_idx, (size_t)N * slots);
    cr_assert_eq(n_act, (size_t)N);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(act[i], code.n_active[i], "token %d: n_active", i);
        int live = code.n_active[i] < slots ? code.n_active[i] : slots;
        for (int s = 0; s < live; s++) {
            cr_expect_eq(idx[(size_t)i * slots + s], (uint32_t)code.idx[(size_t)i * slots + s], "token %d slot %d", i, s);
            // The file encodes qkscope's own residual, within 1e-4 of TL's (test_forward).
            float v = val[(size_t)i * slots + s], w = code.val[(size_t)i * slots + s];
            cr_expect(fabsf(v - w) <= 1e-4f * fabsf(w) + 1e-5f, "token %d slot %d: %g vs %g", i, s, v, w);
        }
    }
    if (dense_none_check) {  // normalisation none: xhat = sum_f a_f W_dec[f] + b_dec, from the file
        for (int i = 0; i < N; i++) {
            double e2 = 0;
            int live = act[i] < slots ? act[i] : slots;
            for (int j = 0; j < C; j++) {
                double xh = sae.b_dec[j];
                for (int s = 0; s < live; s++)
                    xh += (double)val[(size_t)i * slots + s] * sae.W_dec[(size_t)idx[(size_t)i * slots + s] * C + j];
                e2 += (x[(size_t)i * C + j] - xh) * (x[(size_t)i * C + j] - xh);
            }
            cr_expect(fabs(err[i] - sqrt(e2)) <= 1e-4 * sqrt(e2) + 1e-6, "token %d: err %g vs %g", i, err[i], sqrt(e2));
        }
    }
    free(idx), free(val), free(act), free(err), free(x);
    qk_sae_code_free(&code);
    qk_sae_free(&sae);
    qk_st_close(&ref);
}

Test(cache_sae, topk_layer_norm_sae) { check("topk_ln_bdec", 0); }
Test(cache_sae, relu_sae_with_truncation_visible) { check("standard_none_bdec", 1); }

Test(cache_sae, sae_for_another_stream_is_refused) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             QK_BIN " cache -q --model " MODEL " --tokens " MODEL "/tokens.txt --sae 1=" REF_DIR
             "/sae/v5_oldstyle -o %s/o.h5 2> %s/err.txt",
             g_dir, g_dir);
    int st = system(cmd);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    char p[512];
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *e = qk_read_file(p, NULL);
    cr_expect(strstr(e, "trained on 'blocks.4.hook_resid_post', not on blocks.1.hook_resid_pre") != NULL, "%s", e);
    free(e);
    snprintf(p, sizeof p, "%s/o.h5", g_dir);
    cr_expect(!qk_file_exists(p));
}
