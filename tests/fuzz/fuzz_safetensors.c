// Fuzz target (libFuzzer): the safetensors reader (host/io/safetensors.c) on arbitrary bytes, and the
// float conversion and finite check of every small float tensor it accepts.
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    QkSafetensors st;
    if (qk_st_open_mem(&st, data, size, "fuzz.safetensors")) return 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const QkTensorInfo *t = &st.tensors[i];
        if (t->numel > (1u << 20)) continue;
        float *f = qk_st_load_f32(&st, t->name, t->ndim, t->shape);
        free(f);
        if (!qk_st_find(&st, t->name)) abort();  // every listed tensor is found by name
    }
    qk_st_meta(&st, "format");
    qk_st_close(&st);
    return 0;
}
