#!/usr/bin/env python3
"""A small GPT-2 trained here on real text, with its own SAEs: ground truth that nobody wrote by hand.

Run from the repo root (CPU only, ~15 min on one thread):
    make trained-reference          # .venv-ref/bin/python tests/reference/make_trained_ref.py, then make ground-truth
    make trained-reference-sae      # the same with QK_TRAINED_STAGE=sae: SAEs and labels only, on the committed model
Pinned versions: tests/reference/requirements.txt (the same virtualenv as `make reference`).  Seeds
are fixed and torch runs deterministic algorithms on one thread (OMP_NUM_THREADS=1), so a rerun on
the same versions gives the same numbers.

What it does, and writes into tests/reference/data/trained/ (the fixture, ~1 MB):
1. Vocabulary: tinyshakespeare (../shared/data) tokenized with GPT-2's BPE (tiktoken, from the
   vocabulary files in ../shared/data), the V - 1 most frequent GPT-2 tokens kept (model ids 0..V-2,
   by frequency), every other token -> the unknown id V - 1.  vocab.json maps model ids to GPT-2 ids
   and their text.
2. Model: Hugging Face GPT2LMHeadModel, 2 layers x 4 heads, d_model 64, n_ctx 64, trained with
   AdamW: first on windows of random tokens holding two random runs, each written twice at random
   places (loss only on the predictable second copies), then on a mix of tinyshakespeare windows
   and such windows.  The second copy can only be predicted by looking back at content (the offset varies),
   which is what makes a previous-token head in layer 0 and induction heads in layer 1.  model/
   holds config.json and model.safetensors (float16); every measurement below uses the float16 weights.
3. Ground truth per head, from the HF model's own attention patterns (no qkscope):
   - induction score (TransformerLens's definition): on the probe corpus (repeated random
     sequences, [r_0..r_31, r_0..r_31]), the mean attention from a second-copy position i to
     i - 31, the token after the earlier occurrence of the current token;
   - previous-token score: the mean attention from i to i - 1 over held-out tinyshakespeare windows.
4. SAEs: SAELens TopKSAE on blocks.L.hook_resid_pre of both layers (layer 0: the embeddings;
   layer 1: what the induction heads read), trained here on activations of windows of random tokens
   holding repeated runs (SAE_P_REPEAT: every token equally frequent), dead latents restarted, saved with
   SAELens's save_model (float16) and loaded back with SAE.load_from_disk to check the files.
5. Feature labels: over held-out activations of the same kind, each feature's top-N
   activations (N = 64); its current-token label is the most frequent token at those positions, its
   previous-token label the most frequent token just before them; with their counts.
6. probe/corpus.npy: the repeated random sequences of step 3, int32 [windows, 64].

Files: vocab.json, model/, sae/layer_L/, labels/layer_L.npy (int32 [d_sae, 4]: current-token
label, its count, previous-token label, its count, out of ground_truth.json's label_top; -1 for a
feature that never fired), probe/corpus.npy, ground_truth.json (scores per head, the heads above
0.5), training.json (the training curves, SAE quality and final losses, versions, seconds).
"""
import collections
import importlib.metadata
import json
import os
import shutil
import sys
import time

import numpy as np
import tiktoken
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE, TopKSAE, TopKSAEConfig
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data")
DATA = os.path.join(SHARED, "text", "tinyshakespeare.txt")
OUT = os.environ.get("QK_TRAINED_OUT", os.path.join(ROOT, "tests", "reference", "data", "trained"))

# Every knob in one place.
SEED = 17
VOCAB = 512            # model vocabulary: 511 most frequent GPT-2 tokens + unknown
N_LAYER, N_HEAD, D_MODEL, N_CTX = 2, 4, 64, 64
REP = N_CTX // 2       # length of a random run; a repeated sequence is two copies
P_REPEAT = 0.75        # share of training windows with repeated random runs, after TEXT_FIRST steps
TEXT_FIRST = 1000      # the first steps train on tinyshakespeare only: a previous-token head forms there
                       # (trigram statistics), and the induction head then builds on it
STEPS, BATCH, LR, WARMUP = 3000, 32, 5e-3, 100
# Tried and dropped: repeated runs only first (the second copies are learnt within ~1500 steps, but by
# a circuit that is not the classic one: layer-0 heads fixed on absolute positions, no previous-token
# head, TL induction scores < 0.1), and a 50/50 mix from step 0 (second copies still on the ln 511
# plateau after 3000 steps).
SAE_D, SAE_K = (1024, 2048), (6, 2)  # per layer: latents, top-k
SAE_STEPS = (600, 3000)  # per layer: the embeddings (token + position) need fewer
SAE_BATCH, SAE_LR = 1024, 2e-3
SAE_P_REPEAT = 1.0     # SAE training and labelling windows: random tokens only (training_repeats), so every
                       # token is as frequent as current and as previous token (results/ground_truth.md, "What
                       # changed and why": on the text mix, or with k >= 3, the layer-1 SAE spends its latents on
                       # dense directions that fire on 20-50% of tokens, and the induction signal is spread thin)
SAE_RESAMPLE = 250    # dead latents (no activation for this many steps) restarted every this many steps
SAE_TOKENS = 262144    # activations per layer the SAEs are trained on
LABEL_TOKENS = 131072  # held-out activations the features are labelled on
LABEL_TOP = 64
PROBE_WINDOWS = 64     # probe corpus: repeated random sequences, the ground truth is measured on it
HELDOUT = 0.1          # the last 10% of tinyshakespeare: validation, scores, labels


def versions():
    return {p: importlib.metadata.version(p) for p in ("torch", "transformers", "sae_lens", "tiktoken",
                                                          "safetensors", "numpy")}


def gpt2_encoding():
    """tiktoken's GPT-2 encoding from the vocabulary files in shared/data (no download)."""
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(SHARED, "gpt2", "vocab.bpe"),
                                            os.path.join(SHARED, "gpt2", "encoder.json"))
    return tiktoken.Encoding(name="gpt2-local", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def build_vocab(ids):
    counts = collections.Counter(ids.tolist())
    keep = [t for t, _ in counts.most_common(VOCAB - 1)]
    lut = np.full(50257, VOCAB - 1, dtype=np.int64)
    lut[keep] = np.arange(len(keep))
    coverage = sum(counts[t] for t in keep) / len(ids)
    return keep, lut, coverage


def random_repeats(gen, n):
    """n windows [r, r], r uniform over the known ids (the unknown id is left out)."""
    r = torch.randint(0, VOCAB - 1, (n, REP), generator=gen)
    return torch.cat([r, r], dim=1)


def text_windows(gen, stream, n):
    if n == 0:
        return torch.zeros((0, N_CTX), dtype=torch.long)
    start = torch.randint(0, len(stream) - N_CTX, (n,), generator=gen)
    return torch.stack([stream[s:s + N_CTX] for s in start.tolist()])


def training_repeats(gen, n):
    """n windows of random tokens holding two random runs r1, r2 (lengths uniform in [6, 14]), each
    written twice, in the order r1 r2 r1 r2 or r1 r2 r2 r1, with random gaps of random tokens between
    and around them; LM labels only where a second copy can be predicted (-100 elsewhere).  The
    offsets vary and nothing but content marks where a run starts, so only a content-based circuit
    (a previous-token head + an induction head) predicts the second copies: no positional shortcut."""
    w = torch.randint(0, VOCAB - 1, (n, N_CTX), generator=gen)
    lab = torch.full((n, N_CTX), -100)
    for b in range(n):
        L = torch.randint(6, 15, (2,), generator=gen).tolist()
        order = [0, 1, 0, 1] if int(torch.randint(0, 2, (1,), generator=gen)) else [0, 1, 1, 0]
        free = N_CTX - 2 * sum(L)
        cuts = sorted(torch.randint(0, free + 1, (4,), generator=gen).tolist())
        gaps = [cuts[0]] + [cuts[i] - cuts[i - 1] for i in range(1, 4)]
        pos, start, seen = 0, [None, None], [False, False]
        for g, r in zip(gaps, order):
            pos += g
            if not seen[r]:
                start[r], seen[r] = pos, True
            else:
                w[b, pos:pos + L[r]] = w[b, start[r]:start[r] + L[r]]
                lab[b, pos + 1:pos + L[r]] = w[b, pos + 1:pos + L[r]]
            pos += L[r]
    return w, lab


def mixed_batch(gen, stream, n, p_repeat=P_REPEAT, with_labels=False):
    """n windows, a share p_repeat of them with repeated random runs (training_repeats), the rest
    tinyshakespeare; with_labels: also the LM labels."""
    n_rep = int(round(n * p_repeat))
    rep, rep_lab = training_repeats(gen, n_rep)
    text = text_windows(gen, stream, n - n_rep)
    b, lab = torch.cat([rep, text]), torch.cat([rep_lab, text])
    perm = torch.randperm(n, generator=gen)
    return (b[perm], lab[perm]) if with_labels else b[perm]


def train_model(train, val, gen):
    config = GPT2Config(n_embd=D_MODEL, n_head=N_HEAD, n_layer=N_LAYER, n_positions=N_CTX, vocab_size=VOCAB,
                        activation_function="gelu_new", layer_norm_epsilon=1e-5, attn_implementation="sdpa",
                        tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    # warm-up, constant, then linear decay over the last 20%
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP, 5.0 * (STEPS - s) / STEPS))
    vgen = torch.Generator().manual_seed(SEED + 1)
    val_text = text_windows(vgen, val, 256)
    val_rep = random_repeats(vgen, 256)
    curve = []
    t0 = time.time()
    for step in range(STEPS + 1):
        if step % 200 == 0 or step == STEPS:
            model.eval()
            with torch.no_grad():
                lt = float(model(val_text, labels=val_text).loss)
                logits = model(val_rep).logits
                lp = torch.log_softmax(logits[:, REP - 1:-1], -1)  # predictions of the second copy
                lr2 = float(-lp.gather(-1, val_rep[:, REP:, None]).mean())
            curve.append({"step": step, "val_text_loss": lt, "val_repeat_second_copy_loss": lr2,
                          "seconds": round(time.time() - t0, 1)})
            print(f"step {step:5d}  text {lt:.3f}  second copy {lr2:.3f}  ({time.time() - t0:.0f} s)", flush=True)
            model.train()
        if step == STEPS:
            break
        batch, lab = mixed_batch(gen, train, BATCH, 0.0 if step < TEXT_FIRST else P_REPEAT, with_labels=True)
        loss = model(batch, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0:
            curve[-1]["train_loss"] = float(loss.detach())
    model.eval()
    model.set_attn_implementation("eager")  # attention weights for the measurements (same numbers)
    return model, curve


def round_to(model, dtype):
    """The weights as stored on disk, so every later measurement sees exactly the committed model."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


def resid_and_patterns(model, windows):
    """hidden_states[L] = blocks.L.hook_resid_pre; attentions[L] [B, H, T, T]."""
    with torch.no_grad():
        out = model.transformer(windows, output_hidden_states=True, output_attentions=True)
    return out.hidden_states, out.attentions


def head_scores(model, probe, val):
    _, att = resid_and_patterns(model, probe)
    vgen = torch.Generator().manual_seed(SEED + 2)
    _, att_text = resid_and_patterns(model, text_windows(vgen, val, 256))
    heads = []
    for layer in range(N_LAYER):
        for h in range(N_HEAD):
            a = att[layer][:, h]  # [B, T, T]
            ind = torch.diagonal(a, offset=1 - REP, dim1=1, dim2=2)[:, 1:]  # i = REP..T-1 -> i-REP+1
            prev = torch.diagonal(att_text[layer][:, h], offset=-1, dim1=1, dim2=2)
            heads.append({"head": f"{layer}.{h}", "induction_score": float(ind.mean()),
                          "previous_token_score": float(prev.mean())})
    return heads


def sae_inputs(model, gen, stream, n_tokens):
    """resid_pre of every layer on SAE_P_REPEAT-mixed windows: [n_tokens, d] per layer, with the tokens
    and the previous tokens (-1 at position 0) of every row."""
    n = n_tokens // N_CTX
    windows = mixed_batch(gen, stream, n, SAE_P_REPEAT)
    res, tok = [[] for _ in range(N_LAYER)], []
    for s in range(0, n, 256):
        hs, _ = resid_and_patterns(model, windows[s:s + 256])
        for layer in range(N_LAYER):
            res[layer].append(hs[layer].reshape(-1, D_MODEL))
    prev = torch.cat([torch.full((n, 1), -1), windows[:, :-1]], dim=1)
    return [torch.cat(r) for r in res], windows.reshape(-1), prev.reshape(-1)


def topk_code(sae, xb, k):
    """The TopK SAE's pre-activations of xb [B, d] and its code: the k largest, ReLU'd, the rest 0."""
    pre = (xb - sae.b_dec) @ sae.W_enc + sae.b_enc
    val, top = pre.topk(k, dim=-1)
    return pre, torch.zeros_like(pre).scatter(-1, top, torch.relu(val))


def resample_dead(sae, opt, x, dead, gen):
    """Dead latents restarted where the SAE does worst (Bricken et al. 2023, "Towards Monosemanticity"):
    each takes the direction of the reconstruction error of an input drawn with probability ~ its
    squared error, an encoder column of the live latents' mean norm and their mean bias, and fresh Adam
    moments.  Every latent gets a chance at a niche of its own (AuxK alone left 1361 of 2048 dead); those
    that find none die again, which is harmless (results/ground_truth.md, "What changed and why")."""
    idx = dead.nonzero().flatten()
    if len(idx) == 0:
        return idx
    with torch.no_grad():
        xb = x[torch.randint(0, len(x), (16 * SAE_BATCH,), generator=gen)]  # [16 * SAE_BATCH, d]
        err = xb - topk_code(sae, xb, sae.cfg.k)[1] @ sae.W_dec - sae.b_dec
        e2 = (err ** 2).sum(-1)
        pick = torch.multinomial(e2 / e2.sum(), len(idx), replacement=False, generator=gen)
        d = err[pick] / err[pick].norm(dim=1, keepdim=True)
        live = ~dead
        sae.W_dec[idx] = d
        sae.W_enc[:, idx] = d.T * sae.W_enc[:, live].norm(dim=0).mean()
        sae.b_enc[idx] = sae.b_enc[live].mean()
        for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
            st = opt.state.get(p)
            if st:
                st["exp_avg"][sl] = 0
                st["exp_avg_sq"][sl] = 0
    return idx


def train_sae(x, layer, gen):
    """A TopK SAE fitted with Adam on MSE, plus the AuxK loss of Gao et al. (2024) on latents dead
    for 200 steps, so few latents die.  Parameters live in SAELens's own TopKSAE."""
    d_sae, k, steps = SAE_D[layer], SAE_K[layer], SAE_STEPS[layer]
    cfg = TopKSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=k, normalize_activations="none", apply_b_dec_to_input=True,
                        dtype="float32", device="cpu")
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_pre"
    cfg.metadata.model_name = "qkscope-trained-gpt2"
    cfg.metadata.context_size = N_CTX
    cfg.metadata.prepend_bos = False
    sae = TopKSAE(cfg)
    with torch.no_grad():
        w = torch.randn(d_sae, D_MODEL, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(x.mean(0))
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    opt = torch.optim.Adam(params, lr=SAE_LR)
    var = float(((x - x.mean(0)) ** 2).sum(-1).mean())
    last_fired = torch.zeros(d_sae, dtype=torch.long)
    curve = []
    for step in range(steps):
        xb = x[torch.randint(0, len(x), (SAE_BATCH,), generator=gen)]
        pre, acts = topk_code(sae, xb, k)
        xhat = acts @ sae.W_dec + sae.b_dec
        err = xb - xhat
        loss = (err ** 2).sum(-1).mean() / var
        with torch.no_grad():
            fired = (acts > 0).any(0)
            last_fired[fired] = 0
            last_fired[~fired] += 1
        dead = last_fired > 200
        if dead.any():
            pre_dead = pre.masked_fill(~dead, -float("inf"))
            kk = min(int(dead.sum()), 2 * k)
            dv, di = pre_dead.topk(kk, dim=-1)
            aux = torch.zeros_like(pre).scatter(-1, di, torch.relu(dv)) @ sae.W_dec
            loss = loss + ((err.detach() - aux) ** 2).sum(-1).mean() / var / 32
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # unit-norm decoder rows: activations carry the scale
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        if SAE_RESAMPLE and step % SAE_RESAMPLE == 0 and 0 < step <= steps // 2:
            restarted = resample_dead(sae, opt, x, last_fired >= SAE_RESAMPLE, gen)
            last_fired[restarted] = 0
            print(f"  sae layer {layer} step {step:5d}  restarted {len(restarted)} dead latents", flush=True)
        if step % 250 == 0 or step == steps - 1:
            with torch.no_grad():
                fvu = float((err ** 2).sum(-1).mean()) / var
            curve.append({"step": step, "fvu": fvu, "dead": int(dead.sum())})
            print(f"  sae layer {layer} step {step:5d}  FVU {fvu:.4f}  dead {int(dead.sum())}", flush=True)
    return sae, curve


def sae_quality(sae, x):
    with torch.no_grad():
        acts = sae.encode(x)
        xhat = sae.decode(acts)
    var = float(((x - x.mean(0)) ** 2).sum(-1).mean())
    fired = (acts > 0).any(0)
    return {"fvu": float(((x - xhat) ** 2).sum(-1).mean()) / var, "l0": float((acts > 0).float().sum(-1).mean()),
            "features_fired": int(fired.sum()), "d_sae": sae.cfg.d_sae, "k": sae.cfg.k}, acts


def labels(acts, tok, prev):
    """[d_sae, 4] int32: current-token label, count, previous-token label, count (top LABEL_TOP)."""
    d_sae = acts.shape[1]
    out = np.full((d_sae, 4), -1, dtype=np.int32)
    n_act = (acts > 0).sum(0)
    val, idx = acts.topk(LABEL_TOP, dim=0)  # [LABEL_TOP, d_sae]
    for f in range(d_sae):
        rows = idx[:, f][val[:, f] > 0]
        if len(rows) == 0:
            continue
        c = collections.Counter(tok[rows].tolist()).most_common(1)[0]
        p = collections.Counter(prev[rows].tolist()).most_common(1)[0]
        out[f] = [c[0], c[1], p[0], p[1]]
    return out, n_act


def write_probe_json():
    """probe/probe.json as `qkscope probe induction` writes it, so `qkscope probe score` reads the folder."""
    j = {"task": "induction", "corpus": "corpus.npy", "windows": PROBE_WINDOWS, "rep": REP, "bos": 0, "n_ctx": N_CTX,
         "token_lo": 0, "token_hi": VOCAB - 1, "seed": SEED + 3,
         "run_with": "[corpus] paths = DIR/corpus.npy, bos and n_ctx as here, pack = true",
         "note": "written by tests/reference/make_trained_ref.py (torch RNG): every window is a random run r of `rep` "
                 "tokens written twice; at a second-copy position i the induction target is i - rep + 1"}
    json.dump(j, open(os.path.join(OUT, "probe", "probe.json"), "w"), indent=1)


def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    t_start = time.time()
    # QK_TRAINED_STAGE=sae: keep the committed model, probe and head scores; redo the SAEs and labels
    # only (their own generators, so the files equal those of a full run on the same versions)
    sae_only = os.environ.get("QK_TRAINED_STAGE", "all") == "sae"
    if not sae_only:
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)

    text = open(DATA, encoding="utf-8").read()
    enc = gpt2_encoding()
    ids = np.array(enc.encode_ordinary(text), dtype=np.int64)
    keep, lut, coverage = build_vocab(ids)
    stream = torch.from_numpy(lut[ids])
    cut = int(len(stream) * (1 - HELDOUT))
    train, val = stream[:cut], stream[cut:]
    if sae_only:
        model = GPT2LMHeadModel.from_pretrained(os.path.join(OUT, "model"), dtype=torch.float32)
        model.eval()
        model.set_attn_implementation("eager")
        heads = json.load(open(os.path.join(OUT, "ground_truth.json")))["heads"]
        prior = json.load(open(os.path.join(OUT, "training.json")))
        curve = prior["model_curve"]
        t_start -= prior.get("model_seconds", curve[-1]["seconds"])
        for d in ("sae", "labels"):
            shutil.rmtree(os.path.join(OUT, d), ignore_errors=True)
    else:
        vocab = {"vocab_size": VOCAB, "unknown_id": VOCAB - 1, "gpt2_ids": keep + [-1],
                 "text": [enc.decode([t]) for t in keep] + ["<unk>"],
                 "note": "model id i is GPT-2 token gpt2_ids[i]; the last id stands for every other GPT-2 token"}
        json.dump(vocab, open(os.path.join(OUT, "vocab.json"), "w"), indent=0)
        print(f"{len(ids)} GPT-2 tokens; {VOCAB - 1} kept cover {coverage:.3f}", flush=True)

        model, curve = train_model(train, val, gen)
        model.config.torch_dtype = "float16"
        model.to(torch.float16).save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)
        model.float()
        round_to(model, torch.float16)
        for f in os.listdir(os.path.join(OUT, "model")):
            if f not in ("config.json", "model.safetensors"):
                os.remove(os.path.join(OUT, "model", f))

        pgen = torch.Generator().manual_seed(SEED + 3)
        probe = random_repeats(pgen, PROBE_WINDOWS)
        os.makedirs(os.path.join(OUT, "probe"))
        np.save(os.path.join(OUT, "probe", "corpus.npy"), probe.numpy().astype(np.int32))
        write_probe_json()
        heads = head_scores(model, probe, val)
        for h in heads:
            print(f"head {h['head']}: induction {h['induction_score']:.3f}  previous token {h['previous_token_score']:.3f}")
    model_seconds = round(time.time() - t_start, 1)

    sgen = torch.Generator().manual_seed(SEED + 4)
    xs, _, _ = sae_inputs(model, sgen, train, SAE_TOKENS)
    lgen = torch.Generator().manual_seed(SEED + 5)
    xl, tok_l, prev_l = sae_inputs(model, lgen, val, LABEL_TOKENS)
    os.makedirs(os.path.join(OUT, "labels"))
    sae_info = []
    for layer in range(N_LAYER):
        sae, scurve = train_sae(xs[layer], layer, torch.Generator().manual_seed(SEED + 6 + layer))
        folder = os.path.join(OUT, "sae", f"layer_{layer}")
        sae.to(torch.float16)
        sae.cfg.dtype = "float16"
        sae.save_model(folder)
        loaded = SAE.load_from_disk(folder, dtype="float32")
        assert type(loaded) is TopKSAE, type(loaded)
        q, acts = sae_quality(loaded, xl[layer])
        lab, n_act = labels(acts, tok_l, prev_l)
        np.save(os.path.join(OUT, "labels", f"layer_{layer}.npy"), lab)
        pure_cur = int(((lab[:, 1] >= LABEL_TOP // 2)).sum())
        pure_prev = int(((lab[:, 3] >= LABEL_TOP // 2)).sum())
        q.update({"layer": layer, "curve": scurve, "current_token_features": pure_cur,
                  "previous_token_features": pure_prev})
        print(f"sae layer {layer}: FVU {q['fvu']:.4f} L0 {q['l0']:.2f} fired {q['features_fired']}/{q['d_sae']}; "
              f"features with a current-token label >= 50%: {pure_cur}, previous-token: {pure_prev}", flush=True)
        sae_info.append(q)

    truth = {"heads": heads,
             "induction_heads": [h["head"] for h in heads if h["induction_score"] > 0.5],
             "previous_token_heads": [h["head"] for h in heads if h["previous_token_score"] > 0.5],
             "rep": REP, "n_ctx": N_CTX, "probe_windows": PROBE_WINDOWS, "label_top": LABEL_TOP,
             "vocab_coverage": coverage}
    json.dump(truth, open(os.path.join(OUT, "ground_truth.json"), "w"), indent=1)
    json.dump({"model_curve": curve, "model_seconds": model_seconds, "sae": sae_info, "versions": versions(), "threads": torch.get_num_threads(),
               "seconds": round(time.time() - t_start, 1),
               "final": {"val_text_loss": curve[-1]["val_text_loss"],
                         "val_repeat_second_copy_loss": curve[-1]["val_repeat_second_copy_loss"],
                         "sae_fvu": [s["fvu"] for s in sae_info]}},
              open(os.path.join(OUT, "training.json"), "w"), indent=1)
    print(f"done in {time.time() - t_start:.0f} s: induction heads {truth['induction_heads']}, "
          f"previous-token heads {truth['previous_token_heads']}")


if __name__ == "__main__":
    sys.exit(main())
