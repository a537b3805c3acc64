"""make bench-pipeline: the cost of writing.  The demo-size analysis (the planted model of
`make demo`, configs/demo.ini) runs with output on and with `[output] write = false` in the same
invocation of this script, interleaved, best of N each; prints tokens/s for both, their ratio (target >= 0.9:
writing costs under 10%) and the chunk writer's sustained compressed MB per CPU-second of a worker thread, and appends a
row to results/bench_pipeline.md.  Standard library only."""
import argparse
import os
import re
import subprocess
import tempfile

import benchlib

ROOT = benchlib.ROOT
QK = os.path.join(ROOT, "bin", "qkscope")


def run(demo, out, write, threads):
    sets = [f"model.dir={demo}/model", f"sae.layer.0={demo}/sae/layer_0", f"sae.layer.1={demo}/sae/layer_1",
            f"corpus.paths={demo}/corpus.npy", f"output.write={'true' if write else 'false'}", f"run.threads={threads}"]
    cmd = [QK, "run", "configs/demo.ini", "-o", out] + [a for s in sets for a in ("--set", s)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    tps = float(re.search(r"\(([0-9.]+) tokens/s\) ->", p.stderr).group(1))
    m = re.search(r"writer ([0-9.]+) MB/s per thread", p.stderr)
    return tps, float(m.group(1)) if m else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=65536, help="corpus size of the planted demo (long enough to rise above run-to-run noise)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = os.path.join(tmp, "demo")
        subprocess.run([QK, "planted", "--out", demo, "--tokens", str(args.tokens), "-q"], check=True)
        ons, offs = [], []
        for i in range(args.reps):  # interleaved, so a burst of load elsewhere hits both alike
            ons.append(run(demo, os.path.join(tmp, f"on{i}.h5"), True, args.threads))
            offs.append(run(demo, os.path.join(tmp, f"off{i}.h5"), False, args.threads)[0])
        on, off = max(ons, key=lambda x: x[0]), max(offs)
    ratio = on[0] / off
    print(f"demo-size analysis (planted model, configs/demo.ini), {args.tokens} tokens, {args.threads} threads")
    print(f"  output on          {on[0]:10.0f} tokens/s")
    print(f"  output disabled    {off:10.0f} tokens/s")
    print(f"  ratio on / off     {ratio:10.2f}   (target >= 0.9)")
    print(f"  writer             {on[1]:10.0f} MB/s compressed per CPU-second of a writer thread")
    benchlib.append_row(
        "results/bench_pipeline.md",
        "# make bench-pipeline: analysis with output on vs off (configs/demo.ini, planted model)\n\n"
        "| date | machine | threads | tokens | on tok/s | off tok/s | on/off | writer MB/s/thread | command |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        f"| {benchlib.today(True)} | {benchlib.machine()} | {args.threads} | {args.tokens} | {on[0]:.0f} | {off:.0f} | "
        f"{ratio:.2f} | {on[1]:.0f} | `make bench-pipeline` |\n")


if __name__ == "__main__":
    main()
