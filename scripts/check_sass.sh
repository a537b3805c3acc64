#!/usr/bin/env bash
# check_sass.sh: the tensor-core instructions the fused top-k kernels must contain, read from the
# SASS of an object or binary (cuobjdump -sass): for every GPU architecture in FILE, every kernel
# whose mangled name matches a rule's pattern must contain the rule's opcode, and every FILE must
# hold at least one such kernel.  The Makefile runs it on kernels/analysis/topk_fused_sm80.o and
# topk_fused_sm90.o; scripts/gpu.sh on the bundled binary.
#   rules: topk_fused<FT_MMA, ...>       (mangled _Z10topk_fusedILi1E): HMMA  (mma.sync)
#          topk_fused<FT_WGMMA, ...>     (mangled _Z10topk_fusedILi2E): HGMMA (wgmma, operands stored)
#          topk_fused<FT_WGMMA_TMA, ...> (mangled _Z10topk_fusedILi3E): HGMMA and UTMALDG (the SASS of
#                                        cp.async.bulk.tensor: TMA loads)
# Usage: scripts/check_sass.sh FILE...
# Without cuobjdump (+ nvdisasm) it says SKIP and exits 0, or 1 with QK_REQUIRE_SASS=1.  Looks in
# QK_CUOBJDUMP, PATH, CUDA_HOME/bin, /usr/local/cuda/bin, build/cuda-tools (scripts/install-deps.sh
# puts NVIDIA's PyPI wheels there where the CUDA install has no cuobjdump).
set -uo pipefail
# QK_SASS_RULES="PATTERN:OPCODE ..." replaces the rules (the check's own test: a rule that must fail).
read -r -a RULES <<<"${QK_SASS_RULES:-_Z10topk_fusedILi1E:HMMA _Z10topk_fusedILi2E:HGMMA _Z10topk_fusedILi3E:HGMMA _Z10topk_fusedILi3E:UTMALDG}"
CO=${QK_CUOBJDUMP:-$(command -v cuobjdump || true)}
for d in "${CUDA_HOME:-}/bin" /usr/local/cuda/bin; do
    [ -z "$CO" ] && [ -x "$d/cuobjdump" ] && CO=$d/cuobjdump
done
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/build/cuda-tools"
if [ -z "$CO" ] && [ -x "$TOOLS/cuobjdump/nvidia/cu13/bin/cuobjdump" ]; then
    CO=$TOOLS/cuobjdump/nvidia/cu13/bin/cuobjdump
    export PATH="$TOOLS/nvdisasm/nvidia/cu13/bin:$PATH"  # cuobjdump -sass runs nvdisasm
fi
if [ -z "$CO" ]; then
    echo "check-sass: SKIP: no cuobjdump here (QK_CUOBJDUMP, PATH, CUDA_HOME/bin): tensor-core opcodes not checked in $*"
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
    matched=0
    for rule in "${RULES[@]}"; do
        pat=${rule%%:*} op=${rule##*:}
        # per (arch, function): how many $op instructions; functions matching $pat only
        out=$(awk -v pat="$pat" -v op="$op" '
            /code for sm_/ { arch = $NF }
            /Function :/ { fn = $3; if (index(fn, pat) == 1) { seen[arch " " fn] = 1; n[arch " " fn] += 0 } }
            index($0, op) && (arch " " fn) in seen { n[arch " " fn]++ }
            END { for (x in n) print x, n[x] }' "$tmp")
        [ -z "$out" ] && continue
        matched=1
        while read -r arch fn count; do
            if [ "$count" -gt 0 ]; then echo "check-sass: $arch $fn: $count $op"
            else echo "check-sass: FAIL: $arch $fn: no $op in its SASS (tensor cores unused)"; bad=1; fi
        done <<<"$out"
    done
    if [ $matched = 0 ]; then
        echo "check-sass: FAIL: $f has no kernel matching any of: ${RULES[*]}"
        bad=1
    fi
done
exit $bad
