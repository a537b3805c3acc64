// Fuzz target (libFuzzer): a SAELens SAE folder: cfg.json (host/model/sae.c, old and new styles) and,
// when it parses, the weights of sae_weights.safetensors.  Input: fuzz_split(cfg, weights).
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "model/sae.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *cfg_text, *weights;
    size_t cfg_len, weights_len;
    fuzz_split(data, size, &cfg_text, &cfg_len, &weights, &weights_len);
    QkSafetensors st;
    if (qk_st_open_mem(&st, weights, weights_len, "fuzz/sae_weights.safetensors")) return 0;
    QkSae sae;
    if (qk_sae_parse(&sae, "fuzz", "fuzz/cfg.json", (const char *)cfg_text, cfg_len, &st, 0, size & 1) == 0) {
        if (sae.arch == QK_SAE_TOPK && (sae.k < 1 || sae.k > sae.d_sae)) abort();  // a usable k
        qk_sae_free(&sae);
    }
    qk_st_close(&st);
    return 0;
}
