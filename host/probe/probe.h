// probe.h: probe corpora for known circuits (`qkscope probe induction`, `qkscope probe ioi`), and
// the recovery scores computed from qkscope's own output (`qkscope probe score`).
//
// A probe folder holds corpus.npy (int32 [windows, n_ctx]: exactly the windows the model sees; run
// it with `[corpus] bos = false`, `pack = true` and the same n_ctx) and probe.json (what it is:
// task, sizes, seed, and for IOI the positions and tokens of the names in every window).
//
// Scores (docs/PROBE.md has the definitions):
// - induction, feature level: for each analysed head, of the mass (summed |term|) of its heaviest
//   (query feature f, key feature g) pairs at the most attended key, the share in which f's
//   current-token label equals g's previous-token label (the induction signature: the query is
//   token A, the key is the token after an earlier A).  Labels: one int32 [d_sae, 4] .npy per layer
//   (current-token label, its count, previous-token label, its count; -1 = no label).
// - induction, token level (recorded heads): the share of second-copy queries whose most attended
//   key is the token after the earlier occurrence.
// - IOI (recorded heads): at the last token (END), the attention on the indirect object (IO), the
//   share of prompts whose most attended key is IO, and the share of the END -> IO score carried
//   by (feature, feature) terms.
// Heads whose score reaches the threshold are "singled out"; precision / recall / F1 compare them
// with an expected head list (SPEC §4.6's for GPT-2 small, or one given).
#pragma once
#include <stdint.h>

// ---- probe corpora -------------------------------------------------------------------------

typedef struct {
    int windows;       // number of windows (default 64)
    int rep;           // length of the random run; windows are 2 * rep tokens (default 32)
    int token_lo;      // random tokens are uniform in [token_lo, token_hi)
    int token_hi;
    int bos;           // 1: every window starts with 50256 (GPT-2's BOS), then 2 * rep tokens
    uint64_t seed;
} QkInductionProbe;

int qk_probe_induction_write(const char *dir, const QkInductionProbe *o);

#define QK_IOI_MAX_NAMES 64
typedef struct {
    int windows;       // number of prompts (default 64), one per window
    int n_ctx;         // window length (default 32); tokens after END are filler (causal: unseen)
    uint64_t seed;
    const char *vocab; // GPT-2 BPE folder: prompts from templates with GPT-2 names
    const char *planted;  // instead: a `qkscope planted` folder; the prompt's roles map onto its
                          // tokens (IO: key tokens of the chosen head's circuit, END: its query
                          // tokens, everything else: tokens carrying no planted feature)
    int planted_layer, planted_head;
} QkIoiProbe;

int qk_probe_ioi_write(const char *dir, const QkIoiProbe *o);

// ---- scores --------------------------------------------------------------------------------

typedef struct {
    int layer, head;
    int n_pairs;            // heavy pairs considered
    double feature_share;   // induction: matched pair mass / pair mass; IOI: F-F share at END -> IO
    double token_score;     // induction: top-1 on the earlier next token; IOI: mean attention on IO; NaN unrecorded
    double top1;            // IOI: share of prompts with IO most attended; NaN otherwise
    int rank;               // 1 = highest score of its task
    int expected, singled_out;
    // the heaviest pairs (up to 8) for the report
    int n_top;
    int64_t top_f[8], top_g[8];
    double top_mass[8];
    int top_match[8];
} QkProbeHead;

// Labels of one layer: lab[4 * f + 0..3] = current-token label, count, previous-token label, count.
typedef struct {
    int m;
    int32_t *lab;
} QkLabels;

typedef struct {
    char task[16];          // "induction" or "ioi"
    int n_heads;
    QkProbeHead *heads;     // layer-major, as in the run file
    double precision, recall, f1;
    int n_expected, n_singled, n_hit;
    int n_layers;           // layers of labels[] (the run's heads' layers)
    QkLabels *labels;       // [n_layers]: each layer's labels when --labels was given (induction), else NULL
} QkProbeScore;

typedef struct {
    const char *run;        // `qkscope run` output (one file, or a merged one)
    const char *probe;      // the probe folder (probe.json)
    const char *labels;     // folder with layer_L.npy (induction feature score); may be NULL
    const char *expect;     // head list ("5.5,5.8"); NULL: SPEC §4.6's list for the task
    int top_pairs;          // heaviest pairs per head (default 64)
    double threshold;       // a head is singled out when its score >= threshold (default 0.5)
} QkProbeScoreOpts;

int qk_probe_score(const QkProbeScoreOpts *o, QkProbeScore *out);
void qk_probe_score_free(QkProbeScore *s);

int qk_labels_load(QkLabels *l, const char *dir, int layer);
void qk_labels_free(QkLabels *l);

// Static maps: for the query features f of `layer` whose current-token label holds at least
// min_count of their top activations, whether q2k's first key feature g of head layer.head has
// previous-token label == f's current-token label.  *n_checked gets the number of such f.
// Returns the matching fraction (NaN when none), or -1 with qk_errmsg() on a read error.
// matchable (NULL: not wanted): the same fraction over the f whose token is some latent's
// previous-token label (only those can match), their number in *n_matchable.
double qk_probe_static_match(const char *static_path, int layer, int head, const QkLabels *lab, int min_count,
                             int *n_checked, double *matchable, int *n_matchable);
