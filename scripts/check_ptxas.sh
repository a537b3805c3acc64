#!/usr/bin/env bash
# make check-ptxas: compiles every kernels/*.cu with -Xptxas -v for each target of NVCCFLAGS and
# checks ptxas's resource figures: no kernel (entry function) of ours may have a stack frame or
# spill (local memory in a hot loop; CUB / Thrust's own kernels are listed, not judged), and nvcc
# must print no warning; lists registers and shared memory per kernel and target.
# Usage: scripts/check_ptxas.sh [NVCC] [NVCCFLAGS] (the Makefile passes its own), or
#        scripts/check_ptxas.sh --log LOG SOURCE: the same checks on the saved output of one
#        compile (every kernel object's build does this with its .ptxas file).
set -uo pipefail
cd "$(dirname "$0")/.."

# check_log LOG SOURCE: prints the table of LOG's kernels; non-zero on a warning, a stack frame
# or a spill.
check_log() {
    local log=$1 f=$2 bad=0 table
    if grep -qi 'warning' "$log"; then
        grep -i 'warning' "$log"
        echo "check-ptxas: $f: warnings"
        bad=1
    fi
    table=$(awk -v file="$f" '
        /Compiling entry function/ { fn = $0; sub(/.*entry function ./, "", fn); sub(/. for .*/, "", fn);
                                     tgt = $0; sub(/.* for ./, "", tgt); sub(/.$/, "", tgt); entry = 1; next }
        /Compiling / { entry = 0 }
        entry && /stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
        entry && /Used [0-9]+ registers/ {
            regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
            smem = 0; n = split($0, w, /[ ,]+/); for (i = 2; i <= n; i++) if (w[i] == "smem") smem = w[i - 2]
            printf "  %-6s %4s regs %6s B smem  stack %s  spill %s/%s  %s  (%s)\n", tgt, regs, smem, stack, spill_st, spill_ld, fn, file
            # CUB / Thrust kernels instantiated by our calls (sorts, scans) are the library'"'"'s: listed, not failed.
            lib = fn ~ /^_ZN(3cub|6thrust|4cuda)/
            if (!lib && (stack + 0 > 0 || spill_st + 0 > 0 || spill_ld + 0 > 0)) { print "check-ptxas: FAIL: stack frame or spills in " fn " (" tgt ", " file ")"; bad = 1 }
            entry = 0
        }
        END { exit bad }' "$log") || bad=1
    if command -v c++filt >/dev/null; then c++filt <<<"$table"; else echo "$table"; fi
    return $bad
}

if [ "${1:-}" = --log ]; then
    check_log "$2" "${3:-$2}"
    exit
fi
NVCC=${1:-nvcc}
FLAGS=${2:-"-O3 -std=c++17 -Ihost $(pkg-config --cflags-only-I hdf5) -Xcompiler -Wall,-Wextra -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
for f in kernels/*.cu kernels/analysis/*.cu; do
    # shellcheck disable=SC2086
    if ! $NVCC $FLAGS -Xptxas -v -c -o "$tmp/x.o" "$f" >"$tmp/log" 2>&1; then
        cat "$tmp/log"
        echo "check-ptxas: $f does not compile"
        bad=1
        continue
    fi
    check_log "$tmp/log" "$f" || bad=1
done
if [ $bad = 0 ]; then echo "check-ptxas: every kernel: no stack frame, no spills; no warnings"; else echo "check-ptxas: FAILED"; fi
exit $bad
