"""make bench-run: `qkscope run` on the CPU vs a PyTorch CPU implementation of the seed's route, same
weights, tokens and thread count, in one run.

Inputs (made once, cached under build/bench/): GPT-2-small-shaped random weights (benchlib, seed 0)
and random SAELens SAEs for the analysed layers (TopKSAE, d_in 768, d_sae 32768, k 32,
layer_norm normalisation and b_dec applied to the input, as the v5 release; SAELens's own init with
torch seed 1000 + layer, saved with save_model), coding blocks.L.hook_resid_pre.  Tokens: --windows
x --n-ctx uniform random ids (seed 0), no BOS, one batch.

Three implementations of "the features each query of every analysed head looks for" (top-k), each
also doing the forward pass and the per-layer SAE encode of the residual stream (f = SAE.encode(x)):

1. qkscope: `bin/qkscope run` with a generated config, all heads of the analysed layers, one
   recorded head (per-token records, encoder projection on); it does far more than the look-for
   top-k (attended keys, exact score decomposition, fidelity metrics, aggregates for every head).
   Tokens/s is tokens / the sum of its stage times (time_{read,forward,sae_encode,analysis,write}_s
   attributes: the per-token cost; model/SAE loading and the per-head tables, a fixed cost per run,
   are left out and reported separately as "setup") and, end to end, tokens / wall time.
2. seed route (PyTorch): Hugging Face forward (hidden states = resid_pre; no logits, which the
   seed's run_with_cache computes and qkscope does not), then per head
   M = Wq Wk^T (768 x 768, the model's own c_attn weights; the seed uses TransformerLens's LN-folded
   W_Q, W_K, which costs the same), v = ln_1(x) M for every token, SAELens's full encode of v
   (768 x 32768 GEMM + top-k activation), torch.topk(k): the seed's SAE.encode(M @ x).  Building M
   per head is setup (not timed per token), like qkscope's tables.
3. the same algebra in PyTorch: q = ln_1(x) Wq + bq per head, u = q Kd^T / sqrt(d_head) with
   Kd = W_dec Wk~ (setup), torch.topk(u, k): qkscope's decoder look-for, 12x fewer FLOPs per head.

The per-layer cost (SAE encode + 12 heads) is linear in the number of layers analysed, so the
all-layer (144-head) figures for the default single layer are an extrapolation: forward and read
as measured, everything per layer times 12 / (layers analysed).  --layers all measures it.

Prints tokens/s, ratios and stage shares; appends a row to results/bench_run.md.
"""
import argparse
import os
import subprocess
import time

import numpy as np
import torch

from benchlib import BENCH_DIR, ROOT, append_row, gpt2_small_random, machine, today

STAGES = ["read", "forward", "sae_encode", "analysis", "write"]


def make_saes(layers, d_sae, k, norm):
    """SAELens TopKSAEs for blocks.L.hook_resid_pre, saved once; returns {layer: folder}."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    out = {}
    for l in layers:
        folder = os.path.join(BENCH_DIR, f"sae-topk{k}-{d_sae}-{norm}", f"layer_{l}")
        if not os.path.exists(os.path.join(folder, "sae_weights.safetensors")):
            torch.manual_seed(1000 + l)
            cfg = TopKSAEConfig(d_in=768, d_sae=d_sae, k=k, normalize_activations=norm, apply_b_dec_to_input=True,
                                metadata=SAEMetadata(hook_name=f"blocks.{l}.hook_resid_pre", model_name="gpt2-random"))
            sae = TopKSAE(cfg)
            with torch.no_grad():  # non-zero biases, so that they cost what they cost
                sae.b_enc.copy_(0.01 * torch.randn(d_sae))
                sae.b_dec.copy_(0.01 * torch.randn(768))
            sae.save_model(folder)
        out[l] = folder
    return out


def write_config(path, model_dir, saes, tokens_path, a, record):
    heads = ",".join(f"{l}.*" for l in saes)
    with open(path, "w") as f:
        f.write(f"# written by bench/bench_run.py\n[model]\ndir = {model_dir}\n\n[sae]\n")
        for l, d in saes.items():
            f.write(f"layer.{l} = {d}\n")
        f.write(f"\n[corpus]\npaths = {tokens_path}\nn_ctx = {a.n_ctx}\nbos = false\npack = true\nbatch = {a.windows}\n\n"
                f"[analysis]\nheads = {heads}\nrecord_heads = {record}\nk = {a.k}\nencoder = true\n\n"
                f"[run]\nbackend = cpu\nprecision = fp32\nthreads = {a.threads}\n")


def run_qkscope(cfg, out, threads):
    import h5py

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run([os.path.join(ROOT, "bin", "qkscope"), "run", cfg, "-o", out, "-q"], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"qkscope run failed ({p.returncode}):\n{p.stderr}")
    with h5py.File(out, "r") as f:
        st = {s: float(f.attrs[f"time_{s}_s"]) for s in STAGES}
        n = int(f.attrs["tokens_processed"])
    return n, st, wall


class TorchRoutes:
    """The seed's route and the same algebra as qkscope, in PyTorch, on the same weights."""

    def __init__(self, hf, saes, k):
        from sae_lens import SAE

        self.hf, self.k = hf, k
        self.blocks = hf.transformer.h
        self.sae = {l: SAE.load_from_disk(d).eval() for l, d in saes.items()}
        C = hf.config.n_embd
        self.H, self.dh = hf.config.n_head, C // hf.config.n_head
        t0 = time.perf_counter()
        with torch.no_grad():
            self.M, self.Wq, self.bq, self.Kd = {}, {}, {}, {}
            for l in saes:
                attn = self.blocks[l].attn.c_attn  # Conv1D: y = x W + b, W [C, 3C]
                W, b = attn.weight, attn.bias
                g = self.blocks[l].ln_1.weight
                for h in range(self.H):
                    sl = slice(h * self.dh, (h + 1) * self.dh)
                    Wq, Wk = W[:, sl], W[:, C + h * self.dh:C + (h + 1) * self.dh]
                    self.M[l, h] = (Wq @ Wk.T).contiguous()          # seed: v = x M
                    self.Wq[l, h], self.bq[l, h] = Wq.contiguous(), b[sl]
                    Wk_t = g[:, None] * Wk                             # LN-folded, centred (SPEC §2)
                    Wk_t = Wk_t - Wk_t.mean(0, keepdim=True)
                    self.Kd[l, h] = (self.sae[l].W_dec @ Wk_t).contiguous()  # [m, dh]
        self.setup_s = time.perf_counter() - t0

    def forward(self, tokens):
        # hs[l] = resid_pre of layer l.  The transformer only, no logits: qkscope's run does not
        # compute them either (the seed's run_with_cache does; leaving them out favours PyTorch).
        hs = self.hf.transformer(tokens, output_hidden_states=True).hidden_states
        return {l: hs[l].reshape(-1, hs[l].shape[-1]) for l in self.sae}

    def _timed(self, tokens, per_head):
        """Forward, SAE.encode(x) per analysed layer, then per_head(l, h, ln_1(x)) for every head."""
        t = {"forward": 0.0, "sae_encode": 0.0, "analysis": 0.0}
        with torch.inference_mode():
            t0 = time.perf_counter()
            resid = self.forward(tokens)
            t["forward"] = time.perf_counter() - t0
            for l, x in resid.items():
                t0 = time.perf_counter()
                self.sae[l].encode(x)                     # f = SAE.encode(x)
                t1 = time.perf_counter()
                xn = self.blocks[l].ln_1(x)
                for h in range(self.H):
                    per_head(l, h, xn)
                t2 = time.perf_counter()
                t["sae_encode"] += t1 - t0
                t["analysis"] += t2 - t1
        return t

    def seed(self, tokens):
        def head(l, h, xn):  # SAE.encode(M x), top-k
            torch.topk(self.sae[l].encode(xn @ self.M[l, h]), self.k, dim=-1)
        return self._timed(tokens, head)

    def algebra(self, tokens):
        def head(l, h, xn):  # top-k of q Kd^T / sqrt(d_head)
            q = torch.addmm(self.bq[l, h], xn, self.Wq[l, h])
            torch.topk(q @ self.Kd[l, h].T * (self.dh ** -0.5), self.k, dim=-1)
        return self._timed(tokens, head)

def best_of(fn, reps):
    best = None
    for _ in range(reps):
        t = fn()
        if best is None or sum(t.values()) < sum(best.values()):
            best = t
    return best


def extrapolate(t, layers_done, layers_all):
    """Seconds for all layers: per-layer stages scaled, forward and read kept."""
    f = layers_all / layers_done
    return sum(v * (f if s in ("sae_encode", "analysis") else 1.0) for s, v in t.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layers", default="5", help="analysed layers: comma list or 'all' (default 5: 12 heads)")
    ap.add_argument("--record", default=None, help="recorded heads (default: head 0 of the first analysed layer)")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--k", type=int, default=32, help="look-for top-k")
    ap.add_argument("--d-sae", type=int, default=32768)
    ap.add_argument("--sae-k", type=int, default=32)
    ap.add_argument("--norm", default="layer_norm", choices=["layer_norm", "none"])
    ap.add_argument("--reps", type=int, default=2, help="best of this many runs of each")
    ap.add_argument("--no-record", action="store_true", help="do not append to results/bench_run.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0]

    hf, model_dir = gpt2_small_random()
    L = hf.config.n_layer
    layers = list(range(L)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
    record = a.record or f"{layers[0]}.0"
    saes = make_saes(layers, a.d_sae, a.sae_k, a.norm)
    work = os.path.join(BENCH_DIR, "run")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50256, size=a.windows * a.n_ctx, dtype=np.int32)  # no 50256: no separators
    tok_path = os.path.join(work, "tokens.npy")
    np.save(tok_path, tokens)
    cfg = os.path.join(work, "bench_run.ini")
    write_config(cfg, model_dir, saes, tok_path, a, record)

    # qkscope, best of reps (by the sum of its stage times).
    qk = None
    for _ in range(a.reps):
        r = run_qkscope(cfg, os.path.join(work, "bench_run.h5"), a.threads)
        if qk is None or sum(r[1].values()) < sum(qk[1].values()):
            qk = r
    n_tok, qst, qwall = qk
    assert n_tok == tokens.size, (n_tok, tokens.size)
    q_total = sum(qst.values())

    routes = TorchRoutes(hf, saes, a.k)
    t = torch.from_numpy(tokens.astype(np.int64)).reshape(a.windows, a.n_ctx)
    routes.seed(t[:1, :16])  # warm-up
    routes.algebra(t[:1, :16])
    seed = best_of(lambda: routes.seed(t), a.reps)
    alg = best_of(lambda: routes.algebra(t), a.reps)

    nl = len(layers)
    tps = {"qkscope": n_tok / q_total, "seed": n_tok / sum(seed.values()), "algebra": n_tok / sum(alg.values())}
    ext = {"qkscope": n_tok / extrapolate(qst, nl, L), "seed": n_tok / extrapolate(seed, nl, L),
           "algebra": n_tok / extrapolate(alg, nl, L)}
    share = {s: qst[s] / q_total for s in STAGES}
    shares = ", ".join(f"{s} {100 * share[s]:.0f}%" for s in STAGES)
    heads = nl * hf.config.n_head
    wait = os.environ.get("OMP_WAIT_POLICY", "")
    thr = f"{a.threads}" + (f" (OMP_WAIT_POLICY={wait})" if wait else "")
    print(f"load average before the run {load:.2f} on {os.cpu_count()} cores" +
          (" (other work is running: timings are contended)" if load > 0.5 else ""))
    print(f"qkscope run vs the seed's route, CPU, threads {thr}: {a.windows} x {a.n_ctx} = {n_tok} tokens, "
          f"layers {a.layers} ({heads} heads, recorded {record}), m = {a.d_sae}, SAE top-{a.sae_k} {a.norm}, look-for k = {a.k}")
    print(f"  qkscope CPU (stages)            {tps['qkscope']:9.1f} tokens/s   stage shares: {shares}")
    print(f"  qkscope CPU (end to end)        {n_tok / qwall:9.1f} tokens/s   (wall {qwall:.2f} s, of which "
          f"setup {qwall - q_total:.2f} s: process, loading, per-head tables)")
    for name, key, tt in (("seed route, PyTorch", "seed", seed), ("same algebra, PyTorch", "algebra", alg)):
        sh = ", ".join(f"{s} {100 * v / sum(tt.values()):.0f}%" for s, v in tt.items())
        print(f"  {name:<31} {tps[key]:9.1f} tokens/s   ({sh})")
    r_seed, r_alg = tps["qkscope"] / tps["seed"], tps["qkscope"] / tps["algebra"]
    print(f"  ratio qkscope / seed route      {r_seed:9.2f}x   (target >= 5x)"
          f"   end to end {n_tok / qwall / tps['seed']:.2f}x")
    print(f"  ratio qkscope / same algebra    {r_alg:9.2f}x")
    print(f"  ratio same algebra / seed route {tps['algebra'] / tps['seed']:9.2f}x")
    if nl < L:
        print(f"  all {L} layers ({L * hf.config.n_head} heads), EXTRAPOLATED (per-layer cost x {L}/{nl}, forward as "
              f"measured): qkscope {ext['qkscope']:.1f}, seed route {ext['seed']:.1f}, same algebra "
              f"{ext['algebra']:.1f} tokens/s; qkscope / seed route {ext['qkscope'] / ext['seed']:.2f}x")
    if a.no_record:
        return
    res = append_row(
        "results/bench_run.md",
        "# make bench-run: `qkscope run` (CPU) vs the seed's route in PyTorch (CPU)\n\n"
        "GPT-2-small-shaped random weights, random SAELens TopK SAEs (m = 32768, k = 32, layer_norm) on "
        "blocks.L.hook_resid_pre, random tokens, no BOS. qkscope tok/s = tokens / sum of its stage times "
        "(setup = loading + per-head tables, excluded; e2e = tokens / wall time of the process). seed route = "
        "PyTorch: HF forward (transformer, no logits), SAE.encode(x) per layer, per head M = Wq Wk^T, SAE.encode(ln_1(x) M), torch.topk. "
        "algebra = PyTorch: per head topk(q Kd^T / sqrt(d_head)). All-layer columns: measured when layers = all, "
        "else extrapolated (per-layer cost x 12 / layers, forward as measured). Stage shares are qkscope's.\n\n"
        "| date | machine (load avg before) | threads | tokens | layers (heads) | qkscope tok/s (e2e) | seed route tok/s | "
        "algebra tok/s | qkscope/seed | qkscope/algebra | all layers: qkscope / seed tok/s, ratio | "
        "qkscope stage shares | command |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        f"| {today(minutes=True)} | {machine()} ({load:.1f}) | {thr} | {a.windows} x {a.n_ctx} | {a.layers} ({heads}) | "
        f"{tps['qkscope']:.1f} ({n_tok / qwall:.1f}) | {tps['seed']:.1f} | {tps['algebra']:.1f} | {r_seed:.2f}x | "
        f"{r_alg:.2f}x | {ext['qkscope']:.1f} / {ext['seed']:.1f}, {ext['qkscope'] / ext['seed']:.2f}x"
        f"{'' if nl == L else ' (extrapolated)'} | {shares} | "
        f"`{os.environ.get('QK_BENCH_COMMAND', 'make bench-run')}` |\n")
    print("appended a row to", os.path.relpath(res, ROOT))


if __name__ == "__main__":
    main()
