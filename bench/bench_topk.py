"""Bilinear top-k benchmark: qkscope's qk_topk vs the OpenBLAS GEMM alone vs PyTorch on the CPU.

Run by `make bench-topk` (OMP_NUM_THREADS=N .venv-ref/bin/python bench/bench_topk.py --threads N).
Shapes: n = 4096 rows, M = 32768 columns, k = 32, r = 64 and 768.  PyTorch does
torch.topk(torch.matmul(U, V.T) + c, k) with torch.set_num_threads(N), best of --reps.
Prints the times and ratios and appends one row per r to results/bench_topk.md.
"""

import argparse
import json
import os
import subprocess
import time

import torch

from benchlib import append_row, machine, today


def torch_time(n, M, r, k, reps):
    g = torch.Generator().manual_seed(0)
    U = torch.rand(n, r, generator=g) - 0.5
    V = torch.rand(M, r, generator=g) - 0.5
    c = torch.rand(M, generator=g) - 0.5
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.topk(torch.matmul(U, V.T) + c, k, dim=-1)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--M", type=int, default=32768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--r", default="64,768")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="results/bench_topk.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    cmd = ["bin/bench_topk", "--n", str(a.n), "--M", str(a.M), "--k", str(a.k), "--r", a.r, "--reps", str(a.reps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    date = today(minutes=True)
    command = os.environ.get("QK_BENCH_COMMAND", f"make bench-topk BENCH_THREADS={a.threads}")
    header = ("# bench_topk: bilinear top-k (n x M scores, top-k per row)\n\n"
              "topk = qk_topk; gemm tiled = the same tile sgemm calls into the same per-thread "
              "buffers, no selection; gemm full = one sgemm into an n x M buffer; torch = "
              "torch.topk(torch.matmul(U, V.T) + c, k). Best of reps, seconds.\n\n"
              "| date | machine | command | threads | n | M | k | r | tiles | topk s | gemm tiled s "
              "| gemm full s | torch s | topk/gemm tiled | topk/gemm full | torch/topk |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for d in rows:
        tt = torch_time(a.n, a.M, d["r"], a.k, a.reps)
        r1, r2, r3 = d["topk_s"] / d["gemm_tiled_s"], d["topk_s"] / d["gemm_full_s"], tt / d["topk_s"]
        print(f"r={d['r']:4d} threads={d['threads']}: topk {d['topk_s']:.4f} s, gemm tiled {d['gemm_tiled_s']:.4f} s, "
              f"gemm full {d['gemm_full_s']:.4f} s, torch {tt:.4f} s | topk/gemm tiled {r1:.2f}x, "
              f"topk/gemm full {r2:.2f}x, torch/topk {r3:.2f}x")
        append_row(a.out, header,
                   f"| {date} | {machine()} | `{command}` | {d['threads']} | {a.n} | {a.M} | {a.k} | {d['r']} | "
                   f"{d['row_block']}x{d['col_block']} | {d['topk_s']:.4f} | {d['gemm_tiled_s']:.4f} | "
                   f"{d['gemm_full_s']:.4f} | {tt:.4f} | {r1:.2f} | {r2:.2f} | {r3:.2f} |\n")

if __name__ == "__main__":
    main()
