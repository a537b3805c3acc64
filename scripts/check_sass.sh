#!/usr/bin/env bash
# check_sass.sh: the tensor-core instructions the fused top-k kernels must contain, read from the
# SASS of an object or binary (cuobjdump -sass): for every GPU architecture in FILE, every kernel
# whose mangled name matches a rule's pattern must contain the rule's opcode; a kernel family
# missing from FILE altogether fails too.  The Makefile runs it on kernels/analysis/
# topk_fused_sm80.o; scripts/gpu.sh on the bundled binary.
#   rules: topk_fused_sm80<bf16, ...> (mangled _Z15topk_fused_sm80ILb1E): HMMA (mma.sync)
# Usage: scripts/check_sass.sh FILE...
# Without cuobjdump (+ nvdisasm) it says SKIP and exits 0, or 1 with QK_REQUIRE_SASS=1.  Looks in
# QK_CUOBJDUMP, PATH, CUDA_HOME/bin, /usr/local/cuda/bin.
set -uo pipefail
# QK_SASS_RULES="PATTERN:OPCODE ..." replaces the rules (the check's own test: a rule that must fail).
read -r -a RULES <<<"${QK_SASS_RULES:-_Z15topk_fused_sm80ILb1E:HMMA}"
CO=${QK_CUOBJDUMP:-$(command -v cuobjdump || true)}
for d in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
    [ -z "$CO" ] && [ -x "$d/cuobjdump" ] && CO=$d/cuobjdump
done
if [ -z "$CO" ]; then
    echo "check-sass: SKIP: no cuobjdump here (QK_CUOBJDUMP, PATH, CUDA_HOME/bin): HMMA not checked in $*"
    [ "${QK_REQUIRE_SASS:-0}" = 1 ] && exit 1
    exit 0
fi
bad=0
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for f in "$@"; do
    if ! "$CO" -sass "$f" >"$tmp" 2>&1; then
        tail -n 3 "$tmp"
        echo "check-sass: FAIL: cuobjdump -sass $f"
        bad=1
        continue
    fi
    for rule in "${RULES[@]}"; do
        pat=${rule%%:*} op=${rule##*:}
        # per (arch, function): how many $op instructions; functions matching $pat only
        out=$(awk -v pat="$pat" -v op="$op" '
            /code for sm_/ { arch = $NF }
            /Function :/ { fn = $3; if (index(fn, pat) == 1) { seen[arch " " fn] = 1; n[arch " " fn] += 0 } }
            index($0, op) && (arch " " fn) in seen { n[arch " " fn]++ }
            END { for (x in n) print x, n[x] }' "$tmp")
        if [ -z "$out" ]; then
            echo "check-sass: FAIL: $f has no kernel matching $pat"
            bad=1
            continue
        fi
        while read -r arch fn count; do
            if [ "$count" -gt 0 ]; then echo "check-sass: $arch $fn: $count $op"
            else echo "check-sass: FAIL: $arch $fn: no $op in its SASS (tensor cores unused)"; bad=1; fi
        done <<<"$out"
    done
done
exit $bad
