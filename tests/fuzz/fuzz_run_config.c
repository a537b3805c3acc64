// Fuzz target (libFuzzer): the INI run config and --set overrides (host/run/run_config.c), then what
// the commands derive from a config that loads: its hash, the [sweep] settings, the head lists.
// Input: the config's path (first line, so long paths reach the error messages), the INI text,
// then after a NUL byte the --set overrides, one a line.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "run/run_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *d = (const char *)data, *nl = memchr(d, '\n', size);
    if (!nl) return 0;
    char *path = strndup(d, (size_t)(nl - d));
    const char *ini = nl + 1, *nul = memchr(ini, 0, size - (size_t)(ini - d));
    size_t ini_len = nul ? (size_t)(nul - ini) : size - (size_t)(ini - d);
    char *sets_text = nul ? strndup(nul + 1, size - (size_t)(nul + 1 - d)) : strdup("");
    char *sets[16];
    int n_sets = 0;
    for (char *save = NULL, *p = strtok_r(sets_text, "\n", &save); p && n_sets < 16; p = strtok_r(NULL, "\n", &save))
        sets[n_sets++] = p;
    RunConfig c;
    if (run_config_parse(&c, path, ini, ini_len, sets, n_sets) == 0) {
        char hex[65];
        run_config_hash(&c, hex);
        int n = run_config_n_settings(&c);
        if (n < 1 || n > QK_MAX_SETTINGS) abort();
        for (int st = 0; st < n; st += n > 1 ? n - 1 : 1) {  // the first and the last setting
            char **ov = calloc((size_t)c.n_sweep + 1, sizeof(char *));
            run_config_setting(&c, st, ov);
            for (int i = 0; i < c.n_sweep; i++) free(ov[i]);
            free(ov);
        }
        uint8_t chosen[12 * 12];
        run_config_heads(c.heads, 12, 12, chosen, "heads");
        run_config_heads(c.record_heads, 12, 12, chosen, "record_heads");
    }
    run_config_free(&c);
    free(path);
    free(sets_text);
    return 0;
}
