#!/usr/bin/env bash
# ptxas's resource figures of the kernels as built: no kernel (entry function) of ours may have a
# stack frame or spill (local memory in a hot loop; CUB / Thrust's own kernels are listed, not
# judged), and nvcc must print no warning; lists registers and shared memory per kernel and target.
# Every kernel object's build keeps its compile's output (-Xptxas -v) beside it as OBJ.ptxas.
# Usage: scripts/check_ptxas.sh --log LOG SOURCE: the checks on one saved output (the build runs
#        this for every kernel object);
#        scripts/check_ptxas.sh OBJ...: every object's OBJ.ptxas, then one summary line
#        (make check-ptxas).
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
[ $# -gt 0 ] || { echo "check-ptxas: no kernel objects to check (a CUDA=0 build has none)"; exit 1; }
bad=0
for o in "$@"; do
    check_log "${o%.o}.ptxas" "$o" || bad=1
done
if [ $bad = 0 ]; then echo "check-ptxas: every kernel: no stack frame, no spills; no warnings"; else echo "check-ptxas: FAILED"; fi
exit $bad
