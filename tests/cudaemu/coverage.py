#!/usr/bin/env python3
"""coverage.py BUILD: the share of kernels/ that `make test-emu-cov` executed, as Markdown.

gcov (gcc's, JSON output) over every kernel object of BUILD (built with --coverage; the rewritten
sources carry #line directives, so lines are counted in kernels/ itself).  A line counts as
executable where gcov gives it a count in any object; as executed where any object's count is
> 0 (headers are compiled into several objects).  Lines of the functions that only the sm_90a
wgmma / TMA flavours reach (SM90_ONLY: they run on a real Hopper GPU, never in emulation) are
reported apart; the goal is >= 90% of the others.  Then every line never executed, grouped in
runs, with its function, so that each can be given its reason (tests/cudaemu/coverage_notes.txt:
"FILE:FUNCTION: reason" lines, shown beside them).
"""
import collections
import datetime
import glob
import gzip
import json
import os
import re
import subprocess
import sys

SM90_ONLY = {
    "ft_walk_tma", "ft_bars_init", "ft_acc_fence", "ft_wg_wait", "ft_bar_init", "ft_bar_expect", "ft_bar_arrive", "ft_bar_wait", "ft_tma_load",
    "ft_wg_issue", "ft_wgmma", "ft_wg_desc", "ft_wg_step", "ft_tensor_map", "qk_fused_launch_wgmma",
}


def gcov_json(obj_dir, obj):
    """gcov's JSON for one object (its .gcda beside it)."""
    out = subprocess.run(["gcov", "--json-format", "--stdout", "-o", obj_dir, obj], capture_output=True, text=True,
                         check=False)
    docs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            docs.append(json.loads(line))
    return docs


CALLISH = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def enclosing_functions(path):
    """line -> the function whose definition encloses it, from the source: the nearest line above
    that starts at column 0 with a name and a parenthesis (the repository's style: definitions start
    at column 0, bodies are indented)."""
    out, cur = {}, "?"
    try:
        lines = open(path).read().split("\n")
    except OSError:
        return out
    for i, text in enumerate(lines, 1):
        if text and not text[0].isspace() and not text.startswith(("//", "#", "}", "{")):
            names = [x for x in CALLISH.findall(text) if not x.startswith("__")]  # __launch_bounds__ & co.
            if names and names[0] not in ("if", "for", "while", "switch", "return", "sizeof"):
                cur = names[0]
        out[i] = cur
    return out


def main():
    build = sys.argv[1]
    counts = collections.defaultdict(dict)  # file -> line -> count (max over objects)
    func_of = collections.defaultdict(dict)  # file -> line -> function
    objs = sorted(glob.glob(os.path.join(build, "kernels", "**", "*.o"), recursive=True))
    for obj in objs:
        if not os.path.exists(obj[:-2] + ".gcda"):
            continue
        for doc in gcov_json(os.path.dirname(obj), obj):
            for f in doc.get("files", []):
                name = os.path.normpath(f["file"])
                if not name.startswith("kernels/"):
                    continue
                for ln in f.get("lines", []):
                    n = ln["line_number"]
                    counts[name][n] = max(counts[name].get(n, 0), ln["count"])
    for name in counts:
        func_of[name] = enclosing_functions(name)
    notes = {}
    notes_path = os.path.join(os.path.dirname(__file__), "coverage_notes.txt")
    if os.path.exists(notes_path):
        for line in open(notes_path):
            line = line.strip()
            if line and not line.startswith("#") and ": " in line:
                k, v = line.split(": ", 1)
                notes[k] = v
    tot = run = sm90 = sm90_run = 0
    rows, missed = [], []
    for name in sorted(counts):
        c = counts[name]
        ex = [n for n in c if func_of[name].get(n) not in SM90_ONLY]
        hit = [n for n in ex if c[n] > 0]
        s9 = [n for n in c if func_of[name].get(n) in SM90_ONLY]
        tot += len(ex)
        run += len(hit)
        sm90 += len(s9)
        sm90_run += sum(1 for n in s9 if c[n] > 0)
        rows.append("| %s | %d | %d | %.1f%% | %d |" % (name, len(ex), len(hit), 100.0 * len(hit) / max(len(ex), 1), len(s9)))
        miss = sorted(n for n in ex if c[n] == 0)
        i = 0
        while i < len(miss):
            j = i
            while j + 1 < len(miss) and miss[j + 1] - miss[j] <= 2 and func_of[name].get(miss[j + 1]) == func_of[name].get(miss[i]):
                j += 1
            fn = func_of[name].get(miss[i], "?")
            why = notes.get("%s:%s" % (name, fn), "")
            missed.append("| %s:%s | %s | %d | %s |" % (name, miss[i] if i == j else "%d-%d" % (miss[i], miss[j]), fn,
                                                       j - i + 1, why))
            i = j + 1
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    print("# Coverage of kernels/ on the emulated device (make test-emu-cov)\n")
    cpu = "x86-64"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print("Date %s, commit %s, machine: %d cores of %s, no GPU; command: `make test-emu-cov` (every suite of "
          "`make test-emu`, on the emulated H100 and A100).\n" % (datetime.date.today().isoformat(), commit or "?",
                                                                  os.cpu_count() or 0, cpu))
    print("**%d of %d lines executed (%.1f%%)** outside the sm_90a-only functions; those (%d lines: %s) run only "
          "on a real Hopper GPU (%d of them reached here: the shared lines of their callers).\n"
          % (run, tot, 100.0 * run / max(tot, 1), sm90, ", ".join(sorted(SM90_ONLY)), sm90_run))
    print("| file | executable lines | executed | share | sm_90a-only lines |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n## Lines never executed\n")
    print("| where | function | lines | why |")
    print("|---|---|---|---|")
    print("\n".join(missed))


if __name__ == "__main__":
    main()
