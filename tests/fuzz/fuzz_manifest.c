// Fuzz target (libFuzzer): a sharded run's manifest.json and a sweep's plan.json
// (host/run/manifest.c); the first byte picks which.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "run/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *text = (const char *)data + 1;
    if (data[0] & 1) {
        int tasks, settings;
        if (qk_plan_parse(text, size - 1, "fuzz/plan.json", &tasks, &settings) == 0 &&
            (tasks < 1 || tasks > QK_PLAN_MAX_TASKS || settings < 1 || settings > QK_PLAN_MAX_SETTINGS))
            abort();
        return 0;
    }
    QkManifest m;
    if (qk_manifest_parse(&m, text, size - 1, "fuzz/manifest.json") == 0) {
        for (int i = 0; i < m.n_shards; i++)
            if (strchr(m.shards[i], '/') || !m.shards[i][0]) abort();  // names stay inside the folder
        if (strlen(m.config_hash) != 64) abort();
    }
    qk_manifest_free(&m);
    return 0;
}
