#!/usr/bin/env bash
# The fuzz campaign of `make fuzz`: every harness for SECONDS, JOBS at a time under nice -n 19, from
# the seeds plus the corpus kept by earlier campaigns; then a section in results/fuzz.md with the
# machine, the command, the date and per harness: executions, coverage (edges), features, corpus
# size and findings (crashes, leaks, timeouts, out-of-memory: libFuzzer stops at the first; its
# input is kept in FUZZ_DIR/findings/HARNESS/).  Run from the repository root:
#   campaign.sh FUZZ_DIR SECONDS JOBS HARNESS...
set -uo pipefail
dir=$1 seconds=$2 jobs=$3
shift 3
mkdir -p "$dir/logs" "$dir/findings"
run_one() {
    local h=$1 dir=$2 seconds=$3
    mkdir -p "$dir/corpus/$h" "$dir/findings/$h"
    cp -n "$dir/seeds/$h"/* "$dir/corpus/$h"/ 2>/dev/null
    local max_len=4096 t0
    case $h in gpt2|sae|safetensors) max_len=16384 ;; esac
    t0=$(date +%s)
    nice -n 19 "$dir/fuzz_$h" -max_total_time="$seconds" -max_len=$max_len -dict=tests/fuzz/qkscope.dict \
        -timeout=30 -rss_limit_mb=2560 -malloc_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$dir/findings/$h/" "$dir/corpus/$h" > "$dir/logs/$h.log" 2>&1
    echo $? > "$dir/logs/$h.rc"
    echo $(($(date +%s) - t0)) > "$dir/logs/$h.seconds"  # less than asked when it stopped at a finding
}
export -f run_one
start=$(date -u '+%Y-%m-%d %H:%M UTC')
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$dir" "$seconds"
{
    echo
    echo "## Campaign of $start"
    echo
    echo "- machine: $(uname -srm); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(clang --version | head -n1)"
    echo "- command: \`make fuzz FUZZ_SECONDS=$seconds FUZZ_JOBS=$jobs\` ($jobs harnesses at a time, nice -n 19; ASan + UBSan + LeakSanitizer; -rss_limit_mb=2560 -malloc_limit_mb=2048 -timeout=30; dictionary tests/fuzz/qkscope.dict)"
    echo "- finished: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "| harness | seconds run | executions | exec/s | coverage (edges) | features | corpus | findings |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for h in "$@"; do
        log=$dir/logs/$h.log
        execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
        rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
        last=$(grep -E '^#[0-9]+' "$log" | tail -n1)
        cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
        ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
        corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<< "$last")
        found=$(ls "$dir/findings/$h" 2>/dev/null | tr '\n' ' ')
        secs=$(cat "$dir/logs/$h.seconds" 2>/dev/null)
        what=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer): [a-z-]+|runtime error: .*' "$log")
        echo "| $h | ${secs:-?} | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${found:-none}${what:+ ($what)} |"
    done
} >> results/fuzz.md
grep -q . <(ls "$dir"/findings/*/ 2>/dev/null | grep -v ':$' | grep .) && { echo "fuzz: findings, see results/fuzz.md and $dir/findings"; exit 1; }
exit 0
