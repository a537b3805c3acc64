// manifest.h: the JSON files that describe run folders (docs/FORMAT.md): a sharded run's
// OUT/manifest.json and a Slurm sweep's OUT/plan.json.  They are read back by merge, info,
// status and --resume, and may have been edited or truncated: every field is checked, a shard or
// aggregates entry must be a plain file name in the folder, and counts are capped before anything
// is allocated from them.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define QK_MANIFEST_MAX_SHARDS 10000000  // a shard holds >= 1 window
#define QK_PLAN_MAX_TASKS 100000
#define QK_PLAN_MAX_SETTINGS 4096        // = QK_MAX_SETTINGS (run_config.h)

typedef struct {
    char *config_hash;   // 64 hex digits
    int complete;        // "complete": true
    int ranks;           // "ranks" of a multi-rank run; 0 when absent
    char *aggregates;    // "aggregates" file name; NULL when absent
    int n_shards;
    char **shards;       // (n_shards) file names, in window order
} QkManifest;

// Parses manifest text (text[len]); `path` names it in errors.  0, or -1 with qk_errmsg() naming
// the file and the field; *m is then empty (qk_manifest_free is still fine).
int qk_manifest_parse(QkManifest *m, const char *text, size_t len, const char *path);
// DIR/manifest.json.
int qk_manifest_read(QkManifest *m, const char *dir);
void qk_manifest_free(QkManifest *m);

// plan.json: the task count and the number of settings (1 when absent).
int qk_plan_parse(const char *text, size_t len, const char *path, int *tasks, int *settings);
int qk_plan_read(const char *dir, int *tasks, int *settings);
