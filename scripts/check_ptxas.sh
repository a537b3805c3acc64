#!/usr/bin/env bash
# make check-ptxas: compiles every kernels/*.cu with -Xptxas -v for each target of NVCCFLAGS and
# checks ptxas's resource figures: no kernel (entry function) may have a stack frame or spill
# (local memory in a hot loop), and nvcc must print no warning; lists registers and shared
# memory per kernel and target.
# Usage: scripts/check_ptxas.sh [NVCC] [NVCCFLAGS] (the Makefile passes its own).
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC=${1:-nvcc}
FLAGS=${2:-"-O3 -std=c++17 -Ihost -Xcompiler -Wall,-Wextra -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
for f in kernels/*.cu; do
    # shellcheck disable=SC2086
    if ! $NVCC $FLAGS -Xptxas -v -c -o "$tmp/x.o" "$f" >"$tmp/log" 2>&1; then
        cat "$tmp/log"
        echo "check-ptxas: $f does not compile"
        bad=1
        continue
    fi
    if grep -qi 'warning' "$tmp/log"; then
        grep -i 'warning' "$tmp/log"
        echo "check-ptxas: $f: warnings"
        bad=1
    fi
    awk -v file="$f" '
        /Compiling entry function/ { fn = $0; sub(/.*entry function ./, "", fn); sub(/. for .*/, "", fn);
                                     tgt = $0; sub(/.* for ./, "", tgt); sub(/.$/, "", tgt); entry = 1; next }
        /Compiling / { entry = 0 }
        entry && /stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
        entry && /Used [0-9]+ registers/ {
            regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
            smem = 0; n = split($0, w, /[ ,]+/); for (i = 2; i <= n; i++) if (w[i] == "smem") smem = w[i - 2]
            printf "  %-6s %4s regs %6s B smem  stack %s  spill %s/%s  %s  (%s)\n", tgt, regs, smem, stack, spill_st, spill_ld, fn, file
            if (stack + 0 > 0 || spill_st + 0 > 0 || spill_ld + 0 > 0) { print "check-ptxas: FAIL: stack frame or spills in " fn " (" tgt ", " file ")"; bad = 1 }
            entry = 0
        }
        END { exit bad }' "$tmp/log" >"$tmp/table" || bad=1
    if command -v c++filt >/dev/null; then c++filt <"$tmp/table"; else cat "$tmp/table"; fi
done
if [ $bad = 0 ]; then echo "check-ptxas: every kernel: no stack frame, no spills; no warnings"; else echo "check-ptxas: FAILED"; fi
exit $bad
