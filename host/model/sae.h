// sae.h: SAELens sparse autoencoders (SPEC §3): load a folder, encode to a sparse code with the
// bilinear top-k primitive, decode, reconstruction error.
//
// Numerics follow SAELens 6.54 (sae_lens/saes/sae.py, standard_sae.py, topk_sae.py,
// jumprelu_sae.py), per token x [d]:
//   center_input (qkscope option, not a SAELens key): x <- x - mean(x), added back on decode.
//   layer_norm:  mu = mean(x); std = std_unbiased(x - mu); z = (x - mu) / (std + 1e-5).
//                Decode un-normalises with xhat * std + mu: SAELens multiplies by std WITHOUT the
//                1e-5 (SPEC §3 writes s = std + 1e-5 for both; we follow SAELens).
//   none:        z = x.
//   pre = (z - b_dec [if apply_b_dec_to_input]) W_enc + b_enc, computed as z W_enc + c_enc with
//   c_enc = b_enc - b_dec W_enc folded once at load.
//   standard: a = relu(pre).   topk: the k largest pre, THEN relu.   jumprelu: SAELens computes
//   relu(pre) * (pre > threshold), i.e. active iff pre > max(threshold, 0) (SPEC §3 omits the relu,
//   which only matters for a negative threshold).
//   decode: xhat = (a W_dec + b_dec) * scale + shift, with scale = std (layer_norm) or 1, and
//   shift = mu (layer_norm) + the center_input mean.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

typedef enum { QK_SAE_STANDARD, QK_SAE_TOPK, QK_SAE_JUMPRELU } QkSaeArch;
typedef enum { QK_SAE_NORM_NONE, QK_SAE_NORM_LAYER_NORM } QkSaeNorm;

typedef struct {
    char *dir;        // the folder it was loaded from
    char *hook_name;  // e.g. "blocks.4.hook_resid_post" ("" when the config names none)
    QkSaeArch arch;
    QkSaeNorm norm;
    int d_in, d_sae;
    int k;                     // topk only (else 0)
    int apply_b_dec_to_input;  // from cfg.json
    int center_input;          // qkscope option given to qk_sae_load
    float *W_encT;     // [d_sae x d_in]  W_enc transposed once at load (the primitive's table V)
    float *b_enc;      // [d_sae]
    float *W_dec;      // [d_sae x d_in]
    float *b_dec;      // [d_in]
    float *threshold;  // [d_sae] jumprelu only, else NULL
    float *c_enc;      // [d_sae] b_enc - b_dec W_enc if apply_b_dec_to_input, else b_enc
    float *gates;      // [d_sae] jumprelu: max(threshold, 0); NULL otherwise (standard: gate 0)
} QkSae;

// Loads dir/cfg.json and dir/sae_weights.safetensors.  Old-style configs (pre-6.0: no
// sae_lens_version, `activation_fn_str`, `activation_fn_kwargs` {"k": ..}) are read as SAELens's
// handle_pre_6_0_config reads them; new-style need `architecture`, `d_in`, `d_sae`,
// `apply_b_dec_to_input`, `normalize_activations` (and `k` for topk).  d_model > 0: d_in must
// equal it.  Anything unsupported (normalisation other than none/layer_norm, architecture other
// than standard/topk/jumprelu, reshape_activations, rescale_acts_by_decoder_norm, a head index)
// is an error naming the file, key and value.  Returns 0, or -1 with qk_errmsg() set and *sae
// zeroed.
// Every weight must be finite (an error names the tensor and element).
int qk_sae_load(QkSae *sae, const char *dir, int d_model, int center_input);
// The same from cfg.json's text in memory and an open safetensors file (cfg_path names the
// config in errors; `dir` is recorded as sae->dir).
int qk_sae_parse(QkSae *sae, const char *dir, const char *cfg_path, const char *cfg_text, size_t cfg_len,
                 const QkSafetensors *st, int d_model, int center_input);
void qk_sae_free(QkSae *sae);

// A sparse code for n tokens, `slots` entries per token, sorted by value descending (ties: lower
// feature first).  The first min(n_active[i], slots) entries of token i are its active features;
// later slots hold value 0 (index -1, or for topk the zeroed selected feature).
typedef struct {
    int n, slots;
    int32_t *idx;       // [n x slots] feature index
    float *val;         // [n x slots] activation
    int32_t *n_active;  // [n] topk: selected with value > 0; standard/jumprelu: the TRUE number
                        //     of active features, which may exceed slots (truncation is visible)
    float *scale;       // [n] decode scale: std for layer_norm, else 1
    float *shift;       // [n] decode shift: mu for layer_norm, plus the center_input mean
} QkSaeCode;

// Allocates a code for n tokens: slots = k for topk SAEs; max_active (1..d_sae) otherwise.
// Slots of a code: a top-k SAE's k, else max_active (the most active features kept per token).
static inline int qk_sae_slots(const QkSae *sae, int max_active) { return sae->arch == QK_SAE_TOPK ? sae->k : max_active; }
int qk_sae_code_alloc(QkSaeCode *code, const QkSae *sae, int n, int max_active);
void qk_sae_code_free(QkSaeCode *code);

// Encodes x [n x d_in] (row stride ldx >= d_in) into code (allocated for >= n tokens).
int qk_sae_encode(const QkSae *sae, const float *x, int ldx, int n, QkSaeCode *code);

// Encodes n inputs v_i given only through a projection (the encoder-projection look-for of
// docs/ANALYSIS.md §3): v_i W_enc = U_i E^T, |v_i|^2 = norm2[i], and mean(v_i) = 0 (the caller
// guarantees it).  U [n x r] (row stride ldu), E [d_sae x r].  The SAE's normalisation, b_dec and
// activation apply as in qk_sae_encode; code->scale gets std(v_i) (layer_norm) or 1, shift 0.
int qk_sae_encode_projected(const QkSae *sae, int n, int r, const float *U, int ldu, const float *norm2,
                            const float *E, QkSaeCode *code);

// xhat [n x d_in] = decode(code) in raw residual space.
void qk_sae_decode(const QkSae *sae, const QkSaeCode *code, int n, float *xhat);

// err[i] = |x_i - xhat_i| (L2), x [n x d] with row stride ldx, xhat [n x d].
void qk_sae_recon_error(int n, int d, const float *x, int ldx, const float *xhat, float *err);

const char *qk_sae_arch_name(QkSaeArch a);

// 1 if the SAE codes blocks.LAYER.hook_resid_pre: its hook_name is that stream, the same stream
// spelled blocks.(LAYER-1).hook_resid_post, or unnamed.
int qk_sae_codes_resid_pre(const QkSae *sae, int layer);
