"""make bench-forward: qkscope's CPU forward pass vs Hugging Face transformers, same weights,
tokens and thread count, in one run.  GPT-2-small-shaped random weights made on the fly (fixed
seed).  Prints tokens/s for both and the ratio; appends a row to results/bench_forward.md."""
import argparse
import json
import os
import subprocess
import time

import numpy as np
import torch

from benchlib import ROOT, append_row, gpt2_small_random, machine, today


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pos", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hf, work = gpt2_small_random()  # GPT-2 small shape
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=(args.batch, args.pos), dtype=np.int32)
    np.save(os.path.join(work, "tokens.npy"), tokens)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([os.path.join(ROOT, "bin", "bench_forward"), work, os.path.join(work, "tokens.npy"),
                          str(args.repeats)], check=True, capture_output=True, text=True, env=env)
    qk = json.loads(out.stdout)

    t = torch.from_numpy(tokens).long()
    with torch.inference_mode():
        hf(t)  # warm-up
        best = 1e30
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            hf(t)
            best = min(best, time.perf_counter() - t0)
    hf_tps = args.batch * args.pos / best
    ratio = qk["tokens_per_s"] / hf_tps
    print(f"GPT-2 small forward, batch {args.batch} x {args.pos} tokens, {args.threads} threads")
    print(f"  qkscope CPU (fp32, OpenBLAS)     {qk['tokens_per_s']:10.1f} tokens/s")
    print(f"  HF transformers {torch.__version__:<14} {hf_tps:10.1f} tokens/s")
    print(f"  ratio qkscope / transformers     {ratio:10.2f}x")
    append_row("results/bench_forward.md",
               "# make bench-forward: CPU forward pass, qkscope vs Hugging Face transformers\n\n"
               "| date | machine | threads | batch x pos | qkscope tok/s | transformers tok/s | ratio | command |\n"
               "| --- | --- | --- | --- | --- | --- | --- | --- |\n",
               f"| {today()} | {machine()} | {args.threads} | {args.batch} x {args.pos} | {qk['tokens_per_s']:.1f} | "
               f"{hf_tps:.1f} | {ratio:.2f} | `make bench-forward` |\n")


if __name__ == "__main__":
    main()
