#!/usr/bin/env python3
"""Writes results/ground_truth.md from the trained fixture and qkscope's own output (`make ground-truth`).

Inputs: tests/reference/data/trained/{ground_truth.json, training.json, vocab.json, labels/layer_L.npy}
(PyTorch measurements, tests/reference/make_trained_ref.py) and the JSON of
`qkscope probe score RUN --labels ... --static ... --json SCORE` over the fixture's probe corpus.
Standard library only (the .npy labels are int32 [d_sae, 4], read with struct).

usage: scripts/ground_truth_report.py SCORE.json > results/ground_truth.md
"""
import ast
import json
import os
import struct
import sys

FIX = "tests/reference/data/trained"


def read_npy_i32(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:6] == b"\x93NUMPY", path
    major = data[6]
    hlen = struct.unpack("<H", data[8:10])[0] if major == 1 else struct.unpack("<I", data[8:12])[0]
    start = (10 if major == 1 else 12) + hlen
    hdr = ast.literal_eval(data[10 if major == 1 else 12:start].decode("latin1"))
    assert hdr["descr"] == "<i4" and not hdr["fortran_order"], path
    rows, cols = hdr["shape"]
    flat = struct.unpack(f"<{rows * cols}i", data[start:start + 4 * rows * cols])
    return [flat[i * cols:(i + 1) * cols] for i in range(rows)]


# Hand-written: the experiments behind the fixture's SAE settings (tests/reference/make_trained_ref.py),
# all on the committed model; the table says how each share was measured.
WHAT_CHANGED = """## What changed and why

The first fixture's layer-1 SAE (1024 latents, k = 6, trained on a quarter text and three quarters random
runs) gave the induction heads a feature-level share of 0.045-0.058.  The model was not at fault:
a least-squares split of its layer-1 resid_pre on random windows into a vector per current token, one per
previous token and one per position explains 76% of the variance, and in those terms the induction heads'
score at the attended key is carried by (query current token) . (key previous token): mean 12.0-13.9,
while every other pair of parts averages |.| < 1 (the unexplained 24% at the key adds 4.5-5.2 against the
query's current token).  So the circuit is a current-token -> previous-token match, as the literature says.
The SAE hid it: at a second-copy key there was rarely a latent labelled with the previous token; the
previous-token signal (the largest part of the stream, norm 13.6 against 7.8 for the current token) was
spread over dense latents that fire on 20-50% of all tokens, whose pairs (with weak, mismatched labels)
recur at almost every query and so fill the heaviest pairs, while each token's own induction pair occurs
~4 times in the probe.  Only-second-copy queries instead of all queries changed nothing (0.046-0.057).

Layer-1 SAE tried (2048 latents unless said; FVU and labelled features on held-out windows; share for
1.0 / 1.1 / 1.2 / 1.3):

| SAE training data | k | steps | FVU | live latents | current- / previous-token features | share |
| --- | --- | --- | --- | --- | --- | --- |
| 1/4 text, 3/4 random runs (first fixture, 1024 latents) | 6 | 2500 | 0.070 | 593 | 228 / 158 | 0.054 / 0.052 / 0.045 / 0.058 |
| 1/4 text, 3/4 random runs (no restarts) | 4 | 3000 | 0.096 | 674 | 232 / 182 | 0.069 / 0.068 / 0.066 / 0.067 |
| 1/4 text, 3/4 random runs | 12 | 1500 | 0.035 | 1716 | 336 / 244 | 0.044 / 0.048 / 0.050 / 0.041 |
| random runs only | 4 | 2000 | 0.142 | 973 | 365 / 131 | 0.203 / 0.208 / 0.193 / 0.202 |
| random runs only | 3 | 2000 | 0.180 | 1084 | 438 / 167 | 0.378 / 0.388 / 0.355 / 0.395 |
| random runs only | 2 | 1500 | 0.226 | 1201 | 412 / 183 | 0.403 / 0.400 / 0.398 / 0.397 |
| random runs only (this fixture) | 2 | 3000 | 0.215 | 1291 | 475 / 255 | 0.554 / 0.603 / 0.562 / 0.577 |
| random runs only, 4096 latents | 2 | 2000 | 0.211 | 1906 | 602 / 267 | 0.563 / 0.587 / 0.576 / 0.579 |

(Labels from held-out windows of the SAE's own training mix.  Shares up to k = 3: a PyTorch copy of qkscope's
share, which gives the first fixture's figures exactly; k = 2: `qkscope probe score` itself.)

The remaining mismatched heavy pairs join a current-token latent with a previous-token latent labelled with
another token that also fires for this one: 255 previous-token latents for 511 tokens (267 with 4096 latents,
which adds current-token latents but hardly any previous-token ones).  The previous token
reaches layer 1 through head 0.0's OV circuit, of rank d_head = 16, so 511 previous tokens share 16
dimensions (the current token has all 64) and the SAE merges some of them.

More latents alive did not help by itself (k = 12: no dead latents, the lowest FVU and the lowest share:
most of the 12 active latents at a key are dense).  What helped: training data where every token is as
frequent as current token and as previous token (random runs only; tinyshakespeare's skew gives its frequent
tokens and their bigrams latents of their own and lumps the rest), and a small k, so the SAE spends its
few active latents on the two largest parts of the stream, the current and the previous token, and leaves
the dense rest (layer-0 heads averaging over the window) to the error term, which feature pairs do not
include.  Restarting dead latents (Bricken et al. 2023) is kept but is not what made the difference:
restarted latents that find no token of their own die again.  Labels come from held-out windows of the
same kind (random runs), which cover every token about equally; tinyshakespeare would label mostly its
frequent tokens.
"""


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def main():
    score = json.load(open(sys.argv[1]))
    gt = json.load(open(os.path.join(FIX, "ground_truth.json")))
    tr = json.load(open(os.path.join(FIX, "training.json")))
    vocab = json.load(open(os.path.join(FIX, "vocab.json")))["text"]
    labels = {}
    tok = lambda t: "-" if t < 0 else repr(vocab[t])
    by_head = {h["head"]: h for h in gt["heads"]}
    top = gt["label_top"]

    out = []
    p = out.append
    p("# Ground truth: a model trained here, and what qkscope recovers from it\n")
    p("Generated by `make ground-truth` (scripts/ground_truth_report.py) from the committed fixture "
      "`tests/reference/data/trained/` (made by `tests/reference/make_trained_ref.py`: measurements in PyTorch, "
      "no qkscope) and `qkscope probe score` over qkscope's own `run` and `static` output on the fixture's probe "
      "corpus.  `make test` checks the same numbers (tests/test_probe.c).\n")
    f = tr["final"]
    p("## The model\n")
    p(f"GPT-2 architecture (Hugging Face GPT2LMHeadModel), 2 layers x 4 heads, d_model 64, n_ctx 64, vocabulary "
      f"{len(vocab)} (the 511 most frequent GPT-2 tokens of tinyshakespeare, covering {gt['vocab_coverage']:.1%} of "
      f"its tokens, + unknown), float16 on disk.  Trained {tr['model_curve'][-1]['step']} steps of 32 windows of 64 "
      f"tokens: first tinyshakespeare only, then a quarter tinyshakespeare, three quarters windows of random tokens "
      f"holding random runs written twice (make_trained_ref.py has the details); "
      f"{tr['seconds']:.0f} s on {tr['threads']} CPU thread(s) in all (versions: "
      + ", ".join(f"{k} {v}" for k, v in tr["versions"].items()) + ").\n")
    p(f"Final held-out losses: tinyshakespeare {f['val_text_loss']:.3f} nats/token; second copy of a repeated random "
      f"sequence {f['val_repeat_second_copy_loss']:.3f} (a model that cannot look back: ln 511 = 6.24).\n")
    p("| step | text loss | second-copy loss |\n| --- | --- | --- |")
    for c in tr["model_curve"]:
        p(f"| {c['step']} | {c['val_text_loss']:.3f} | {c['val_repeat_second_copy_loss']:.3f} |")
    p("")
    p("SAEs (SAELens TopKSAE, saved with its own save_model, on `blocks.L.hook_resid_pre`), trained and labelled on "
      "windows of random tokens holding repeated random runs, where every token is equally frequent (below: why):\n")
    p("| layer | d_sae | k | FVU (held out) | features fired | current-token features | previous-token features |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    for s in tr["sae"]:
        p(f"| {s['layer']} | {s['d_sae']} | {s['k']} | {s['fvu']:.4f} | {s['features_fired']} | "
          f"{s['current_token_features']} | {s['previous_token_features']} |")
    p(f"\n(A current-token feature: its top {top} activations share one current token at least half the time; "
      "a previous-token feature: they share one previous token.)\n")

    p(WHAT_CHANGED)
    p("## Head by head\n")
    p("Induction score (TransformerLens's definition, PyTorch, on the probe corpus of repeated random sequences) and "
      "previous-token score (tinyshakespeare), against qkscope's feature-level induction share (of the head's 64 "
      "heaviest feature pairs at the most attended key, the mass whose query feature's current-token label is the key "
      "feature's previous-token label) and its token-level top-1 (second-copy queries attending most to the token "
      "after the earlier occurrence).\n")
    p("| head | induction score | previous-token score | qkscope feature share | qkscope rank | qkscope token top-1 |")
    p("| --- | --- | --- | --- | --- | --- |")
    for h in score["heads"]:
        g = by_head[h["head"]]
        p(f"| {h['head']} | {g['induction_score']:.3f} | {g['previous_token_score']:.3f} | "
          f"{f3(h['feature_share'])} | {h['rank']} | {f3(h['token_score'])} |")
    p(f"\nInduction heads (score > 0.5): {', '.join(gt['induction_heads']) or 'none'}; previous-token heads: "
      f"{', '.join(gt['previous_token_heads']) or 'none'}.  qkscope singles out (share >= {score['threshold']}) "
      f"{score['singled_out']} head(s): precision {f3(score['precision'])}, recall {f3(score['recall'])}, "
      f"F1 {f3(score['f1'])}.\n")
    p("## Top pairs, with their labels\n")
    p("Per head, the heaviest (query feature f, key feature g) pairs of `aggregates/L.H/pairs_*` (summed |term| at "
      "the most attended key), with f's current-token label and g's previous-token label (count of the top "
      f"{top} activations); * = induction signature (labels equal).\n")
    for h in score["heads"]:
        layer = int(h["head"].split(".")[0])
        if layer not in labels:
            labels[layer] = read_npy_i32(os.path.join(FIX, "labels", f"layer_{layer}.npy"))
        lab = labels[layer]
        p(f"**{h['head']}** (induction {by_head[h['head']]['induction_score']:.3f}, share {f3(h['feature_share'])}):\n")
        p("| f | f: current token | g | g: previous token | mass | |\n| --- | --- | --- | --- | --- | --- |")
        for pr in h["top_pairs"][:5]:
            qf, kg = int(pr["query_feature"]), int(pr["key_feature"])
            cf = lab[qf] if qf < len(lab) else (-1, 0, -1, 0)
            cg = lab[kg] if kg < len(lab) else (-1, 0, -1, 0)
            p(f"| {qf} | {tok(cf[0])} ({cf[1]}) | {kg} | {tok(cg[2])} ({cg[3]}) | {pr['mass']:.1f} | "
              f"{'*' if pr.get('label_match') else ''} |")
        if "static_q2k_match" in h:
            p(f"\nStatic map (weights only): of the {h['static_q2k_checked']} labelled current-token features of layer "
              f"{layer}, {f3(h['static_q2k_match'])} have as first q2k key feature in {h['head']} the feature whose "
              f"previous-token label is their token; of the {h['static_q2k_matchable']} whose token is some feature's "
              f"previous-token label (only those can match), {f3(h['static_q2k_match_matchable'])}.")
        p("")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
