"""The seed's route on a GPU, in PyTorch, on a `qkscope random` folder: the anchor `qkscope run`'s
tokens/s on the same GPU is compared with (scripts/gpu.sh bench; issue 14).

The GPU machine has PyTorch, transformers and safetensors but not SAELens, so the SAEs are read from
their safetensors and encoded as SAELens's TopK SAE does for `normalize_activations = none`,
`apply_b_dec_to_input = true` (the random SAEs' cfg.json): top-k of relu-free pre-activations
(x - b_dec) W_enc + b_enc, then ReLU.  The route, per batch of windows (SPEC §4 and the seed note):
Hugging Face GPT-2 forward (transformer only: qkscope computes no logits either), then per layer
f = SAE.encode(resid_pre), and per head M = W_Q W_K^T (setup), v = ln_1(x) M, SAE.encode(v),
torch.topk(k): the seed's SAE.encode(M @ x), which qkscope replaces by a 12x smaller look-for.
Timed with CUDA events after a warm-up, best of --reps; fp32 (TF32 off) and bf16 (weights and
activations bf16).  Prints one `| ...` line per precision for scripts/gpu.sh's bench.txt.

    python3 bench/bench_seed_gpu.py DIR [--windows 32] [--n-ctx 128] [--k 32] [--prec fp32,bf16]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def load_saes(folder, layers, device, dtype):
    from safetensors.torch import load_file

    saes = {}
    for l in layers:
        d = os.path.join(folder, "sae", f"layer_{l}")
        cfg = json.load(open(os.path.join(d, "cfg.json")))
        w = load_file(os.path.join(d, "sae_weights.safetensors"), device=device)
        if cfg.get("architecture") != "topk" or cfg.get("normalize_activations", "none") != "none":
            sys.exit(f"bench_seed_gpu: {d}: a topk SAE without normalisation expected (qkscope random writes those)")
        saes[l] = {k: w[k].to(dtype) for k in ("W_enc", "b_enc", "b_dec")}
        saes[l]["k"] = int(cfg["k"])
        saes[l]["b_dec_in"] = bool(cfg.get("apply_b_dec_to_input", True))
    return saes


def encode(sae, x):
    """SAELens TopKSAE.encode (no normalisation): the k largest pre-activations, ReLU, dense output."""
    h = (x - sae["b_dec"] if sae["b_dec_in"] else x) @ sae["W_enc"] + sae["b_enc"]
    v, i = torch.topk(h, sae["k"], dim=-1)
    return torch.zeros_like(h).scatter_(-1, i, torch.relu(v))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a `qkscope random` folder (model/, sae/layer_L/, corpus.npy)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--k", type=int, default=32, help="look-for top-k")
    ap.add_argument("--prec", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to check the script where there is no GPU")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_seed_gpu: no CUDA device visible to PyTorch")
    from transformers import GPT2Model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.device
    tokens = np.load(os.path.join(a.dir, "corpus.npy")).astype(np.int64).reshape(-1)
    n = a.windows * a.n_ctx
    if tokens.size < n:
        sys.exit(f"bench_seed_gpu: {a.dir}/corpus.npy: {tokens.size} tokens, {n} wanted")
    t = torch.from_numpy(tokens[:n]).reshape(a.windows, a.n_ctx).to(dev)
    for prec in a.prec.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
        model = GPT2Model.from_pretrained(os.path.join(a.dir, "model"), torch_dtype=dtype).to(dev).eval()
        L, H = model.config.n_layer, model.config.n_head
        C = model.config.n_embd
        dh = C // H
        saes = load_saes(a.dir, range(L), dev, dtype)
        M = {}
        with torch.no_grad():  # setup, not timed: M = W_Q W_K^T per head
            for l in range(L):
                W = model.h[l].attn.c_attn.weight  # Conv1D: [C, 3C]
                for h in range(H):
                    M[l, h] = (W[:, h * dh:(h + 1) * dh] @ W[:, C + h * dh:C + (h + 1) * dh].T).contiguous()

        def once():
            with torch.inference_mode():
                hs = model(t, output_hidden_states=True).hidden_states
                for l in range(L):
                    x = hs[l].reshape(-1, C)
                    encode(saes[l], x)  # f = SAE.encode(x)
                    xn = model.h[l].ln_1(x)
                    for h in range(H):
                        torch.topk(encode(saes[l], xn @ M[l, h]), a.k, dim=-1)

        once()  # warm-up
        best = None
        for _ in range(a.reps):
            if dev == "cuda":
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                once()
                e1.record()
                torch.cuda.synchronize()
                s = e0.elapsed_time(e1) / 1e3
            else:
                t0 = time.perf_counter()
                once()
                s = time.perf_counter() - t0
            best = s if best is None or s < best else best
        print(f"| seed route, PyTorch on {'this GPU' if dev == 'cuda' else 'the CPU'} ({prec}; {a.windows} x {a.n_ctx} tokens, {L * H} heads, "
              f"m = {saes[0]['W_enc'].shape[1]}): {n / best:.0f} tokens/s (best of {a.reps}: {best:.3f} s)", flush=True)
        del model, saes, M
        if dev == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
