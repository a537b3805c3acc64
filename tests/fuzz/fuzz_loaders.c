// Fuzz target (libFuzzer): the safetensors and .npy readers on arbitrary bytes.  `make fuzz`.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "safetensors.h"
#include "npy.h"
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/qkscope-fuzz-%d.bin", getpid());
    FILE *f = fopen(path, "wb"); fwrite(data, 1, size, f); fclose(f);
    QkSafetensors st;
    if (qk_st_open(&st, path) == 0) {
        for (int i = 0; i < st.n_tensors; i++) {
            const QkTensorInfo *t = &st.tensors[i];
            if (t->numel < (1u << 20) && (t->dtype == QK_DT_F32 || t->dtype == QK_DT_F16 || t->dtype == QK_DT_BF16)) {
                float *o = malloc(t->numel * 4 + 4); qk_st_read_f32(&st, t, o); free(o);
            }
        }
        qk_st_close(&st);
    }
    QkNpy a;
    if (qk_npy_read(&a, path) == 0) {
        if (a.numel < (1u << 20)) { int32_t *o = malloc(a.numel * 4 + 4); qk_npy_to_i32(&a, o, path); free(o); }
        qk_npy_free(&a);
    }
    return 0;
}
