#!/usr/bin/env bash
# `make test`'s share of fuzzing: every harness for a few seconds from its seeds, then every stored
# input of tests/fuzz/regressions/HARNESS/ (crashes found earlier, and inputs of fixed findings) run
# once.  Run from the repository root:  smoke.sh FUZZ_DIR SECONDS HARNESS...
set -euo pipefail
dir=$1 seconds=$2
shift 2
for h in "$@"; do
    work=$dir/smoke/$h
    rm -rf "$work" && mkdir -p "$work"
    cp "$dir/seeds/$h"/* "$work"/
    "$dir/fuzz_$h" -max_total_time="$seconds" -max_len=4096 -dict=tests/fuzz/qkscope.dict -timeout=30 \
        -rss_limit_mb=2560 -malloc_limit_mb=2048 -artifact_prefix="$work/" "$work" > "$work.log" 2>&1 ||
        { tail -n 40 "$work.log"; echo "fuzz smoke: $h failed (log $work.log)"; exit 1; }
    echo "fuzz smoke: $h $(grep -E '^#[0-9]+' "$work.log" | tail -n1 | awk '{print $1, $3, $4}')"
    if compgen -G "tests/fuzz/regressions/$h/*" > /dev/null; then
        "$dir/fuzz_$h" -timeout=30 -rss_limit_mb=2560 -malloc_limit_mb=2048 tests/fuzz/regressions/$h/* > "$work.regressions.log" 2>&1 ||
            { tail -n 40 "$work.regressions.log"; echo "fuzz regressions: $h failed"; exit 1; }
        echo "fuzz regressions: $h $(ls tests/fuzz/regressions/$h | wc -l) input(s) pass"
    fi
done
