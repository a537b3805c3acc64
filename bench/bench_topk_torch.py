"""bench_topk_torch.py: the PyTorch anchor row of bench_topk_gpu's table (issue 15): one cuBLAS
bf16 GEMM writing every score, then torch.topk over each row, on the GPU machine's PyTorch.

    python3 bench/bench_topk_torch.py [--n 65536] [--m 32768] [--k 32] [--r 64,768] [--reps 5]

Same shapes as bench_topk_gpu (U [n x r], V [m x r], normal, V scaled by 1/sqrt(r), c [m]).
Scores s = U V^T + c in bf16 (n x m: 4 GiB at the default sizes), then torch.topk(s, k, dim=1).
CUDA events, median of --reps after 2 warm-ups.  Prints markdown rows."""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--m", type=int, default=32768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--r", default="64,768")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("bench_topk_torch: no PyTorch: nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("bench_topk_torch: no CUDA device: nothing measured")
        return 0
    print("| r | anchor | GEMM ms | GEMM + torch.topk ms | scores/s | TFLOP/s (GEMM part) |")
    print("|---|---|---|---|---|---|")
    for r in [int(x) for x in a.r.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(r)
        U = torch.randn(a.n, r, device="cuda", generator=g).to(torch.bfloat16)
        V = (torch.randn(a.m, r, device="cuda", generator=g) / r ** 0.5).to(torch.bfloat16)
        c = (0.5 * torch.randn(a.m, device="cuda", generator=g)).to(torch.bfloat16)

        def gemm():
            return torch.addmm(c, U, V.t())

        def both():
            return torch.topk(torch.addmm(c, U, V.t()), a.k, dim=1)

        res = []
        for fn in (gemm, both):
            ts = []
            for t in range(a.reps + 2):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                out = fn()
                e1.record()
                torch.cuda.synchronize()
                del out
                if t >= 2:
                    ts.append(e0.elapsed_time(e1))
            ts.sort()
            res.append(ts[len(ts) // 2])
        scores = a.n * a.m
        print("| %d | cuBLAS bf16 (torch.addmm) + torch.topk | %.3f | %.3f | %.3g | %.1f |"
              % (r, res[0], res[1], scores / (res[1] * 1e-3), 2.0 * scores * r / (res[0] * 1e9)))
        sys.stdout.flush()
        del U, V, c
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
