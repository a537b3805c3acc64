// test_random.c: `qkscope random` writes a model, SAEs and corpus the loaders accept, with the
// shapes asked for, the same bytes for the same seed, and unit-norm SAE decoder rows; bad options
// are one line and exit 2.
#include "io/npy.h"
#include "model/gpt2.h"
#include "model/sae.h"
#include "test_common.h"

#define ARGS "--layers 3 --heads 4 --d-model 48 --d-mlp 96 --n-ctx 64 --vocab 300 --d-sae 200 --k 5 --tokens 777"

Test(random, files_load_with_the_shapes_asked_for) {
    char *dir = make_tmpdir();
    cr_assert_eq(shf(QK_BIN " random -q --out %s/a " ARGS " --seed 7", dir), 0);
    char path[700];
    snprintf(path, sizeof path, "%s/a/model", dir);
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, path), 0, "%s", qk_errmsg());
    const GPT2Config *c = &m.cfg;
    cr_expect(c->n_layer == 3 && c->n_head == 4 && c->d_model == 48 && c->d_head == 12 && c->d_mlp == 96 && c->n_ctx == 64 &&
              c->vocab_size == 300);
    for (int l = 0; l < 3; l++) {
        snprintf(path, sizeof path, "%s/a/sae/layer_%d", dir, l);
        QkSae sae;
        cr_assert_eq(qk_sae_load(&sae, path, 48, 0), 0, "%s", qk_errmsg());
        cr_expect(sae.d_sae == 200 && sae.k == 5 && sae.arch == QK_SAE_TOPK);
        for (int f = 0; f < sae.d_sae; f++) {
            double n2 = 0;
            for (int i = 0; i < 48; i++) n2 += (double)sae.W_dec[(size_t)f * 48 + i] * sae.W_dec[(size_t)f * 48 + i];
            cr_assert(fabs(n2 - 1) < 1e-5, "layer %d row %d: |W_dec| = %g", l, f, sqrt(n2));
        }
        qk_sae_free(&sae);
    }
    gpt2_free(&m);
    // The corpus: 777 ids below the vocabulary, and `qkscope run` analyses it.
    snprintf(path, sizeof path, "%s/a/corpus.npy", dir);
    size_t bytes;
    char *npy = qk_read_file(path, &bytes);
    cr_assert(npy && bytes == 128 + 777 * 4, "corpus.npy is %zu bytes", bytes);
    const int32_t *ids = (const int32_t *)(npy + 128);
    for (int i = 0; i < 777; i++) cr_assert(ids[i] >= 0 && ids[i] < 300, "id %d = %d", i, ids[i]);
    free(npy);
    // The same seed: the same bytes; another seed: other weights.
    cr_assert_eq(shf(QK_BIN " random -q --out %s/b " ARGS " --seed 7 && " QK_BIN " random -q --out %s/c " ARGS
                     " --seed 8", dir, dir), 0);
    cr_expect_eq(shf("cmp -s %s/a/model/model.safetensors %s/b/model/model.safetensors && "
                     "cmp -s %s/a/sae/layer_2/sae_weights.safetensors %s/b/sae/layer_2/sae_weights.safetensors && "
                     "cmp -s %s/a/corpus.npy %s/b/corpus.npy", dir, dir, dir, dir, dir, dir), 0);
    cr_expect_neq(shf("cmp -s %s/a/model/model.safetensors %s/c/model/model.safetensors", dir, dir), 0);
    rm_rf(dir);
    free(dir);
}

Test(random, bad_options_are_one_line_and_exit_2) {
    char *dir = make_tmpdir();
    const char *bad[] = {"--k 0", "--d-model x", "--tokens -5", "--seed 9007199254740992", "--heads 5000"};
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(shf(QK_BIN " random -q --out %s/x %s 2> %s/err.txt", dir, bad[i], dir), 2, "%s", bad[i]);
        char p[700];
        snprintf(p, sizeof p, "%s/err.txt", dir);
        char *err = qk_read_file(p, NULL);
        cr_expect(err && strncmp(err, "qkscope random: --", 18) == 0 && strchr(err, '\n') == err + strlen(err) - 1, "%s: %s",
                  bad[i], err);
        free(err);
    }
    // Shapes that cannot be: exit 1, one line.
    cr_expect_eq(shf(QK_BIN " random -q --out %s/y --d-model 50 --heads 4 2> /dev/null", dir), 1);
    rm_rf(dir);
    free(dir);
}
