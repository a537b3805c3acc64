#!/usr/bin/env python3
"""`make bench-tokenize`: GPT-2 BPE throughput, qkscope vs tiktoken, in the same run.

Encodes tinyshakespeare repeated to >= 100 MB: qkscope's qk_bpe_encode single-threaded
(bin/bench_tokenize, best of 2) and tiktoken's encode_ordinary single-threaded (one str, best of
2), both from the same vocabulary files; then qkscope's corpus pipeline (reader + N tokenizer
threads + windower) for N in --threads.  Prints MB/s (1 MB = 10^6 bytes of UTF-8 input) and the
ratio, and appends a row to results/bench_tokenize.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from benchlib import ROOT, append_row, machine, today

VOCAB = os.path.join(ROOT, "..", "shared", "data", "gpt2")
TEXT = os.path.join(ROOT, "..", "shared", "data", "text", "tinyshakespeare.txt")
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (>= 100 for the results row)")
    ap.add_argument("--threads", default="1,2,4", help="thread counts for the pipeline scaling")
    ap.add_argument("--no-record", action="store_true", help="do not append to results/bench_tokenize.md")
    args = ap.parse_args()

    with open(TEXT, "rb") as f:
        base = f.read()
    reps = -(-int(args.mb * 1e6) // len(base))
    tmp = tempfile.mkdtemp(prefix="qk_bench_tok_")
    path = os.path.join(tmp, "corpus.txt")
    with open(path, "wb") as f:
        for _ in range(reps):
            f.write(base)
    n_bytes = reps * len(base)
    try:
        threads = [t for t in args.threads.split(",") if t]
        out = subprocess.run([os.path.join(ROOT, "bin", "bench_tokenize"), VOCAB, path] + threads, check=True,
                             capture_output=True, text=True).stdout
        qk = json.loads(out)
        assert qk["bytes"] == n_bytes

        ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(VOCAB, "vocab.bpe"), os.path.join(VOCAB, "encoder.json"))
        enc = tiktoken.Encoding(name="gpt2", pat_str=R50K_PAT, mergeable_ranks=ranks,
                                special_tokens={"<|endoftext|>": 50256})
        text = open(path, encoding="utf-8").read()
        tk_s = 1e30
        for _ in range(2):
            t0 = time.perf_counter()
            ids = enc.encode_ordinary(text)
            tk_s = min(tk_s, time.perf_counter() - t0)
        assert len(ids) == qk["tokens"], "token counts differ: tiktoken %d, qkscope %d" % (len(ids), qk["tokens"])
    finally:
        os.remove(path)
        os.rmdir(tmp)

    mb = n_bytes / 1e6
    qk_mbs, tk_mbs = mb / qk["single_s"], mb / tk_s
    print("corpus: tinyshakespeare x %d = %.1f MB, %d tokens" % (reps, mb, qk["tokens"]))
    print("qkscope  single thread: %8.1f MB/s" % qk_mbs)
    print("tiktoken single thread: %8.1f MB/s" % tk_mbs)
    print("ratio qkscope/tiktoken: %8.2fx" % (qk_mbs / tk_mbs))
    scaling = []
    for p in qk["pipeline"]:
        assert p["tokens"] == qk["tokens"]
        scaling.append("%d: %.1f" % (p["threads"], mb / p["s"]))
        print("qkscope pipeline %2d tokenizer threads: %8.1f MB/s" % (p["threads"], mb / p["s"]))

    if args.no_record:
        return
    res = append_row(
        "results/bench_tokenize.md",
        "# bench-tokenize: GPT-2 BPE encode throughput\n\n"
        "MB = 10^6 bytes of input; single thread = qk_bpe_encode vs tiktoken encode_ordinary on one "
        "string; pipeline = qkscope corpus reader (reader + N tokenizer threads + windower, n_ctx 1024).\n\n"
        "| date | machine | command | corpus | qkscope 1T MB/s | tiktoken 1T MB/s | ratio | "
        "qkscope pipeline MB/s by threads |\n|---|---|---|---|---|---|---|---|\n",
        "| %s | %s | `make bench-tokenize` (%s) | tinyshakespeare x%d, %.1f MB | %.1f | %.1f | %.2fx | %s |\n" % (
            today(), machine(), " ".join(sys.argv[1:]) or "defaults",
            reps, mb, qk_mbs, tk_mbs, qk_mbs / tk_mbs, ", ".join(scaling)))
    print("appended a row to", os.path.relpath(res, ROOT))


if __name__ == "__main__":
    main()
