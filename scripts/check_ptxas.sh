#!/usr/bin/env bash
# check_ptxas.sh FILE PATTERN: reads nvcc's -Xptxas -v output (FILE), prints every kernel's
# registers, stack, spills and shared memory per architecture, passes on any other line
# (compiler warnings), and fails when a kernel whose mangled name matches PATTERN (grep -E) has a
# stack frame or spills.  Used by the Makefile on the hot kernels (bilinear top-k).
set -euo pipefail
file=$1 pattern=$2
grep -v -e '^ptxas info' -e 'bytes stack frame' -e '^$' "$file" >&2 || true
awk -v pat="$pattern" '
/Compiling entry function/ { split($0, q, "\047"); fn = q[2]; arch = q[4]; next }
/bytes stack frame/ { stack = $1; sst = $5; sld = $9; next }
/Used [0-9]+ registers/ {
    if (fn == "") next
    regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
    line = $0; gsub(/,/, "", line); smem = 0; n = split(line, w, " "); for (t = 2; t <= n; t++) if (w[t] == "smem" && w[t - 1] == "bytes") smem = w[t - 2] + 0
    hot = fn ~ pat
    printf "ptxas: %-6s %-48s regs %3d  stack %3d  spill st %3d ld %3d  smem %6d%s\n", arch, fn, regs, stack, sst, sld, smem, hot ? "  [checked]" : ""
    if (hot && (stack + 0 > 0 || sst + 0 > 0 || sld + 0 > 0)) { bad = bad sprintf("  %s (%s): stack %d, spill stores %d, loads %d\n", fn, arch, stack, sst, sld) }
    fn = ""; stack = sst = sld = 0
}
END { if (bad != "") { printf "check_ptxas: hot kernels use local memory:\n%s", bad > "/dev/stderr"; exit 1 } }
' "$file"
