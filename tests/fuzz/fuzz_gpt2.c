// Fuzz target (libFuzzer): a GPT-2 model folder: config.json (host/model/gpt2.c) and, when it parses,
// its weights checked and loaded from a model.safetensors.  Input: fuzz_split(config, weights).
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "model/gpt2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *cfg_text, *weights;
    size_t cfg_len, weights_len;
    fuzz_split(data, size, &cfg_text, &cfg_len, &weights, &weights_len);
    GPT2Config cfg;
    if (gpt2_config_parse(&cfg, (const char *)cfg_text, cfg_len, "fuzz/config.json")) return 0;
    if (cfg.n_layer < 1 || cfg.d_head * cfg.n_head != cfg.d_model) abort();
    QkSafetensors st;
    if (qk_st_open_mem(&st, weights, weights_len, "fuzz/model.safetensors")) return 0;
    GPT2Model m;
    if (gpt2_load_st(&m, &cfg, &st) == 0) {
        int tok[2] = {0, cfg.vocab_size - 1};
        if (gpt2_check_tokens(&m.cfg, tok, 1, cfg.n_ctx >= 2 ? 2 : 1, "fuzz")) abort();
        gpt2_free(&m);
    }
    qk_st_close(&st);
    return 0;
}
