// run_setup.h: what `qkscope run` and `qkscope static` share: the config, the model, the SAE of
// every analysed layer, the heads analysed and recorded, and the identity attributes written to
// every output file.
#pragma once
#include <hdf5.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "model/gpt2.h"
#include "model/sae.h"
#include "run/run_config.h"
#include "text/corpus.h"

#define QK_FORMAT_VERSION 1
#define QK_VERSION "0.1.0"

typedef struct {
    RunConfig cfg;
    GPT2Model model;
    QkSae *sae[QK_MAX_LAYERS];  // SAE coding blocks.L.hook_resid_pre, or NULL
    uint8_t *analysed;          // (L*H): heads with aggregates (every head whose layer has an SAE)
    uint8_t *recorded;          // (L*H): heads with per-token records
    int n_analysed, n_recorded;
    char model_sha256[65];                  // of model.safetensors, hashed once per run
    char sae_sha256[QK_MAX_LAYERS][65];     // of each SAE's sae_weights.safetensors
    // The hashes are computed by a thread while the run starts (they are needed only when the
    // first output file is written): hasher joined once, its error line kept.
    pthread_t hasher;
    int hashing, hash_rc;
    char hash_err[1024];
} RunSetup;

// The command line shared by `run` and `static`: CONFIG -o OUT [--set S.K=V ...] [-q]
// [--resume --part P/N --gpus SPEC --ranks N (run only)].
#define QK_MAX_SETS 256
typedef struct {
    const char *config, *out;
    char *sets[QK_MAX_SETS];
    int n_sets, quiet, resume;
    int part, n_parts;  // --part P/N (run only)
    const char *gpus;   // --gpus all|N|LIST (run only): one rank per GPU
    int ranks;          // --ranks N (run only): N ranks on the CPU backend
} RunArgs;

// Returns -1 to go on, or the exit status (--help prints usage and gives 0; bad usage 2, with a
// line on stderr naming `cmd`).
int run_args_parse(int argc, char **argv, const char *cmd, int allow_resume, void (*usage)(FILE *), RunArgs *a);

// What -o names: a file (static), a folder (multi-rank runs), or a file or folder as the config
// says (run: a folder of shards when [output] shard_tokens > 0).
typedef enum { QK_OUT_FILE, QK_OUT_FOLDER, QK_OUT_BY_CONFIG } QkOutKind;

// Loads the config (with --set overrides), checks the output `out` (host/io/out_check.h; not for a
// run that writes nothing, [output] write = false), then loads the model and the SAEs and
// resolves the head lists.  A head asked for explicitly whose layer has no SAE is an error; with
// heads = all, such layers are skipped with a notice (layer 0 with resid_post SAEs, SPEC §3),
// unless quiet.
int run_setup_open(RunSetup *s, const char *config, char *const *sets, int n_sets, int quiet, const char *out,
                   QkOutKind out_kind);
void run_setup_close(RunSetup *s);

// Waits for the hashes of the weight files (computed in a thread); -1 if one could not be read.
int run_setup_hashes_ready(RunSetup *s);

// Root attributes: format, versions, the config text, model and SAE paths with SHA-256 of their
// weight files, and the analysed head labels.
int run_setup_write_identity(RunSetup *s, hid_t file, const char *format);

// The progress line's ETA.  From the corpus reader's position in its input files (bytes), the rate
// measured since the first call that saw work done (a resumed run skips its first windows fast);
// with [corpus] max_tokens, from the tokens left, whichever ends first.  buf gets ", ETA N s" or
// "" when nothing can be estimated yet.
typedef struct {
    int started;
    double t0, frac0;
    int64_t tokens0;
} RunEta;
void run_eta(RunEta *e, QkCorpus *c, int64_t max_tokens, int64_t tokens_done, double now, char *buf, size_t n);
