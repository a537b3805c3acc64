#!/usr/bin/env bash
# check_fmad.sh NVCC FILE TYPE... -- NVCCFLAGS...: the fused multiply-adds nvcc contracts on its own
# (-fmad=true, its default) are absent from FILE's PTX: compiled with NVCCFLAGS for one virtual
# architecture, its PTX must hold no fma.rn.TYPE for the TYPEs given (the ones the source never
# asks for with fma()/fmaf()).  The Makefile's check-fmad runs it on kernels/model/forward_layernorm.cu
# with the model objects' flags: its double statistics must round every product and sum as written,
# as forward_math.h's host emulation of the kernel does (bit for bit).  Exit 1 naming the first
# fused instruction's line of PTX.
set -euo pipefail
NVCC=$1 FILE=$2
shift 2
TYPES=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do TYPES+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
if [ -z "$NVCC" ] || ! command -v "$NVCC" >/dev/null; then
    echo "check-fmad: SKIP: no nvcc"
    exit 0
fi
ptx=$(mktemp)
trap 'rm -f "$ptx"' EXIT
"$NVCC" "$@" -arch=compute_80 -ptx -o "$ptx" "$FILE"
bad=0
for t in "${TYPES[@]}"; do
    if grep -n "fma\.rn\.$t" "$ptx" | head -n 3 | sed "s|^|check-fmad: $FILE: contracted fma.rn.$t in the PTX, line |"; then
        grep -q "fma\.rn\.$t" "$ptx" && bad=1
    fi
done
[ $bad = 0 ] && echo "check-fmad: $FILE: no contracted fma.rn.{${TYPES[*]}} (flags: $*)"
exit $bad
