// test_model_load.c: the GPT-2 loader and the CLI reject bad models and bad tokens with one clear
// line naming the file and the field, a non-zero exit, and no output file left behind.
#include <cJSON.h>
#include <sys/wait.h>

#include "model/gpt2.h"
#include "test_common.h"

static char *g_dir;
static void setup(void) { g_dir = make_tmpdir(); }
static void teardown(void) { rm_rf(g_dir); free(g_dir); }
TestSuite(model_load, .init = setup, .fini = teardown);

#define SRC REF_DIR "/gpt2_tiny_a"

// Rewrites SRC/model.safetensors into DIR/model.safetensors: drops tensor `drop` (if not NULL)
// and gives tensor `reshape` (if not NULL) the shape [numel] instead of its own.
static void rewrite_model(const char *drop, const char *reshape) {
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, SRC "/model.safetensors"), 0, "%s", qk_errmsg());
    cJSON *hdr = cJSON_CreateObject();
    size_t off = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const QkTensorInfo *t = &st.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        cJSON *e = cJSON_AddObjectToObject(hdr, t->name);
        cJSON_AddStringToObject(e, "dtype", qk_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        if (reshape && !strcmp(t->name, reshape)) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->numel));
        else
            for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        off += t->end - t->begin;
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    }
    char *text = cJSON_PrintUnformatted(hdr);
    char *path = qk_path_join(g_dir, "model.safetensors");
    FILE *f = fopen(path, "wb");
    uint64_t hl = strlen(text);
    fwrite(&hl, 8, 1, f);
    fwrite(text, 1, hl, f);
    for (int i = 0; i < st.n_tensors; i++) {
        const QkTensorInfo *t = &st.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        fwrite(st.map + st.data_start + t->begin, 1, t->end - t->begin, f);
    }
    fclose(f);
    free(path);
    free(text);
    cJSON_Delete(hdr);
    qk_st_close(&st);
}

// Writes DIR/config.json as SRC's with `key` set to the JSON `value` (or removed when NULL).
static void write_config(const char *key, const char *value) {
    size_t n;
    char *text = qk_read_file(SRC "/config.json", &n);
    cJSON *cfg = cJSON_Parse(text);
    cJSON_DeleteItemFromObject(cfg, key);
    if (value) cJSON_AddItemToObject(cfg, key, cJSON_Parse(value));
    char *out = cJSON_Print(cfg), *path = qk_path_join(g_dir, "config.json");
    write_bytes(path, out, strlen(out));
    free(path);
    free(out);
    free(text);
    cJSON_Delete(cfg);
}

static void expect_load_error(const char *what) {
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, g_dir), -1, "model loaded but should not have");
    cr_expect(strstr(qk_errmsg(), what) != NULL, "message lacks '%s': %s", what, qk_errmsg());
}

Test(model_load, missing_tensor_is_named) {
    write_config("n_layer", "2");
    rewrite_model("h.1.mlp.c_fc.bias", NULL);
    expect_load_error("tensor 'h.1.mlp.c_fc.bias' is missing");
}

Test(model_load, misshapen_tensor_is_named) {
    write_config("n_layer", "2");
    rewrite_model(NULL, "h.0.attn.c_attn.weight");
    expect_load_error("tensor 'h.0.attn.c_attn.weight' has shape [19200], expected [80, 240]");
}

Test(model_load, config_and_weights_disagree) {
    write_config("n_embd", "96");
    rewrite_model(NULL, NULL);
    expect_load_error("'wte.weight' has shape [211, 80], expected [211, 96]");
    write_config("n_layer", "1");
    expect_load_error("config.json says n_layer = 1");
}

Test(model_load, bad_config_fields) {
    rewrite_model(NULL, NULL);
    write_config("n_head", NULL);
    expect_load_error("config.json: field 'n_head' is missing");
    write_config("n_head", "3");
    expect_load_error("'n_embd' (80) is not a multiple of 'n_head' (3)");
    write_config("n_head", "\"4\"");
    expect_load_error("field 'n_head' must be an integer in [1, 4096]");
    write_config("activation_function", "\"relu\"");
    expect_load_error("field 'activation_function' is \"relu\"");
    write_config("model_type", "\"llama\"");
    expect_load_error("field 'model_type'");
}

Test(model_load, token_checks) {
    GPT2Model m;
    cr_assert_eq(gpt2_load(&m, SRC), 0, "%s", qk_errmsg());
    int ok[2] = {0, 210}, bad[2] = {3, 211}, neg[1] = {-1};
    cr_expect_eq(gpt2_check_tokens(&m.cfg, ok, 1, 2, "t"), 0);
    cr_expect_eq(gpt2_check_tokens(&m.cfg, bad, 1, 2, "t"), -1);
    cr_expect(strstr(qk_errmsg(), "position 1: token id 211 is outside the vocabulary [0, 211)") != NULL, "%s", qk_errmsg());
    cr_expect_eq(gpt2_check_tokens(&m.cfg, neg, 1, 1, "t"), -1);
    int *longer = qk_calloc(25, sizeof(int));
    cr_expect_eq(gpt2_check_tokens(&m.cfg, longer, 1, 25, "t"), -1);
    cr_expect(strstr(qk_errmsg(), "length 25 exceeds the model's n_ctx 24") != NULL, "%s", qk_errmsg());
    free(longer);
    gpt2_free(&m);
}

// Runs the CLI; returns its exit status and leaves its stderr in DIR/err.txt.
static int run_cli(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, QK_BIN " %s 2> %s/err.txt > /dev/null", args, g_dir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *cli_stderr(void) {
    char *p = qk_path_join(g_dir, "err.txt");
    char *s = qk_read_file(p, NULL);
    free(p);
    return s;
}

// Bad token input: one line on stderr naming the file and position, exit 1, no output at all.
static void expect_cli_token_error(const char *tokens_text, const char *what) {
    char tok[512], out[512], args[2048];
    snprintf(tok, sizeof tok, "%s/tokens.txt", g_dir);
    snprintf(out, sizeof out, "%s/out.h5", g_dir);
    write_bytes(tok, tokens_text, strlen(tokens_text));
    snprintf(args, sizeof args, "cache -q --backend cpu --model " SRC " --tokens %s -o %s", tok, out);
    cr_expect_eq(run_cli(args), 1);
    char *err = cli_stderr();
    cr_expect(strstr(err, tok) && strstr(err, what), "stderr: %s", err);
    char *nl = strchr(err, '\n');
    cr_expect(nl && nl[1] == 0, "stderr is not exactly one line: %s", err);
    free(err);
    cr_expect(!qk_file_exists(out), "an output file was left behind");
    snprintf(out, sizeof out, "%s/out.h5.tmp", g_dir);
    cr_expect(!qk_file_exists(out), "a temporary output file was left behind");
}

Test(model_load, cli_token_id_out_of_vocab) { expect_cli_token_error("1 2 3\n4 211 6\n", "sequence 1 position 1: token id 211"); }
Test(model_load, cli_sequence_longer_than_n_ctx) {
    char line[256] = "";
    for (int i = 0; i < 25; i++) strcat(line, "7 ");
    strcat(line, "\n");
    expect_cli_token_error(line, "length 25 exceeds the model's n_ctx 24");
}
Test(model_load, cli_ragged_and_non_numeric_tokens) {
    expect_cli_token_error("1 2 3\n4 5\n", ":2: 2 tokens, but earlier lines have 3");
    expect_cli_token_error("1 2 x3\n", ":1: 'x3' is not a token id");
}

Test(model_load, cli_writes_complete_file) {
    char args[1024], out[512];
    snprintf(out, sizeof out, "%s/out.h5", g_dir);
    snprintf(args, sizeof args, "cache -q --backend cpu --model " SRC " --tokens " SRC "/tokens.txt --hooks 'blocks.1.*' -o %s", out);
    cr_assert_eq(run_cli(args), 0);
    hid_t f = H5Fopen(out, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0);
    int64_t complete = 0;
    hid_t a = H5Aopen(f, "complete", H5P_DEFAULT);
    cr_assert(a >= 0);
    H5Aread(a, H5T_NATIVE_INT64, &complete);
    H5Aclose(a);
    cr_expect_eq(complete, 1);
    cr_expect(H5Lexists(f, "blocks.1.attn.hook_pattern", H5P_DEFAULT) > 0);
    cr_expect(H5Lexists(f, "blocks.0.attn.hook_pattern", H5P_DEFAULT) == 0);
    H5Fclose(f);
}

Test(model_load, cli_backend_cuda_without_device_fails) {
    char why[256];
    if (qk_cuda_probe(why, sizeof why) > 0) cr_skip_test("a CUDA device is present");
    char args[1024];
    snprintf(args, sizeof args, "cache --backend cuda --model " SRC " --tokens " SRC "/tokens.txt -o %s/o.h5", g_dir);
    cr_expect_eq(run_cli(args), 1);
    char *err = cli_stderr();
    cr_expect(strstr(err, "--backend cuda:") != NULL, "stderr: %s", err);
    free(err);
    // auto falls back to the CPU with a one-line notice.
    snprintf(args, sizeof args, "cache --backend auto --model " SRC " --tokens " SRC "/tokens.txt --hooks logits -o %s/o.h5", g_dir);
    cr_expect_eq(run_cli(args), 0);
    err = cli_stderr();
    cr_expect(strstr(err, "using the CPU backend") != NULL, "stderr: %s", err);
    free(err);
}

// config.json sizes are capped before anything is allocated: 4 * n_embd overflowed an int, and
// n_layer = 1e9 made a 96 GB calloc before any tensor was checked.
Test(model_load, config_sizes_are_capped_before_allocation) {
    write_config("n_embd", "536870912");
    expect_load_error("field 'n_embd' must be an integer in [1, 65536]");
    write_config("n_layer", "1000000000");
    expect_load_error("field 'n_layer' must be an integer in [1, 1024]");
    write_config("n_layer", "1000");  // within the cap: the tensors decide, before any allocation
    rewrite_model(NULL, NULL);
    expect_load_error("tensor 'h.2.ln_1.weight' is missing");
}
